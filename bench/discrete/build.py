"""Builds the discrete benchmarks' tables (bench/discrete/<dataset>.json): every config of a grid of a small
neural net's hyperparameters, trained with 3 seeds on a dataset scikit-learn ships, with its validation error,
validation loss and training time recorded per seed. bench/discrete.py searches these tables.

What is trained: scikit-learn's `MLPClassifier` (`MLPRegressor` on diabetes; version in each table's `meta`),
inputs standardised (StandardScaler fitted on the training part; diabetes' target too), one fixed split per
dataset (2/3 train, 1/3 validation, `random_state=0`; stratified for the classifiers), `max_iter` epochs (no
early stopping; the ConvergenceWarning is silenced), `n_iter_no_change` past max_iter (every config trains its
max_iter epochs unless its loss stalls), one thread (OMP/OPENBLAS/MKL_NUM_THREADS=1). The seed (0, 1, 2) is
the net's `random_state`: its initial weights and the order of its minibatches; the split is the same for every
seed, so the spread over seeds is the training's own noise. The grid (6 hyperparameters, 2 categorical,
4 ordered lists):

    activation          relu, tanh, logistic                  categorical
    solver              adam, sgd (momentum 0.9, Nesterov)    categorical
    width               8, 32, 128 units                     ordered
    layers              1, 2 hidden layers of `width`         ordered
    learning_rate_init  1e-4, 1e-3, 1e-2, 1e-1                ordered
    alpha (L2)          1e-5, 1e-3, 1e-1                      ordered

3 * 2 * 3 * 2 * 4 * 3 = 432 configs, 1,296 fits per dataset. Recorded per config and seed: `error`
(validation misclassification rate; on diabetes 1 - R^2, at most 1), `logloss` (validation cross-entropy,
probabilities clipped at 1e-15; on diabetes the validation mean squared error of the standardised target, the
predictions clipped at 10 of its standard deviations, a diverged net's taken as the training mean's): the
objective bench/discrete.py minimises, since the error of 50-600 validation samples ties at its best; and `time`
(the fit's CPU seconds, `time.process_time`, one thread: a fit's cost free of the machine's load).

Cost (the tables committed, scikit-learn 1.9.1): 447 CPU s of fits in all, 7.5 minutes of one core (wine 32 s,
breast_cancer 95 s, digits 320 s); on a 2-core machine shared with others at nice 19 it took 80 s, 586 s and
1,149 s of wall time (digits in 2 processes). iris and diabetes, added later (scikit-learn 1.9.1): 11 and 22 CPU s.
Each table is about 50 kB of JSON.

The data (all three bundled with scikit-learn, BSD-3-Clause package; the data's own terms as below):
- digits: the test set of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin & Kaynak, 1998),
  1,797 8x8 images, 10 classes; UCI Machine Learning Repository, CC BY 4.0.
- breast_cancer: UCI "Breast Cancer Wisconsin (Diagnostic)" (Wolberg, Street & Mangasarian, 1995), 569
  samples, 30 features, 2 classes; UCI Machine Learning Repository, CC BY 4.0.
- wine: UCI "Wine" (Aeberhard & Forina, 1991), 178 samples, 13 features, 3 classes; UCI Machine Learning
  Repository, CC BY 4.0.
- iris: Fisher's Iris data (Fisher, 1936), 150 samples, 4 features, 3 classes; UCI Machine Learning Repository,
  CC BY 4.0.
- diabetes: the diabetes data of Efron, Hastie, Johnstone & Tibshirani, "Least Angle Regression" (Annals of
  Statistics, 2004), 442 patients, 10 features, a disease progression score (regression); as scikit-learn ships it.

    nice -n 19 python bench/discrete/build.py                    # all three tables, one process
    nice -n 19 python bench/discrete/build.py --datasets digits --jobs 2   # in 2 processes
    python bench/discrete/build.py --datasets wine --sample 20   # times 20 random configs, writes nothing
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
REGRESSION = ("diabetes",)
CLIP = 10.0  # a regressor's predictions clipped at 10 standard deviations of the target (which spans about 3)
SEEDS = (0, 1, 2)
MAX_ITER = 15
GRID = {  # name -> values, in order; the first two are categories, the rest ordered lists
    "activation": ["relu", "tanh", "logistic"],
    "solver": ["adam", "sgd"],
    "width": [8, 32, 128],
    "layers": [1, 2],
    "learning_rate_init": [1e-4, 1e-3, 1e-2, 1e-1],
    "alpha": [1e-5, 1e-3, 1e-1],
}


def load(name: str):
    import sklearn.datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    regression = name in REGRESSION
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=1 / 3, random_state=0,
                                                      stratify=None if regression else y)
    scaler = StandardScaler().fit(x_train)
    if regression:  # the target standardised on the training part: its MSE is in the target's variances
        mean, sd = y_train.mean(), y_train.std()
        y_train, y_val = (y_train - mean) / sd, (y_val - mean) / sd
    return scaler.transform(x_train), scaler.transform(x_val), y_train, y_val


def fit(data, config: dict, seed: int, regression: bool = False) -> dict:
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import log_loss
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    x_train, x_val, y_train, y_val = data
    net = (MLPRegressor if regression else MLPClassifier)(
        hidden_layer_sizes=(config["width"],) * config["layers"], activation=config["activation"],
        solver=config["solver"], learning_rate_init=config["learning_rate_init"], alpha=config["alpha"],
        batch_size=64, max_iter=MAX_ITER, n_iter_no_change=MAX_ITER + 1, momentum=0.9, nesterovs_momentum=True,
        random_state=seed)
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow of a diverging lr=0.1: its loss says so
        net.fit(x_train, y_train)
    spent = time.process_time() - start
    if regression:
        predicted = net.predict(x_val)
        if not np.all(np.isfinite(predicted)):  # a diverged net: no better than the training mean
            predicted = np.full_like(y_val, y_train.mean())
        predicted = np.clip(predicted, -CLIP, CLIP)  # a net diverging still: its MSE bounded, as log-loss is
        mse = float(np.mean((predicted - y_val) ** 2))
        return {"error": round(min(mse / float(np.var(y_val)), 1.0), 6), "logloss": round(mse, 6),
                "time": round(spent, 4)}
    proba = net.predict_proba(x_val)
    if not np.all(np.isfinite(proba)):  # a diverged net: no better than chance
        proba = np.full_like(proba, 1.0 / proba.shape[1])
    return {"error": round(float(np.mean(net.classes_[proba.argmax(1)] != y_val)), 6),
            "logloss": round(float(log_loss(y_val, np.clip(proba, 1e-15, 1.0), labels=net.classes_)), 6),
            "time": round(spent, 4)}


def configs() -> list[dict]:
    return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


_DATA: dict = {}


def row(name: str, config: dict, data=None) -> list:
    """A config's row of the table: the config, and its error, logloss and time for each seed."""
    data = data if data is not None else _DATA.setdefault(name, load(name))
    runs = [fit(data, config, seed, name in REGRESSION) for seed in SEEDS]
    return [[config[k] for k in GRID], *([r[key] for r in runs] for key in ("error", "logloss", "time"))]


def build(name: str, sample: int | None = None, jobs: int = 1) -> dict:
    import sklearn

    data = load(name)
    grid = configs()
    if sample:
        grid = random.Random(0).sample(grid, sample)
    start = time.time()
    if jobs > 1:  # each fit's time is its own process's CPU time: the same in a pool
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            rows = list(pool.map(row, [name] * len(grid), grid, chunksize=8))
    else:
        rows = [row(name, config, data) for config in grid]
    model = "MLPRegressor" if name in REGRESSION else "MLPClassifier"
    return {"meta": {"dataset": name, "model": f"sklearn.neural_network.{model}",
                     "sklearn": sklearn.__version__, "max_iter": MAX_ITER, "batch_size": 64, "seeds": list(SEEDS),
                     "split": f"{'' if name in REGRESSION else 'stratified '}2/3 train, 1/3 validation, "
                              "random_state=0", "grid": GRID,
                     "objective": ("validation MSE, standardised target" if name in REGRESSION
                                   else "validation log-loss"),
                     "columns": ["config", "error", "logloss", "time"], "built_s": round(time.time() - start, 1),
                     "cpu_s": round(sum(sum(row[3]) for row in rows), 1)},
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--sample", type=int, help="time this many random configs per dataset, write nothing")
    parser.add_argument("--jobs", type=int, default=1, help="processes (each fit's time is its process's CPU time)")
    args = parser.parse_args()
    for name in args.datasets:
        table = build(name, args.sample, args.jobs)
        meta = table["meta"]
        print(f"{name}: {len(table['rows'])} configs in {meta['built_s']} s ({meta['cpu_s']} CPU s in fits)",
              flush=True)
        if args.sample:
            best = min(table["rows"], key=lambda r: sum(r[2]))
            print("  best logloss", best, "\n  times", sorted(sum(r[3]) / 3 for r in table["rows"])[::4])
        else:
            (HERE / f"{name}.json").write_text(json.dumps(table, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
