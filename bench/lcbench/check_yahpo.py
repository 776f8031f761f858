"""Hold bench/lcbench/surrogate.py to yahpo-gym 1.0.2's own `BenchmarkSet("lcbench")` on random configurations.

yahpo-gym pins numpy<2 and ConfigSpace<=0.6.1, so it runs in a virtual environment of its own:

    python3.11 -m venv /tmp/yahpo-venv
    /tmp/yahpo-venv/bin/pip install yahpo-gym==1.0.2 onnxruntime
    /tmp/yahpo-venv/bin/python -m bench.lcbench.check_yahpo            # from the repository root

Configurations (task, epoch and the seven hyperparameters) are drawn by yahpo-gym's ConfigSpace, answered by
`BenchmarkSet.objective_function` and by our wrapper, and compared output by output. The result is written to
bench/lcbench_yahpo_check.json; the exit status is 1 if any answer differs by more than float32 noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.lcbench.surrogate import DATA, NAMES, OBJECTIVES, LCBench  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="random configurations (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "lcbench_yahpo_check.json"))
    args = parser.parse_args(argv)

    # yahpo-gym finds a scenario at DATA_PATH/lcbench/: point a throw-away local config at a folder holding a link.
    tmp = Path(tempfile.mkdtemp(prefix="yahpo-check-"))
    (tmp / "lcbench").symlink_to(DATA.resolve())
    (tmp / "config.yaml").write_text(f"data_path: {tmp}\n")
    os.environ["YAHPO_LOCAL_CONFIG"] = str(tmp / "config.yaml")
    import yahpo_gym
    from yahpo_gym import BenchmarkSet, local_config

    local_config.settings_path = Path(tmp / "config.yaml")
    local_config.set_data_path(str(tmp))

    bench = BenchmarkSet("lcbench", multithread=False, check=True)
    bench.config_space.seed(args.seed)
    configs = [c.get_dictionary() for c in bench.config_space.sample_configuration(args.n)]
    theirs = np.array([[r[k] for k in OBJECTIVES] for r in bench.objective_function(configs)], dtype=np.float64)

    model = LCBench()
    # 1. the same rows in one network call, as yahpo-gym batches them: expected bit for bit equal.
    ours = model.rows([c["OpenML_task_id"] for c in configs], configs, [c["epoch"] for c in configs])
    ours = ours.astype(np.float64)
    # 2. a subset one row a call on both sides (how the benchmark calls it: one task's curve a call). A batch of
    # another size may sum in another order inside onnxruntime, so equal within float32 noise, not bit for bit.
    k = min(args.n, 100)
    single_theirs = np.array([[bench.objective_function(c)[0][name] for name in OBJECTIVES] for c in configs[:k]])
    single_ours = np.array([model.evaluate(c["OpenML_task_id"], [c], [c["epoch"]])[0, 0] for c in configs[:k]],
                           dtype=np.float64)
    # 3. ours one row a call against yahpo-gym's batch: float32 noise only (relative to each output's range).
    scale = np.maximum(np.abs(theirs).max(axis=0), 1e-6)
    noise = np.abs(single_ours - theirs[:k]) / scale

    abs_diff = np.abs(ours - theirs)
    tolerance = 1e-5  # relative to the output's range: float32 carries 6-7 significant digits
    ok = bool(abs_diff.max() == 0 and np.abs(single_ours - single_theirs).max() == 0 and noise.max() <= tolerance)
    result = {
        "what": "bench/lcbench/surrogate.py against yahpo-gym's BenchmarkSet('lcbench') on random configurations "
                "drawn by yahpo-gym's ConfigSpace (task, epoch and the 7 hyperparameters at random)",
        "yahpo_gym": getattr(yahpo_gym, "__version__", None) or _version("yahpo-gym"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": np.__version__,
        "configs": args.n,
        "seed": args.seed,
        "tasks_seen": len({c["OpenML_task_id"] for c in configs}),
        "batched_alike_max_abs_diff": {name: float(abs_diff[:, j].max()) for j, name in enumerate(OBJECTIVES)},
        "one_row_a_call_both_sides": k,
        "one_row_a_call_max_abs_diff": float(np.abs(single_ours - single_theirs).max()),
        "ours_one_row_vs_yahpo_batch_max_diff_rel_to_range": {
            name: float(noise[:, j].max()) for j, name in enumerate(OBJECTIVES)},
        "tolerance_rel_to_range": tolerance,
        "equal_within_float32_noise": ok,
        "parameters": list(NAMES),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


def _version(name: str):
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
