"""Discrete and categorical search spaces (issue 40): the thompson sweeper's `Study` against Optuna's TPE and random
search on real tabular benchmarks, one simulated clock, side by side in one run.

The benchmarks are tables (bench/discrete/<dataset>.json, built by bench/discrete/build.py: scikit-learn's
MLPClassifier on its bundled digits, breast_cancer, wine and iris data, and MLPRegressor on its diabetes data,
a grid of 432 configs of 6 hyperparameters, each trained with 3 seeds; its docstring says what, how, and the
data's sources and licenses). The objective is the validation log-loss (diabetes: the validation MSE of the
standardised target), minimised. Protocol (the issue's):

- each evaluation draws one of the config's 3 recorded seeds (real noise) and takes that seed's recorded
  training time (CPU seconds) on a simulated clock; 4 workers, each refilled the moment it ends;
- the budget is simulated time: `--evals` (100) evaluations' worth at the table's mean training time, over the
  workers (budget = evals * mean time / 4); results at 1/4, 1/2 and the whole budget;
- the space as a user writes it in Hydra's override grammar: the categories as `choice(...)`, the ordered
  lists as `range(0, n)` over their index (as the issue's benchmark did);
- methods: `ours`: the shipped `Study` (default settings, `n_trials` the budget's evaluations), asked and told
  as the sweeper does; its answer is `study.best`. `tpe`: Optuna's TPESampler(multivariate=True,
  constant_liar=True), driven asynchronously through ask/tell (the trials in flight stay RUNNING); its answer
  `study.best_trial`. `random`: uniform configs; its answer the best value seen;
- regret: the true value (mean over the 3 seeds) of the config the method would return at that time, minus the
  table's best mean; log10 of it, floored at 1e-6 (-6: the table's optimum); the median over seeds.

    nice -n 19 python bench/discrete.py                          # 5 benchmarks, 10 seeds: table + bench/discrete.json
    python bench/discrete.py --datasets wine --seeds 2 --evals 30 --out /tmp/d.json   # the test's reduced size
    nice -n 19 python bench/discrete.py --datasets digits --first-seed 3 --seeds 3 --merge   # more seeds, kept
    nice -n 19 python bench/discrete.py --methods ours --seeds 40 --study n_initial=15 --out /tmp/n15.json   # a lever
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TABLES = ROOT / "bench" / "discrete"
DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
METHODS = ("ours", "tpe", "random")
WORKERS = 4
FRACTIONS = (0.25, 0.5, 1.0)
FLOOR = 1e-6  # regret floor: log10 -6 is the optimum


class Table:
    """A benchmark: config (a tuple of values, in the grid's order) -> per-seed values and times."""

    def __init__(self, name: str):
        data = json.loads((TABLES / f"{name}.json").read_text())
        self.name, self.meta = name, data["meta"]
        self.grid: dict[str, list] = self.meta["grid"]
        self.names = list(self.grid)
        self.categories = [n for n in self.names if any(isinstance(v, str) for v in self.grid[n])]
        self.values = {tuple(row[0]): row[2] for row in data["rows"]}  # the objective (log-loss, MSE) per seed
        self.times = {tuple(row[0]): row[3] for row in data["rows"]}
        self.mean = {c: statistics.fmean(v) for c, v in self.values.items()}
        self.best = min(self.mean.values())
        self.mean_time = statistics.fmean(t for ts in self.times.values() for t in ts)

    def space(self) -> dict:
        """The search space in Hydra's override grammar: categories as choice, ordered lists by their index."""
        return {n: (f"choice({', '.join(self.grid[n])})" if n in self.categories else f"range(0, {len(self.grid[n])})")
                for n in self.names}

    def config(self, params: dict) -> tuple:
        """A config of the table from a method's params (a category's value, an ordered list's index)."""
        return tuple(params[n] if n in self.categories else self.grid[n][int(params[n])] for n in self.names)

    def regret(self, config: tuple | None) -> float:
        if config is None:
            return math.log10(max(self.mean.values()) - self.best)
        return math.log10(max(self.mean[config] - self.best, FLOOR))


def policy(method: str, table: Table, seed: int, evals: int, settings: dict):
    """ask() -> (params, handle); tell(handle, value); {label: answer}, answer() -> the params the method would
    return now (a method may be answered several ways in one run: a lever that changes no proposal)."""
    if method == "tpe":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate, liar
        sampler = optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
        study = optuna.create_study(direction="minimize", sampler=sampler)

        def ask():
            trial = study.ask()
            params = {n: (trial.suggest_categorical(n, table.grid[n]) if n in table.categories
                          else trial.suggest_int(n, 0, len(table.grid[n]) - 1)) for n in table.names}
            return params, trial

        def answer():
            done = [t for t in study.trials if t.value is not None]
            return study.best_trial.params if done else None

        return ask, (lambda trial, value: study.tell(trial, value)), {"tpe": answer}
    if method == "random":
        rng, seen = random.Random(10_007 * seed + 1), []

        def ask():
            return {n: (rng.choice(table.grid[n]) if n in table.categories else rng.randrange(len(table.grid[n])))
                    for n in table.names}, None

        def tell(params, value):
            seen.append((value, params))

        return ask, tell, {"random": lambda: min(seen, key=lambda s: s[0])[1] if seen else None}

    from hydra_plugins.hydra_thompson_sweeper import Study

    study = Study(table.space(), direction="minimize", seed=seed, n_trials=evals, **settings)

    def ask():
        trial = study.ask()
        return trial.params, trial

    def answer(pick):
        return lambda: (lambda trial: trial.params if trial else None)(pick())

    return ask, (lambda trial, value: study.tell(trial, value)), {"ours": answer(lambda: study.best)}


def simulate(name: str, method: str, seed: int, evals: int, settings: dict | None = None) -> list[dict]:
    """One run: the regret of each of the method's answers at each fraction of the budget, what it evaluated.
    `settings`: the Study's, other than its defaults (a lever)."""
    import torch

    torch.set_num_threads(1)
    table = Table(name)
    budget = evals * table.mean_time / WORKERS
    ask, tell, answers_of = policy(method, table, seed, evals, settings or {})
    noise = random.Random(1_000_003 * seed + 7)  # which recorded seed an evaluation draws: per run
    answers = {label: [(0.0, None)] for label in answers_of}  # label -> (time, the answer's config) after each result
    running, counter, evaluated, wall = [], 0, [], 0.0

    def submit(now: float) -> None:
        nonlocal counter, wall
        start = time.perf_counter()
        params, handle = ask()
        wall += time.perf_counter() - start
        config = table.config(params)
        k = noise.randrange(len(table.values[config]))
        heapq.heappush(running, (now + table.times[config][k], counter, handle, params, table.values[config][k]))
        counter += 1
        evaluated.append(config)

    for _ in range(WORKERS):
        submit(0.0)
    while running:
        end, _, handle, params, value = heapq.heappop(running)
        if end > budget:
            break
        start = time.perf_counter()
        tell(handle if method != "random" else params, value)
        wall += time.perf_counter() - start
        for label, answer in answers_of.items():
            start = time.perf_counter()
            best = answer()
            spent = time.perf_counter() - start
            wall += spent if label == method else 0.0  # a second answer is the bench's question, not the method's
            answers[label].append((end, table.config(best) if best else None))
        submit(end)
    return [{"dataset": name, "method": label, "seed": seed, "budget_s": budget,
             "log10_regret": [table.regret([c for t, c in answers[label] if t <= fraction * budget][-1])
                              for fraction in FRACTIONS],
             "evaluations": len(answers[label]) - 1, "distinct": len(set(evaluated)), "host_s": round(wall, 2)}
            for label in answers]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--evals", type=int, default=100, help="the budget, in evaluations at the mean time")
    parser.add_argument("--jobs", type=int, default=1, help="processes")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true", help="keep the runs of --out (same evals) that this one lacks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "discrete.json")
    parser.add_argument("--study", nargs="*", default=[], metavar="NAME=VALUE",
                        help="a setting of ours' Study other than its default (a lever), e.g. confirm=never")
    args = parser.parse_args(argv)
    settings = {name: yaml.safe_load(value) for name, value in (s.split("=", 1) for s in args.study)}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    tasks = [(d, m, s, args.evals, settings) for d in args.datasets for s in seeds for m in args.methods]
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = [r for rs in pool.map(simulate, *zip(*tasks)) for r in rs]
    else:
        runs = [r for task in tasks for r in simulate(*task)]
    labels = list(args.methods)
    if args.merge and args.out.exists():
        kept = json.loads(args.out.read_text())
        assert kept["protocol"]["evals"] == args.evals, "--merge needs the same --evals"
        assert kept["protocol"].get("study", {}) == settings, "--merge needs the same --study settings"
        new = {(r["dataset"], r["method"], r["seed"]) for r in runs}
        runs = [r for r in kept["runs"] if (r["dataset"], r["method"], r["seed"]) not in new] + runs
        args.datasets = [d for d in DATASETS if any(r["dataset"] == d for r in runs)]
    summary = {}
    for d in args.datasets:
        table = Table(d)
        for m in labels:
            mine = [r for r in runs if r["dataset"] == d and r["method"] == m]
            summary.setdefault(d, {})[m] = {
                "seeds": len(mine),
                "median_log10_regret": [round(statistics.median(r["log10_regret"][i] for r in mine), 3)
                                        for i in range(len(FRACTIONS))],
                "evaluations": statistics.median(r["evaluations"] for r in mine),
                "distinct": statistics.median(r["distinct"] for r in mine),
                "host_s_per_run": round(statistics.fmean(r["host_s"] for r in mine), 2)}
        summary[d]["budget_s"] = round(args.evals * table.mean_time / WORKERS, 2)
    result = {"protocol": {"workers": WORKERS, "evals": args.evals, "fractions": FRACTIONS, "study": settings,
                           "regret_floor": FLOOR,
                           "objective": "validation log-loss (diabetes: MSE), mean over 3 seeds"},
              "summary": summary, "runs": runs, "wall_s": round(time.time() - start, 1),
              "cpus": os.cpu_count()}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"median log10 regret at 1/4, 1/2, 1 of the budget; {args.evals} evaluations' worth "
          f"of time, {WORKERS} workers ({result['wall_s']} s)")
    print("| dataset | budget (s) | " + " | ".join(labels) + " |")
    print("| --- | --- |" + " --- |" * len(labels))
    for d in args.datasets:
        cells = [" / ".join(f"{v:.2f}" for v in summary[d][m]["median_log10_regret"]) for m in labels]
        seeds = summary[d][labels[0]]["seeds"]
        print(f"| {d} ({seeds} seeds) | {summary[d]['budget_s']} | " + " | ".join(cells) + " |")
    for d in args.datasets:
        print(d, {m: (summary[d][m]["evaluations"], summary[d][m]["distinct"], summary[d][m]["host_s_per_run"])
                  for m in labels}, "(evaluations, distinct configs, host s a run)")
    return result


if __name__ == "__main__":
    main()
