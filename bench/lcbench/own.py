"""Our side of the LCBench bench: an ask / report / tell optimiser on the same surrogate and the same simulated
clock as Syne Tune's simulator backend (bench/lcbench/syne.py).

The loop: `workers` workers start at time 0; each asks for a trial, trains it epoch by epoch on the surrogate's
clock (`time` from the trial's start, made increasing as Syne Tune's blackbox simulator does), reports each
epoch's val_accuracy, stops when the optimiser says so (told "pruned") or at epoch 52 (told the last value), and
asks for the next trial at that simulated moment. The host time of the optimiser's calls is measured, never
added to the simulated clock (Syne Tune's simulator does not add its schedulers' time either). The incumbent is
the best val_accuracy of any result so far, any epoch (as Syne Tune's benchmarking reads its results).

Methods:
- `random` (our loop, uniform configs, every trial to 52 epochs): needs nothing but the surrogate; a check of the
  loop against Syne Tune's RS, and what the test suite runs.
- `ours`, `ours-<pruner>` (e.g. `ours-asha`): the thompson sweeper's `Study` (asyTS; with a pruner), see
  `study_factory`; a lever after it (`ours-asha-b3`: brackets=3; LEVERS). Skipped with a message while `Study`
  cannot be imported.

    python -m bench.lcbench.own --task 189908 --methods random ours ours-asha --seeds 0 1 --out runs.jsonl
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.lcbench.surrogate import EPOCHS, NAMES, PARAMS, LCBench  # noqa: E402
from bench.lcbench.syne import suggest_stats  # noqa: E402  (numpy only; Syne Tune is imported inside functions)

# The search space of ours in Hydra's override grammar (what a user writes in hydra.sweeper.params): LCBench's
# config_space.json. range(a, b) excludes b, as in Python.
SPACE = {
    "batch_size": "tag(log, range(16, 513))",
    "learning_rate": "tag(log, interval(1e-4, 1e-1))",
    "momentum": "interval(0.1, 0.99)",
    "weight_decay": "interval(1e-5, 0.1)",
    "num_layers": "range(1, 6)",
    "max_units": "tag(log, range(64, 1025))",
    "max_dropout": "interval(0.0, 1.0)",
}


class Skip(Exception):
    """A method that cannot run here (what is missing is its message)."""


class RandomSearch:
    """Uniform configs (each parameter on its own scale, as ConfigSpace samples), no stopping."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.number = 0

    def ask(self):
        u = self.rng.random(len(PARAMS))
        params = {p.name: p.from_unit(np.array([u[j]]))[0] for j, p in enumerate(PARAMS)}
        params = {p.name: int(params[p.name]) if p.integer else float(params[p.name]) for p in PARAMS}
        self.number += 1
        return _Trial(self.number - 1, params)

    def report(self, trial, step, value) -> bool:
        return False

    def tell(self, trial, value=None, state=None):
        pass


class _Trial:
    def __init__(self, number, params):
        self.number, self.params = number, params


# A lever of Study set in the method's name, one letter and a number: ours-asha-b3 is ours-asha with brackets=3.
LEVERS = {"b": "brackets", "n": "n_initial", "r": "reduction_factor"}


def study_factory(method: str, seed: int):
    """`ours` -> Study without a pruner; `ours-<pruner>` -> Study(pruner=<pruner>); `-b3`, `-n5`, `-r4` after it
    set Study's brackets, n_initial and reduction_factor (LEVERS). Raises Skip where the thompson sweeper's Study
    is not importable yet.

    ===== THE SLOT FOR "OURS" =====
    The API coded against (hydra_plugins/hydra_thompson_sweeper/study.py):
      Study(space, direction="maximize", seed=s, pruner="asha" | "none", min_resource=1, max_resource=52)
      trial = study.ask()                     # trial.number, trial.params (dict name -> value)
      stop = study.report(trial, step, value) # True: stop the trial
      study.tell(trial, value) / study.tell(trial, state="pruned")
    """
    try:
        from hydra_plugins.hydra_thompson_sweeper import Study
    except ImportError as error:
        raise Skip(f"{method}: `from hydra_plugins.hydra_thompson_sweeper import Study` fails ({error}); "
                   "the study is not there yet") from error
    pruner, levers = "none", {}  # Study's word for no pruner
    for part in method.split("-")[1:]:
        if part[:1] in LEVERS and part[1:].isdigit():
            levers[LEVERS[part[0]]] = int(part[1:])
        else:
            pruner = part
    return Study(dict(SPACE), direction="maximize", seed=seed, pruner=pruner, min_resource=1, max_resource=EPOCHS,
                 **levers)


def make_optimiser(method: str, seed: int):
    if method == "random":
        return RandomSearch(seed)
    if method == "ours" or method.startswith("ours-"):
        return study_factory(method, seed)
    raise ValueError(f"unknown method {method!r}: random, ours, ours-<pruner>")


def config_of(params: dict) -> dict:
    missing = [n for n in NAMES if n not in params]
    if missing:
        raise ValueError(f"trial params lack {missing}: {params}")
    return {n: params[n] for n in NAMES}


def simulate(model: LCBench, task: str, optimiser, budget: float, workers: int,
             charge_host_time: bool = False) -> dict:
    """Run `optimiser` for `budget` simulated seconds with `workers` workers; the incumbent curve and host times.

    charge_host_time: the optimiser's host time passes on the simulated clock too (Syne Tune's simulator does so
    by default): it answers one call at a time, a call waits while it is busy, a new trial starts when its ask
    returns; running trials train on meanwhile. Off, every call is instant on the clock."""
    timing = {"ask": [], "report": [], "tell": []}
    results_seen = [0]
    ask_at = []
    busy = [0.0]  # the simulated time until which the optimiser is busy

    def timed(kind, at, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        took = time.perf_counter() - t0
        timing[kind].append(took)
        busy[0] = max(busy[0], at) + (took if charge_host_time else 0.0)
        return out

    def start(at: float):
        ask_at.append(results_seen[0])
        trial = timed("ask", at, optimiser.ask)
        times, acc = model.curves(task, [config_of(trial.params)])
        return {"trial": trial, "start": busy[0], "times": times[0], "acc": acc[0], "epoch": 0}

    incumbent = {"t": [], "best": []}
    best = {"value": None}
    trials = 0
    events = []  # (time the next epoch ends, worker)
    running = {}
    for w in range(workers):
        running[w] = start(0.0)
        trials += 1
        heapq.heappush(events, (running[w]["start"] + running[w]["times"][0], w))
    while events:
        now, w = heapq.heappop(events)
        if now > budget:
            break
        run = running[w]
        e = run["epoch"]
        value = float(run["acc"][e])
        results_seen[0] += 1
        if not incumbent["best"] or value > incumbent["best"][-1]:
            incumbent["t"].append(now)
            incumbent["best"].append(value)
            best = {"value": value, "epoch": e + 1, "config": config_of(run["trial"].params)}
        stop = timed("report", now, optimiser.report, run["trial"], e + 1, value)
        if e + 1 == EPOCHS:
            timed("tell", now, optimiser.tell, run["trial"], value)
        elif stop:
            timed("tell", now, optimiser.tell, run["trial"], state="pruned")
        else:
            run["epoch"] = e + 1
            heapq.heappush(events, (run["start"] + run["times"][e + 1], w))
            continue
        if busy[0] > budget:
            break
        running[w] = start(now)
        trials += 1
        heapq.heappush(events, (running[w]["start"] + running[w]["times"][0], w))
    asks = np.array(timing["ask"])
    at = np.array(ask_at[:len(asks)])
    decisions = np.array(timing["ask"] + timing["report"] + timing["tell"])
    return {
        "incumbent": incumbent, "trials": trials, "results": results_seen[0], "best": best,
        "suggest_s": suggest_stats(asks, at, np.ones(len(asks), dtype=bool)),
        "result_s": {"n": len(timing["report"]), "median": _median(timing["report"]),
                     "total": float(sum(timing["report"]))},
        "complete_s": {"n": len(timing["tell"]), "median": _median(timing["tell"]),
                       "total": float(sum(timing["tell"]))},
        "decision_median_s": _median(decisions),
        "decision_mean_s": float(decisions.mean()) if len(decisions) else None,
    }


def _median(x):
    return float(np.median(x)) if len(x) else None


def run_one(model: LCBench, task: str, method: str, seed: int, budget: float, workers: int,
            charge_host_time: bool = False) -> dict:
    optimiser = make_optimiser(method, seed)
    t0, c0 = time.perf_counter(), time.process_time()
    record = simulate(model, task, optimiser, budget, workers, charge_host_time)
    record.update(method=method, task=task, seed=seed, budget_s=budget, n_workers=workers,
                  host_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                  clock={"poll_s": 0.0, "host_time_charged": charge_host_time})
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--methods", nargs="+", default=["random", "ours"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=float, default=7200.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", required=True)
    parser.add_argument("--charge-host-time", action="store_true",
                        help="the optimiser's host time passes on the simulated clock")
    args = parser.parse_args(argv)
    model = LCBench()
    for method in args.methods:
        for seed in args.seeds:
            try:
                record = run_one(model, args.task, method, seed, args.budget, args.workers, args.charge_host_time)
            except Skip as skip:
                print(f"SKIPPED {skip}", flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps({"method": method, "task": args.task, "seed": seed, "skipped": str(skip)})
                            + "\n")
                break
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{method} task {args.task} seed {seed}: best {record['incumbent']['best'][-1]:.3f} "
                  f"trials {record['trials']} results {record['results']} host {record['host_s']:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
