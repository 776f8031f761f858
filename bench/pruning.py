"""Early stopping on a simulated clock, like bench/async_bo.py: M simulated workers train synthetic models epoch
after epoch, each epoch's loss is reported, a pruner may stop a trial after any report, and a worker whose trial
ends (done or stopped) gets a fresh proposal at once. Nothing sleeps; decisions take no simulated time (their
wall time is measured: the decision latency).

The learning curves. A config is x in [0,1]^6; its final loss (minimised) is f(x) = Hartmann6(x) (BoTorch's
minimisation form, f* = -3.32237) and its regret f(x) - f*. Every model starts from the same loss L0 = 1 (a
model before training is as bad as any other) and decays exponentially towards f(x), reaching it at R = 27:

    loss(x, r) = f(x) + (L0 - f(x)) * g(r / tau(x)),  g = (exp(-r/tau) - exp(-R/tau)) / (1 - exp(-R/tau)),
    tau(x)     = 8 * (1/8) ** x0            (from 8 epochs at x0 = 0 down to 1 epoch at x0 = 1)
    reported   = loss(x, r) + N(0, 0.05^2)  at r = 1 .. R, independently at each report

x0 plays a learning rate: a larger one trains faster, whatever it ends at. Hartmann6's optimum has x0 = 0.20
(tau = 5.3 epochs), so the configs beyond it in x0 are fast starters that end worse, and the best ones are slow
starters: curves cross (the figures `crossings` prints: the share of pairs of configs whose order at a rung is
the reverse of their final order). A trial's epochs each take the same time, e (seconds), drawn per trial from
a lognormal of mean 1 (sigma 0.5): run time is proportional to the resource used. M = 8 workers, always busy, so
the worker-seconds spent by simulated time t are exactly M * t; the budget is 100 full trials' worth
(100 * 27 worker-seconds on average). The noise sd is async_bo's.

  asyTS       the sweeper's Study (hydra_plugins.hydra_thompson_sweeper.Study, algorithm asy_ts), no pruner:
              every trial runs its 27 epochs
  asyTS+ASHA  ours: the same Study with pruner=asha, min_resource=1, max_resource=27, reduction_factor=3, as the
              sweeper drives it: study.ask() for a freed worker, study.report(trial, epoch, loss) at every report
              (the pruner judges it; the GP learns the trial's value at each rung, 1, 3, 9, the moment it is
              reached), study.tell(trial, loss) or study.tell(trial, state="pruned") at its end (the GP learns its
              last epoch past the rungs, and its final value if done, each at its fraction of a full training:
              MOBSTER's model); each proposal's sample believes the trials in flight at the posterior mean of a
              full training; with --pruner extrapolate, pruner=extrapolate in ASHA's place, still under this
              method's name. Nothing here re-implements a decision of the sweeper
  RAND+ASHA   the Study with algorithm asy_random + the same ASHA: Li et al.'s ASHA as published
  TPE+SH      Optuna's TPESampler(seed) + SuccessiveHalvingPruner(min_resource=1, reduction_factor=3), driven
              asynchronously through ask/tell: trial.report(loss, epoch), trial.should_prune(), and
              study.tell(trial, loss) or study.tell(trial, state=PRUNED); the running trials stay RUNNING. No
              should_prune at the last epoch (its rung at 27 would stop trials that are done; ASHA has no rung
              there either)

What a user gets at a budget of B worker-seconds: of the trials that ran their 27 epochs by then, the one with the
best observed (noisy) final loss; its regret is the headline ("true-best": the regret of the truly best of them).
Goals (the issue's): ours reaches asyTS's final median regret within 40% of asyTS's worker-seconds (the budget
from which ours' median stays at or below it); at each reported budget ours' median regret is at or below
TPE+SH's and RAND+ASHA's; ours' decision latency (a trial's end -> the next proposal: observe + propose) has a
median under 1 s.

    python bench/pruning.py --processes 2          # 20 seeds, four methods: table, bench/pruning.{json,png}
    python bench/pruning.py --seeds 1 --budget-scale 0.2 --processes 1 --out /tmp/pruning   # CI's reduced size
    python bench/pruning.py --processes 2 --tau 4 2 --out bench/pruning_example  # curves crossing as the example's
    python bench/pruning.py --min-resource 3 --out bench/pruning_min3            # ASHA's first rung at epoch 3
    python bench/pruning.py --rungs measured --out bench/pruning_measured        # ours with rungs=measured
    python bench/pruning.py --brackets 4 --out bench/pruning_brackets            # ours with brackets=4
    python bench/pruning.py --pruner extrapolate --out bench/pruning_extrapolate # ours with pruner=extrapolate

The default curves cross a lot: at rung 1 the order of two configs is the reverse of their final order for
nearly half the pairs (0.48, then 0.41 at rung 3 and 0.20 at rung 9), so early values say little. The example
app's CNN (12 learning rates from 1e-4 to 1e-1, 27 epochs, measured) reverses 0.26, 0.27 and 0.09 of its pairs
at rungs 1, 3 and 9; `--tau 4 2` gives 0.32, 0.25 and 0.09.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.async_bo import draw_band, problem, quartiles, write_summary  # noqa: E402

METHODS = ("asyTS", "asyTS+ASHA", "RAND+ASHA", "TPE+SH")
OURS = "asyTS+ASHA"
FRACTIONS = (0.25, 0.5, 1.0)  # of the budget, where the table reports


@dataclass(frozen=True)
class Setup:
    workers: int = 8
    epochs: int = 27  # R, the max resource
    min_resource: int = 1
    reduction_factor: int = 3
    full_trials: float = 100.0  # the budget, in full trials' worth of worker-seconds
    start_loss: float = 1.0  # L0
    tau_slow: float = 8.0  # tau at x0 = 0, in epochs
    tau_fast: float = 1.0  # tau at x0 = 1
    noise: float = 0.05  # sd of each report's Gaussian noise
    epoch_sigma: float = 0.5  # per-trial epoch time: lognormal, mean 1, this sigma
    rungs: str = "always"  # ours' hydra.sweeper.rungs (always, or measured)
    brackets: int = 1  # ours' hydra.sweeper.brackets (1: ASHA; more: asynchronous Hyperband)
    pruner: str = "asha"  # ours' hydra.sweeper.pruner (asha, or extrapolate)

    @property
    def budget(self) -> float:
        return self.full_trials * self.epochs  # worker-seconds (an epoch takes 1 s on average)

    def tau(self, x0: float) -> float:
        return self.tau_slow * (self.tau_fast / self.tau_slow) ** x0

    def loss(self, f: float, tau: float, step: float) -> float:
        """The noise-free loss after `step` epochs of a config of final loss f and speed tau."""
        end = math.exp(-self.epochs / tau)
        return f + (self.start_loss - f) * (math.exp(-step / tau) - end) / (1.0 - end)


SETUP = Setup()


def use(setup: Setup) -> None:
    """The setup this process simulates (set in the pool's workers too)."""
    global SETUP
    SETUP = setup


def simulate(method: str, seed: int, budget_scale: float) -> dict:
    """One run: its trials that ran every epoch, as (end time, observed final loss, true f), the stopped ones'
    count, and the wall time of each decision (observe + propose) and of each report's pruner call."""
    import random

    import torch

    torch.set_num_threads(1)
    setup = SETUP
    function, dim, _ = problem("Hartmann6")  # maximised: f(x) = -function(x)
    horizon = setup.budget * budget_scale / setup.workers  # simulated time
    rng = random.Random(seed)
    ask, report, tell, idle = policy(method, dim, seed, round(setup.full_trials * budget_scale))
    running: dict[int, dict] = {}
    events: list = []  # (time of the trial's next report, trial number)

    def launch(now: float) -> None:
        params, handle = ask([t["params"] for t in running.values()])
        x = [params[f"x{i}"] for i in range(dim)]
        number = len(started)
        started.append(number)
        running[number] = {"params": params, "handle": handle, "step": 0, "tau": setup.tau(x[0]),
                           "f": -float(function(torch.tensor([x], dtype=torch.float64))),
                           "epoch": math.exp(rng.gauss(-setup.epoch_sigma ** 2 / 2, setup.epoch_sigma))}
        heapq.heappush(events, (now + running[number]["epoch"], number))

    started: list[int] = []
    completed, latencies, pruner_times, stopped = [], [], [], 0
    for _ in range(setup.workers):
        launch(0.0)
    idle()
    while events:
        now, number = heapq.heappop(events)
        if now > horizon:
            break
        trial = running[number]
        trial["step"] += 1
        value = setup.loss(trial["f"], trial["tau"], trial["step"]) + rng.gauss(0.0, setup.noise)
        done = trial["step"] >= setup.epochs
        start = time.perf_counter()
        stop = report(trial["handle"], number, trial["step"], value, done)
        pruner_times.append(time.perf_counter() - start)
        if not (done or stop):
            heapq.heappush(events, (now + trial["epoch"], number))
            continue
        del running[number]
        start = time.perf_counter()
        tell(trial["params"], trial["handle"], number, value if done else None)
        launch(now)
        latencies.append(time.perf_counter() - start)
        idle()  # every worker busy: the sweeper fits ahead (Optimizer.prefit)
        if done:
            completed.append((now, value, trial["f"]))
        else:
            stopped += 1
    return {"method": method, "seed": seed, "completed": completed, "started": len(started), "stopped": stopped,
            "latencies": latencies, "pruner_times": pruner_times}


def policy(method: str, dim: int, seed: int, full_trials: int | None = None):
    """ask(pending) -> (params, handle); report(handle, trial, step, loss, done) -> stop?; tell(params, handle,
    final loss, or None for a stopped trial); idle(), called while every worker is busy."""
    setup = SETUP
    if method == "TPE+SH":
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=setup.min_resource,
                                                        reduction_factor=setup.reduction_factor)
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                    pruner=pruner)

        def ask(pending):
            trial = study.ask()
            return {f"x{i}": trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(dim)}, trial

        def report(trial, number, step, value, done):
            trial.report(value, step)
            return not done and trial.should_prune()

        def tell(params, trial, number, value):
            if value is None:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)

        return ask, report, tell, lambda: None

    from hydra_plugins.hydra_thompson_sweeper import Study

    asha = method.endswith("ASHA")
    ours = method == OURS
    study = Study({f"x{i}": "interval(0, 1)" for i in range(dim)}, "minimize", seed=seed,
                  algorithm="asy_random" if method.startswith("RAND") else "asy_ts",
                  n_trials=None if asha else full_trials,  # n_trials as a user would set it; ASHA's: unknown
                  pruner=(setup.pruner if ours else "asha") if asha else "none", min_resource=setup.min_resource,
                  max_resource=setup.epochs, reduction_factor=setup.reduction_factor,
                  rungs=setup.rungs if ours else "always", brackets=setup.brackets if ours else 1)

    def ask(pending):  # the study knows its trials in flight
        trial = study.ask()
        return trial.params, trial

    def report(trial, number, step, value, done):
        return study.report(trial, step, value)

    def tell(params, trial, number, value):
        if value is None:
            study.tell(trial, state="pruned")
        else:
            study.tell(trial, value)

    return ask, report, tell, study.optimizer.prefit


def regret_at(run: dict, spent: float, optimum: float, true_best: bool = False) -> float:
    """Regret of the recommendation after `spent` worker-seconds: the trial of best observed final loss among
    those done by then (true_best: the truly best of them); -f* (a loss of 0) before any is done."""
    done = [(value, f) for end, value, f in run["completed"] if end * SETUP.workers <= spent]
    if not done:
        return optimum
    return (min(f for _, f in done) if true_best else min(done)[1]) + optimum


def crossings(samples: int = 200_000, seed: int = 0) -> dict:
    """How often two configs' order at a rung is the reverse of their final order (noise-free): over uniform
    pairs, and over pairs of good configs (f < -1.5, where a search spends its late trials)."""
    import torch

    function, dim, _ = problem("Hartmann6")
    generator = torch.Generator().manual_seed(seed)
    X = torch.rand(samples, dim, dtype=torch.float64, generator=generator)
    f = -function(X)
    tau = SETUP.tau_slow * (SETUP.tau_fast / SETUP.tau_slow) ** X[:, 0]
    out = {}
    for name, keep in (("uniform", f < math.inf), ("f<-1.5", f < -1.5)):
        ff, tt = f[keep], tau[keep]
        i, j = torch.randint(len(ff), (2, 20_000), generator=generator)
        for rung in (1, 3, 9):
            end = torch.exp(-SETUP.epochs / tt)
            at = ff + (SETUP.start_loss - ff) * (torch.exp(-rung / tt) - end) / (1 - end)
            reversed_ = ((ff[i] - ff[j]).sign() * (at[i] - at[j]).sign() < 0).double().mean()
            out[f"{name} rung {rung}"] = float(reversed_)
    return out


def plot(runs: list[dict], budget: float, optimum: float, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = [budget * i / 100 for i in range(1, 101)]
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        draw_band(ax, grid, [[regret_at(r, b, optimum) for r in mine] for b in grid], method)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="asyTS's final median")
    ax.set_yscale("log")
    ax.set_xlabel("worker-seconds (an epoch takes 1 s on average)")
    ax.set_ylabel("regret of the recommendation (median, IQR)")
    ax.set_title(f"Hartmann6 learning curves, M={SETUP.workers}, R={SETUP.epochs} epochs, "
                 f"{len({r['seed'] for r in runs})} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget-scale", type=float, default=1.0, help="the budget times this (CI: a fraction)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "pruning")
    parser.add_argument("--tau", type=float, nargs=2, metavar=("SLOW", "FAST"),
                        default=(SETUP.tau_slow, SETUP.tau_fast),
                        help="tau at x0 = 0 and at x0 = 1 (default 8 1; 4 2 crosses as the example app's curves do)")
    parser.add_argument("--min-resource", type=int, default=SETUP.min_resource,
                        help="ASHA's and Optuna's first rung, in epochs (default 1)")
    parser.add_argument("--rungs", choices=("always", "measured"), default=SETUP.rungs,
                        help="ours' hydra.sweeper.rungs (default always)")
    parser.add_argument("--brackets", type=int, default=SETUP.brackets,
                        help="ours' hydra.sweeper.brackets (default 1: ASHA; 4: asynchronous Hyperband)")
    parser.add_argument("--pruner", choices=("asha", "extrapolate"), default=SETUP.pruner,
                        help="ours' hydra.sweeper.pruner (default asha)")
    args = parser.parse_args(argv)
    from hydra_plugins.hydra_thompson_sweeper import Study, SweepError

    try:  # the settings ours runs with, refused as the study refuses them
        Study({"x0": "interval(0, 1)"}, pruner=args.pruner, min_resource=args.min_resource, max_resource=SETUP.epochs,
              reduction_factor=SETUP.reduction_factor, rungs=args.rungs, brackets=args.brackets)
    except SweepError as error:
        parser.error("; ".join(error.problems))
    use(replace(SETUP, tau_slow=args.tau[0], tau_fast=args.tau[1], min_resource=args.min_resource,
                rungs=args.rungs, brackets=args.brackets, pruner=args.pruner))

    started = time.perf_counter()
    _, _, optimum = problem("Hartmann6")
    budget = SETUP.budget * args.budget_scale
    # the slow ones first, so that the pool's last tasks are short
    tasks = [(m, s, args.budget_scale) for m in ("asyTS+ASHA", "TPE+SH", "asyTS", "RAND+ASHA")
             for s in range(args.seeds)]
    with ProcessPoolExecutor(args.processes, initializer=use, initargs=(SETUP,)) as pool:
        runs = list(pool.map(simulate, *zip(*tasks)))
    cross = crossings()

    def runs_of(method):
        return [r for r in runs if r["method"] == method]

    rows = []
    print(f"{'method':<11} {'budget':>7} {'regret: median':>15} {'IQR':>19} {'true-best median':>17} "
          f"{'trials':>7} {'done':>5} {'stopped':>8}")
    for method in METHODS:
        mine = runs_of(method)
        for fraction in FRACTIONS:
            spent = fraction * budget
            low, median, high = quartiles([regret_at(r, spent, optimum) for r in mine])
            true_median = statistics.median(regret_at(r, spent, optimum, true_best=True) for r in mine)
            row = {"method": method, "fraction": fraction, "worker_seconds": spent, "regret_median": median,
                   "regret_q1": low, "regret_q3": high, "true_best_regret_median": true_median}
            if fraction == 1.0:
                row.update(trials=statistics.median(r["started"] for r in mine),
                           done=statistics.median(len(r["completed"]) for r in mine),
                           stopped=statistics.median(r["stopped"] for r in mine))
            rows.append(row)
            counts = (f"{row['trials']:>7g} {row['done']:>5g} {row['stopped']:>8g}" if fraction == 1.0 else "")
            print(f"{method:<11} {f'{fraction:.0%}':>7} {median:>15.4f} {f'[{low:.4f}, {high:.4f}]':>19} "
                  f"{true_median:>17.4f} {counts}")

    # (1) the worker-seconds from which ours' median regret stays at or below asyTS's final median
    target = next(r["regret_median"] for r in rows if r["method"] == "asyTS" and r["fraction"] == 1.0)
    grid = [budget * i / 200 for i in range(1, 201)]
    ours = [statistics.median(regret_at(r, b, optimum) for r in runs_of(OURS)) for b in grid]
    reach = None
    for b, median in zip(reversed(grid), reversed(ours)):
        if median > target:
            break
        reach = b
    fraction_needed = None if reach is None else reach / budget
    # (2) at equal worker-seconds, ours against TPE+SH and RAND+ASHA
    medians = {(r["method"], r["fraction"]): r["regret_median"] for r in rows}
    ratios = {f"{OURS}/{other} at {fraction:.0%}": medians[OURS, fraction] / max(medians[other, fraction], 1e-12)
              for other in ("TPE+SH", "RAND+ASHA") for fraction in FRACTIONS}
    # (3) decision latency
    latency = sorted(t for r in runs_of(OURS) for t in r["latencies"])
    pruner_times = sorted(t for r in runs_of(OURS) for t in r["pruner_times"])

    def p95(values):
        return values[max(0, math.ceil(0.95 * len(values)) - 1)]

    goals = {
        "worker_seconds_to_asyTS_final_median": {
            "target_regret": target, "fraction_of_asyTS": fraction_needed, "goal": "<= 0.40",
            "met": fraction_needed is not None and fraction_needed <= 0.40},
        "equal_worker_seconds": {"ratios": ratios, "goal": "every ratio <= 1",
                                 "met": all(v <= 1.0 for v in ratios.values())},
        "decision_latency": {"median_s": statistics.median(latency), "p95_s": p95(latency), "max_s": max(latency),
                             "decisions": len(latency), "goal": "median < 1 s",
                             "met": statistics.median(latency) < 1.0},
    }
    print(f"\n(1) ours reaches asyTS's final median regret ({target:.4f}) "
          + (f"from {reach:g} worker-seconds on: {fraction_needed:.2f} of asyTS's {budget:g}"
             if reach is not None else "at no budget up to the full one")
          + f" (goal <= 0.40): {'MET' if goals['worker_seconds_to_asyTS_final_median']['met'] else 'NOT MET'}")
    print("(2) at equal worker-seconds, ours' median regret / theirs: "
          + ", ".join(f"{k} {v:.3g}" for k, v in ratios.items())
          + f" (goal: each <= 1): {'MET' if goals['equal_worker_seconds']['met'] else 'NOT MET'}")
    print(f"(3) decision latency of ours (observe + propose, {len(latency)} decisions): median "
          f"{statistics.median(latency):.3f} s, p95 {p95(latency):.3f} s, max {max(latency):.3f} s "
          f"(goal: median < 1 s): {'MET' if goals['decision_latency']['met'] else 'NOT MET'}; "
          f"the pruner on a report: median {statistics.median(pruner_times) * 1e6:.0f} us, "
          f"max {max(pruner_times) * 1e3:.2f} ms")
    print("curves crossing (share of pairs whose order at a rung is the reverse of their final order): "
          + ", ".join(f"{k} {v:.2f}" for k, v in cross.items()))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, budget, optimum, target, args.out.with_suffix(".png"))
    summary = {"seeds": args.seeds, "budget_scale": args.budget_scale, "budget_worker_seconds": budget,
               "setup": asdict(SETUP), "rows": rows, "goals": goals, "crossings": cross,
               "pruner_time_median_s": statistics.median(pruner_times),
               "wall_s": time.perf_counter() - started}
    write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
