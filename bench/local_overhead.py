"""Overhead of aws_batch_local against Hydra's basic launcher: one sweep of 8 trivial jobs each, wall time.

    python bench/local_overhead.py [--jobs 8] [--repeats 3]

Both run the same app as a user would (a fresh `python app.py --multirun ...` process); the figure is the
median wall time of each and their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trivial_app


def sweep_seconds(app_dir: Path, jobs: int, launcher: list[str], run: int) -> float:
    values = ",".join(str(i) for i in range(jobs))
    cmd = [sys.executable, "app.py", "--multirun", f"+x={values}", f"hydra.sweep.dir=sweeps/{run}", *launcher]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=app_dir, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app_dir = Path(tmp)
        (app_dir / "app.py").write_text(trivial_app.SOURCE)
        variants = {"basic": [], "aws_batch_local": ["hydra/launcher=aws_batch_local"]}
        times = {name: [] for name in variants}
        for run in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
            for name, launcher in variants.items():
                times[name].append(sweep_seconds(app_dir, args.jobs, launcher, run * 10 + len(times[name])))
    basic, local = statistics.median(times["basic"]), statistics.median(times["aws_batch_local"])
    print(f"{args.jobs} trivial jobs, median of {args.repeats} sweeps")
    print(f"{'launcher':<18}{'wall s':>10}")
    print(f"{'basic':<18}{basic:>10.2f}")
    print(f"{'aws_batch_local':<18}{local:>10.2f}")
    print(f"ratio aws_batch_local / basic: {local / basic:.2f}  (overhead {local - basic:+.2f} s per sweep, "
          f"{(local - basic) / args.jobs:+.2f} s per job)")


if __name__ == "__main__":
    main()
