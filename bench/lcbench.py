"""LCBench: real learning curves (YAHPO Gym's LCBench surrogate), ours against Syne Tune's reference
implementations of asynchronous multi-fidelity HPO, side by side on one surrogate and one simulated clock.

Syne Tune's `yahpo-lcbench` settings: 4 workers, 7,200 s of simulated time, tasks 189908 (Fashion-MNIST),
189354 (airlines), 189866 (albert), 7593 (covertype), 168908 (christine); maximise val_accuracy, epochs 1-52
the resource. Methods:
- ours: the thompson sweeper's `Study` (asyTS alone: `ours`; with a pruner: `ours-asha`, `ours-<pruner>`), on
  our own loop of the simulated clock (bench/lcbench/own.py; skipped with a message while `Study` is missing);
- Syne Tune 0.14.2 (`syne_tune.optimizer.legacy_baselines`): RS, ASHA-promotion, ASHA-stop, MOBSTER,
  HyperTune, BOHB, through its simulator backend (bench/lcbench/syne.py), in a venv of their own that this
  script builds on first use at ~/.cache/lcbench/syne-tune-0.14.2 (or --syne-venv / LCBENCH_SYNE_VENV) from
  bench/lcbench/syne-requirements.txt;
- random: uniform search on our loop (a check of the loop against Syne Tune's RS).

Reported: normalised regret (best - incumbent) / (best - worst) against bench/lcbench_reference.json (the best
val_accuracy of 30,000 random configs, whole curves: bench/lcbench/reference.py; a method that finds the corners
of the box where the surrogate extrapolates passes it, and its regret goes below 0), at
900, 1,800, 3,600 and 7,200 s, as interquartile means with bootstrap 95 % intervals over seeds, per task and
pooled; host time per decision. Writes bench/lcbench.json and bench/lcbench.png.

One clock for all: our loop and Syne Tune's simulator give the same incumbents for the same configs
(bench/lcbench/check_clock.py, bench/lcbench_clock_check.json); Syne Tune's tuner looks at its workers every
0.5 simulated s (--poll); host time stays off the simulated clock unless --charge-host-time (Syne Tune's own
default), and is reported beside it (new config: median and mean host seconds a suggestion; "at 400-600 results":
the goal's "at 500 observations").

Needs onnxruntime in this interpreter (`pip install onnxruntime`) and python3.11 for Syne Tune's venv.

    nice -n 19 python bench/lcbench.py                                    # the whole bench (about 3 h, 2 cores)
    python bench/lcbench.py --tasks 189908 --methods random ASHA-stop --seeds 2 --budget 1800 --out /tmp/x.json
    python bench/lcbench.py --methods ours ours-asha --merge              # rerun ours' seeds, keep the other runs
    python bench/lcbench.py --methods ours --seeds 5 --first-seed 10 --merge   # 5 more seeds of ours
    python bench/lcbench.py --methods --merge a.json b.json               # two parts summed up in one
    /tmp/yahpo-venv/bin/python -m bench.lcbench.check_yahpo               # the wrapper against yahpo-gym
    python -m bench.lcbench.check_clock                                   # our clock against Syne Tune's
    python -m bench.lcbench.reference                                     # the regret reference (minutes)

(bench/lcbench/ is the package behind this script: `import bench.lcbench` is that package, not this file.)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lcbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
