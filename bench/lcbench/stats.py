"""Normalised regret of the runs, its interquartile means with bootstrap 95 % intervals over seeds (per task, and
pooled over tasks with seeds resampled within each task, as rliable and Syne Tune's benchmarking do), and the
plot. numpy only (matplotlib for the plot): runs with the main interpreter or Syne Tune's venv alike.

    python -m bench.lcbench.stats bench/lcbench.json --plot bench/lcbench.png    # redraw from a results file
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.lcbench.surrogate import TASK_NAMES  # noqa: E402

CHECKPOINTS = (900, 1800, 3600, 7200)


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50 % (scipy.stats.trim_mean(x, 0.25), as rliable)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    cut = int(0.25 * n)
    return float(x[cut:n - cut].mean()) if n else float("nan")


def incumbent_at(run: dict, t: float) -> float | None:
    """The best val_accuracy seen by simulated time t (None before the first result)."""
    times = run["incumbent"]["t"]
    i = int(np.searchsorted(times, t, side="right"))
    return run["incumbent"]["best"][i - 1] if i else None


def regret(run: dict, t: float, ref: dict) -> float:
    """(best - incumbent) / (best - worst); 1.0 before the first result."""
    y = incumbent_at(run, t)
    return 1.0 if y is None else (ref["best"] - y) / (ref["best"] - ref["worst"])


def bootstrap(groups: list[np.ndarray], reps: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """IQM of all values, and a 95 % percentile interval of it: values resampled with replacement within each
    group (a task's seeds)."""
    point = iqm(np.concatenate(groups))
    stats = np.empty(reps)
    for r in range(reps):
        stats[r] = iqm(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


def summarise(runs: list[dict], reference: dict, checkpoints=CHECKPOINTS, reps: int = 2000, seed: int = 0) -> dict:
    """{method: {"tasks": {task: {t: {iqm, lo, hi, n}}}, "pooled": {t: ...}, "seeds": {task: n}, host times}}."""
    rng = np.random.default_rng(seed)
    out = {}
    by_method: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        if "skipped" not in run:
            by_method.setdefault(run["method"], {}).setdefault(run["task"], []).append(run)
    for method, tasks in by_method.items():
        entry = {"tasks": {}, "pooled": {}, "seeds": {task: len(rs) for task, rs in tasks.items()}}
        for t in checkpoints:
            groups = []
            for task, rs in sorted(tasks.items()):
                values = np.array([regret(r, t, reference["tasks"][task]) for r in rs])
                groups.append(values)
                point, lo, hi = bootstrap([values], reps, rng)
                entry["tasks"].setdefault(task, {})[str(t)] = {"iqm": point, "lo": lo, "hi": hi, "n": len(values)}
            point, lo, hi = bootstrap(groups, reps, rng)
            entry["pooled"][str(t)] = {"iqm": point, "lo": lo, "hi": hi, "n": int(sum(len(g) for g in groups)),
                                       "tasks": len(groups)}
        all_runs = [r for rs in tasks.values() for r in rs]
        entry["host"] = {
            "decision_median_s": float(np.median([r["decision_median_s"] for r in all_runs])),
            "new_config_median_s": _median_of(r["suggest_s"]["median_new"] for r in all_runs),
            "new_config_mean_s": _median_of(r["suggest_s"]["mean_new"] for r in all_runs),
            "new_config_median_at_400_600_results_s": _median_of(r["suggest_s"]["median_new_at_400_600_results"]
                                                                 for r in all_runs),
            "host_s_per_run_median": float(np.median([r["host_s"] for r in all_runs])),
            "cpu_s_per_run_median": _median_of(r.get("cpu_s") for r in all_runs),
            "trials_per_run_median": float(np.median([r["trials"] for r in all_runs])),
            "results_per_run_median": float(np.median([r["results"] for r in all_runs])),
        }
        out[method] = entry
    return out


def _median_of(values):
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def table(summary: dict, checkpoints=CHECKPOINTS) -> str:
    """The pooled IQM regret [95 % interval] at each checkpoint, seeds and host time, one line a method."""
    head = ("| method | seeds/task | " + " | ".join(f"{t} s" for t in checkpoints)
            + " | new config: median / mean | at 400-600 results | trials/run | host s/run (CPU s) |")
    lines = [head, "|" + " --- |" * (len(checkpoints) + 6)]
    for method, entry in summary.items():
        seeds = sorted(set(entry["seeds"].values()))
        cells = [f"{entry['pooled'][str(t)]['iqm']:.4f} [{entry['pooled'][str(t)]['lo']:.4f}, "
                 f"{entry['pooled'][str(t)]['hi']:.4f}]" for t in checkpoints]
        host = entry["host"]
        lines.append(f"| {method} | {'/'.join(map(str, seeds))} | " + " | ".join(cells)
                     + f" | {_ms(host['new_config_median_s'])} / {_ms(host['new_config_mean_s'])} | "
                     + f"{_ms(host['new_config_median_at_400_600_results_s'])} | {host['trials_per_run_median']:.0f} | "
                     + f"{host['host_s_per_run_median']:.1f} ({_s(host['cpu_s_per_run_median'])}) |")
    return "\n".join(lines)


def task_table(summary: dict, t: int) -> str:
    """IQM regret [95 % interval] at simulated time t: one line a method, one column a task, and pooled."""
    tasks = sorted({task for e in summary.values() for task in e["tasks"]}, key=task_order)
    lines = [f"| {t} s | " + " | ".join(f"{task} {TASK_NAMES.get(task, '')}".strip() for task in tasks)
             + " | pooled |", "|" + " --- |" * (len(tasks) + 2)]
    for method, entry in summary.items():
        cells = []
        for task in tasks:
            c = entry["tasks"].get(task, {}).get(str(t))
            cells.append("-" if c is None else f"{c['iqm']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}] ({c['n']})")
        p = entry["pooled"][str(t)]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {p['iqm']:.4f} [{p['lo']:.4f}, {p['hi']:.4f}] |")
    return "\n".join(lines)


GOAL_TIMES = (1800, 3600, 7200)


def goals(summary: dict, runs: list[dict], reference: dict, step: float = 30.0) -> dict:
    """The issue's goals 1 and 2 for each of ours, read off the summary: per task and pooled, whether its IQM
    regret is at or below every Syne Tune method's at 1,800, 3,600 and 7,200 s (and by how much: ours minus the
    best peer's, < 0 ahead); and the simulated time its pooled IQM takes to reach each ASHA's pooled IQM at the
    budget (on a grid of `step` s; None: not reached), as a fraction of that budget."""
    peers = [m for m in summary if not m.startswith("ours") and m != "random"]
    budget = max(CHECKPOINTS)
    out = {}
    for method in (m for m in summary if m.startswith("ours")):
        entry = {"tasks": {}, "pooled": {}}
        for task in summary[method]["tasks"]:
            gaps = {}
            for t in GOAL_TIMES:
                rivals = [summary[p]["tasks"][task][str(t)]["iqm"] for p in peers if task in summary[p]["tasks"]]
                if rivals:
                    gaps[str(t)] = summary[method]["tasks"][task][str(t)]["iqm"] - min(rivals)
            entry["tasks"][task] = {"gap": gaps, "met": bool(gaps) and all(g <= 0 for g in gaps.values())}
        same = [p for p in peers if set(summary[p]["tasks"]) == set(summary[method]["tasks"])]
        gaps = {str(t): summary[method]["pooled"][str(t)]["iqm"] - min(summary[p]["pooled"][str(t)]["iqm"]
                                                                      for p in same)
                for t in GOAL_TIMES} if same else {}
        entry["pooled"] = {"gap": gaps, "met": bool(gaps) and all(g <= 0 for g in gaps.values()),
                           "peers": same}
        entry["tasks_met"] = sum(e["met"] for e in entry["tasks"].values())
        mine = [r for r in runs if r["method"] == method]
        grid = np.arange(step, budget + step / 2, step)
        curve = [iqm([regret(r, t, reference["tasks"][r["task"]]) for r in mine]) for t in grid]
        entry["reach"] = {}
        for asha in (p for p in same if p.startswith("ASHA")):
            target = summary[asha]["pooled"][str(budget)]["iqm"]
            hit = next((float(t) for t, v in zip(grid, curve) if v <= target), None)
            entry["reach"][asha] = {"target": target, "at_s": hit, "fraction": None if hit is None else hit / budget}
        out[method] = entry
    return out


def goals_text(goal: dict) -> str:
    """One line a method of ours: the goals met, and the gaps where they are not."""
    lines = []
    for method, e in goal.items():
        missed = [f"{task} ({', '.join(f'{t}s {g:+.4f}' for t, g in e['tasks'][task]['gap'].items() if g > 0)})"
                  for task in e["tasks"] if not e["tasks"][task]["met"] and e["tasks"][task]["gap"]]
        pooled = "pooled met" if e["pooled"]["met"] else (
            "pooled missed: " + ", ".join(f"{t}s {g:+.4f}" for t, g in e["pooled"]["gap"].items() if g > 0)
            if e["pooled"]["gap"] else "pooled: no peer ran every task")
        reach = "; ".join(f"reaches {a}'s final {r['target']:.4f} at "
                          + ("never" if r["at_s"] is None else f"{r['at_s']:.0f} s ({r['fraction']:.0%})")
                          for a, r in e["reach"].items())
        lines.append(f"{method}: goal 1 on {e['tasks_met']} of {len(e['tasks'])} tasks"
                     + (f" (behind on {'; '.join(missed)})" if missed else "") + f"; {pooled}; {reach}")
    return "\n".join(lines)


def _s(seconds) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def plot(runs: list[dict], reference: dict, path: str, budget: float, reps: int = 200, seed: int = 0):
    """One panel a task (and one pooled): IQM normalised regret against simulated time, 95 % bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    grid = np.geomspace(30.0, budget, 60)
    colors: dict[str, str] = {}
    by_method: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        if "skipped" not in run:
            by_method.setdefault(run["method"], {}).setdefault(run["task"], []).append(run)
    tasks = sorted({task for m in by_method.values() for task in m}, key=task_order)
    panels = tasks + (["pooled"] if len(tasks) > 1 else [])
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for k, panel in enumerate(panels):
        ax = axes[k // cols][k % cols]
        for method, by_task in sorted(by_method.items()):
            chosen = tasks if panel == "pooled" else [panel]
            if not all(t in by_task for t in chosen):
                continue
            mid, lo, hi = [], [], []
            for t in grid:
                groups = [np.array([regret(r, t, reference["tasks"][task]) for r in by_task[task]])
                          for task in chosen]
                p, a, b = bootstrap(groups, reps, rng)
                mid.append(p)
                lo.append(a)
                hi.append(b)
            style = "-" if method.startswith("ours") else ("--" if method == "random" else "-")
            width = 2.2 if method.startswith("ours") else 1.2
            color = colors.setdefault(method, f"C{len(colors) % 10}")
            ax.plot(grid, mid, style, lw=width, color=color, label=method)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.15)
        ax.set_xscale("log")
        # symlog: a method past the reference (the random search's best) has a negative regret, shown below 0
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title(f"{panel} ({TASK_NAMES.get(panel, '')})" if panel != "pooled" else "pooled (all tasks)")
        ax.set_xlabel("simulated time (s), 4 workers")
        ax.set_ylabel("normalised regret, IQM (< 0: past ref.)")
        for t in CHECKPOINTS:
            if t <= budget:
                ax.axvline(t, color="grey", lw=0.5, alpha=0.5)
        ax.grid(alpha=0.3, which="both", lw=0.3)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def task_order(task: str):
    from bench.lcbench.surrogate import TASKS

    return TASKS.index(task) if task in TASKS else len(TASKS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results json written by bench/lcbench.py")
    parser.add_argument("--plot", required=True)
    args = parser.parse_args(argv)
    data = json.loads(Path(args.results).read_text())
    plot(data["runs"], data["reference"], args.plot, data["settings"]["budget_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
