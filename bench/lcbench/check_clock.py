"""Hold our loop's simulated clock (bench/lcbench/own.py) to Syne Tune's simulator backend: the same configs, in
the same order, every trial to 52 epochs, 4 workers; the incumbent curves (time and value of each improvement)
must be the same. Needs Syne Tune's venv (bench/lcbench.py builds it):

    python -m bench.lcbench.check_clock [--task 189908] [--budget 7200] [--venv ~/.cache/lcbench/syne-tune-0.14.2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.lcbench import own  # noqa: E402
from bench.lcbench.cli import DEFAULT_VENV, ensure_venv  # noqa: E402
from bench.lcbench.surrogate import LCBench, as_dict  # noqa: E402


class Replay(own.RandomSearch):
    def __init__(self, points):
        super().__init__(seed=0)
        self.points = list(points)

    def ask(self):
        self.number += 1
        return own._Trial(self.number - 1, dict(self.points[self.number - 1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="189908")
    parser.add_argument("--budget", type=float, default=7200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", default=str(DEFAULT_VENV))
    parser.add_argument("--out", default=str(ROOT / "bench" / "lcbench_clock_check.json"))
    parser.add_argument("-v", "--verbose", action="store_true", help="print both incumbent curves")
    args = parser.parse_args(argv)
    model = LCBench()
    points = [as_dict(row) for row in model.sample(np.random.default_rng(args.seed), 400)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "points.json").write_text(json.dumps(points))
        python = ensure_venv(Path(args.venv))
        subprocess.run([str(python), "-m", "bench.lcbench.syne", "--task", args.task, "--methods", "RS",
                        "--budget", str(args.budget), "--poll", "0.1", "--points", str(Path(tmp) / "points.json"),
                        "--out", str(Path(tmp) / "syne.jsonl")], cwd=ROOT, check=True, capture_output=True)
        theirs = json.loads((Path(tmp) / "syne.jsonl").read_text().splitlines()[0])
    ours = own.simulate(model, args.task, Replay(points), args.budget, 4)
    a, b = theirs["incumbent"], ours["incumbent"]
    if args.verbose:
        for row in zip(a["t"], a["best"], b["t"], b["best"]):
            print(row)
    same_values = a["best"] == b["best"]
    dt = np.subtract(a["t"], b["t"]) if same_values else None
    # Syne Tune's simulator adds 0.05 s latencies (trial start, each result, completion) and looks at its workers
    # every 0.1 s here (--poll; the bench's 0.5 s default leaves up to 0.5 s more a trial): its trials start a
    # little later, more so for each trial a worker has run before.
    tolerance = 2e-4 * args.budget
    # (a result within that much of the budget's end may fall on either side of it)
    ok = bool(same_values and abs(theirs["results"] - ours["results"]) <= 4 and np.abs(dt).max() <= tolerance)
    result = {"what": "our loop's clock against Syne Tune's simulator backend: RS on the same configs in the same "
                      "order, 4 workers, every trial to epoch 52; incumbent values must be equal and their times "
                      "within tolerance_s", "task": args.task, "budget_s": args.budget,
              "syne_trials": theirs["trials"], "our_trials": ours["trials"], "syne_results": theirs["results"],
              "our_results": ours["results"], "improvements": len(b["best"]), "same_incumbent_values": same_values,
              "syne_later_by_s": None if dt is None else {"max": float(dt.max()), "mean": float(dt.mean()),
                                                          "min": float(dt.min())},
              "tolerance_s": tolerance, "ok": ok}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
