"""YAHPO Gym's LCBench surrogate (one ONNX network) driven with onnxruntime alone, without yahpo-gym.

The network takes `x_cat` int32 [n, 1] (the task's code from `encoding.json`) and `x_cont` float32 [n, 8] in the
order `epoch, batch_size, learning_rate, momentum, weight_decay, num_layers, max_units, max_dropout`, raw values
(yahpo-gym 1.0.2's `BenchmarkSet._config_to_xs` passes them as they are: the network holds its own transforms).
It answers [n, 6]: `time, val_accuracy, val_cross_entropy, val_balanced_accuracy, test_cross_entropy,
test_balanced_accuracy`. `time` is the training time from the start of a trial to the end of that epoch.
`check_yahpo.py` beside this file holds the wrapper to yahpo-gym's answers.

Only numpy and onnxruntime are imported here: the Syne Tune runner's virtual environment imports this module too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve()
# shared/ beside the checkout (developers, CI) or inside it; LCBENCH_DATA overrides.
DATA = Path(os.environ.get("LCBENCH_DATA", next(
    (p for p in (_HERE.parents[3] / "shared" / "data" / "yahpo_lcbench",
                 _HERE.parents[2] / "shared" / "data" / "yahpo_lcbench") if p.exists()),
    _HERE.parents[3] / "shared" / "data" / "yahpo_lcbench")))
OBJECTIVES = ("time", "val_accuracy", "val_cross_entropy", "val_balanced_accuracy", "test_cross_entropy",
              "test_balanced_accuracy")
EPOCHS = 52
# Syne Tune's "selected" yahpo-lcbench tasks (its benchmark definitions): Fashion-MNIST, airlines, albert,
# covertype, christine.
TASKS = ("189908", "189354", "189866", "7593", "168908")
TASK_NAMES = {"189908": "Fashion-MNIST", "189354": "airlines", "189866": "albert", "7593": "covertype",
              "168908": "christine"}


class Param:
    """One hyperparameter of `config_space.json`: bounds, log scale, integer."""

    def __init__(self, name: str, lower: float, upper: float, log: bool, integer: bool):
        self.name, self.lower, self.upper, self.log, self.integer = name, lower, upper, log, integer

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Values for points of [0, 1] (uniform on the parameter's own scale; integers rounded, as ConfigSpace's
        uniform_int with log=True samples on the log scale and rounds)."""
        if self.log:
            lo, hi = math.log(self.lower), math.log(self.upper)
            if self.integer:
                lo, hi = math.log(self.lower - 0.4999), math.log(self.upper + 0.4999)
            x = np.exp(lo + u * (hi - lo))
        else:
            lo, hi = self.lower, self.upper
            if self.integer:
                lo, hi = lo - 0.4999, hi + 0.4999
            x = lo + u * (hi - lo)
        return np.clip(np.round(x), self.lower, self.upper) if self.integer else np.clip(x, self.lower, self.upper)


# The network's order of its continuous inputs after `epoch`.
PARAMS = (
    Param("batch_size", 16, 512, log=True, integer=True),
    Param("learning_rate", 1e-4, 1e-1, log=True, integer=False),
    Param("momentum", 0.1, 0.99, log=False, integer=False),
    Param("weight_decay", 1e-5, 1e-1, log=False, integer=False),
    Param("num_layers", 1, 5, log=False, integer=True),
    Param("max_units", 64, 1024, log=True, integer=True),
    Param("max_dropout", 0.0, 1.0, log=False, integer=False),
)
NAMES = tuple(p.name for p in PARAMS)


class LCBench:
    """The surrogate of one process: `evaluate` for any rows, `curves` for whole learning curves (the simulated
    clock's view: times made increasing as Syne Tune's blackbox simulator does)."""

    def __init__(self, data: Path | str = DATA, threads: int = 1):
        import onnxruntime as ort

        data = Path(data)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(data / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.codes = json.loads((data / "encoding.json").read_text())["OpenML_task_id"]
        self.tasks = tuple(t for t in self.codes if t != "#na#")

    def matrix(self, configs) -> np.ndarray:
        """[n, 7] float64 of configs (dicts by name, or rows already in NAMES order); integers rounded."""
        if isinstance(configs, np.ndarray):
            x = np.array(configs, dtype=np.float64, ndmin=2)
        else:
            x = np.array([[float(c[name]) for name in NAMES] for c in configs], dtype=np.float64).reshape(-1, 7)
        for j, p in enumerate(PARAMS):
            if p.integer:
                x[:, j] = np.round(x[:, j])
        return x

    def evaluate(self, task: str, configs, epochs) -> np.ndarray:
        """[n, len(epochs), 6] of the network's answers (OBJECTIVES order) for each config at each epoch."""
        x = self.matrix(configs)
        epochs = np.asarray(epochs, dtype=np.float64).reshape(-1)
        n, m = len(x), len(epochs)
        cont = np.empty((n, m, 8), dtype=np.float32)
        cont[:, :, 0] = epochs[None, :]
        cont[:, :, 1:] = x[:, None, :]
        cat = np.full((n * m, 1), self.codes[str(task)], dtype=np.int32)
        out = self.session.run(None, {"x_cat": cat, "x_cont": cont.reshape(n * m, 8)})[0]
        return out.reshape(n, m, len(OBJECTIVES))

    def rows(self, tasks, configs, epochs) -> np.ndarray:
        """[n, 6] for n rows, each with its own task and epoch (one network call, as yahpo-gym batches)."""
        x = self.matrix(configs)
        cont = np.empty((len(x), 8), dtype=np.float32)
        cont[:, 0] = np.asarray(epochs, dtype=np.float64)
        cont[:, 1:] = x
        cat = np.array([[self.codes[str(t)]] for t in tasks], dtype=np.int32).reshape(-1, 1)
        return self.session.run(None, {"x_cat": cat, "x_cont": cont})[0]

    def curves(self, task: str, configs) -> tuple[np.ndarray, np.ndarray]:
        """(time [n, 52], val_accuracy [n, 52]) over epochs 1..52; time from the trial's start, made increasing
        by at least 0.01 s an epoch and at least 0.01 s at epoch 1 (Syne Tune's `_BlackboxSimulatorBackend`)."""
        out = self.evaluate(task, configs, np.arange(1, EPOCHS + 1)).astype(np.float64)
        return increasing(out[:, :, 0]), out[:, :, 1]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """[n, 7] uniform configs (each parameter on its own scale)."""
        u = rng.random((n, len(PARAMS)))
        return np.stack([p.from_unit(u[:, j]) for j, p in enumerate(PARAMS)], axis=1)


def increasing(times: np.ndarray) -> np.ndarray:
    """Each row made at least 0.01 at its first epoch and at least 0.01 above the epoch before."""
    t = np.array(times, dtype=np.float64, ndmin=2)
    t[:, 0] = np.maximum(t[:, 0], 0.01)
    for e in range(1, t.shape[1]):
        t[:, e] = np.maximum(t[:, e], t[:, e - 1] + 0.01)
    return t


def as_dict(row) -> dict:
    return {name: (int(v) if p.integer else float(v)) for name, p, v in zip(NAMES, PARAMS, row)}
