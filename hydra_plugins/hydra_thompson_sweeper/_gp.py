"""The thompson optimiser's Gaussian process (BoTorch, GPyTorch): its inputs (the space's columns, and the
fraction of a training where the resource is modelled, log-scaled from the floor), its fit (hyperparameters
fitted anew every `refit_every` observations, from the last fit's), and a proposal: the maximiser of one
posterior sample (Thompson sampling), drawn pathwise so that it can be scored on thousands of candidates, or
drawn jointly at every point of a space that is a small grid."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

WARM_FIT_STEPS = 50  # L-BFGS-B steps of a fit that starts from the last fit's hyperparameters
EARLY_REFIT = 0.2  # a fit falls due once the observations grew by this fraction, if sooner than refit_every


@dataclass
class GP:
    space: Any  # _optimizer.Space
    direction: str = "minimize"
    refit_every: int = 25
    resource_floor: float | None = None  # the smallest fraction of a training observed; None: full ones only
    n_candidates: int = 2048  # Sobol candidates a posterior sample is scored on; a grid of at most this many: whole
    hyper: dict | None = field(default=None, repr=False)  # the fitted hyperparameters
    fitted_at: int = 0  # observations when they were fitted

    def reset(self) -> None:
        """A fresh search: its GP knows nothing of the last one's hyperparameters."""
        self.hyper, self.fitted_at = None, 0

    def fit_due(self, n: int) -> bool:
        """Whether a GP of n observations has its hyperparameters fitted anew: every refit_every observations,
        and sooner while they are few, once they grew by EARLY_REFIT since the last fit (10 -> 12 -> 15 -> 18 ...:
        hyperparameters fitted on a design of 10 mislead the next 25 proposals; measured in bench/discrete.py)."""
        due = min(self.refit_every, max(1, math.ceil(EARLY_REFIT * self.fitted_at)))
        return self.hyper is None or n - self.fitted_at >= due

    def inputs(self, features, fractions=None):
        """The GP's inputs: the space's columns, and the fraction's where a resource is modelled (full
        trainings when fractions is None)."""
        import torch

        if self.resource_floor is None:
            return features
        if fractions is None:
            fractions = torch.ones(len(features), dtype=features.dtype)
        column = 1.0 - fractions.log() / math.log(self.resource_floor) if self.resource_floor < 1 else fractions
        return torch.cat([features, column[:, None]], dim=1)

    def propose(self, seen: list, best: list, pending, avoid: tuple) -> dict:
        """The maximiser of one posterior sample of the GP of `seen`: on every point of a space that is a grid of at
        most n_candidates points (a joint sample there); elsewhere scored on Sobol candidates and on points near the
        `best` observations, then refined twice around the winner; never one of the `pending` points, and in none
        of the basins to `avoid` where there are other points."""
        import warnings

        import torch
        from linear_operator.utils.warnings import NumericalWarning

        columns = sum(d.columns for d in self.space.dimensions)
        taken = self.inputs(torch.tensor([self.space.encode(p) for p in pending], dtype=torch.float64)
                            .reshape(len(pending), columns))
        grid = self.space.grid(self.n_candidates)
        if grid is not None:  # every point scored: a config tried before may win again (noise)
            features, model = self.inputs(self.space.features(grid)), self.conditioned(seen, taken)
            with torch.no_grad(), warnings.catch_warnings():  # jitter added where configs correlate nearly fully
                warnings.simplefilter("ignore", NumericalWarning)
                scores = model.posterior(features).rsample().reshape(-1)
            return self.space.decode(grid[int(self.allowed(scores, features, taken, avoid).argmax())].tolist())
        path = self.sample_path(seen, taken)
        d = len(self.space.dimensions)
        latent = torch.quasirandom.SobolEngine(d, scramble=True, seed=int(torch.randint(2**31, ())))
        latent = latent.draw(self.n_candidates, dtype=torch.float64)
        latent = torch.cat([latent, self.near(self.latent(best), 0.1, self.n_candidates // 2)])
        chosen = None
        for scale in (None, 0.03, 0.01):
            if scale is not None:
                latent = torch.cat([chosen[None], self.near(chosen[None], scale, 256)])
            features = self.inputs(self.space.features(latent))
            # In chunks: a path's 1,024 random features of 3,000 candidates at once (25 MB, more in between) score
            # 2.5x slower.
            with torch.no_grad():
                scores = torch.cat([path(chunk).reshape(-1) for chunk in features.split(1024)])
            chosen = latent[int(self.allowed(scores, features, taken, avoid).argmax())]
        return self.space.decode(chosen.tolist())

    def allowed(self, scores, features, taken, avoid: tuple):
        """The scores of these candidates (the GP's inputs), -inf at the `taken` points, and in the basins to
        `avoid` where there are other candidates."""
        import torch

        if len(taken):
            scores[(torch.cdist(features, taken) < 1e-9).any(dim=1)] = -math.inf
        if avoid:
            held = inside(features[:, :sum(d.columns for d in self.space.dimensions)], avoid)
            if not held.all():  # as in the design: points in a basin only where there are no others
                scores[held] = -math.inf
        return scores

    @staticmethod
    def near(centres, scale: float, n: int):
        import torch

        picks = centres[torch.randint(len(centres), (n,))]
        return (picks + scale * torch.randn(picks.shape, dtype=torch.float64)).clamp(0, 1)

    def latent(self, observations: list):
        """Latent coordinates of these observations (the middle of a discrete value's cell)."""
        import torch

        rows = []
        for obs in observations:
            row = []
            for dim in self.space.dimensions:
                if dim.kind == "choice":
                    row.append((dim.index(obs.params[dim.name]) + 0.5) / len(dim.choices))
                else:
                    row.append(dim.encode(obs.params[dim.name])[0])
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64)

    def sample_path(self, seen: list, pending=None):
        """One sample of the GP posterior, as a function (BoTorch's pathwise Matheron sample), to maximise.
        Where the GP models the resource, it is first told that the trials in flight (`pending`: their inputs at
        a full training) end at its posterior mean there (the kriging believer; Syne Tune's MOBSTER fantasizes
        them): with early stopping, the trials in flight are those that went on past their rungs, where the search
        believes the best is, and the GP knows only their short trainings there; believed, they no longer draw
        proposal after proposal next to them. Measured in bench/pruning.py."""
        import functools

        import torch
        from botorch.sampling.pathwise import draw_kernel_feature_paths, draw_matheron_paths

        # The prior's random-feature weights: one draw of i.i.d. normals (BoTorch's default scrambles a 1,024-
        # dimensional Sobol sequence for its one point, a tenth of a proposal's time at 600 observations).
        prior = functools.partial(draw_kernel_feature_paths,
                                  weight_generator=lambda shape: torch.randn(shape, dtype=torch.float64))
        return draw_matheron_paths(self.conditioned(seen, pending), sample_shape=torch.Size([1]), prior_sampler=prior)

    def conditioned(self, seen: list, pending=None):
        """The GP of `seen`, told the `pending` points' posterior mean where it models the resource."""
        import torch

        model = self.model(seen)
        if pending is not None and len(pending) and self.resource_floor is not None:
            import gpytorch

            # The latent mean (in the standardised outcomes the model holds), appended to its data: the same
            # posterior as BoTorch's condition_on_observations (to 1e-11), without the fantasy caches that the
            # pathwise sample does not use (66 of 270 ms a proposal at 607 LCBench observations).
            with torch.no_grad(), gpytorch.settings.skip_posterior_variances():
                believed = model(pending).mean
            model.set_train_data(torch.cat([model.train_inputs[0], pending]),
                                 torch.cat([model.train_targets, believed]), strict=False)
        return model

    def model(self, seen: list, ahead: int = 0, refit: bool = False):
        """The GP of these observations (the current search's), with its hyperparameters fitted anew where due (`ahead`:
        where due once that many more results are in) or asked (`refit`)."""
        import warnings

        import torch
        from botorch.exceptions import InputDataWarning
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Standardize

        X = self.inputs(torch.tensor([self.space.encode(o.params) for o in seen], dtype=torch.float64),
                         torch.tensor([o.fraction for o in seen], dtype=torch.float64))
        sign = -1.0 if self.direction == "minimize" else 1.0  # the sample is maximised
        Y = sign * torch.tensor([[o.value] for o in seen], dtype=torch.float64)
        with warnings.catch_warnings():  # "not standardized" while every value so far is the same: it is
            warnings.simplefilter("ignore", InputDataWarning)
            model = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
        n = len(seen)
        if self.hyper is not None:  # the last fit's hyperparameters: a refit starts from them
            model.load_state_dict(self.hyper, strict=False)
        if refit or self.fit_due(n + ahead):
            self.fit(model, warm=self.hyper is not None)
            self.fitted_at = n if self.fit_due(n) else n + ahead  # a fit ahead stands for the one it replaces
            self.hyper = {k: v for k, v in model.state_dict().items() if not k.startswith("outcome_transform")}
        model.eval()
        return model

    @staticmethod
    def fit(model, warm: bool = False) -> None:
        """Maximum marginal likelihood (BoTorch's L-BFGS-B). A warm fit starts from the last fit's hyperparameters,
        a few observations ago, and takes at most WARM_FIT_STEPS steps: near its optimum already, it spent most of
        its time (about 350 likelihood evaluations a refit, profiled on bench/lcbench.py) on digits that do not
        move a proposal."""
        import warnings

        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood

        options = {"optimizer_kwargs": {"options": {"maxiter": WARM_FIT_STEPS}}} if warm else {}
        with warnings.catch_warnings():  # a fit that stops early keeps its best hyperparameters
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model), **options)


def inside(columns, basins: tuple):
    """Which of these points (the space's columns, as `Space.features` gives them) lie in one of the basins."""
    import torch

    held = torch.zeros(len(columns), dtype=torch.bool)
    for basin in basins:
        held |= basin.holds(columns)
    return held
