"""How busy the thompson sweeper keeps its workers on aws_batch_local: 3 workers, trials of 3 s of work.

    python bench/thompson_busy.py [--trials 21] [--workers 3] [--seconds 3] [--out bench/thompson_busy]

Each variant is a fresh `python app.py --multirun hydra/sweeper=thompson ...` process, as a user runs it: a process
per trial (`max_parallel=3`) and warm workers (`workers=3`), each with one trial waiting for a worker (the default,
`hydra.sweeper.n_queued=1`), and warm workers with none (`n_queued=0`: proposed only when a worker frees). From the
manifest's per-job task start and end (run_job's call and return, written by the worker), the average number of
tasks running between the first task's start and the last task's end (goal with warm workers: at least 2.8 of 3),
and the refill gaps: from a task's end to the next task's start on a freed worker (the sweeper's proposal, staging,
the handover, the start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

APP = '''
import time

import hydra


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    time.sleep(cfg.seconds)
    return (cfg.x - 0.3) ** 2


if __name__ == "__main__":
    main()
'''


def busy(jobs: list[dict]) -> float:
    """Average tasks running between the first task's start and the last task's end."""
    spans = [(j["task_started"], j["task_ended"]) for j in jobs]
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return sum(e - s for s, e in spans) / (end - start)


def gaps(jobs: list[dict], workers: int) -> list[float]:
    """Each task start after the first `workers`: the time since the latest task end before it."""
    spans = sorted((j["task_started"], j["task_ended"]) for j in jobs)
    out = []
    for start, _ in spans[workers:]:
        ended = [e for _, e in spans if e <= start]
        if ended:
            out.append(start - max(ended))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=21)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, help="write PATH.json")
    args = parser.parse_args()
    variants = {"a process per trial": [f"hydra.launcher.max_parallel={args.workers}"],
                "warm workers, n_queued=0": [f"hydra.launcher.workers={args.workers}", "hydra.sweeper.n_queued=0"],
                "warm workers": [f"hydra.launcher.workers={args.workers}"]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        app_dir = Path(tmp)
        (app_dir / "app.py").write_text(APP)
        for i, (name, options) in enumerate(variants.items()):
            cmd = [sys.executable, "app.py", "--multirun", "hydra/sweeper=thompson", "+x=interval(0, 1)",
                   f"+seconds={args.seconds}", f"hydra.sweeper.n_trials={args.trials}",
                   f"hydra.sweeper.n_workers={args.workers}", "hydra/launcher=aws_batch_local", *options,
                   f"hydra.sweep.dir=sweep-{i}"]
            proc = subprocess.run(cmd, cwd=app_dir, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            jobs = json.loads((app_dir / f"sweep-{i}" / "manifest.json").read_text())["jobs"]
            results[name] = {"busy": busy(jobs), "gaps": gaps(jobs, args.workers)}
    print(f"thompson, {args.trials} trials of {args.seconds:g} s, {args.workers} in flight, aws_batch_local")
    print(f"{'variant':<28}{'tasks running (avg)':>22}{'refill gap median s':>22}{'max s':>8}")
    for name, r in results.items():
        print(f"{name:<28}{r['busy']:>16.2f} of {args.workers}{statistics.median(r['gaps']):>22.2f}"
              f"{max(r['gaps']):>8.2f}")
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(dict(vars(args), out=None, results=results),
                                                            indent=2) + "\n")


if __name__ == "__main__":
    main()
