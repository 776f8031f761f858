"""HyperTune's resource model (Li et al., VLDB 2022; Syne Tune's HyperTuneIndependentGPModel), for Thompson
sampling: a GP of its own at each level of the resource (the fractions of a training that trials report at, a
pruner's rungs), and a proposal that draws a level by the ensemble's weights, then maximises one posterior sample
of that level's GP.

The weights say how well each level's GP ranks the configs at the highest level with at least SUPPORT
observations: for each of SAMPLES joint posterior samples at those configs, the fraction of pairs it orders
otherwise than their values (the ranking loss); the highest level's own GP is judged by cross-validation (at most
5 folds of at least 2 configs). A level's weight is the share of samples in which its loss is the least (ties
count for each), those under 1 % dropped. While no level above the lowest has SUPPORT observations, the lowest
proposes. A low level whose ranking agrees with the full trainings' proposes with its many observations; one whose
ranking does not, never."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra_plugins.hydra_thompson_sweeper._gp import GP

SUPPORT = 6  # observations a level needs to be judged (Syne Tune's)
SAMPLES = 50  # posterior samples of the ranking loss (Syne Tune's default)


@dataclass
class Levels:
    space: Any  # _optimizer.Space
    direction: str = "minimize"
    refit_every: int = 25
    n_candidates: int = 2048
    gps: dict = field(default_factory=dict)  # level -> the GP of its observations (its hyperparameters kept)
    weights: dict = field(default_factory=dict)  # level -> its share of the proposals
    judged: tuple = ()  # (highest supported level, its observations) when the weights were last found
    combine: str = "draw"  # draw: one level's sample, drawn by the weights; sum: the weighted sum of every level's

    def reset(self) -> None:
        """A fresh search: nothing of the last one's GPs or weights."""
        self.gps, self.weights, self.judged = {}, {}, ()

    def gp(self, level: float) -> GP:
        if level not in self.gps:
            self.gps[level] = GP(self.space, self.direction, self.refit_every, None, self.n_candidates)
        return self.gps[level]

    def propose(self, seen: list, pending, avoid: tuple) -> dict:
        """The maximiser of one posterior sample of the GP of a level drawn by the weights."""
        import torch

        groups: dict[float, list] = {}
        for obs in seen:
            groups.setdefault(obs.fraction, []).append(obs)
        weights = self.weighted(groups)
        levels = sorted(weights)
        if self.combine == "sum":
            level = max(levels, key=lambda v: weights[v])

            def sample(taken):
                paths = [(weights[v], self.gp(v).sample_path(groups[v], taken, believe=True)) for v in levels]
                return lambda x: sum(w * path(x) for w, path in paths)
        else:
            level, sample = levels[int(torch.multinomial(torch.tensor([weights[v] for v in levels]), 1))], None
        group = groups[level]
        best = sorted(group, key=lambda o: o.value, reverse=self.direction == "maximize")[:5]
        return self.gp(level).propose(group, best, pending, avoid, believe=True, sample=sample)

    def weighted(self, groups: dict) -> dict:
        """The ensemble's weights, found anew when the highest supported level or its observations change."""
        levels = sorted(groups)
        supported = [v for v in levels if len(groups[v]) >= SUPPORT]
        if len(supported) < 2:
            self.weights, self.judged = {levels[0]: 1.0}, ()
            return self.weights
        top = supported[-1]
        if self.judged != (top, len(groups[top])):
            self.judged = (top, len(groups[top]))
            below = [v for v in levels if v < top and len(groups[v]) >= 2]
            losses = self.losses(groups, below, top)
            share = (losses == losses.min(dim=0, keepdim=True).values).sum(dim=1).double()
            share /= share.sum()
            self.weights = {v: float(s) for v, s in zip([*below, top], share) if s > 0.01}
        return self.weights

    def losses(self, groups: dict, below: list, top: float):
        """Ranking losses (levels x SAMPLES): each level below `top` on top's configs, and top's by
        cross-validation."""
        import torch

        model = self.gp(top).model(groups[top])
        X, Y = model.train_inputs[0], self.gp(top).targets(groups[top])
        rows = []
        for level in below:
            sample = self.gp(level).model(groups[level]).posterior(X).rsample(torch.Size([SAMPLES]))
            rows.append(ranking_loss(sample.reshape(SAMPLES, -1), Y))
        folds = min(len(X) // 2, 5)
        total = torch.zeros(SAMPLES, dtype=torch.float64)
        for part in torch.arange(len(X)).tensor_split(folds):  # each fold's GP has the top level's hyperparameters
            held = set(part.tolist())
            fold = self.gp(top).model([o for i, o in enumerate(groups[top]) if i not in held], fixed=True)
            sample = fold.posterior(X[part]).rsample(torch.Size([SAMPLES])).reshape(SAMPLES, -1)
            total += ranking_loss(sample, Y[part])
        rows.append(total / folds)
        return torch.stack(rows)


def ranking_loss(samples, values):
    """Per sample (rows of `samples`, one column a config), the fraction of pairs of configs it orders otherwise
    than `values`."""
    import torch

    n = len(values)
    if n < 2:
        return torch.zeros(len(samples), dtype=torch.float64)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    truth = (values[:, None] < values[None, :])[upper]
    guess = (samples[:, :, None] < samples[:, None, :])[:, upper]
    return (guess != truth).double().mean(dim=1)
