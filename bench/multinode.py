"""What the rendezvous of a multi-node trial costs on aws_batch_local: the example app's trial as 2 nodes x 2
processes against 1 node x 4 processes (and one process for reference), wall time of the whole sweep.

    python bench/multinode.py [--epochs 3] [--repeats 3] [--out bench/multinode] [--keep DIR]

Each variant runs as a user runs it (a fresh `python train_model.py --multirun ... hydra/launcher=aws_batch_local`
process), interleaved so drift in the machine's load hits all alike. Per run: the sweep's wall time, the job's
(the manifest's started..stopped: every node), and rank 0's training (from its "Training" line to its "Finished"
line), so job - training is what starting the processes and their rendezvous cost. The same global batch in
every variant: the validation losses must agree (printed). Writes out.png and out.json; the sweeps run in a
temporary folder, or in DIR (kept) with --keep, each run's `dir` in out.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "1 process": [],
    "1 node x 4": ["hydra.launcher.procs_per_node=4"],
    "2 nodes x 2": ["hydra.launcher.nodes=2", "hydra.launcher.procs_per_node=2"],
}


def stamp(line: str) -> float:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run(folder: Path, epochs: int, launcher: list[str], name: str) -> dict:
    cmd = [sys.executable, str(ROOT / "train_model.py"), "--multirun", f"epochs={epochs}",
           "hydra/launcher=aws_batch_local", f"hydra.sweep.dir={name}", *launcher]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=folder, check=True, capture_output=True, env=_env(folder))
    wall = time.perf_counter() - start
    job = json.loads((folder / name / "manifest.json").read_text())["jobs"][0]
    lines = (folder / name / "0/train_model.log").read_text().splitlines()
    train = stamp(next(x for x in lines if "Training " in x)), stamp(next(x for x in lines if "Finished:" in x))
    return {"dir": name, "wall_s": wall, "job_s": job["stopped"] - job["started"], "train_s": train[1] - train[0],
            "val_loss": float(job["result"])}


def _env(folder: Path) -> dict:
    return dict(os.environ, HOME=str(folder), PYTHONPATH=str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench/multinode"))
    parser.add_argument("--keep", metavar="DIR", help="run the sweeps in DIR and keep them (default: a temporary "
                                                      "folder, removed)")
    args = parser.parse_args()
    began = time.perf_counter()
    runs = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(args.repeats):
            for name, launcher in VARIANTS.items():
                runs[name].append(run(folder, args.epochs, launcher, f"sweep-{len(runs[name])}-{name[:1]}{name[-1]}"))
                print(name, json.dumps(runs[name][-1]), flush=True)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "job_s", "train_s")}
               for name, rs in runs.items()}
    summary = {"epochs": args.epochs, "repeats": args.repeats, "cpus": _cpus(), "medians": medians, "runs": runs,
               "rendezvous_cost_s": medians["2 nodes x 2"]["wall_s"] - medians["1 node x 4"]["wall_s"],
               "wall_s": time.perf_counter() - began}
    plot(Path(args.out).with_suffix(".png"), runs, args)
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(f"{'variant':<14}{'wall s':>9}{'job s':>9}{'train s':>9}")
    for name, m in medians.items():
        print(f"{name:<14}{m['wall_s']:>9.2f}{m['job_s']:>9.2f}{m['train_s']:>9.2f}")
    print(f"2 x 2 minus 1 x 4 (median wall): {summary['rendezvous_cost_s']:+.2f} s; "
          f"validation losses: {sorted({r['val_loss'] for rs in runs.values() for r in rs})}")
    return 0


def _cpus() -> int:
    return os.cpu_count() or 1


def plot(path: Path, runs: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [("wall_s", "sweep (wall)"), ("job_s", "job (all nodes)"), ("train_s", "rank 0's training")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(runs)
    for i, (name, rs) in enumerate(runs.items()):
        xs = [m + (i - (len(runs) - 1) / 2) * width for m in range(len(measures))]
        heights = [statistics.median(r[key] for r in rs) for key, _ in measures]
        ax.bar(xs, heights, width, label=name)
        for x, (key, _) in zip(xs, measures):
            ax.scatter([x] * len(rs), [r[key] for r in rs], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(measures)), [label for _, label in measures])
    ax.set_ylabel("seconds (bars: median, dots: runs)")
    ax.set_title(f"aws_batch_local, example app {args.epochs} epochs, {args.repeats} runs each, {_cpus()} CPUs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
