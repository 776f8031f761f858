"""A sweep of Batch's full array size on aws_batch_local, as a user runs it, against the same jobs in a small sweep:

    python bench/large_sweep.py [--configs 10000] [--small 10] [--stop-after-s 40] [--out bench/large_sweep]

Each sweep is a fresh `python app.py --multirun +x=range(0,N) hydra/launcher=aws_batch_local
hydra.launcher.max_parallel=2` process, N = --configs and N = --small, measured in the same run:

- first job: seconds from launch until the first task runs (each task writes when it started);
- job memory: a job process's peak resident memory when its task runs (VmHWM: the payload read and unpickled,
  the config built), median over the jobs that ran; goal: the large sweep's within 1.2x the small's;
- launcher memory: the launching process's peak (VmHWM); goal: under 600 MB;
- Ctrl-C: the large sweep gets SIGINT after --stop-after-s; seconds until none of its job processes is left
  (goal: within 10 s) and until the launcher has exited.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = '''
import os
import time

import hydra


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    started = time.time()
    with open("/proc/self/status") as status:  # this process's own peak (ru_maxrss would count its parent's)
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(os.path.join(os.environ["BENCH_MARKS"], str(cfg.x)), "w") as mark:
        mark.write(f"{started} {peak_kib}")
    return cfg.x * 2


if __name__ == "__main__":
    main()
'''


def descendants(pid: int) -> set[int]:
    """The processes under `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def peak_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sweep(app_dir: Path, configs: int, stop_after_s: float | None) -> dict:
    marks = app_dir / f"marks-{configs}"
    marks.mkdir()
    cmd = [sys.executable, "app.py", "--multirun", f"+x=range(0,{configs})", "hydra/launcher=aws_batch_local",
           "hydra.launcher.max_parallel=2", f"hydra.sweep.dir=sweeps/{configs}"]
    env = dict(os.environ, BENCH_MARKS=str(marks))
    log = open(app_dir / f"launcher-{configs}.log", "w")
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak, interrupted, jobs_gone, exited = 0.0, None, None, None
    while proc.poll() is None:
        peak = max(peak, peak_mib(proc.pid) or 0.0)
        now = time.time()
        if stop_after_s is not None and interrupted is None and now - start >= stop_after_s:
            proc.send_signal(signal.SIGINT)
            interrupted = now
        if interrupted is not None and jobs_gone is None and not descendants(proc.pid):
            jobs_gone = time.time() - interrupted
        time.sleep(0.1)
    exited = time.time() - interrupted if interrupted else None
    if interrupted is not None and jobs_gone is None:
        jobs_gone = exited
    if interrupted is None and proc.returncode != 0:
        output = (app_dir / f"launcher-{configs}.log").read_text()
        raise SystemExit(f"the {configs}-config sweep failed:\n{output[-3000:]}")
    ran = [tuple(map(float, mark.read_text().split())) for mark in marks.iterdir()]
    return {"configs": configs, "jobs_ran": len(ran), "first_job_s": min(t for t, _ in ran) - start,
            "job_peak_mib": statistics.median(rss / 1024 for _, rss in ran), "launcher_peak_mib": peak,
            "wall_s": time.time() - start, "ctrl_c_jobs_gone_s": jobs_gone, "ctrl_c_exit_s": exited}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--stop-after-s", type=float, default=40.0)
    parser.add_argument("--out", type=Path, help="write PATH.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app_dir = Path(tmp)
        (app_dir / "app.py").write_text(APP)
        small = sweep(app_dir, args.small, None)
        large = sweep(app_dir, args.configs, args.stop_after_s)
    print(f"{'sweep':>8} {'jobs ran':>9} {'first job s':>12} {'job MiB':>8} {'launcher MiB':>13} "
          f"{'Ctrl-C: jobs gone s':>20} {'exit s':>7}")
    for row in (small, large):
        gone = "" if row["ctrl_c_jobs_gone_s"] is None else f"{row['ctrl_c_jobs_gone_s']:.1f}"
        exit_s = "" if row["ctrl_c_exit_s"] is None else f"{row['ctrl_c_exit_s']:.1f}"
        print(f"{row['configs']:>8} {row['jobs_ran']:>9} {row['first_job_s']:>12.2f} {row['job_peak_mib']:>8.1f} "
              f"{row['launcher_peak_mib']:>13.1f} {gone:>20} {exit_s:>7}")
    ratio = large["job_peak_mib"] / small["job_peak_mib"]
    print(f"job memory, large / small: {ratio:.3f} (goal <= 1.2); first job of the large sweep: "
          f"{large['first_job_s']:.1f} s (goal <= 10); launcher peak {large['launcher_peak_mib']:.0f} MiB "
          f"(goal < 600); Ctrl-C: jobs gone in {large['ctrl_c_jobs_gone_s']:.1f} s (goal <= 10)")
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(
            {"small": small, "large": large, "job_memory_ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
