"""The discrete benchmarks (issue 40): the tables bench/discrete/build.py made hold what its docstring says, and
bench/discrete.py runs at a reduced size (one table, one seed, 30 evaluations' worth of time), so that it cannot rot."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "iris", "diabetes"])
def test_a_table_holds_every_config_of_its_grid_with_three_seeds(name):
    table = json.loads((ROOT / "bench" / "discrete" / f"{name}.json").read_text())
    grid, rows = table["meta"]["grid"], table["rows"]
    assert len(grid) == 6 and len(rows) == math.prod(len(v) for v in grid.values()) == 432
    assert len({tuple(r[0]) for r in rows}) == len(rows)
    for config, error, logloss, times in rows:
        assert [config[i] in values for i, values in enumerate(grid.values())] == [True] * 6
        assert len(error) == len(logloss) == len(times) == 3
        assert all(0 <= e <= 1 for e in error) and all(v >= 0 for v in logloss) and all(t > 0 for t in times)
    rows.sort(key=lambda r: statistics.fmean(r[2]))
    means = [statistics.fmean(r[2]) for r in rows]
    noise = statistics.fmean(statistics.pstdev(r[2]) for r in rows[:10])  # a seed's spread among the best configs
    assert means[len(means) // 2] - means[0] > 5 * noise  # good and poor configs, beyond the noise: a search to make


@pytest.mark.integration
def test_the_discrete_benchmark_runs_at_a_reduced_size(tmp_path):
    out = tmp_path / "discrete.json"
    proc = subprocess.run([sys.executable, "bench/discrete.py", "--datasets", "wine", "--seeds", "1", "--evals",
                           "30", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = result["summary"]["wine"]
    assert {"ours", "tpe", "random"} <= set(summary)
    assert "| wine (1 seeds) |" in proc.stdout  # the table printed
    for method in ("ours", "tpe", "random"):
        regrets = summary[method]["median_log10_regret"]
        assert len(regrets) == 3 and all(-6 <= r < 1 for r in regrets), (method, regrets)
        assert 15 <= summary[method]["evaluations"] <= 60  # 30 evaluations' worth of time, times vary by config
    ours = [r for r in result["runs"] if r["method"] == "ours"]
    assert len(ours) == 1 and ours[0]["seed"] == 0 and ours[0]["distinct"] <= ours[0]["evaluations"] + 4
