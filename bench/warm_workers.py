"""Warm workers against a job per trial and against Hydra's joblib launcher: one sweep of N trivial jobs each,
wall time, on this machine; and each trial's start on warm workers (from the worker handing it out to the task's
first line: the manifest's `starting` phase), for the trivial script and for the same script importing torch at
module level, as a training script does.

    python bench/warm_workers.py [--jobs 200] [--parallel 2] [--repeats 3] [--out bench/warm_workers]

Every variant runs the same app as a user would (a fresh `python app.py --multirun ...` process) with the same
parallelism: joblib (`n_jobs`), aws_batch_local with a worker process per job (`max_parallel`), aws_batch_local
with warm workers (`workers`) whose trials are forked, and the same with a new Python per trial
(`fresh_interpreter`: what that isolation of trials costs). Runs are interleaved, so drift in the machine's load
hits all alike; the figures are medians and ratios to joblib's, measured in the same run. `--out` writes a JSON
summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trivial_app


def variants(parallel: int) -> dict[str, list[str]]:
    return {
        "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={parallel}"],
        "aws_batch_local": ["hydra/launcher=aws_batch_local", f"hydra.launcher.max_parallel={parallel}"],
        "aws_batch_local, warm workers": ["hydra/launcher=aws_batch_local", f"hydra.launcher.workers={parallel}"],
        "warm workers, fresh interpreter": ["hydra/launcher=aws_batch_local", f"hydra.launcher.workers={parallel}",
                                            "hydra.launcher.fresh_interpreter=true"],
    }


def sweep_seconds(app_dir: Path, jobs: int, launcher: list[str], run: str, script: str = "app.py") -> float:
    values = ",".join(str(i) for i in range(jobs))
    cmd = [sys.executable, script, "--multirun", f"+x={values}", f"hydra.sweep.dir=sweeps/{run}", *launcher]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=app_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(launcher)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def trial_starts(sweep_dir: Path) -> list[float]:
    """Each job's start (the manifest's `starting` phase: from its process's start, or the warm worker handing
    it out, to its task's first line), in seconds."""
    jobs = json.loads((sweep_dir / "manifest.json").read_text())["jobs"]
    return [job["task_started"] - job["started"] for job in jobs if job["task_started"] and job["started"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write PATH.json")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in variants(args.parallel)}
    with tempfile.TemporaryDirectory() as tmp:
        app_dir = Path(tmp)
        (app_dir / "app.py").write_text(trivial_app.SOURCE)
        (app_dir / "torch_app.py").write_text(trivial_app.TORCH_SOURCE)
        warm = variants(args.parallel)["aws_batch_local, warm workers"]
        starts: dict[str, list[float]] = {"trivial script": [], "torch script": []}
        for run in range(args.repeats):
            for i, (name, launcher) in enumerate(variants(args.parallel).items()):
                times[name].append(sweep_seconds(app_dir, args.jobs, launcher, f"{run}-{i}"))
            starts["trivial script"] += trial_starts(app_dir / f"sweeps/{run}-2")
            sweep_seconds(app_dir, args.jobs, warm, f"{run}-torch", "torch_app.py")
            starts["torch script"] += trial_starts(app_dir / f"sweeps/{run}-torch")
    medians = {name: statistics.median(values) for name, values in times.items()}
    start_medians = {name: statistics.median(values) for name, values in starts.items()}
    print(f"{args.jobs} trivial jobs, {args.parallel} at a time, median of {args.repeats} sweeps each")
    print(f"{'launcher':<32}{'wall s':>10}{'x joblib':>10}")
    for name, value in medians.items():
        print(f"{name:<32}{value:>10.2f}{value / medians['joblib']:>10.2f}")
    print("A trial's start on warm workers (handed out to its task's first line), median over every trial:")
    for name, value in start_medians.items():
        print(f"  {name:<30}{value:>10.3f} s   (p90 {statistics.quantiles(starts[name], n=10)[-1]:.3f} s)")
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(
            {"jobs": args.jobs, "parallel": args.parallel, "repeats": args.repeats, "seconds": times,
             "median_s": medians, "ratio_to_joblib": {n: v / medians["joblib"] for n, v in medians.items()},
             "warm_trial_start_s": starts, "warm_trial_start_median_s": start_medians},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
