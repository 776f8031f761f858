"""Study: the thompson sweeper's mind on its own, without Hydra: ask / report / tell, save / load, as Optuna's
`Study` and Syne Tune's schedulers work. The Hydra sweeper drives it with launcher jobs, bench/ on simulated
clocks, a notebook or another launcher by hand:

    from hydra_plugins.hydra_thompson_sweeper import Study

    study = Study({"lr": "tag(log, interval(1e-5, 1e-1))", "depth": "range(1, 9)", "act": "choice(relu, gelu)"},
                  direction="minimize", seed=0, pruner="asha", min_resource=1, max_resource=27)
    trial = study.ask()                      # trial.number, trial.params; asked and not told: in flight
    if study.report(trial, step, val_loss):  # True: the pruner asks it to stop
        ...
    study.tell(trial, value)                 # or study.tell(trial, state="failed" | "pruned")
    study.best; study.trials; study.save(path); Study.load(path)

It owns the trials and their curves (the one copy of what a trial reported), the optimiser (asyTS on BoTorch,
with its restarts: _optimizer.py), the pruner (its rung tables: _pruners.py), the levels the GP learns while a
trial runs (MOBSTER's searcher learns at each rung), the believer for the trials in flight (each proposal's
sample believes them at the posterior mean of a full training, where the resource is modelled) and the state
file. The search space is written in Hydra's override grammar, as on the command line, and read without Hydra.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from hydra_plugins.hydra_thompson_sweeper import _replicates
from hydra_plugins.hydra_thompson_sweeper._optimizer import (
    FLOAT,
    Dimension,
    Optimizer,
    Search,
    Space,
    settings_problems,
)
from hydra_plugins.hydra_thompson_sweeper._pruners import Reports
from hydra_plugins.hydra_thompson_sweeper._pruners import make as make_pruner
from hydra_plugins.hydra_thompson_sweeper._pruners import settings_problems as pruner_problems
from hydra_plugins.hydra_thompson_sweeper._space import SweepError, parse_space
from hydra_plugins.hydra_thompson_sweeper._trials import FORMAT, Trial, TrialStatus, read_state

log = logging.getLogger("hydra_plugins.hydra_thompson_sweeper")


class Study:
    """Trials asked from the optimiser, their reports judged by the pruner, their results told back. Values are
    the metric as measured, in `direction`; the pruner's metric is the one `report` is given."""

    def __init__(self, space: dict | Space, direction: str = "minimize", *, seed: int = 0,
                 algorithm: str = "asy_ts", n_initial: int = 10, refit_every: int = 25, patience: int | None = None,
                 n_trials: int | None = None, pruner: str = "none", metric: str = "value", min_resource: float = 1.0,
                 max_resource: float | None = None, reduction_factor: int = 3, rungs: str = "always",
                 brackets: int = 1, confirm: str = "auto", context: dict | None = None):
        problems = settings_problems(direction, algorithm, n_initial, refit_every, patience) + pruner_problems(
            pruner, min_resource, max_resource, reduction_factor, rungs, brackets)
        if confirm not in _replicates.CONFIRM:
            problems.append(f"confirm={confirm}: one of {', '.join(_replicates.CONFIRM)}")
        try:
            space = space if isinstance(space, Space) else parse_space(space)
        except SweepError as error:  # all problems at once
            problems = error.problems + problems
        if problems:
            raise SweepError(problems)
        self.space, self.direction, self.metric = space, direction, metric
        self.settings = dict(direction=direction, seed=seed, algorithm=algorithm, n_initial=n_initial,
                             refit_every=refit_every, patience=patience, n_trials=n_trials, pruner=pruner,
                             metric=metric, min_resource=min_resource, max_resource=max_resource,
                             reduction_factor=reduction_factor, rungs=rungs, brackets=brackets, confirm=confirm,
                             context=context)
        floor = min_resource / max_resource if pruner != "none" else None  # the GP models the resource
        self.optimizer = Optimizer(space, direction, algorithm, n_initial, refit_every, seed, resource_floor=floor,
                                   patience=patience, budget=n_trials)
        # where `confirm=auto` confirms: Thompson sampling on a space whose configs repeat (no float interval)
        self.confirm = confirm
        self.confirms = self.optimizer.thompson and all(d.kind != FLOAT for d in space.dimensions)
        self.trials: list[Trial] = []  # trial n is trials[n]
        reports = Reports(lambda n: self.trials[n].curve, lambda: range(len(self.trials)), metric, self.sign)
        self.pruner = make_pruner(pruner, min_resource, max_resource, reduction_factor, rungs, brackets, reports)
        self.prunes = pruner != "none"
        # what a resumed study must share with this one: the space, the settings that made its trials
        self.signature = {"space": {d.name: d.describe() for d in space.dimensions}, **(context or {}),
                          "direction": direction, "algorithm": algorithm, "seed": seed, "brackets": brackets,
                          "pruner": pruner, **({"metric": metric, "min_resource": min_resource,
                                                "max_resource": max_resource, "reduction_factor": reduction_factor}
                                               if self.prunes else {})}
        self.created = time.time()
        self.learnt: dict[int, set[float]] = {}  # trial -> the fractions of a training of its curve the GP has
        self.searches_said = 1  # the optimiser's searches said so far (a restart is said once)

    # ------------------------------------------------------------------------------------- ask, report, tell
    def ask(self) -> Trial:
        """A new trial, at the point the optimiser proposes (never one of the trials in flight), or the best
        config run a second time to confirm it (`confirm`: _replicates.py)."""
        again = _replicates.to_confirm(self.trials, self.sign, self.confirm, self.confirms, self.optimizer.n_initial)
        params = (self.optimizer.repeat(again.params) if again
                  else self.optimizer.propose([t.params for t in self.running()]))
        trial = Trial(len(self.trials), job=-1, params=params, status=TrialStatus.RUNNING, submitted=time.time())
        if again:
            log.info(f"Trial {trial.number} runs the best config (trial {again.number}'s) a second time before "
                     "it is believed: a value is one draw of a noisy training (confirm)")
        self.trials.append(trial)
        return trial

    def report(self, trial: Trial, step: float, value: float | None = None, **metrics) -> bool:
        """The trial's `value` of the pruner's metric after `step` (its resource: an epoch, say), and any other
        metrics to keep with it. True once the pruner asks the trial to stop (trial.stop_reason says why)."""
        at = metrics.pop("time", None)
        record = {"step": step, "time": time.time() if at is None else at,
                  **({self.metric: value} if value is not None else {}), **metrics}
        reason = self.take(trial, record)
        if reason and not trial.stop_reason:
            trial.stop_reason = reason
        return bool(trial.stop_reason)

    def take(self, trial: Trial, record: dict) -> str | None:
        """A record into the trial's curve, its value to the pruner (it minimises) and, at a level the trial
        reaches, to the GP; why the pruner would stop the trial, or None."""
        trial.curve.append(record)
        value = record.get(self.metric)
        if value is None or not self.prunes:
            return None
        reason = self.pruner.observe(trial.number, record["step"], self.sign * value)
        learnt = self.learnt.setdefault(trial.number, set())
        for level in self.pruner.levels:  # the first report at or past a level is the trial's value there
            if level > record["step"]:
                break
            fraction = level / self.pruner.max_resource
            if fraction not in learnt:
                learnt.add(fraction)
                if math.isfinite(value):
                    self.optimizer.observe(trial.params, value, fraction, number=trial.number)
        return reason

    def tell(self, trial: Trial, value: float | None = None, state: str = "completed", error: str = "") -> None:
        """How the trial ended: completed with its final `value`, pruned (its value is its last report, no final
        one: the GP learns its curve at the fractions of a training it reached) or failed (nothing learnt)."""
        state = TrialStatus(state)
        if trial.done:
            raise ValueError(f"trial {trial.number} was told already ({trial.status}): a trial is told once")
        if trial.ended is None:
            trial.ended = time.time()
        if state == TrialStatus.COMPLETED:
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"trial {trial.number}: a completed trial needs a finite value, not {value!r}")
            trial.status, trial.value = state, float(value)
            self.optimizer.observe(trial.params, trial.value, number=trial.number)
            self.learn_curve(trial)
        elif state == TrialStatus.PRUNED:
            reported = [r[self.metric] for r in trial.curve if self.metric in r]
            trial.status, trial.value = state, reported[-1] if reported else None
            self.learn_curve(trial)
        elif state == TrialStatus.FAILED:
            trial.status, trial.value, trial.error = state, None, error or trial.error
        else:
            raise ValueError(f"state={state}: completed, pruned or failed")
        self.say_searches()

    def rerun(self, trial: Trial) -> None:
        """The trial runs again from its start (it died with an earlier sweeper): what it reported is void (what
        the GP learnt of the earlier run stays: real values)."""
        trial.curve, trial.stop_reason, trial.stop_asked = [], "", None
        trial.status, trial.started, trial.ended = TrialStatus.RUNNING, None, None
        self.pruner.forget(trial.number)

    def learn_curve(self, trial: Trial) -> None:
        """The GP learns a trial that ended from its curve, each value at its fraction of a full training (its
        levels, and its last report past them: MOBSTER's searcher, Syne Tune's rungs_and_last), each once."""
        learnt = self.learnt.pop(trial.number, set())
        for fraction, value in self.pruner.fidelities(trial.number):
            if fraction not in learnt:
                self.optimizer.observe(trial.params, self.sign * value, fraction, number=trial.number)

    def say_searches(self) -> None:
        """A line for each search the optimiser started since the last one said."""
        for search in self.optimizer.searches[self.searches_said:]:
            if search.fresh:
                log.info(f"No trial improved on the best for {self.optimizer.patience} trials (patience): the "
                         f"search restarts from trial {search.since} on, with a fresh Sobol design and a GP of its "
                         f"own, and proposes nothing in the {len(search.avoid)} basin(s) where the searches before "
                         "it settled")
            else:
                log.info(f"The fresh search has not improved for {self.optimizer.patience} trials: it is merged "
                         "with the earlier ones, and the GP learns from every trial again")
        self.searches_said = len(self.optimizer.searches)

    # ------------------------------------------------------------------------------------------------ views
    @property
    def sign(self) -> float:
        """The pruner minimises: a metric times this is what it compares."""
        return 1.0 if self.direction == "minimize" else -1.0

    def running(self) -> list[Trial]:
        """The trials asked and not told: in flight, or to run again."""
        return [t for t in self.trials if not t.done]

    def completed(self) -> list[Trial]:
        """Completed trials in the order their results came in."""
        done = (t for t in self.trials if t.status == TrialStatus.COMPLETED)
        return sorted(done, key=lambda t: (t.ended or 0, t.number))

    @property
    def best(self) -> Trial | None:
        """The best trial of the config with the best mean of its completed trials (a config tried once: its
        trial's value), or None before a trial completed."""
        return _replicates.best(self.trials, self.sign)

    # ---------------------------------------------------------------------------------------- state file
    def to_json(self) -> str:
        settings = dict(self.settings, space=[asdict(d) for d in self.space.dimensions])
        best = self.best
        return json.dumps({"format": FORMAT, "signature": self.signature, "settings": settings,
                           "created": self.created, "searches": [s.state() for s in self.optimizer.searches],
                           "best": None if best is None else best.number,  # the sweep page's best
                           "trials": [asdict(t) for t in self.trials]}, indent=1)

    def save(self, path: str | Path) -> str:
        """The state, written whole (beside, then renamed): what load() or resume() start from. Its text."""
        text, path = self.to_json(), Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return text

    @classmethod
    def load(cls, path: str | Path) -> Study:
        """The study saved at path, with its trials, rungs, GP observations and searches as they were."""
        state = read_state(Path(path))
        if "settings" not in state:
            raise ValueError(f"{path} was saved before studies kept their settings: make the Study with its "
                             "settings and call study.resume(path)")
        settings = dict(state["settings"])
        space = Space([Dimension(**dict(d, choices=tuple(d["choices"]))) for d in settings.pop("space")])
        study = cls(space, **settings)
        study.restore(state)
        return study

    def resume(self, path: str | Path) -> None:
        """The trials of the study saved at path (made with this study's settings) taken up."""
        self.restore(read_state(Path(path)))

    def restore(self, state: dict) -> None:
        """A saved state's trials replayed: the optimiser learns what it had learnt, the pruner's rungs are as
        they were, and the searches as they were (the results came in another order)."""
        self.trials = state["trials"]  # in number order: trial n is trials[n]
        self.created = state["created"]
        self.optimizer.proposed = len(self.trials)
        curves = [trial.curve for trial in self.trials]  # the pruner sees each curve as it is replayed, as it
        for trial in self.trials:  # saw them live: none before its turn
            trial.curve = []
        with self.optimizer.replay([Search.from_state(search) for search in state["searches"]]):
            for trial, curve in zip(self.trials, curves):
                for record in curve:
                    self.take(trial, record)
                if trial.status == TrialStatus.COMPLETED:
                    self.optimizer.observe(trial.params, trial.value, number=trial.number)
                if trial.status in (TrialStatus.COMPLETED, TrialStatus.PRUNED):
                    self.learn_curve(trial)
        self.searches_said = len(self.optimizer.searches)
