"""Warm workers against a job per trial and against Hydra's joblib launcher: one sweep of N trivial jobs each,
wall time, on this machine.

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


def sweep_seconds(app_dir: Path, jobs: int, launcher: list[str], run: str) -> float:
    values = ",".join(str(i) for i in range(jobs))
    cmd = [sys.executable, "app.py", "--multirun", f"+x={values}", f"hydra.sweep.dir=sweeps/{run}", *launcher]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=app_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(launcher)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


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
        for run in range(args.repeats):
            for i, (name, launcher) in enumerate(variants(args.parallel).items()):
                times[name].append(sweep_seconds(app_dir, args.jobs, launcher, f"{run}-{i}"))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.jobs} trivial jobs, {args.parallel} at a time, median of {args.repeats} sweeps each")
    print(f"{'launcher':<32}{'wall s':>10}{'x joblib':>10}")
    for name, value in medians.items():
        print(f"{name:<32}{value:>10.2f}{value / medians['joblib']:>10.2f}")
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(
            {"jobs": args.jobs, "parallel": args.parallel, "repeats": args.repeats, "seconds": times,
             "median_s": medians, "ratio_to_joblib": {n: v / medians["joblib"] for n, v in medians.items()}},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
