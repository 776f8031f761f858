"""What the thompson sweeper refuses, each said naming the setting to change: its settings before anything is
submitted, a task's return value that holds no objective, a metric the pruner needs and the task never reports."""

from __future__ import annotations

import math
import warnings
from numbers import Real

from hydra_plugins.hydra_awsbatch_launcher.async_api import AsyncLauncher
from hydra_plugins.hydra_thompson_sweeper._space import SweepError


def settings(c, launcher) -> list[str]:
    """The settings' problems (`c`: hydra.sweeper), before anything is submitted: one line each."""
    from hydra_plugins.hydra_thompson_sweeper._optimizer import settings_problems
    from hydra_plugins.hydra_thompson_sweeper._pruners import settings_problems as pruner_problems

    problems = [f"hydra.sweeper.{p}" for p in settings_problems(c.direction, c.algorithm, c.n_initial,
                                                                 c.refit_every, c.patience)]
    try:  # imported now, before anything is submitted: seconds of import are no worker's idle time later
        with warnings.catch_warnings():  # torch's own FutureWarning about torch.jit, which BoTorch uses
            warnings.simplefilter("ignore", FutureWarning)
            import botorch.fit
            import botorch.models
            import botorch.sampling.pathwise  # noqa: F401
            import matplotlib.pyplot  # noqa: F401
    except ImportError as error:  # a missing module, or one that fails to import (error.name is then None)
        problems.append(f"hydra/sweeper=thompson needs {error.name or 'BoTorch and matplotlib'}, which "
                        + ("is not installed" if error.name else f"failed to import ({error})")
                        + ": pip install 'hydra-awsbatch-launcher[bo]'")
    for name in ("n_trials", "n_workers", "max_failures"):
        if int(c[name]) < 1:
            problems.append(f"hydra.sweeper.{name}={c[name]}: at least 1")
    if int(c.n_queued) < 0:
        problems.append(f"hydra.sweeper.n_queued={c.n_queued}: 0 or more")
    if c.max_minutes is not None and c.max_minutes <= 0:
        problems.append(f"hydra.sweeper.max_minutes={c.max_minutes}: above 0, or null for no limit")
    if getattr(launcher, "dry_run", False):
        problems.append("hydra.launcher.dry_run=true returns no results, and the thompson sweeper proposes from "
                        "results: make the dry run with Hydra's basic sweeper (leave out hydra/sweeper=thompson)")
    problems += [f"hydra.sweeper.{p}" for p in pruner_problems(c.pruner, c.min_resource, c.max_resource,
                                                                c.reduction_factor, c.rungs, c.brackets)]
    if c.pruner != "none" and not (c.metric or c.objective):
        problems.append(f"hydra.sweeper.pruner={c.pruner} compares a metric that your task gives report(): "
                        "set hydra.sweeper.metric to its name (e.g. val_loss)")
    if c.pruner != "none" and not isinstance(launcher, AsyncLauncher):
        problems.append(f"hydra.sweeper.pruner={c.pruner} reads trials while they run, which "
                        f"{type(launcher).__name__} cannot: use hydra/launcher=aws_batch or aws_batch_local")
    if c.stop_grace_s < 0:
        problems.append(f"hydra.sweeper.stop_grace_s={c.stop_grace_s}: seconds, 0 or more")
    return problems


def objective(returned, key: str | None) -> float:
    """The number to optimise out of the task's return value (`key`: hydra.sweeper.objective)."""
    if key is not None:
        if not hasattr(returned, "keys") or key not in returned:
            keys = list(returned.keys()) if hasattr(returned, "keys") else None
            raise SweepError([f"hydra.sweeper.objective={key}: the task returned "
                              + (f"a mapping with keys {keys}" if keys is not None else f"{returned!r}")
                              + ": set objective to one of its keys, or null for a plain number"])
        returned = returned[key]
    elif hasattr(returned, "keys"):
        raise SweepError([f"the task returned a mapping with keys {list(returned.keys())}: set "
                          "hydra.sweeper.objective to the one to optimise"])
    if isinstance(returned, bool) or not isinstance(returned, Real):
        try:
            returned = float(returned)  # a 0-d tensor or numpy scalar
        except (TypeError, ValueError):
            raise SweepError([f"the task returned {returned!r}: the thompson sweeper needs a number (or a "
                              "mapping with hydra.sweeper.objective naming the number)"]) from None
    value = float(returned)
    if not math.isfinite(value):
        raise ValueError(f"the objective is {value}")
    return value


def unreported(trial, metric: str, c) -> str | None:
    """A pruner needs the metric reported: what to say when a trial ended without it (None: it reported it)."""
    if any(metric in r for r in trial.curve):
        return None
    names = sorted({k for r in trial.curve for k in r} - {"step", "time"})
    setting = "metric" if c.metric else "objective"  # the pruner's metric is the objective by default
    return (f"hydra.sweeper.{setting}={metric}: trial {trial.number} ended having reported "
            + (f"only {', '.join(names)}" if names else "nothing (its task never called report())")
            + f", so hydra.sweeper.pruner={c.pruner} has nothing to compare: report it, or set hydra.sweeper.metric "
            "to what the task reports")


def short(trial, c) -> str | None:
    """A trial that returned, unasked, before max_resource: what to say (max_resource is likely above the steps
    the task runs, and then no trial counts as finished for the pruner); None where it reached it."""
    if not trial.curve or trial.last_step >= c.max_resource:
        return None
    return (f"Trial {trial.number} returned at step {trial.last_step:g}, before hydra.sweeper.max_resource="
            f"{c.max_resource:g}: set max_resource to the step at which a trial is done (its last epoch, say). Until "
            f"a trial reaches it, {c.pruner} has no finished trial to compare with, and the GP counts such a "
            "trial's value as a full training's")
