"""What `report(step, **metrics)` costs a training loop that calls it every batch, against one training step of
the example's model (measured in the same run).

    python bench/report_cost.py [--calls 100000]

report() validates and buffers; the buffer is written every metrics_interval_s (10 s), here once, at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def training_step_s(steps: int = 300) -> float:
    """Seconds per step of the example's MLP on digits (batch 64: forward, backward, Adam), on this CPU."""
    import torch
    from torch.nn import functional as F

    from example_app.data import make_digits

    x, y = (torch.from_numpy(a) for a in make_digits())
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = torch.randperm(len(x)).split(64)
    start = time.perf_counter()
    for step in range(steps):
        idx = batches[step % len(batches)]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def report_s(calls: int) -> tuple[float, int]:
    """Seconds per report() call with two metrics, as a task in a Hydra job calls it (its metrics.jsonl in the
    job's output dir); and how many writes it made."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from hydra_plugins.hydra_awsbatch_launcher import _metrics, report

    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=tmp, version_base=None):
        config = compose(return_hydra_config=True)
        with open_dict(config):
            config.hydra.runtime.output_dir = tmp
        HydraConfig.instance().set_config(config)
        start = time.perf_counter()
        for step in range(calls):
            report(step, loss=0.5, accuracy=0.9)
        writes = _metrics._current[1].writes
        _metrics.finish()
        elapsed = time.perf_counter() - start
        assert len((Path(tmp) / "metrics.jsonl").read_text().splitlines()) == calls
        return elapsed / calls, writes + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    step = training_step_s()
    call, writes = report_s(args.calls)
    print(f"training step of the example's MLP (batch 64): {step * 1e6:8.1f} us")
    print(f"report(step, loss=..., accuracy=...):          {call * 1e6:8.2f} us  ({args.calls} calls, {writes} "
          "write)")
    print(f"ratio report / training step: {call / step:.4f}")


if __name__ == "__main__":
    main()
