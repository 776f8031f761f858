"""Syne Tune 0.14.2's schedulers on the LCBench surrogate, on its own simulated clock (runs in Syne Tune's venv).

Syne Tune's settings for `yahpo-lcbench` (its benchmark definitions): 4 workers, 7,200 s of simulated time,
maximise `val_accuracy`, `epoch` 1-52 the resource, `max_resources` = 52 in the config, `time` the elapsed-time
attribute; the schedulers as its benchmarking baselines build them (`type="promotion"` for the multi-fidelity
ones; ASHA also with `type="stopping"`). The surrogate is our wrapper (bench/lcbench/surrogate.py) inside a
`Blackbox`, simulated by `UserBlackboxBackend` + `SimulatorCallback` (which makes times increasing and resumes a
paused trial from its checkpoint, as for any of Syne Tune's blackboxes).

Two settings of the simulator differ from its defaults, so that its clock is the one of our loop
(bench/lcbench/own.py; check_clock.py holds the two together): the tuner looks at its workers every 0.5
simulated seconds (`--poll`; 5 s by default, when a free worker waits 2.5 s on average for its next trial),
and the scheduler's host time is not added to the simulated clock unless `--charge-host-time` (Syne Tune adds
it by default; it is measured and reported beside the clock either way).

Run from the repository root with the venv's Python (bench/lcbench.py does this and builds the venv):

    VENV/bin/python -m bench.lcbench.syne --task 189908 --methods ASHA-stop MOBSTER --seeds 0 1 --out run.jsonl

One json line per (method, seed) is appended to --out: the incumbent (best val_accuracy seen so far, any epoch)
at each simulated time it changed, and the host seconds of the scheduler's decisions (suggest: new configs and
resumed ones; on_trial_result: continue, pause or stop).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.lcbench.surrogate import EPOCHS, OBJECTIVES, LCBench  # noqa: E402

SYNE_TUNE_VERSION = "0.14.2"
METHODS = ("RS", "ASHA-promotion", "ASHA-stop", "MOBSTER", "HyperTune", "BOHB")
METRIC, MODE, RESOURCE, MAX_RESOURCE_ATTR, TIME_ATTR = "val_accuracy", "max", "epoch", "max_resources", "time"


def config_space():
    import syne_tune.config_space as cs

    # As yahpo-gym's config space converted by Syne Tune's yahpo_import.cs_to_synetune, task fixed.
    return {
        "batch_size": cs.lograndint(16, 512),
        "learning_rate": cs.loguniform(1e-4, 1e-1),
        "momentum": cs.uniform(0.1, 0.99),
        "weight_decay": cs.uniform(1e-5, 0.1),
        "num_layers": cs.randint(1, 5),
        "max_units": cs.lograndint(64, 1024),
        "max_dropout": cs.uniform(0.0, 1.0),
        MAX_RESOURCE_ATTR: EPOCHS,
    }


def make_blackbox(model: LCBench, task: str):
    import syne_tune.config_space as cs
    from syne_tune.blackbox_repository.blackbox import Blackbox

    space = {k: v for k, v in config_space().items() if k != MAX_RESOURCE_ATTR}
    fidelities = np.arange(1, EPOCHS + 1)

    class LCBenchBlackbox(Blackbox):
        def __init__(self):
            super().__init__(configuration_space=space, fidelity_space={RESOURCE: cs.randint(1, EPOCHS)},
                             objectives_names=list(OBJECTIVES))

        def _objective_function(self, configuration, fidelity=None, seed=None):
            if fidelity is None:  # the whole curve: [52, 6], as yahpo_import's blackbox answers
                return model.evaluate(task, [configuration], fidelities)[0].astype(np.float64)
            row = model.evaluate(task, [configuration], [fidelity[RESOURCE]])[0, 0]
            return dict(zip(OBJECTIVES, map(float, row)))

        @property
        def fidelity_values(self):
            return fidelities

    return LCBenchBlackbox()


def make_scheduler(method: str, seed: int, points=None):
    from syne_tune.optimizer import legacy_baselines as lb

    common = dict(config_space=config_space(), metric=METRIC, mode=MODE, random_seed=seed,
                  search_options={"debug_log": False})
    if points is not None:  # configs to evaluate first, in order (check_clock.py)
        common["points_to_evaluate"] = points
    multi = dict(common, resource_attr=RESOURCE, max_resource_attr=MAX_RESOURCE_ATTR)
    if method == "RS":
        return lb.RandomSearch(**common)
    if method == "ASHA-promotion":
        return lb.ASHA(type="promotion", **multi)
    if method == "ASHA-stop":
        return lb.ASHA(type="stopping", **multi)
    if method == "MOBSTER":  # Syne Tune's MOBSTER-JOINT: GP over (config, resource), model gp_multitask
        return lb.MOBSTER(type="promotion", **multi)
    if method == "HyperTune":  # Syne Tune's HYPERTUNE-INDEP
        multi["search_options"] = dict(multi["search_options"], model="gp_independent")
        return lb.HyperTune(type="promotion", **multi)
    if method == "BOHB":  # asynchronous BOHB: ASHA with a KDE searcher
        return lb.BOHB(type="promotion", **multi)
    raise ValueError(f"unknown method {method!r}; one of {METHODS}")


class Timed:
    """The scheduler's decisions timed on the host: suggest (a new config) and on_trial_result (continue, pause
    or stop), with the number of results seen before each."""

    def __init__(self, scheduler):
        self.suggest, self.result, self.results_seen = [], [], 0
        self.suggest_at, self.suggest_new = [], []  # results seen before each suggest; whether it was a new config
        inner_suggest, inner_result = scheduler.suggest, scheduler.on_trial_result

        def suggest(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner_suggest(*args, **kwargs)
            self.suggest.append(time.perf_counter() - t0)
            self.suggest_at.append(self.results_seen)
            # a new config (not the resume of a paused trial, which promotion-type schedulers also suggest)
            self.suggest_new.append(out is not None and bool(getattr(out, "spawn_new_trial_id", True)))
            return out

        def on_trial_result(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner_result(*args, **kwargs)
            self.result.append(time.perf_counter() - t0)
            self.results_seen += 1
            return out

        scheduler.suggest, scheduler.on_trial_result = suggest, on_trial_result


def run_one(model: LCBench, task: str, method: str, seed: int, budget: float, n_workers: int, points=None,
            poll: float = 0.5, charge_host_time: bool = False) -> dict:
    """One tuning run on the simulated clock. `poll`: the simulated seconds between the tuner's looks at its
    workers (Syne Tune's `tuner_sleep_time`, 5 s by default: a free worker idles until the next look; 0.5 s here
    keeps that idling at 0.25 s a trial on average, at 2-4 s of host time a run). `charge_host_time`: Syne
    Tune's simulator adds the host time its scheduler spends to the simulated clock; off, the clock is the
    surrogate's alone (the scheduler's time is reported beside it), as in our loop by default."""
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.constants import ST_TUNER_TIME
    from syne_tune.tuner_callback import TunerCallback

    np.random.seed(seed)
    backend = UserBlackboxBackend(blackbox=make_blackbox(model, task), elapsed_time_attr=TIME_ATTR,
                                  max_resource_attr=MAX_RESOURCE_ATTR, tuner_sleep_time=poll)
    if not charge_host_time:
        backend.time_keeper.real_time_since_last_recent_exit = lambda: 0.0
    scheduler = make_scheduler(method, seed, points)
    timed = Timed(scheduler)
    seen = []  # (simulated time, val_accuracy) of every result within the budget
    best_config = {"value": None}
    trials = set()

    class Results(TunerCallback):
        def on_trial_result(self, trial, status, result, decision):
            t = float(result[ST_TUNER_TIME])
            if t <= budget:
                trials.add(trial.trial_id)
                seen.append((t, float(result[METRIC])))
                if best_config["value"] is None or seen[-1][1] > best_config["value"]:
                    config = {k: v for k, v in trial.config.items() if k != MAX_RESOURCE_ATTR}
                    best_config.update(value=seen[-1][1], epoch=int(result[RESOURCE]), config=config)

    t0, c0 = time.perf_counter(), time.process_time()
    tuner = Tuner(trial_backend=backend, scheduler=scheduler,
                  stop_criterion=StoppingCriterion(max_wallclock_time=budget), n_workers=n_workers, sleep_time=0,
                  callbacks=[SimulatorCallback(), Results()],
                  results_update_interval=1e9, print_update_interval=1e9, save_tuner=False,
                  tuner_name=f"lcbench-{method}-{task}-{seed}", metadata={})
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # its status tables
        tuner.run()
    host, cpu = time.perf_counter() - t0, time.process_time() - c0
    decisions = np.array(timed.suggest + timed.result)
    return {
        "method": method, "task": task, "seed": seed, "budget_s": budget, "n_workers": n_workers,
        "incumbent": incumbent(seen), "trials": len(trials), "results": len(seen), "best": best_config,
        "host_s": host, "cpu_s": cpu,
        "suggest_s": suggest_stats(timed.suggest, timed.suggest_at, timed.suggest_new),
        "result_s": {"n": len(timed.result), "median": _median(timed.result), "total": float(sum(timed.result))},
        "decision_median_s": _median(decisions), "decision_mean_s": float(decisions.mean()) if len(decisions) else None,
        "clock": {"poll_s": poll, "host_time_charged": charge_host_time},
        "syne_tune": SYNE_TUNE_VERSION,
    }


def incumbent(seen) -> dict:
    """The best value so far at each simulated time it improved. Results are sorted by time first: Syne Tune's
    tuner takes in the results of one look at its workers trial by trial, not in time order."""
    curve = {"t": [], "best": []}
    for t, y in sorted(seen):
        if not curve["best"] or y > curve["best"][-1]:
            curve["t"].append(t)
            curve["best"].append(y)
    return curve


def suggest_stats(durations, results_before, new) -> dict:
    """Host seconds of the suggestions of new configs: all, median, mean, and the median of those asked with
    400-600 results seen (the goal's "at 500 observations")."""
    d, at, new = np.asarray(durations, dtype=float), np.asarray(results_before), np.asarray(new, dtype=bool)
    dn, atn = d[new] if len(d) else d, at[new] if len(at) else at
    return {"n": int(len(d)), "total": float(d.sum()), "n_new": int(len(dn)), "median_new": _median(dn),
            "mean_new": float(dn.mean()) if len(dn) else None,
            "median_new_at_400_600_results": _median(dn[(atn >= 400) & (atn <= 600)])}


def _median(x):
    return float(np.median(x)) if len(x) else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=float, default=7200.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", required=True)
    parser.add_argument("--points", help="a json list of configs the scheduler evaluates first, in order")
    parser.add_argument("--poll", type=float, default=0.5, help="simulated seconds between the tuner's looks")
    parser.add_argument("--charge-host-time", action="store_true",
                        help="add the scheduler's host time to the simulated clock (Syne Tune's default)")
    args = parser.parse_args(argv)
    points = json.loads(Path(args.points).read_text()) if args.points else None
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas' notice about its random state
    for name in ("syne_tune", "syne_tune.tuner"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("SYNETUNE_FOLDER", tempfile.mkdtemp(prefix="lcbench-syne-"))
    model = LCBench()
    for method in args.methods:
        for seed in args.seeds:
            record = run_one(model, args.task, method, seed, args.budget, args.workers, points, args.poll,
                             args.charge_host_time)
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{method} task {args.task} seed {seed}: best {record['incumbent']['best'][-1]:.3f} "
                  f"trials {record['trials']} results {record['results']} host {record['host_s']:.1f}s "
                  f"decision median {record['decision_median_s'] * 1e3:.2f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
