"""Configs tried more than once, on a search space with no float interval (a grid), where Thompson sampling may
propose a tried config again and the objective is noisy (a training's seed): which config is best (the best mean
of its trials, not the luckiest draw), and when the study runs the best config a second time before it is
believed (SMAC's intensification, at its simplest).

`confirm`: `auto` (Thompson sampling on a space with no float interval, until three configs run twice gave the
same value each time: a deterministic objective), `always` or `never`."""

from __future__ import annotations

import statistics

from hydra_plugins.hydra_thompson_sweeper._trials import Trial, TrialStatus

CONFIRM = ("auto", "always", "never")
SAME_TWICE = 3  # configs run twice with one value each that make `auto` call the objective deterministic


def key(params: dict) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def groups(trials: list[Trial]) -> dict[tuple, list[Trial]]:
    """The completed trials by config, each config's trials in the order they were asked."""
    done: dict[tuple, list[Trial]] = {}
    for trial in trials:
        if trial.status == TrialStatus.COMPLETED:
            done.setdefault(key(trial.params), []).append(trial)
    return done


def values_of(trials: list[Trial], params: dict) -> list[float]:
    """The values of the completed trials of this config."""
    return [t.value for t in groups(trials).get(key(params), [])]


def best(trials: list[Trial], sign: float) -> Trial | None:
    """The best trial of the config whose completed trials have the best mean (sign: 1 minimises, -1
    maximises); of tied configs, the one completed first."""
    done = groups(trials)
    if not done:
        return None
    config = min(done.values(), key=lambda ts: sign * statistics.fmean(t.value for t in ts))
    return min(config, key=lambda t: sign * t.value)


def deterministic(trials: list[Trial]) -> bool:
    """Whether SAME_TWICE configs were run more than once and each gave one value every time."""
    repeated = [ts for ts in groups(trials).values() if len(ts) > 1]
    return len(repeated) >= SAME_TWICE and all(len({t.value for t in ts}) == 1 for ts in repeated)


def to_confirm(trials: list[Trial], sign: float, confirm: str, grid: bool, after: int) -> dict | None:
    """The params to run again now: the best config's, where it has one completed trial and none in flight, once
    `after` trials completed (the design's: confirming each best of a design spends it on its luckiest draws).
    `grid`: whether `auto` confirms (Thompson sampling on a space with no float interval)."""
    if confirm == "never" or (confirm == "auto" and (not grid or deterministic(trials))):
        return None
    top = best(trials, sign)
    if top is None or sum(t.status == TrialStatus.COMPLETED for t in trials) < after:
        return None
    same = [t for t in trials if key(t.params) == key(top.params)]
    if sum(t.status == TrialStatus.COMPLETED for t in same) != 1 or any(not t.done for t in same):
        return None
    return dict(top.params)
