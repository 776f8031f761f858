"""bench/lcbench.py's driver: methods side by side on the LCBench surrogate and one simulated clock, regret
tables and the plot. See bench/lcbench.py for how to run it."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.lcbench import stats  # noqa: E402
from bench.lcbench.surrogate import TASKS  # noqa: E402
from bench.lcbench.syne import METHODS as SYNE_METHODS  # noqa: E402
from bench.lcbench.syne import SYNE_TUNE_VERSION  # noqa: E402

OWN_METHODS = ("random", "ours", "ours-asha")
DEFAULT_METHODS = ("ours", "ours-asha", *SYNE_METHODS)
REFERENCE = ROOT / "bench" / "lcbench_reference.json"
REQUIREMENTS = Path(__file__).with_name("syne-requirements.txt")
DEFAULT_VENV = Path(os.environ.get("LCBENCH_SYNE_VENV",
                                   Path.home() / ".cache" / "lcbench" / f"syne-tune-{SYNE_TUNE_VERSION}"))


def ensure_venv(venv: Path, python: str = "python3.11") -> Path:
    """Syne Tune 0.14.2's venv (its numpy<1.27 and scipy pins clash with ours): built from syne-requirements.txt
    on first use, reused after. Returns its python."""
    exe = venv / "bin" / "python"
    probe = [str(exe), "-c", "import syne_tune, onnxruntime, sklearn, huggingface_hub; print(syne_tune.__version__)"]
    if exe.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == SYNE_TUNE_VERSION:
        return exe
    print(f"building Syne Tune {SYNE_TUNE_VERSION}'s venv at {venv} (once; a few minutes)", flush=True)
    subprocess.run([shutil.which(python) or sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(exe), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    return exe


def parse_seeds(default: int, overrides: list[str], first: int = 0) -> dict:
    """--seeds N, --seeds-for METHOD=N ... and --first-seed F: the seeds (F..F+N-1) each method runs."""
    per = {}
    for item in overrides:
        method, _, n = item.partition("=")
        per[method] = int(n)
    return lambda method: list(range(first, first + per.get(method, default)))


SLOW = ("MOBSTER", "HyperTune")  # minutes a run: one process a seed, started first


def slow(method: str) -> bool:
    return method in SLOW or method.startswith("ours")


def jobs(args, seeds_of, workdir: Path, syne_python: Path | None):
    """Subprocesses, slow methods first and one a seed (the two processes at once then end together), the others
    one a (task, method): each appends its runs to a jsonl of its own."""
    out = []
    for task in args.tasks:
        for method in args.methods:
            seeds = [str(s) for s in seeds_of(method)]
            for group in ([[s] for s in seeds] if slow(method) else [seeds] if seeds else []):
                jsonl = workdir / f"{method}-{task}-{group[0]}.jsonl"
                common = ["--task", task, "--methods", method, "--seeds", *group, "--budget", str(args.budget),
                          "--workers", str(args.workers), "--out", str(jsonl)]
                if args.charge_host_time:
                    common.append("--charge-host-time")
                if method in SYNE_METHODS:
                    cmd = [str(syne_python), "-m", "bench.lcbench.syne", *common, "--poll", str(args.poll)]
                else:
                    cmd = [sys.executable, "-m", "bench.lcbench.own", *common]
                if args.nice:
                    cmd = ["nice", "-n", str(args.nice), *cmd]
                out.append((method, task, cmd, jsonl))
    return sorted(out, key=lambda job: not slow(job[0]))  # stable: tasks and methods in order otherwise


def run_jobs(todo, parallel: int, failed: list) -> list[dict]:
    def one(job):
        method, task, cmd, jsonl = job
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                                       OPENBLAS_NUM_THREADS="1"))
        tail = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-3:]
        print(f"[{time.time() - t0:6.0f}s] {method} {task}: " + " | ".join(tail), flush=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            failed.append(f"{method} {task}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        return [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return [run for runs in pool.map(one, todo) for run in runs]


def merge(runs: list[dict], earlier: list[Path]) -> tuple[list[dict], dict]:
    """These runs and those of the earlier outputs that they lack, by (method, task, seed): a run of this
    invocation replaces an earlier one of the same seed, and of two earlier outputs the first named wins. Also
    where each earlier output was measured (its commit and date, and its own parts where it was merged)."""
    def key(run):
        return run["method"], run["task"], run["seed"]

    done, parts = {key(r) for r in runs}, {}
    for path in earlier:
        data = json.loads(path.read_text())
        kept = [r for r in data["runs"] if key(r) not in done]
        done |= {key(r) for r in kept}
        runs = kept + runs
        inner = data["measured_at"].get("merged_from")  # a merge of parts itself: where those were measured
        parts[str(path)] = ({k: data["measured_at"].get(k) for k in ("commit", "date")} | {"runs_kept": len(kept)}
                            | ({"merged_from": inner} if inner else {}))
    return runs, parts


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or None
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/lcbench.py", description=(
        "LCBench (YAHPO Gym's surrogate): ours through Study against Syne Tune 0.14.2's schedulers on one "
        "simulated clock; normalised regret IQMs with bootstrap 95 %% intervals, and a plot."))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS),
                        help=f"of {OWN_METHODS + SYNE_METHODS} (ours-<pruner> for any pruner of Study)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds a method runs on each task (default 10)")
    parser.add_argument("--seeds-for", nargs="*", default=["MOBSTER=2", "HyperTune=2"], metavar="METHOD=N", help=(
        "fewer (or more) seeds for some methods (default MOBSTER=2 HyperTune=2: on Fashion-MNIST one 7,200 s run "
        "took MOBSTER 28 min and HyperTune 15 min of wall time on this 2-core machine, the other peers seconds)"))
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0): more seeds later, "
                        "with --merge")
    parser.add_argument("--budget", type=float, default=7200.0, help="simulated seconds (default 7200)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--charge-host-time", action="store_true", help=(
        "every method's host time passes on the simulated clock (Syne Tune's simulator default); off by default: "
        "the clock is the surrogate's alone, the same on any machine, and host time is reported beside it"))
    parser.add_argument("--poll", type=float, default=0.5, help=(
        "simulated seconds between Syne Tune's tuner's looks at its workers (default 0.5: a free worker idles "
        "0.25 s on average before its next trial, 0.35 %% of ASHA's worker time; Syne Tune's default 5 s idles it "
        "2.5 s, and 0.1 s costs each run 15-20 s of host time in the tuner's loop; our loop starts the next trial "
        "at once)"))
    parser.add_argument("--jobs", type=int, default=2, help="processes at once (default 2: this machine's cores)")
    parser.add_argument("--nice", type=int, default=19)
    parser.add_argument("--out", default=str(ROOT / "bench" / "lcbench.json"))
    parser.add_argument("--plot", default=None, help="PNG (default: --out with .png)")
    parser.add_argument("--merge", nargs="*", metavar="JSON", default=None, help=(
        "keep the runs already in these outputs (none named: --out) that this one lacks (by method, task and seed; "
        "of two outputs the first named wins): a bench run in parts (say the slow Syne Tune peers in one process, "
        "ours in another, more seeds later) summed up in one; with --methods and nothing after it, only the merge"))
    parser.add_argument("--syne-venv", default=str(DEFAULT_VENV),
                        help=f"Syne Tune's venv, built here if missing (default {DEFAULT_VENV}; env LCBENCH_SYNE_VENV)")
    parser.add_argument("--reference", default=str(REFERENCE))
    args = parser.parse_args(argv)
    absent = [p for p in args.merge or [] if not Path(p).exists()]
    if absent:
        parser.error(f"--merge: no such output {absent}")
    if not args.methods and args.merge is None:
        parser.error("nothing to run: name --methods, or --merge outputs to sum up")

    unknown = [m for m in args.methods if m not in OWN_METHODS + SYNE_METHODS and not m.startswith("ours-")]
    if unknown:
        parser.error(f"unknown methods {unknown}")
    reference = json.loads(Path(args.reference).read_text())
    missing = [t for t in args.tasks if t not in reference["tasks"]]
    if missing:
        parser.error(f"no regret reference for tasks {missing}: run python -m bench.lcbench.reference --tasks ...")
    seeds_of = parse_seeds(args.seeds, args.seeds_for, args.first_seed)
    syne_python = ensure_venv(Path(args.syne_venv)) if any(m in SYNE_METHODS for m in args.methods) else None

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="lcbench-") as tmp:
        failed = []
        runs = run_jobs(jobs(args, seeds_of, Path(tmp), syne_python), args.jobs, failed)
    wall = time.time() - t0
    skipped = sorted({r["method"] + ": " + r["skipped"] for r in runs if "skipped" in r})
    runs = [r for r in runs if "skipped" not in r]
    out = Path(args.out)
    parts = {}
    if args.merge is not None:
        runs, parts = merge(runs, [Path(p) for p in args.merge] or ([out] if out.exists() else []))
    if not runs:
        print("no runs to sum up" + "".join(f"\nFAILED {line}" for line in failed)
              + "".join(f"\nSKIPPED {line}" for line in skipped), file=sys.stderr)
        return 1
    methods = list(dict.fromkeys(r["method"] for r in runs))
    clocks = {(r["budget_s"], r["n_workers"], r["clock"]["host_time_charged"]) for r in runs}
    if len(clocks) > 1:
        print(f"the runs do not share one clock (budget_s, n_workers, host_time_charged): {sorted(clocks)}",
              file=sys.stderr)
        return 1
    (budget, workers, charged), = clocks
    polls = sorted({r["clock"]["poll_s"] for r in runs if r["method"] in SYNE_METHODS})

    summary = stats.summarise(runs, reference)
    result = {
        "what": "LCBench (YAHPO Gym 1.0.2's surrogate, bench/lcbench/surrogate.py): normalised regret "
                "(best - incumbent) / (best - worst) of val_accuracy, IQM over seeds with bootstrap 95 % intervals "
                "(pooled: seeds resampled within each task), at each checkpoint of simulated time",
        "measured_at": {"commit": git_commit(), "date": datetime.date.today().isoformat(),
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "wall_s": round(wall, 1),
                        "merged_from": parts},
        "settings": {"tasks": sorted({r["task"] for r in runs}, key=stats.task_order), "methods": methods,
                     "budget_s": budget, "n_workers": workers, "checkpoints_s": list(stats.CHECKPOINTS),
                     "host_time_charged": charged, "syne_tune_poll_s": polls[0] if len(polls) == 1 else polls,
                     "seeds": {m: max(Counter(r["task"] for r in runs if r["method"] == m).values()) for m in methods},
                     "syne_tune": SYNE_TUNE_VERSION},
        "skipped": skipped,
        "failed": failed,
        "table": stats.table(summary),
        "task_tables": {str(t): stats.task_table(summary, t) for t in stats.CHECKPOINTS},
        "goals": stats.goals(summary, runs, reference),
        "summary": summary,
        "reference": reference,
        "runs": runs,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(result["table"])
    print(result["task_tables"][str(stats.CHECKPOINTS[-1])])
    print(stats.goals_text(result["goals"]))
    for line in skipped:
        print("SKIPPED", line)
    png = args.plot or str(out.with_suffix(".png"))
    try:
        import matplotlib  # noqa: F401

        stats.plot(runs, reference, png, budget)
    except ImportError:  # the main interpreter may have no matplotlib; Syne Tune's venv has it
        if syne_python is None and Path(args.syne_venv, "bin", "python").exists():
            syne_python = Path(args.syne_venv, "bin", "python")
        if syne_python is None:
            print("no plot: pip install matplotlib", file=sys.stderr)
        else:
            drawn = subprocess.run([str(syne_python), "-m", "bench.lcbench.stats", str(out), "--plot", png],
                                   cwd=ROOT, capture_output=True, text=True)
            if drawn.returncode:
                print(f"no plot: {syne_python} could not draw it: {drawn.stderr.strip()[-500:]}", file=sys.stderr)
    print(f"wrote {out} and {png} in {wall:.0f}s")
    for line in failed:
        print("FAILED", line, file=sys.stderr)
    return 1 if failed else 0
