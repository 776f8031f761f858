"""The trials, their state file, and what a thompson sweep leaves in its sweep dir, rewritten after every event:
its state (thompson_state.json, the Study's, also copied to staging: what a resume starts from), trials.csv,
metrics.csv, optimization_results.yaml (as Hydra's Optuna sweeper writes it), convergence.png and curves.png."""

from __future__ import annotations

import csv
import datetime
import enum
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("hydra_plugins.hydra_thompson_sweeper")

STATE = "thompson_state.json"


class TrialStatus(str, enum.Enum):
    """Where a trial stands (a string in the state file and trials.csv)."""

    SUBMITTING = "submitting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # in flight when the sweeper was stopped (Ctrl-C): a resume runs it again
    STOPPED = "stopped"  # in flight when the sweep stopped on an error: a resume runs it again
    PRUNED = "pruned"  # stopped early by the pruner: its value is its last report, not a final one

    __str__ = str.__str__
    __format__ = str.__format__


FORMAT = 1
LATENCY = ("waiting", "starting", "task", "ending")  # a job's time: queued, starting up, its task, its result home
PLOT_EVERY_S = 10.0  # convergence.png is redrawn at most this often while the sweep runs (and at its end)


@dataclass
class Trial:
    number: int
    job: int  # the launcher's job number (hydra.job.num), whose job dir holds the trial's outputs
    params: dict
    status: TrialStatus = TrialStatus.SUBMITTING
    value: float | None = None
    submitted: float | None = None  # epoch seconds
    started: float | None = None
    ended: float | None = None
    error: str = ""
    curve: list = field(default_factory=list)  # what the trial reported: {"step", "time", metric: value...}
    stop_reason: str = ""  # why the pruner stopped it
    stop_asked: float | None = None  # when (epoch seconds) its job was asked to stop
    latency: dict = field(default_factory=dict)  # where its job's time went (async_api's optional job_latency)

    @property
    def done(self) -> bool:
        return self.status in (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.PRUNED)

    @property
    def last_step(self):
        return self.curve[-1]["step"] if self.curve else ""


SIGNATURE_DEFAULTS = {"brackets": 1}  # what the signature of a sweep saved before a key joined it had


def read_state(path: Path) -> dict:
    """A state file as a Study saved it: its trials made Trials, its signature with the keys that joined later."""
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a state file of this version of the thompson sweeper")
    trials = sorted((Trial(**dict(t, status=TrialStatus(t["status"]))) for t in data["trials"]), key=lambda t: t.number)
    if [t.number for t in trials] != list(range(len(trials))):
        raise ValueError(f"{path}: its trials are not numbered 0 to {len(trials) - 1} (edited by hand?); a study "
                         "numbers its trials as it asks them")
    return dict(data, trials=trials, signature={**SIGNATURE_DEFAULTS, **data["signature"]},
                searches=data.get("searches", []))


def differences(earlier: dict, signature: dict) -> list[str]:
    """The settings of a sweep's signature that an earlier sweep had otherwise."""
    return [k for k in signature if earlier.get(k, signature[k]) != signature[k]]


def find_state(sweep_dir: Path, signature: dict) -> Path:
    """The state of the sweep to resume: in sweep_dir, or (a sweep dir made anew by ${now:}) the newest
    unfinished one beside it (multirun/DATE/TIME) with the same search space and settings."""
    from hydra_plugins.hydra_thompson_sweeper._space import SweepError

    here = sweep_dir / STATE
    if here.exists():
        earlier = read_state(here)["signature"]
        changed = differences(earlier, signature)
        if changed:
            raise SweepError([f"hydra.sweeper.resume=true: the sweep in {sweep_dir} had another "
                              f"{', '.join(changed)}: {', '.join(f'{k}={earlier.get(k)}' for k in changed)}"
                              "; resume it with the same settings, or start a new sweep in another hydra.sweep.dir"])
        return here
    found = []
    for path in sweep_dir.parent.parent.glob("*/*/" + STATE):  # multirun/*/*: sweep_dir's siblings among them
        try:
            earlier = read_state(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not differences(earlier["signature"], signature) and not all(t.done for t in earlier["trials"]):
            found.append(path)
    if not found:
        raise SweepError([f"hydra.sweeper.resume=true: no unfinished thompson sweep with this search space in "
                          f"{sweep_dir} or beside it: set hydra.sweep.dir to the sweep dir to resume"])
    return max(found, key=lambda p: p.stat().st_mtime)


@dataclass
class SweepFiles:
    """The files of one sweep's study in its sweep dir."""

    sweep_dir: Path
    study: Any  # the Study
    mirror: Callable[[str, bytes], None] | None = None  # the launcher's copy of the state (async_api), if any
    _plotted: float = 0.0

    @property
    def trials(self) -> list[Trial]:
        return self.study.trials

    @property
    def signature(self) -> dict:
        return self.study.signature

    @property
    def metric(self) -> str:
        """The reported metric that curves.png draws (the pruner's)."""
        return self.study.metric

    def save(self, final: bool = False) -> None:
        """The state (to the sweep dir, and to staging), trials.csv, the best so far (and at the end the plots):
        after every event, so that nothing is lost when the sweeper's machine dies."""
        text = self.study.save(self.sweep_dir / STATE)
        if self.mirror is not None:
            self.mirror(STATE, text.encode())
        self.write_csv()
        self.write_metrics()
        self.write_results()
        if final:
            self.redraw(now=True)

    def redraw(self, now: bool = False) -> bool:
        """convergence.png and curves.png, at most every PLOT_EVERY_S (a drawing takes a quarter of a second or
        more: the sweeper draws while every worker is busy, not between a trial's end and the next trial).
        Whether they were drawn."""
        if not now and time.time() - self._plotted < PLOT_EVERY_S:
            return False
        self.plot()
        self.plot_curves()
        self._plotted = time.time()
        return True

    def plots_stale(self) -> bool:
        """The plots were drawn long ago (trials ending too often for a quiet moment): drawn at once."""
        return time.time() - self._plotted >= 6 * PLOT_EVERY_S

    # ------------------------------------------------------------------------------------------- views
    @property
    def direction(self) -> str:
        return self.signature["direction"]

    def ended(self) -> int:
        return sum(t.done for t in self.trials)

    def failed_in_a_row(self) -> int:
        count = 0
        for trial in sorted((t for t in self.trials if t.done), key=lambda t: (t.ended or 0, t.number)):
            count = count + 1 if trial.status == TrialStatus.FAILED else 0
        return count

    def line(self, in_flight: int, objective: str) -> tuple[str, str]:
        """The live line, and its part without the clock (what is worth a log line when it changes)."""
        failed = sum(t.status == TrialStatus.FAILED for t in self.trials)
        pruned = sum(t.status == TrialStatus.PRUNED for t in self.trials)
        best = self.study.best
        notes = [f"{failed} failed"] * bool(failed) + [f"{pruned} stopped early"] * bool(pruned)
        text = f"thompson: {self.ended()} trials done" + (f" ({', '.join(notes)})" if notes else "")
        text += f", {in_flight} in flight"
        if best is not None:
            text += f", best {objective}={best.value:.6g} (trial {best.number})"
        return text + f", {(time.time() - self.study.created) / 60:.1f} min", text

    # ------------------------------------------------------------------------------------------- files
    def write_csv(self) -> None:
        names = list(self.signature["space"])
        tmp = self.sweep_dir / "trials.csv.tmp"
        with open(tmp, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["number", "job", "status", "value", *names, "submitted", "started", "ended",
                             "duration_s", *(f"{name}_s" for name in LATENCY), "last_step", "stop_reason", "error"])
            for t in sorted(self.trials, key=lambda t: t.number):
                duration = f"{t.ended - t.started:.1f}" if t.started and t.ended else ""
                writer.writerow([t.number, t.job, t.status, "" if t.value is None else repr(t.value),
                                 *(t.params.get(n, "") for n in names), _iso(t.submitted), _iso(t.started),
                                 _iso(t.ended), duration, *(t.latency.get(name, "") for name in LATENCY),
                                 t.last_step, t.stop_reason, t.error])
        tmp.replace(self.sweep_dir / "trials.csv")

    def write_metrics(self) -> None:
        """metrics.csv, long format: a row per trial, step and metric that the trials reported."""
        if not any(t.curve for t in self.trials):
            return
        tmp = self.sweep_dir / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["trial", "step", "metric", "value", "time"])
            for t in sorted(self.trials, key=lambda t: t.number):
                for record in t.curve:
                    writer.writerows([t.number, record["step"], name, repr(value), _iso(record.get("time"))]
                                     for name, value in record.items() if name not in ("step", "time"))
        tmp.replace(self.sweep_dir / "metrics.csv")

    def write_results(self) -> None:
        from omegaconf import OmegaConf

        best = self.study.best
        if best is None:
            return
        results = {"name": "thompson", "best_params": best.params, "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")

    def plot(self) -> None:
        """Best value so far against wall time and against completed trials (convergence.png)."""
        done = self.study.completed()
        if not done:
            return
        import matplotlib

        matplotlib.use("Agg")  # no display: a file
        import matplotlib.pyplot as plt

        pick = min if self.direction == "minimize" else max
        best, running = [], None
        for t in done:
            running = t.value if running is None else pick(running, t.value)
            best.append(running)
        minutes = [((t.ended or self.study.created) - self.study.created) / 60 for t in done]
        fig, (by_time, by_trial) = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, x, label in ((by_time, minutes, "wall time (min)"), (by_trial, range(1, len(done) + 1),
                                                                   "completed trials")):
            ax.plot(list(x), [t.value for t in done], ".", color="0.6", label="trial")
            ax.step(list(x), best, where="post", label="best so far")
            ax.set_xlabel(label)
            ax.set_ylabel(self.signature.get("objective") or "the task's return value")
            if _spans_decades([t.value for t in done]):
                ax.set_yscale("log")
        by_time.legend()
        failed = sum(t.status == TrialStatus.FAILED for t in self.trials)
        fig.suptitle(f"{len(done)} completed trials" + (f", {failed} failed" if failed else ""))
        self.save_figure(fig, "convergence.png")

    def plot_curves(self) -> None:
        """curves.png: the pruner's metric against the step, a line a trial; a stopped trial ends in an x."""
        curves = [(t, [(r["step"], r[self.metric]) for r in t.curve if self.metric in r]) for t in self.trials]
        curves = [(t, points) for t, points in curves if points]
        if not curves:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4.5))
        sign = 1.0 if self.direction == "minimize" else -1.0  # ranked by their last value, the best first
        ranked = sorted(curves, key=lambda item: sign * item[1][-1][1] if math.isfinite(item[1][-1][1]) else math.inf)
        colours = plt.cm.viridis([i / max(1, len(ranked) - 1) * 0.9 for i in range(len(ranked))])
        for rank, ((trial, points), colour) in enumerate(zip(ranked, colours)):
            pruned = trial.status == TrialStatus.PRUNED
            steps, values = zip(*points)
            label = f"{trial.number}: " + " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            ax.plot(steps, values, "--" if pruned else "-", color=colour, linewidth=2.2 if rank == 0 else 1,
                    label=label if rank < LEGEND else None)
            if pruned:
                ax.plot(steps[-1], values[-1], "x", color="tab:red")
        if _spans_decades([v for _, points in curves for _, v in points]):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(self.metric)
        ax.legend(title=f"trial: params (the best {min(LEGEND, len(ranked))})", fontsize=7, title_fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
        stopped = sum(t.status == TrialStatus.PRUNED for t, _ in curves)
        ax.set_title(f"{len(curves)} trials, the best thick" + (f", {stopped} stopped early (dashed, x)"
                                                               if stopped else ""))
        self.save_figure(fig, "curves.png")

    def save_figure(self, fig, name: str) -> None:
        """Into the sweep dir whole (written beside it, then renamed): a reader never sees half a picture."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        tmp = self.sweep_dir / f"{name}.tmp.png"
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(self.sweep_dir / name)


def _iso(epoch: float | None) -> str:
    if epoch is None or not math.isfinite(epoch):
        return ""
    return datetime.datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


LEGEND = 10  # curves.png names the best trials' params in its legend


def _spans_decades(values: list) -> bool:
    """Positive values whose largest is over 20 times their smallest: drawn on a log axis."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
