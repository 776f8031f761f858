"""Early stopping from what trials report while they run (no Hydra here): each pruner sees a trial's value at
a step (its resource: an epoch, say) and says whether to stop it, and why.

- `asha`: asynchronous successive halving (Li et al., MLSys 2020), in its stopping form: rungs at
  min_resource * reduction_factor**k below max_resource; a trial reaching a rung goes on only if its value there
  is in the top 1/reduction_factor of the values of every trial that reached that rung so far (with fewer than
  reduction_factor trials there, it goes on). Nobody waits for a rung to fill: asynchronous. With
  rungs=measured a rung stops trials only once MEASURED_TRIALS trials are done and at most MAX_REVERSED of
  their pairs are in the reverse order there of their final order: where curves cross, early values say little.
  With brackets > 1, asynchronous Hyperband (Li et al. 2020): each trial is in one of ASHA's brackets,
  bracket b judging it first at rung b and comparing it only with the trials of its bracket; with brackets =
  rungs + 1 (the most), the last bracket is past every rung and stops nothing. A hedge against rungs that stop
  the best configs.
- `median`: Optuna's median rule: from min_resource on, a trial whose value at a step is worse than the median
  of the other trials' values at that step (each trial's value at its first report at or past the step).
- `extrapolate`: learning-curve extrapolation (Domhan et al., IJCAI 2015, in its simplest form): from
  min_resource on, with MIN_REPORTS reports or more, a trial's curve so far is fitted by exponential decays
  towards an asymptote, value = a + b * exp(-k * step / max_resource), one least-squares fit per rate k on a grid
  (from k = 1, a decay as slow as the training, to a curve already flat at its first report), and by power laws,
  value = a + b * (step / max_resource)**-p (p from 0.05 to 3), which decay slower. The fits the data
  allow (their squared residuals within Z**2 noise variances of the best fit's; the noise variance pooled from
  the finished trials' fits) give the value at max_resource, less Z of its standard errors; the trial stops when
  even the lowest of these is worse than the best finished trial's final value. A fast starter that has
  flattened out worse than the best stops early; a slow starter whose curve could still end better goes on,
  since its slow decays fit as well as its fast ones. Nothing stops before a trial has finished and the
  finished ones have MIN_NOISE_DOF residuals.
- A value that is NaN or infinite stops its trial at once.

Values are minimised here; the sweeper flips the sign of a maximised metric. `fidelities(trial)` gives what
the GP learns from a trial's curve: its values at the levels min_resource * reduction_factor**k below
max_resource (ASHA's rungs) and its last value past them (a trial stopped between levels), each at its fraction
of a full training (MOBSTER, Klein et al. 2020; Syne Tune's searcher_data=rungs_and_last). The levels' values
are final once reached: the study gives them to the GP while the trial runs (study.Study.take).

The pruners keep only their rung tables (and counters): the trials' curves are the study's, read through
`Reports`, a view of its records that copies nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence

PRUNERS = ("none", "median", "asha", "extrapolate")
RUNGS = ("always", "measured")
MEASURED_TRIALS = 8  # rungs=measured: trials done before a rung's crossing counts
MAX_REVERSED = 0.3  # rungs=measured: the share of reversed pairs above which a rung stops nothing
MIN_REPORTS = 3  # extrapolate: the reports a curve needs before it is fitted (three parameters)
MIN_NOISE_DOF = 10  # extrapolate: the finished trials' residuals (degrees of freedom) before the noise counts
Z = 2.0  # extrapolate: the fits within Z**2 noise variances of the best, and their bounds Z standard errors low
RATES = 60  # extrapolate: the exponential decays' rates fitted, log-spaced
POWERS = 30  # extrapolate: the power laws' exponents fitted, log-spaced
MAX_POINTS = 100  # extrapolate: the reports of a curve fitted at most (evenly spread)


def settings_problems(pruner: str, min_resource: float, max_resource: float | None, reduction_factor: int,
                      rungs: str = "always", brackets: int = 1) -> list[str]:
    problems = []
    if pruner not in PRUNERS:
        problems.append(f"pruner={pruner}: one of {', '.join(PRUNERS)}")
    if rungs not in RUNGS:
        problems.append(f"rungs={rungs}: one of {', '.join(RUNGS)}")
    elif rungs != "always" and pruner != "asha":
        problems.append(f"rungs={rungs}: rungs are asha's; leave it at always")
    if int(brackets) != 1 and pruner != "asha":
        problems.append(f"brackets={brackets}: brackets are asha's (asynchronous Hyperband); leave it at 1")
    if pruner == "none":
        return problems
    if not min_resource > 0:
        problems.append(f"min_resource={min_resource}: the first step that counts, above 0")
    if max_resource is None:
        problems.append(f"max_resource=null: {pruner} needs the step at which a trial is done (e.g. the epochs): "
                        "the GP learns from each trial's curve as a fraction of it")
    if max_resource is not None and not max_resource > min_resource:
        problems.append(f"max_resource={max_resource}: above min_resource={min_resource}")
    if int(reduction_factor) < 2:
        problems.append(f"reduction_factor={reduction_factor}: at least 2")
    elif max_resource is not None and max_resource > min_resource > 0:
        most = len(Pruner(min_resource, max_resource, reduction_factor).levels) + 1
        if not 1 <= int(brackets) <= most:
            problems.append(f"brackets={brackets}: 1 (ASHA) to {most} (one per rung, and one that stops nothing)")
    return problems


class Reports:
    """What the trials reported of the pruner's metric, signed so that lower is better: a view of records kept
    elsewhere (each a dict {"step", metric: value, ...}, as the study keeps a trial's curve), read, never copied.
    `curve(n)`: trial n's records; `numbers()`: the trials there are."""

    def __init__(self, curve: Callable[[int], Sequence[dict]], numbers: Callable[[], Iterable[int]],
                 metric: str = "value", sign: float = 1.0):
        self.records, self.numbers, self.metric, self.sign = curve, numbers, metric, sign

    def curve(self, trial: int) -> Iterator[tuple[float, float]]:
        """The trial's (step, value) pairs, in the order reported."""
        metric, sign = self.metric, self.sign
        return ((r["step"], sign * r[metric]) for r in self.records(trial) if metric in r)

    def last(self, trial: int) -> tuple[float, float] | None:
        """The trial's last (step, value)."""
        metric = self.metric
        return next(((r["step"], self.sign * r[metric]) for r in reversed(self.records(trial)) if metric in r),
                    None)


class Pruner:
    """Never stops a trial, but one whose value is NaN or infinite."""

    def __init__(self, min_resource: float = 1.0, max_resource: float = 1.0, reduction_factor: int = 3,
                 reports: Reports | None = None):
        self.min_resource, self.max_resource, self.eta = min_resource, max_resource, int(reduction_factor)
        self.reports = reports  # the trials' curves, the study's (observe's report is in it already)
        self.levels: list[float] = []  # min_resource * eta**k below max_resource: ASHA's rungs
        level = min_resource
        while level < max_resource:
            self.levels.append(level)
            level *= self.eta

    def observe(self, trial: int, step: float, value: float) -> str | None:
        """The trial's value at a step, its last report in `reports`; why to stop it, or None to let it go on."""
        if not math.isfinite(value):
            return f"its value is {value} at step {step:g}"
        return self.decide(trial, step, value)

    def decide(self, trial: int, step: float, value: float) -> str | None:
        return None

    def forget(self, trial: int) -> None:
        """The trial runs again from its start (it died with an earlier sweeper): what it reported is void."""

    def value_at(self, trial: int, step: float) -> float | None:
        """The trial's value at its first report at or past `step`."""
        return next((v for s, v in self.reports.curve(trial) if s >= step), None)

    def fidelities(self, trial: int) -> list[tuple[float, float]]:
        """What the GP learns of a trial that ended, each at its fraction of a full training where its value is
        finite: its value at each level it reached (its first report at or past the level, which no later report
        changes: the study gives it to the GP the moment it is reported), and its last report if no level took it,
        from min_resource and before max_resource (Syne Tune's rungs_and_last): a trial stopped between levels
        tells the GP how far it had got."""
        curve = list(self.reports.curve(trial))  # read once, here only, when the trial ends
        taken = [(level, next((i for i, (s, _) in enumerate(curve) if s >= level), None)) for level in self.levels]
        points = [(level / self.max_resource, curve[i][1]) for level, i in taken if i is not None]
        if (curve and len(curve) - 1 not in {i for _, i in taken}
                and self.min_resource <= curve[-1][0] < self.max_resource):
            points.append((curve[-1][0] / self.max_resource, curve[-1][1]))
        return [(fraction, value) for fraction, value in points if math.isfinite(value)]


class Median(Pruner):
    def decide(self, trial: int, step: float, value: float) -> str | None:
        if step < self.min_resource or step >= self.max_resource:
            return None
        others = [v for t in self.reports.numbers() if t != trial for v in [self.value_at(t, step)]
                  if v is not None and math.isfinite(v)]
        if len(others) < 2:
            return None
        median = statistics.median(others)
        if value > median:
            return f"median rule: {value:.4g} at step {step:g}, worse than the median {median:.4g} of {len(others)}"
        return None


class Asha(Pruner):
    def __init__(self, *args, measured: bool = False, brackets: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.at_rung: dict[tuple[int, float], dict[int, float]] = {}  # (bracket, rung) -> trial -> value there
        self.measured = measured  # rungs=measured: a rung stops trials once the curves show it can rank them
        self.reversed: dict[tuple[float, int], float] = {}  # (rung, trials done) -> share of reversed pairs
        # asynchronous Hyperband: bracket b's first rung is levels[b] (with len(levels) + 1 brackets, the last is
        # past every rung and stops nothing); the trials go to the brackets in equal shares (synchronous
        # Hyperband's shares, which Syne Tune and AutoGluon use, stop more trials from the first rung: measured
        # worse in bench/pruning.py)
        self.brackets = int(brackets)

    def forget(self, trial: int) -> None:
        for here in self.at_rung.values():
            here.pop(trial, None)

    def bracket(self, trial: int) -> int:
        """The trial's bracket, from its number alone (so the same after a resume): the golden-ratio sequence
        spreads the brackets evenly over the trials, whichever of them run at once."""
        return int((trial * 0.6180339887498949 + 0.5) % 1.0 * self.brackets)

    def reversed_share(self, rung: float) -> float | None:
        """Of the trials done (they reached max_resource), the share of pairs whose order at `rung` is the
        reverse of their final order; None with fewer than MEASURED_TRIALS of them."""
        lasts = ((t, self.reports.last(t)) for t in self.reports.numbers())
        done = [(self.value_at(t, rung), self.value_at(t, self.max_resource)) for t, last in lasts
                if last is not None and last[0] >= self.max_resource and math.isfinite(last[1])]
        done = [(early, final) for early, final in done if early is not None and math.isfinite(early)]
        if len(done) < MEASURED_TRIALS:
            return None
        key = (rung, len(done))
        if key not in self.reversed:
            pairs = [(a, b) for i, a in enumerate(done) for b in done[i + 1:]]
            self.reversed[key] = sum((a[0] - b[0]) * (a[1] - b[1]) < 0 for a, b in pairs) / len(pairs)
        return self.reversed[key]

    def stops_at(self, rung: float) -> bool:
        if not self.measured:
            return True
        share = self.reversed_share(rung)
        return share is not None and share <= MAX_REVERSED

    def decide(self, trial: int, step: float, value: float) -> str | None:
        bracket = self.bracket(trial)
        for rung in self.levels[bracket:]:
            here = self.at_rung.setdefault((bracket, rung), {})
            if rung > step or trial in here:
                continue
            value = self.value_at(trial, rung)  # one that is not finite ranks last (its trial is stopped)
            here[trial] = value if math.isfinite(value) else math.inf
            if len(here) < self.eta or not self.stops_at(rung):
                continue
            keep = max(1, len(here) // self.eta)
            cutoff = sorted(here.values())[keep - 1]
            if here[trial] > cutoff:
                among = f" of bracket {bracket}" if self.brackets > 1 else ""
                return (f"ASHA: {here[trial]:.4g} at step {rung:g} is not in the top 1/{self.eta} of the "
                        f"{len(here)} trials{among} there (cut-off {cutoff:.4g})")
        return None


class Extrapolate(Pruner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.finals: dict[int, float] = {}  # finished trial -> its value at max_resource
        self.best = math.inf  # the best of them (kept, not searched for at every report of a large sweep)
        self.squares, self.dof = 0.0, 0  # the finished trials' fits: squared residuals, degrees of freedom
        self.judged: dict[int, int] = {}  # trial -> its reports when it was last judged
        self.counts: dict[int, int] = {}  # trial -> its reports so far

    def forget(self, trial: int) -> None:
        self.counts.pop(trial, None)
        if self.finals.pop(trial, None) is not None:  # it had reached max_resource before it died
            self.best = min(self.finals.values(), default=math.inf)
        self.judged.pop(trial, None)

    def decide(self, trial: int, step: float, value: float) -> str | None:
        reports = self.counts[trial] = self.counts.get(trial, 0) + 1
        last = self.judged.get(trial, 0)
        if step < self.max_resource and reports - last < max(1, last // 20):
            return None  # judged at most once per 5 % more reports: a task reporting every batch costs little
        self.judged[trial] = reports
        if step >= self.max_resource:
            self.finish(trial, value)
            return None
        if step < self.min_resource or not self.finals or self.dof < MIN_NOISE_DOF:
            return None
        curve = self.fitted(trial)
        if len(curve) < MIN_REPORTS:
            return None
        squares, ends, variances = self.fits(curve)
        noise = self.squares / self.dof
        fitted = squares == squares  # not NaN: a fit that is not degenerate
        if not fitted.any():
            return None
        plausible = fitted & (squares <= squares[fitted].min() + Z**2 * noise)
        bound = float((ends - Z * (noise * variances) ** 0.5)[plausible].min())
        if bound > self.best:
            return (f"extrapolated: its curve ends at step {self.max_resource:g} at {bound:.4g} at best, worse "
                    f"than the best finished trial's {self.best:.4g}")
        return None

    def finish(self, trial: int, value: float) -> None:
        """A trial at max_resource: its final value, and its best fit's residuals to the pooled noise."""
        if trial in self.finals:
            return
        self.finals[trial] = value
        self.best = min(self.best, value)
        curve = self.fitted(trial)
        if len(curve) > MIN_REPORTS:
            squares = self.fits(curve)[0]
            squares = squares[squares == squares]  # not NaN: the fits that are not degenerate
            if len(squares):
                self.squares += float(squares.min())
                self.dof += len(curve) - MIN_REPORTS

    def fitted(self, trial: int) -> list[tuple[float, float]]:
        """The trial's reports that a curve is fitted to: finite values at steps above 0, the last at a step
        reported twice (a task may report several times a step); at most MAX_POINTS of them, evenly spread
        from the first to the last (a task reporting every batch: a fit's cost stays bounded)."""
        points = sorted({step: value for step, value in self.reports.curve(trial)
                         if step > 0 and math.isfinite(value)}.items())
        if len(points) <= MAX_POINTS:
            return points
        return [points[round(i * (len(points) - 1) / (MAX_POINTS - 1))] for i in range(MAX_POINTS)]

    def fits(self, curve: list[tuple[float, float]]):
        """Least squares of value = a + b * basis(step / max_resource), one fit per basis: exp(-k s) for decay
        rates k (from 1, as slow as the training, to a curve flat from its first report) and s**-p for power laws
        (Domhan et al.'s pow3; training curves often decay so, slower than any exponential). Each fit's squared
        residuals, its value at max_resource and that value's variance per unit noise variance (NaN where the
        fit is degenerate)."""
        import numpy as np

        s = np.array([step for step, _ in curve]) / self.max_resource
        y = np.array([value for _, value in curve])
        fastest = max(2.0, 12.0 / s.min())  # exp(-12) at the first report: flat from there on
        k = np.geomspace(1.0, fastest, RATES)[:, None]
        p = np.geomspace(0.05, 3.0, POWERS)[:, None]
        e = np.concatenate([np.exp(-k * s), s ** -p])  # bases x reports: each fit's design is [1, e]
        end = np.concatenate([np.exp(-k[:, 0]), np.ones(POWERS)])  # each basis at max_resource (s = 1)
        n, se, see = len(s), e.sum(1), (e * e).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            det = n * see - se**2
            det[~(det > 1e-12 * see * n)] = np.nan  # a basis nearly constant over the reports: no fit
            sy, sey = y.sum(), (e * y).sum(1)
            a = (see * sy - se * sey) / det
            b = (n * sey - se * sy) / det
            squares = ((y - a[:, None] - b[:, None] * e) ** 2).sum(1)
            variances = (see - 2 * se * end + n * end**2) / det  # [1, end] (A^T A)^-1 [1, end]^T
        return squares, a + b * end, variances


def make(pruner: str, min_resource: float, max_resource: float | None, reduction_factor: int,
         rungs: str = "always", brackets: int = 1, reports: Reports | None = None) -> Pruner:
    """The pruner of these (checked) settings. `none` never stops a trial and has no levels: the GP then
    learns from final values only. `rungs` (asha): always, or measured (a rung stops trials once the done
    trials show that its order is their final one: at most MAX_REVERSED of their pairs reversed). `reports`: the
    trials' curves it reads (the study's)."""
    full = float(max_resource) if pruner != "none" else float(min_resource)
    if pruner == "asha":
        return Asha(float(min_resource), full, int(reduction_factor), reports, measured=rungs == "measured",
                    brackets=brackets)
    pruners = {"none": Pruner, "median": Median, "extrapolate": Extrapolate}
    return pruners[pruner](float(min_resource), full, int(reduction_factor), reports)
