"""The ask/tell core of the thompson sweeper, without Hydra: `propose(pending) -> params` and
`observe(params, value)`. Thompson sampling with a BoTorch GP (Kandasamy et al., AISTATS 2018): each free
worker gets the maximiser of one fresh posterior sample, so parallel proposals differ without any
bookkeeping of the pending points.

    space = Space([Dimension.interval("lr", 1e-4, 1e-1, log=True), Dimension.choice("model", ["mlp", "cnn"])])
    opt = Optimizer(space, direction="minimize", seed=0)
    params = opt.propose()            # {"lr": 0.0031, "model": "cnn"}
    opt.observe(params, 0.27)

Every dimension maps to [0, 1] (log-scaled where asked), a choice of k values to k one-hot columns, so the
GP sees normalised inputs; its outputs are standardised. With `resource_floor` set, an observation may come
from part of a training (`observe(params, value, fraction)`: a stopped trial's value at an epoch): the GP gets
the fraction as one more input, log-scaled from the floor (0) to a full training (1), and proposals maximise
a sample at a full training (MOBSTER's model, Klein et al. 2020, with Thompson sampling for the proposals).
Candidates are drawn in a latent cube and decoded into the space before they are scored, so every proposal
is a valid point: integers are integers on their step, choices are one of the values. A space of categories and
ordered lists (no interval) of at most `n_candidates` points is scored whole, on one joint posterior sample (exact
Thompson sampling on a finite set): the best config of a noisy grid may be proposed again, which pays (issue 40).

Restarts. A GP with one set of hyperparameters, fitted to data gathered around the first good basin found,
grows sure that the space far from its data is poor: on Hartmann6 a third of the searches settled in the local
maximum, with the posterior at the global one 4.6 of its standard deviations below the incumbent, so that no
sample ever went there (a better maximiser of the sample does not help: it is the model). As TuRBO does
(Eriksson et al. 2019), a search that has not improved for `patience` trials restarts: a fresh Sobol design,
and a GP on the fresh search's trials only, which knows nothing of the old basin. When the fresh search stalls
in its turn, the two are merged (the GP sees every trial again) and the better basin is refined with all the
data; a merged search that stalls restarts afresh. A fresh search proposes nothing in the basins where the
searches before it settled (each the ellipsoid of one lengthscale of its GP around its best trial): on
Hartmann6 the fresh searches of the runs left in the local maximum had climbed the same ridge again. With a
`budget` (the sweep's trials), no fresh search starts without room for its design and twice the patience. Each
observation belongs to the search that proposed it (`observe(..., number=)`): the trials still running when a
search restarts do not pull the fresh one back to the old basin.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

from hydra_plugins.hydra_thompson_sweeper._gp import GP, inside

ALGORITHMS = ("asy_ts", "syn_ts", "asy_random", "syn_random")  # asynchronous or in batches; GP or random
FLOAT, INT, GRID, CHOICE = "float", "int", "grid", "choice"  # GRID: a float start and step


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a float interval, an integer grid (`low`, `low + step`, ... <= `high`), or a
    choice among `choices`."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    step: float = 1.0
    log: bool = False
    choices: tuple = ()

    @classmethod
    def interval(cls, name: str, low: float, high: float, log: bool = False) -> Dimension:
        return cls._checked(cls(name, FLOAT, float(low), float(high), log=log))

    @classmethod
    def integers(cls, name: str, low, high, step=1, log: bool = False) -> Dimension:
        """low, low+step, ... up to high inclusive; a float step makes a grid of floats."""
        kind = INT if all(float(v).is_integer() for v in (low, high, step)) else GRID
        return cls._checked(cls(name, kind, low, high, step, log))

    @classmethod
    def choice(cls, name: str, choices) -> Dimension:
        return cls._checked(cls(name, CHOICE, choices=tuple(choices)))

    @classmethod
    def _checked(cls, dim: Dimension) -> Dimension:
        if dim.kind == CHOICE:
            if not dim.choices:
                raise ValueError(f"{dim.name}: a choice needs at least one value")
            return dim
        if not dim.low < dim.high:
            raise ValueError(f"{dim.name}: the lower bound {dim.low} must be below the upper bound {dim.high}")
        if dim.log and dim.low <= 0:
            raise ValueError(f"{dim.name}: a log scale needs a lower bound above 0, not {dim.low}")
        if dim.kind != FLOAT and dim.step <= 0:
            raise ValueError(f"{dim.name}: the step must be above 0, not {dim.step}")
        return dim

    @property
    def columns(self) -> int:
        """Columns in the GP's input."""
        return len(self.choices) if self.kind == CHOICE else 1

    @property
    def values(self) -> int:
        """How many values a discrete dimension has."""
        if self.kind == CHOICE:
            return len(self.choices)
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def _scale(self, x: float) -> float:
        return math.log(x) if self.log else x

    def decode(self, u: float) -> Any:
        """The value at latent coordinate u in [0, 1]."""
        u = min(max(u, 0.0), 1.0)
        if self.kind == CHOICE:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        low, high = self._scale(self.low), self._scale(self.high)
        x = low + u * (high - low)
        x = math.exp(x) if self.log else x
        if self.kind == FLOAT:
            return min(max(x, self.low), self.high)
        k = min(max(round((x - self.low) / self.step), 0), self.values - 1)
        value = self.low + k * self.step
        return int(round(value)) if self.kind == INT else round(value, 12)

    def encode(self, value) -> list[float]:
        """The GP's input columns of a value."""
        if self.kind == CHOICE:
            index = self.index(value)
            return [1.0 if i == index else 0.0 for i in range(len(self.choices))]
        low, high = self._scale(self.low), self._scale(self.high)
        return [(self._scale(float(value)) - low) / (high - low)]

    def features(self, u):
        """encode(decode(u)) for a tensor of latent coordinates at once: the GP's input columns of the
        candidates (n x columns)."""
        import torch

        u = u.clamp(0.0, 1.0)
        if self.kind == CHOICE:
            k = len(self.choices)
            return torch.nn.functional.one_hot((u * k).long().clamp(max=k - 1), k).to(u.dtype)
        if self.kind == FLOAT:
            return u[:, None]
        low, high = self._scale(self.low), self._scale(self.high)
        x = low + u * (high - low)
        x = x.exp() if self.log else x
        value = self.low + torch.round((x - self.low) / self.step).clamp(0, self.values - 1) * self.step
        return (((value.log() if self.log else value) - low) / (high - low))[:, None]

    def cells(self) -> list[float]:
        """The latent coordinate of each value of a discrete dimension (the middle of a choice's cell)."""
        if self.kind == CHOICE:
            return [(i + 0.5) / len(self.choices) for i in range(len(self.choices))]
        return [self.encode(self.low + k * self.step)[0] for k in range(self.values)]

    def index(self, value) -> int:
        for i, choice in enumerate(self.choices):  # "32" from a command line matches 32 in the space
            if choice == value or str(choice) == str(value):
                return i
        raise ValueError(f"{self.name}={value!r} is not one of {list(self.choices)}")

    def describe(self) -> str:
        if self.kind == CHOICE:
            return f"{self.name}: choice({', '.join(map(str, self.choices))})"
        scale = ", log scale" if self.log else ""
        if self.kind == FLOAT:
            return f"{self.name}: float in [{self.low:g}, {self.high:g}]{scale}"
        return f"{self.name}: {self.values} values {self.low:g}..{self.high:g} step {self.step:g}{scale}"


@dataclass
class Space:
    dimensions: list[Dimension]

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise ValueError("the search space is empty: give at least one parameter to search")

    def decode(self, latent) -> dict:
        return {d.name: d.decode(float(u)) for d, u in zip(self.dimensions, latent)}

    def encode(self, params: dict) -> list[float]:
        return [x for d in self.dimensions for x in d.encode(params[d.name])]

    def grid(self, most: int):
        """The latent coordinates of every point of the space (a tensor, one row a point) where it is a grid of at
        most `most` points (no float interval); else None."""
        import itertools

        import torch

        if any(d.kind == FLOAT for d in self.dimensions) or math.prod(d.values for d in self.dimensions) > most:
            return None
        return torch.tensor(list(itertools.product(*(d.cells() for d in self.dimensions))), dtype=torch.float64)

    def features(self, latent):
        """The GP's inputs of the points at these latent coordinates (a tensor, one row a point)."""
        import torch

        return torch.cat([d.features(latent[:, i]) for i, d in enumerate(self.dimensions)], dim=1)


def settings_problems(direction: str, algorithm: str, n_initial: int, refit_every: int,
                      patience: int | None = None) -> list[str]:
    """What is wrong with these settings of the optimiser, one line each, named as the settings are."""
    problems = [f"patience={patience}: at least 0 (0: never restart), or null"] if (patience or 0) < 0 else []
    if direction not in ("minimize", "maximize"):
        problems.append(f"direction={direction}: minimize or maximize")
    if algorithm not in ALGORITHMS:
        problems.append(f"algorithm={algorithm}: one of {', '.join(ALGORITHMS)}")
    problems += [f"{name}={value}: at least 1" for name, value in (("n_initial", n_initial),
                                                                    ("refit_every", refit_every)) if value < 1]
    return problems


@dataclass
class Observation:
    params: dict
    value: float
    fraction: float = 1.0  # of a full training (resource)
    number: int = 0  # of the proposal it came from


IMPROVEMENT = 0.03  # of the range of a search's values: less is no improvement (noise refines a best forever)


@dataclass(frozen=True)
class Basin:
    """Where a search that stalled had settled: its best trial's inputs to the GP (`centre`, the space's
    columns) and its GP's lengthscales there. A fresh search proposes no point whose distance to the centre,
    each column in its lengthscales, is under BASIN_RADIUS: on Hartmann6 the local maximum is a ridge, flat in
    two of six dimensions (lengthscales 5 to 19 where the others have 0.3), and a fresh search that was kept
    only from a ball around the old best climbed the same ridge a little further along."""

    centre: tuple
    lengthscales: tuple

    def holds(self, columns):
        """Which of these points (n x columns) lie in the basin."""
        import torch

        centre, scales = (torch.tensor(v, dtype=columns.dtype) for v in (self.centre, self.lengthscales))
        return (((columns - centre) / scales) ** 2).sum(dim=1) < BASIN_RADIUS**2


BASIN_RADIUS = 1.0  # in lengthscales: where the GP's kernel (BoTorch's default RBF) correlates a point with the best
# by exp(-1/2) = 0.61 or more


@dataclass(frozen=True)
class Search:
    """Which trials the GP learns from (numbered from `since`; 0: all), from which trial a stall counts
    (`counting_from`), and the basins of the searches that stalled before it (`avoid`, where a fresh search
    proposes nothing): the first search is (0, 0), a fresh one (k, k), a merged one (0, k)."""

    since: int = 0
    counting_from: int = 0
    avoid: tuple = ()  # Basin, ...

    @property
    def fresh(self) -> bool:
        return self.since > 0

    def state(self) -> list:
        """As JSON keeps it: [since, counting_from, [[centre, lengthscales], ...]]."""
        return [self.since, self.counting_from, [[list(b.centre), list(b.lengthscales)] for b in self.avoid]]

    @classmethod
    def from_state(cls, state: list) -> Search:
        since, counting_from, *avoid = state  # a state from before basins were kept has none
        return cls(since, counting_from, tuple(Basin(tuple(c), tuple(s)) for c, s in (avoid[0] if avoid else [])))


@dataclass
class Optimizer:
    """Thompson sampling (`asy_ts`, `syn_ts`) or uniform random search (`asy_random`, `syn_random`) over
    `space`. Whether proposals are made one at a time or in batches is the caller's loop; the optimiser
    proposes one point per call."""

    space: Space
    direction: str = "minimize"
    algorithm: str = "asy_ts"
    n_initial: int = 10  # Sobol points before the GP takes over
    refit_every: int = 25  # observations between two fits of the GP's hyperparameters
    seed: int = 0
    n_candidates: int = 2048  # Sobol candidates a posterior sample is scored on; a grid of at most this many: whole
    resource_floor: float | None = None  # the smallest fraction of a training observed; None: full ones only
    patience: int | None = None  # trials without improvement before a fresh search; None: 40, or 5 a dimension
    budget: int | None = None  # trials in all (the sweep's n_trials), if known: no fresh search too late to pay
    observations: list[Observation] = field(default_factory=list)
    proposed: int = 0
    searches: list[Search] = field(default_factory=lambda: [Search()])  # the current one last

    def __post_init__(self) -> None:
        problems = settings_problems(self.direction, self.algorithm, self.n_initial, self.refit_every,
                                     self.patience)
        if self.resource_floor is not None and not 0 < self.resource_floor <= 1:
            problems.append(f"resource_floor={self.resource_floor}: a fraction of a training, in (0, 1]")
        if problems:
            raise ValueError("; ".join(problems))
        if self.patience is None:
            self.patience = max(40, 5 * len(self.space.dimensions))
        self.gp = GP(self.space, self.direction, self.refit_every, self.resource_floor, self.n_candidates)
        self._replaying = False  # observations given back after a resume (replay)

    @property
    def thompson(self) -> bool:
        return self.algorithm.endswith("_ts")

    @property
    def batched(self) -> bool:
        return self.algorithm.startswith("syn_")

    # ------------------------------------------------------------------------------------------ tell
    def observe(self, params: dict, value: float, fraction: float = 1.0, number: int | None = None) -> None:
        """The objective at params (as the caller measured it, in its own direction), after `fraction` of a
        full training (below 1 only with a resource_floor: a trial stopped early, or one of its epochs).
        `number`: the proposal it came from (0 the first; None: the latest), which says to which search it
        belongs; a caller with several proposals in flight gives it."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"the objective at {params} is {value}: only finite values can be observed")
        if fraction != 1.0 and not (self.resource_floor is not None and self.resource_floor <= fraction < 1.0):
            raise ValueError(f"fraction={fraction}: 1, or from resource_floor={self.resource_floor} up to 1")
        self.space.encode(params)  # refuse params outside the space now
        number = max(self.proposed - 1, 0) if number is None else int(number)
        self.observations.append(Observation(dict(params), value, fraction, number))
        if (self.thompson and self.patience and not self._replaying and self.stalled() >= self.patience
                and self._worth_restarting()):
            self._restart()

    @contextlib.contextmanager
    def replay(self, searches: list[Search]):
        """Observations given back after a resume, with the searches as they were (if kept): none of them
        restarts a search, since the searches are known (and a restart would fit a GP for nothing)."""
        self._replaying = bool(searches)
        try:
            yield
        finally:
            self._replaying = False
        if searches:
            self.searches = list(searches)

    @property
    def search(self) -> Search:
        return self.searches[-1]

    def seen(self) -> list[Observation]:
        """The observations the current search learns from."""
        return [o for o in self.observations if o.number >= self.search.since]

    def stalled(self) -> float:
        """Trials of the current search, counted from its counting_from, proposed after the last one that
        improved its best full training by more than IMPROVEMENT of its values' range; a trial stopped early
        counts the fraction of a training it had (with a pruner, patience is in full trainings' worth), but in a
        fresh search, which explores, it counts whole: a pruner may stop every trial of a fresh search at its
        first rung (they are compared with the refined trials of the searches before), and counted in
        fractions, or waiting for full trainings, such a search would never stall and take the rest of the
        sweep."""
        seen, search = self.seen(), self.search
        full = sorted(self.full(seen), key=lambda o: o.number)
        if len(full) < self.n_initial and not search.fresh:
            return 0
        sign = -1.0 if self.direction == "minimize" else 1.0
        values = [sign * o.value for o in full]
        tolerance = IMPROVEMENT * (max(values) - min(values)) if values else 0.0
        best, improved = -math.inf, -1
        for obs, value in zip(full, values):
            if value > best + tolerance:
                improved = obs.number
            best = max(best, value)
        # a first or fresh search stalls only once its GP proposes, after its design
        design = self.n_initial if search.since == search.counting_from else 0
        after = max(improved + 1, search.counting_from + design)
        trained: dict[int, float] = {}
        for obs in seen:
            if obs.number >= after:
                trained[obs.number] = max(trained.get(obs.number, 0.0), 1.0 if search.fresh else obs.fraction)
        return sum(trained.values())

    def _worth_restarting(self) -> bool:
        """A merge always is; a fresh search only with room for its design and twice the patience."""
        left = math.inf if self.budget is None else self.budget - self.proposed
        return self.search.fresh or left >= self.n_initial + 2 * self.patience

    def _restart(self) -> None:
        """A fresh search (after the first one, or a merged one, stalled), or the fresh one merged with all
        that came before (after it stalled); either knows the basin the stalled one had settled in."""
        now, search = self.proposed, self.search
        avoid = search.avoid + tuple(self._basin())
        self.searches.append(Search(0, now, avoid) if search.fresh else Search(now, now, avoid))
        self.gp.reset()

    def _basin(self) -> list[Basin]:
        """The basin of the current search: its own best trial, in the lengthscales of its GP fitted now."""
        best = self.best([o for o in self.observations if o.number >= self.search.counting_from])
        if best is None or len(self.seen()) < 2:
            return []
        with self._random(self.proposed):
            model = self.gp.model(self.seen(), refit=True)
        scales = next(m.lengthscale for m in model.covar_module.modules() if getattr(m, "lengthscale", None)
                      is not None).detach().reshape(-1)
        centre = self.space.encode(best.params)
        return [Basin(tuple(centre), tuple(scales[:len(centre)].tolist()))]

    def full(self, observations: list[Observation] | None = None) -> list[Observation]:
        """The observations of full trainings, among these (all of them by default)."""
        return [o for o in (self.observations if observations is None else observations) if o.fraction == 1.0]

    def best(self, observations: list[Observation] | None = None) -> Observation | None:
        """The best full training among these observations (all of them by default)."""
        full = self.full(observations)
        if not full:
            return None
        pick = min if self.direction == "minimize" else max
        return pick(full, key=lambda o: o.value)

    # ------------------------------------------------------------------------------------------- ask
    def propose(self, pending: list[dict] = ()) -> dict:
        """The next point to evaluate. `pending`: points being evaluated now; a proposal never repeats one
        of them (Thompson sampling otherwise ignores them: each call draws a fresh posterior sample)."""
        import torch

        number, gp = self.proposed, self._gp_next()
        self.proposed += 1
        with self._random(number):
            if not self.thompson:
                return self.space.decode(torch.rand(len(self.space.dimensions), dtype=torch.float64).tolist())
            if not gp:
                since = self.search.since
                return self._sobol(number - since, self.seed + since, self._avoided())
            return self._thompson(pending)

    def repeat(self, params: dict) -> dict:
        """A tried point proposed again (the caller confirms a noisy best): it counts as a proposal."""
        self.proposed += 1
        return dict(params)

    def prefit(self) -> None:
        """Fit the GP's hyperparameters now where the next proposal would fit them, or would once one more
        result is in. A caller whose workers are all busy calls this after it submitted, so that the fit (and
        the first time, BoTorch's import) is not paid between a trial's end and the next trial's start."""
        if self._gp_next() and self.gp.fit_due(len(self.seen()) + 1):
            with self._random(self.proposed):  # a fit that retries draws
                self.gp.model(self.seen(), ahead=1)

    @contextlib.contextmanager
    def _random(self, number: int):
        """Torch's random numbers for proposal `number`: reproducible, the same after a resume, and apart from
        the caller's stream (restored after)."""
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(self.seed * 1_000_003 + number)
            yield

    def _gp_next(self) -> bool:
        """Whether the next proposal is the GP's (else the search's Sobol design, or random search)."""
        return (self.thompson and self.proposed - self.search.since >= self.n_initial
                and len(self.seen()) >= 2)

    def _sobol(self, number: int, seed: int, avoid: tuple = ()) -> dict:
        """Point `number` of a scrambled Sobol sequence, counting only the points outside these basins."""
        import torch

        engine = torch.quasirandom.SobolEngine(len(self.space.dimensions), scramble=True, seed=seed)
        if not avoid:
            engine.fast_forward(number)
            return self.space.decode(engine.draw(1, dtype=torch.float64)[0].tolist())
        drawn = engine.draw(8 * max(128, self.n_initial), dtype=torch.float64)  # the same for every number
        held = inside(self.space.features(drawn), avoid)
        ordered = torch.cat([drawn[~held], drawn[held]])  # basins that hold nearly all: their points last
        return self.space.decode(ordered[number].tolist())

    def _avoided(self) -> tuple:
        """The basins the current search proposes nothing in: those of the searches before, if it is fresh."""
        return self.search.avoid if self.search.fresh else ()

    def _thompson(self, pending) -> dict:
        """The maximiser of one sample of the current search's GP, away from the basins it avoids."""
        seen = self.seen()
        best = sorted(self.full(seen) or seen, key=lambda o: o.value, reverse=self.direction == "maximize")[:5]
        return self.gp.propose(seen, best, pending, self._avoided())
