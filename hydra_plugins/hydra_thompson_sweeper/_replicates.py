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
    return _best(groups(trials), sign)


def _best(done: dict[tuple, list[Trial]], sign: float) -> Trial | None:
    if not done:
        return None
    config = min(done.values(), key=lambda ts: sign * statistics.fmean(t.value for t in ts))
    return min(config, key=lambda t: sign * t.value)


def deterministic(done: dict[tuple, list[Trial]]) -> bool:
    """Whether SAME_TWICE configs of these groups were run more than once and each gave one value every time."""
    repeated = [ts for ts in done.values() if len(ts) > 1]
    return len(repeated) >= SAME_TWICE and all(len({t.value for t in ts}) == 1 for ts in repeated)


def to_confirm(trials: list[Trial], sign: float, confirm: str, grid: bool, after: int) -> Trial | None:
    """The best config's trial to run again now, where that config has one completed trial and none in flight,
    once `after` trials completed (the design's: confirming each best of a design spends it on its luckiest
    draws). `grid`: whether `auto` confirms (Thompson sampling on a space with no float interval)."""
    if confirm == "never" or (confirm == "auto" and not grid):
        return None
    done = groups(trials)
    if sum(map(len, done.values())) < after or (confirm == "auto" and deterministic(done)):
        return None
    top = _best(done, sign)
    if top is None:
        return None
    config = key(top.params)
    if len(done[config]) != 1 or any(not t.done and key(t.params) == config for t in trials):
        return None
    return top
