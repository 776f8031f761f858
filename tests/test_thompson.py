"""hydra/sweeper=thompson: its search space, its proposals, failed trials, resume, and the event loop that
keeps every worker busy on aws_batch_local (the local cloud's runs are in test_e2e.py)."""

from __future__ import annotations

import concurrent.futures
import csv
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hydra_plugins.hydra_thompson_sweeper._optimizer import Dimension, Optimizer, Space
from hydra_plugins.hydra_thompson_sweeper._space import SweepError, search_space
from hydra_plugins.hydra_thompson_sweeper._trials import STATE, TrialStatus
from hydra_plugins.hydra_thompson_sweeper.config import ThompsonSweeperConf
from hydra_plugins.hydra_thompson_sweeper.study import Study
from tests.conftest import manifest, refill_gaps

THOMPSON = ["hydra/sweeper=thompson", "hydra.sweeper.n_initial=4"]

# A task whose run time is random (from its parameters) and whose calls are counted in calls.txt
TASK = """
    import hashlib, time
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        with open("{calls}", "a") as calls:
            calls.write(f"{{cfg.x}} {{cfg.n}} {{cfg.kind}}\\n")
        seconds = cfg.get("seconds", 0)
        if seconds:  # 0.2 to 1.4 s, say: a random run time that the parameters fix
            digest = hashlib.sha256(f"{{cfg.x}}{{cfg.n}}".encode()).digest()
            time.sleep(seconds * (0.2 + 1.2 * digest[0] / 255))
        if cfg.get("fail_above") is not None and cfg.x > cfg.fail_above:
            raise ValueError(f"x={{cfg.x}} is too large")
        return {{"loss": (cfg.x - 0.3) ** 2 + (cfg.n - 7) ** 2 / 100 + (0 if cfg.kind == "b" else 0.2), "other": 1}}

    if __name__ == "__main__":
        main()
"""
SPACE = ["+x=interval(0, 1)", "+n=range(1, 12)", "+kind=a,b,c", "hydra.sweeper.objective=loss"]


@pytest.fixture
def sweep_app(tmp_path, app_env):
    """Run the TASK app with these arguments as `python my_app.py --multirun ...`; the finished process."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "my_app.py").write_text(textwrap.dedent(TASK.format(calls=tmp_path / "calls.txt")))

    def run(*args: str, check: bool = True, timeout: float = 300):
        proc = subprocess.run([sys.executable, "my_app.py", "--multirun", *THOMPSON, *SPACE, *args], cwd=app,
                              env=app_env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    run.calls = lambda: (tmp_path / "calls.txt").read_text().splitlines()
    run.app = app
    return run


def trials_csv(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv") as stream:
        return list(csv.DictReader(stream))


# ------------------------------------------------------------------------------------------ the space
@pytest.mark.unit
def test_search_space_reads_every_form_of_the_override_grammar():
    params = {"lr": "tag(log, interval(1e-4, 1e-1))", "optimizer": "choice(adam, sgd)", "epochs": 3}
    space, fixed = search_space(params, ["model.hidden=range(32, 512, 32)", "drop=interval(0, 0.5)",
                                         "+batch_size=32,64,128", "frac=range(0.1, 0.5, 0.1)", "seed=1",
                                         "+tag=x", "~other"])
    dims = {d.name: d for d in space.dimensions}
    assert fixed == ["epochs=3", "seed=1", "+tag=x", "~other"]
    assert (dims["lr"].kind, dims["lr"].low, dims["lr"].high, dims["lr"].log) == ("float", 1e-4, 1e-1, True)
    assert dims["optimizer"].choices == ("adam", "sgd")
    assert (dims["model.hidden"].kind, dims["model.hidden"].low, dims["model.hidden"].high) == ("int", 32, 480)
    assert dims["model.hidden"].values == 15  # range() stops before 512, as Hydra's basic sweeper does
    assert (dims["drop"].kind, dims["drop"].low, dims["drop"].high, dims["drop"].log) == ("float", 0, 0.5, False)
    assert dims["+batch_size"].choices == (32, 64, 128)
    assert dims["frac"].kind == "grid" and dims["frac"].values == 4


@pytest.mark.unit
@pytest.mark.parametrize("params, arguments, expected", [
    ({"lr": "tag(log, interval(0, 1))"}, [], "lr: a log scale needs a lower bound above 0"),
    ({}, ["x=interval(2, 1)"], "x: the lower bound 2.0 must be below the upper bound 1.0"),
    ({}, ["x=1", "y=2"], "nothing to search"),
    ({"x": "glob(*)"}, [], "only interval, range and choice sweeps are searched"),
])
def test_a_bad_search_space_is_refused_naming_the_parameter(params, arguments, expected):
    with pytest.raises(SweepError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        search_space(params, arguments)


@pytest.mark.unit
def test_the_sweepers_error_is_still_the_one_callers_catch_after_hydras_plugin_scan():
    """Hydra's plugin scan runs plugin modules again, their classes anew: an error class kept there would no
    longer be the one that callers (and these tests) catch."""
    from hydra.core.plugins import Plugins

    import hydra_plugins

    Plugins._scan_all_plugins([hydra_plugins])
    with pytest.raises(SweepError, match="nothing to search"):
        search_space({}, ["x=1"])


# ------------------------------------------------------------------------------------------ proposals
MIXED = Space([Dimension.interval("lr", 1e-4, 1e-1, log=True), Dimension.integers("hidden", 32, 512, 32),
               Dimension.integers("frac", 0.1, 0.4, 0.1), Dimension.choice("model", ["mlp", "cnn", "rnn"])])


def loss(p: dict) -> float:
    return (math.log10(p["lr"]) + 2.5) ** 2 + (p["hidden"] - 256) ** 2 / 1e4 + {"mlp": 0.5, "cnn": 0, "rnn": 1}[
        p["model"]] + p["frac"]


@pytest.mark.unit
def test_proposals_respect_bounds_steps_and_choices_and_repeat_for_a_seed():
    runs = []
    for _ in range(2):
        opt = Optimizer(MIXED, n_initial=4, refit_every=5, seed=3)
        proposals = []
        for _ in range(14):  # 10 from the GP's posterior samples, with two refits
            p = opt.propose(pending=proposals[-2:])
            proposals.append(p)
            opt.observe(p, loss(p))
        runs.append(proposals)
    assert runs[0] == runs[1]  # the same seed and results: the same trials
    for p in runs[0]:
        assert isinstance(p["lr"], float) and 1e-4 <= p["lr"] <= 1e-1
        assert isinstance(p["hidden"], int) and 32 <= p["hidden"] <= 512 and p["hidden"] % 32 == 0
        assert p["frac"] in (0.1, 0.2, 0.3, 0.4)
        assert p["model"] in ("mlp", "cnn", "rnn")


@pytest.mark.unit
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_gp_finds_better_points_than_random_search_on_the_same_budget(seed):
    """16 trials on a smooth 2-D bowl, 4 of them Sobol points: Thompson sampling's best is 10 times closer to
    the minimum than random search's (measured: 30 to 5,000 times, over 5 seeds)."""
    space = Space([Dimension.interval("x", 0, 1), Dimension.interval("y", 0, 1)])

    def bowl(p):
        return (p["x"] - 0.3) ** 2 + (p["y"] - 0.7) ** 2

    best = {}
    for algorithm in ("asy_ts", "asy_random"):
        opt = Optimizer(space, algorithm=algorithm, n_initial=4, refit_every=5, seed=seed)
        proposals = []
        for _ in range(16):
            proposals.append(opt.propose(pending=proposals[-2:]))
            opt.observe(proposals[-1], bowl(proposals[-1]))
        best[algorithm] = min(bowl(p) for p in proposals)
    assert best["asy_ts"] < best["asy_random"] / 10, best


@pytest.mark.unit
def test_values_after_part_of_a_training_do_not_mislead_the_gp():
    """Curves that cross: after a ninth of a training the best x is 0.8, after a full one 0.3. Most of what the
    GP sees is early values (stopped trials), yet it proposes near 0.3, because the fraction is one of its
    inputs and proposals maximise a sample at a full training; best() counts full trainings only."""
    def loss(x, fraction):
        early, final = (x - 0.8) ** 2, (x - 0.3) ** 2
        return final + (1 - fraction) * (early - final)

    space = Space([Dimension.interval("x", 0, 1)])
    opt = Optimizer(space, n_initial=1, seed=0, resource_floor=1 / 9)
    opt.propose()
    for i in range(16):
        x = (i + 0.5) / 16
        opt.observe({"x": x}, loss(x, 1 / 9), 1 / 9)
        if i % 2:
            opt.observe({"x": x}, loss(x, 1 / 3), 1 / 3)
    for x in (0.1, 0.9, 0.45):
        opt.observe({"x": x}, loss(x, 1.0))
    assert opt.best().params == {"x": 0.45} and opt.best().fraction == 1.0  # not an early value's x
    proposals = [opt.propose()["x"] for _ in range(8)]
    assert sum(abs(x - 0.3) < 0.15 for x in proposals) >= 6, proposals
    with pytest.raises(ValueError, match="fraction=0.05: 1, or from resource_floor=0.111"):
        opt.observe({"x": 0.5}, 1.0, 0.05)
    with pytest.raises(ValueError, match="fraction=0.5: 1, or from resource_floor=None"):
        Optimizer(space).observe({"x": 0.5}, 1.0, 0.5)


@pytest.mark.unit
def test_trials_in_flight_are_believed_at_the_posterior_mean_where_the_resource_is_modelled():
    """A trial in flight at x=0.3, of which the GP knows only short trainings: a proposal's posterior sample is
    drawn as if it had ended at the posterior mean there (kriging believer), so samples vary there far less and
    do not keep proposing next to it; without a resource model (no pruner) the sample is drawn as before."""
    import statistics

    import torch

    def spread(resource_floor, believe: bool) -> float:
        torch.manual_seed(0)  # the sample paths' draws
        opt = Optimizer(Space([Dimension.interval("x", 0, 1)]), n_initial=1, seed=0, resource_floor=resource_floor)
        opt.propose()
        for x in (0.02, 0.1, 0.55, 0.7, 0.85, 0.98):
            opt.observe({"x": x}, (x - 0.3) ** 2)
        for fraction in (1 / 27, 3 / 27, 9 / 27) if resource_floor else ():
            opt.observe({"x": 0.3}, 0.5 * (1 - fraction), fraction)
        at = opt.gp.inputs(torch.tensor([[0.3]], dtype=torch.float64))
        return statistics.stdev(float(opt.gp.sample_path(opt.seen(), at if believe else None)(at))
                                for _ in range(64))

    assert spread(1 / 27, believe=True) < 0.75 * spread(1 / 27, believe=False)  # 0.45 to 0.6 over six seeds
    assert spread(None, believe=True) == spread(None, believe=False)


class Reporting:
    """The launcher's side of the async contract that the sweeper's watch and record use, for unit tests: what
    each job reported so far (the integration tests run the real launchers)."""

    def __init__(self):
        self.reports: dict[int, list[dict]] = {}

    def metrics(self, num, since=0):
        return list(self.reports.get(num, []))[since:]

    def stop(self, nums, reason, grace_s=0.0):
        pass

    def job_times(self, num):
        return None


def trial_jobs(study, launcher=None, **settings):
    """The sweeper's TrialJobs over this study and launcher, with these hydra.sweeper settings."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from hydra_plugins.hydra_thompson_sweeper._jobs import TrialJobs

    conf = {k: v for k, v in dict(asdict(ThompsonSweeperConf()), **settings).items() if k not in ("_target_", "params")}
    return TrialJobs(launcher, study, OmegaConf.create(conf), None, [], lambda batch: None)


@pytest.mark.unit
def test_the_gp_learns_a_running_trial_s_levels_as_it_reaches_them_and_each_value_once():
    """MOBSTER's searcher learns at each rung: the sweeper's watch round hands the study a trial's new reports,
    and the GP learns its value at each level (1, 3, 9 of 27 epochs) the moment the trial reports it, and at the
    trial's end only what is new (its final value), so that the proposals made while it trains know where it
    stands. The launcher is read from the trial's cursor on: the curve is kept once, in the study."""
    settings = dict(pruner="asha", min_resource=1, max_resource=27)
    study = Study(Space([Dimension.interval("x", 0, 1)]), metric="loss", **settings)
    jobs = trial_jobs(study, Reporting(), objective="loss", **settings)
    jobs.asynchronous = True
    trial, future = study.ask(), concurrent.futures.Future()
    trial.job = 0
    for last, learnt in ((2, [1 / 27]), (5, [1 / 27, 3 / 27]), (12, [1 / 27, 3 / 27, 9 / 27])):
        jobs.launcher.reports[0] = [{"step": s, "time": 0.0, "loss": 1.0 / s} for s in range(1, last + 1)]
        jobs.prune({future: trial})
        assert [(o.fraction, o.value) for o in study.optimizer.observations] == [
            (f, 1.0 / round(f * 27)) for f in learnt]
        assert [r["step"] for r in trial.curve] == list(range(1, last + 1))  # each record once
    jobs.launcher.reports[0] = [{"step": s, "time": 0.0, "loss": 1.0 / s} for s in range(1, 28)]
    jobs.record(trial, finished_job("COMPLETED", {"loss": 1.0 / 27}))
    assert sorted((o.fraction, o.value) for o in study.optimizer.observations) == [
        (1 / 27, 1.0), (3 / 27, 1 / 3), (9 / 27, 1 / 9), (1.0, 1 / 27)]
    assert trial.status == TrialStatus.COMPLETED and len(trial.curve) == 27


@pytest.mark.unit
def test_prefit_makes_the_fit_a_proposal_would_make_so_the_proposal_makes_none(monkeypatch):
    """The sweeper calls prefit() while every worker is busy: the GP's hyperparameters are fitted then, where the
    next proposal (or the one after the next result) would fit them, and not again in that proposal."""
    fits = []
    from hydra_plugins.hydra_thompson_sweeper._gp import GP

    real = GP.fit
    monkeypatch.setattr(GP, "fit", staticmethod(lambda model, warm=False: (fits.append(1), real(model, warm=warm))))
    opt = Optimizer(Space([Dimension.interval("x", 0.0, 1.0)]), n_initial=25, refit_every=5, seed=3)
    for _ in range(25):  # the Sobol design: nothing to fit before it ends (25: past the early refits)
        opt.prefit()
        opt.observe(opt.propose(), 0.5)
    assert fits == []
    opt.prefit()  # the next proposal is the GP's first: fitted now
    assert len(fits) == 1
    opt.observe(opt.propose(), 0.2)
    assert len(fits) == 1  # the proposal used that fit
    for value in (0.3, 0.1, 0.4):
        opt.prefit()  # 1, 2, 3 results since the fit: none due with the next result
        opt.observe(opt.propose(), value)
    assert len(fits) == 1
    opt.prefit()  # 4 since: the 5th comes before the next proposal, which would refit: fitted now instead
    assert len(fits) == 2
    opt.observe(opt.propose(), 0.6)
    opt.prefit()
    assert len(fits) == 2
    for value in (0.7, 0.8, 0.9):  # the schedule stays every refit_every results: 4 since the fit made ahead
        opt.observe(opt.propose(), value)
        opt.prefit()
    assert len(fits) == 2
    opt.observe(opt.propose(), 1.0)
    opt.prefit()  # 5 since: the next one is due
    assert len(fits) == 3
    opt.prefit()  # and made once
    assert len(fits) == 3
    early = GP(opt.space, refit_every=25)  # few observations: due once they grew by a fifth since the last fit
    early.hyper = {}
    for fitted, due in ((10, 12), (12, 15), (100, 120), (500, 525)):
        early.fitted_at = fitted
        assert (early.fit_due(due - 1), early.fit_due(due)) == (False, True), fitted
    random_search = Optimizer(Space([Dimension.interval("x", 0.0, 1.0)]), algorithm="asy_random", n_initial=2)
    for _ in range(4):
        random_search.observe(random_search.propose(), 1.0)
        random_search.prefit()
    assert len(fits) == 3


@pytest.mark.unit
def test_a_stalled_search_restarts_afresh_and_is_merged_when_the_fresh_one_stalls():
    """patience=4: after 4 trials proposed since the last improvement (and after the Sobol design), a fresh
    search (Sobol points of its own, a GP that sees only its trials; a trial of the old search that ends later
    stays the old search's); when the fresh one stalls too, the GP sees every trial again. patience=0 never
    restarts."""
    space = Space([Dimension.interval("x", 0, 1), Dimension.interval("y", 0, 1)])
    opt = Optimizer(space, n_initial=3, patience=4, seed=1)
    first = [opt.propose() for _ in range(3)]
    for number, p in enumerate(first):
        opt.observe(p, [1.0, 0.5, 0.8][number], number=number)
    late = opt.propose()  # trial 3, still running when the search restarts
    for number in range(4, 8):  # no better than 0.5 (less than 3% of the range better is no improvement)
        opt.observe(opt.propose(), 0.5 - 0.004, number=number)
        assert len(opt.searches) == (2 if number == 7 else 1)  # trials 4 to 7 came after the best and design
    assert (opt.search.since, opt.search.counting_from, opt.search.fresh) == (8, 8, True)
    opt.observe(late, 0.1, number=3)  # better, but the old search's: it does not count for the fresh one
    assert len(opt.searches) == 2 and opt.best().value == 0.1
    fresh = [opt.propose() for _ in range(3)]
    assert fresh != first and all(p not in first for p in fresh)  # a design of its own
    for number, p in enumerate(fresh, start=8):
        opt.observe(p, 2.0 - number / 10, number=number)
    assert [o.number for o in opt.seen()] == [8, 9, 10]  # the GP of the fresh search: its own trials
    opt.propose()  # trial 11, from that GP
    for number in range(12, 16):
        opt.observe(opt.propose(), 3.0, number=number)
    assert (opt.search.since, opt.search.counting_from, opt.search.fresh) == (0, 16, False)  # merged
    assert len(opt.seen()) == 15  # every trial that ended

    late_in_the_sweep = Optimizer(space, n_initial=3, patience=4, seed=1, budget=17)  # stalled at 7: 10 left
    for number in range(12):
        late_in_the_sweep.observe(late_in_the_sweep.propose(), 0.5 if number else 0.1, number=number)
    assert len(late_in_the_sweep.searches) == 1  # a fresh search needs its design and twice the patience

    never = Optimizer(space, n_initial=3, patience=0, seed=1)
    for number in range(20):
        never.observe(never.propose(), 1.0, number=number)
    assert len(never.searches) == 1 and len(never.seen()) == 20
    with pytest.raises(ValueError, match="patience=-1: at least 0"):
        Optimizer(space, patience=-1)


@pytest.mark.unit
def test_a_fresh_search_proposes_nothing_in_the_basin_where_the_stalled_one_settled():
    """A broad ridge along y (whatever y is, the top is at x = 0.7) and a narrow, lower one at x = 0.15. The first
    search climbs the broad one and stalls; the fresh search (its Sobol design and its GP) proposes nothing within
    one lengthscale of the first one's best, in x, anywhere along the ridge (y's lengthscale is long), where
    without the basin it climbs the same ridge again; once merged, the search goes back to the best. The basin
    survives the state's JSON."""
    def f(p):
        return math.exp(-((p["x"] - 0.7) / 0.2) ** 2) + 0.6 * math.exp(-((p["x"] - 0.15) / 0.05) ** 2)

    space = Space([Dimension.interval("x", 0, 1), Dimension.interval("y", 0, 1)])
    opt = Optimizer(space, direction="maximize", n_initial=4, patience=6, seed=0)
    while len(opt.searches) == 1:
        opt.observe(p := opt.propose(), f(p), number=opt.proposed - 1)
        assert opt.proposed < 60, "the first search never stalled"
    (basin,) = opt.search.avoid
    assert abs(basin.centre[0] - 0.7) < 0.05 and basin.lengthscales[1] > 3 * basin.lengthscales[0]
    fresh = []
    while opt.search.fresh:
        fresh.append(p := opt.propose())
        opt.observe(p, f(p), number=opt.proposed - 1)
    import torch

    assert len(fresh) >= 10 and not basin.holds(torch.tensor([space.encode(p) for p in fresh],
                                                             dtype=torch.float64)).any()
    assert min(abs(p["x"] - 0.7) for p in fresh) > 0.1
    merged = [opt.propose() for _ in range(8)]
    assert min(abs(p["x"] - 0.7) for p in merged) < 0.05  # back on the ridge
    from hydra_plugins.hydra_thompson_sweeper._optimizer import Search

    assert [Search.from_state(json.loads(json.dumps(s.state()))) for s in opt.searches] == opt.searches
    assert Search.from_state([5, 5]) == Search(5, 5)  # a state written before basins were kept

    replayed = Optimizer(space, direction="maximize", n_initial=4, patience=6, seed=0)
    replayed.proposed = opt.proposed
    with replayed.replay([Search.from_state(s.state()) for s in opt.searches]):  # a resume, results out of order
        for o in reversed(opt.observations):
            replayed.observe(o.params, o.value, number=o.number)
    assert replayed.searches == opt.searches  # none restarted again while the results came back


@pytest.mark.unit
def test_a_fresh_search_whose_every_trial_is_stopped_early_still_stalls_and_is_merged():
    """With a pruner, a fresh search's trials are compared at each rung with the refined trials of the search
    before, so all of them may be stopped at the first rung. Its stall counts them whole (not the 1/27 of a
    training each had) and needs no full training: it merges after its design and `patience` trials, where it
    would otherwise have taken the rest of the sweep."""
    space = Space([Dimension.interval("x", 0, 1)])
    opt = Optimizer(space, n_initial=3, patience=4, seed=1, resource_floor=1 / 27)
    number = 0
    while len(opt.searches) == 1:  # full trainings, none better than the first
        opt.observe(opt.propose(), 0.1 if number == 0 else 0.5, number=number)
        number += 1
        assert number < 30, "the first search never stalled"
    assert opt.search.fresh
    first = number
    while opt.search.fresh:
        opt.observe(opt.propose(), 0.9, 1 / 27, number=number)  # stopped at the first rung, as every one is
        number += 1
        assert number - first <= 3 + 4, "the fresh search did not stall after its design and patience"
    assert number - first == 3 + 4 and opt.search.since == 0  # merged: the GP sees every trial again


@pytest.mark.unit
def test_a_basin_that_holds_nearly_the_whole_space_leaves_the_fresh_design_distinct():
    """The basins are a preference, never a wall: a fresh design takes the points outside them first, then the
    others, and never one twice."""
    from hydra_plugins.hydra_thompson_sweeper._optimizer import Basin, Search

    space = Space([Dimension.interval("x", 0, 1), Dimension.interval("y", 0, 1)])
    basin = Basin((0.5, 0.5), (0.65, 0.65))
    opt = Optimizer(space, n_initial=40, seed=0, searches=[Search(), Search(1, 1, (basin,))])
    opt.proposed = 1
    design = [opt.propose() for _ in range(40)]
    assert len({(p["x"], p["y"]) for p in design}) == 40
    import torch

    inside = basin.holds(torch.tensor([space.encode(p) for p in design], dtype=torch.float64)).tolist()
    assert inside == sorted(inside) and 0 < inside.index(True) < 20  # a few outside, all of them first


@pytest.mark.unit
def test_a_proposal_never_repeats_a_pending_point():
    space = Space([Dimension.choice("a", [1, 2]), Dimension.integers("b", 0, 1)])  # four points in all
    opt = Optimizer(space, n_initial=1, seed=0)
    for p in ({"a": 1, "b": 0}, {"a": 2, "b": 1}):
        opt.propose()
        opt.observe(p, 1.0)
    pending = []
    for _ in range(4):
        pending.append(opt.propose(pending))
    assert sorted(tuple(p.values()) for p in pending) == [(1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.mark.unit
def test_a_small_grid_is_scored_whole_and_a_space_with_an_interval_on_candidates(monkeypatch):
    """A space of at most n_candidates points and no interval (categories and ordered lists): each proposal is the
    best point of one joint posterior sample over every point of it; with an interval, of Sobol candidates."""
    import itertools

    import torch

    grid = Space([Dimension.choice("act", ["relu", "tanh", "logistic"]), Dimension.integers("layers", 1, 4),
                  Dimension.integers("batch", 32, 256, 32, log=True), Dimension.integers("dropout", 0.0, 0.5, 0.1)])
    rows = grid.grid(2048)
    values = [d.choices if d.kind == "choice" else [d.decode(u) for u in d.cells()] for d in grid.dimensions]
    assert sorted(tuple(grid.decode(r.tolist()).values()) for r in rows) == sorted(itertools.product(*values))
    assert grid.grid(len(rows) - 1) is None  # one point too many
    mixed = Space(grid.dimensions + [Dimension.interval("decay", 0.0, 0.1)])
    assert mixed.grid(2048) is None
    for space, sobol in ((grid, False), (mixed, True)):
        opt = Optimizer(space, n_initial=3, seed=0)
        for _ in range(3):  # the design
            p = opt.propose()
            opt.observe(p, 1.0 if p["act"] == "tanh" else 2.0)

        def no_sobol(*args, **kwargs):
            raise AssertionError("Sobol candidates drawn")

        with monkeypatch.context() as patch:
            patch.setattr(torch.quasirandom, "SobolEngine", no_sobol)
            if sobol:
                with pytest.raises(AssertionError, match="Sobol candidates"):
                    opt.propose()
            else:
                assert opt.propose()["act"] in ("relu", "tanh", "logistic")


@pytest.mark.unit
def test_the_ask_tell_core_runs_without_hydra(tmp_path):
    """Other code drives the optimiser as the README shows, in a Python where Hydra cannot be imported."""
    (tmp_path / "hydra").mkdir()
    (tmp_path / "hydra" / "__init__.py").write_text("raise ImportError('no Hydra here')")
    code = textwrap.dedent("""
        from hydra_plugins.hydra_thompson_sweeper._optimizer import Dimension, Optimizer, Space
        opt = Optimizer(Space([Dimension.interval("x", 0, 1)]), n_initial=2)
        for _ in range(4):
            p = opt.propose()
            opt.observe(p, (p["x"] - 0.3) ** 2)
        print(opt.best().value < 0.2)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parent.parent}",
                               "PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


# -------------------------------------------------------------------------------------- failed trials
def finished_job(status, value):
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    ret.status, ret.return_value = getattr(JobStatus, status), value
    future = concurrent.futures.Future()
    future.set_result(ret)
    return future


@pytest.mark.unit
@pytest.mark.parametrize("status, value, error", [
    ("FAILED", ValueError("diverged"), "ValueError: diverged"),
    ("COMPLETED", {"loss": math.nan}, "ValueError: the objective is nan"),
])
def test_a_failed_trial_is_recorded_and_not_observed(status, value, error):
    study = Study(MIXED)
    jobs = trial_jobs(study, objective="loss")
    trial = study.ask()
    jobs.record(trial, finished_job(status, value))
    assert (trial.status, trial.error, trial.value) == (TrialStatus.FAILED, error, None)
    assert study.optimizer.observations == []
    jobs.record(study.ask(), finished_job("COMPLETED", {"loss": 0.5}))
    assert [o.value for o in study.optimizer.observations] == [0.5]


@pytest.mark.unit
@pytest.mark.parametrize("objective, returned, expected", [
    ("los", {"loss": 1.0}, "hydra.sweeper.objective=los: the task returned a mapping with keys ['loss']"),
    (None, {"loss": 1.0}, "set hydra.sweeper.objective to the one to optimise"),
    (None, "fine", "the thompson sweeper needs a number"),
])
def test_an_objective_that_does_not_fit_the_return_value_stops_the_sweep(objective, returned, expected):
    study = Study(Space([Dimension.interval("x", 0, 2)]))
    with pytest.raises(SweepError, match=re.escape(expected)):
        trial_jobs(study, objective=objective).record(study.ask(), finished_job("COMPLETED", returned))


# ---------------------------------------------------------------------- Hydra's basic launcher, resume
@pytest.mark.integration
def test_the_basic_launcher_runs_batches_and_resume_reuses_finished_trials(sweep_app):
    sweep_app("hydra.sweeper.n_trials=4", "hydra.sweeper.n_workers=2", "hydra.sweep.dir=sweep")
    sweep = sweep_app.app / "sweep"
    first = trials_csv(sweep)
    assert [t["status"] for t in first] == ["completed"] * 4 and len(sweep_app.calls()) == 4
    assert first[0]["submitted"] == first[1]["submitted"] and first[2]["submitted"] == first[3]["submitted"]
    assert {p.name for p in sweep.iterdir() if p.name.isdigit()} == {"0", "1", "2", "3"}

    sweep_app("hydra.sweeper.n_trials=6", "hydra.sweeper.n_workers=2", "hydra.sweep.dir=sweep",
              "hydra.sweeper.resume=true")
    second = trials_csv(sweep)
    assert len(second) == 6 and second[:4] == first and len(sweep_app.calls()) == 6  # none ran twice
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(float(t["value"]) for t in second)

    changed = sweep_app("hydra.sweeper.n_trials=6", "hydra.sweep.dir=sweep", "hydra.sweeper.resume=true",
                        "hydra.sweeper.direction=maximize", check=False)
    assert changed.returncode == 1 and "had another direction: direction=minimize" in changed.stderr
    again = sweep_app("hydra.sweep.dir=sweep", check=False)
    assert again.returncode == 1 and "continue it with hydra.sweeper.resume=true" in again.stderr
    assert trials_csv(sweep) == second and len(sweep_app.calls()) == 6  # refused before anything ran


@pytest.mark.unit
def test_confirm_always_runs_each_new_best_again_and_says_so(sweep_app):
    """On a deterministic objective the second run gives the same value: the sweep says it confirms, the config
    runs twice, and the final line gives a twice-run best its mean."""
    proc = sweep_app("hydra.sweeper.n_trials=12", "hydra.sweeper.n_workers=1", "hydra.sweeper.n_initial=4",
                     "hydra.sweeper.confirm=always", "hydra.sweep.dir=sweep")
    out = proc.stdout + proc.stderr
    assert "a second time before it is believed: a value is one draw of a noisy training (confirm)" in out
    rows = trials_csv(sweep_app.app / "sweep")
    configs = [(r["+x"], r["+n"], r["+kind"]) for r in rows]
    twice = {c for c in configs if configs.count(c) > 1}
    assert twice and all(len({r["value"] for r in rows if (r["+x"], r["+n"], r["+kind"]) == c}) == 1 for c in twice)
    best = min(rows, key=lambda r: float(r["value"]))
    assert (best["+x"], best["+n"], best["+kind"]) in twice  # found before the last trial: confirmed
    assert f"its config's mean over 2 trials: {float(best['value']):.6g}" in out, out[-2000:]


@pytest.mark.integration
def test_max_minutes_stops_new_trials_and_lets_those_in_flight_end(sweep_app):
    """Two workers of aws_batch_local, trials of 1 to 6 s (and a Python start), 1.2 s to propose in: the two
    trials running when time is up run to their end, the one waiting for a worker (n_queued=1) never starts, and
    no trial starts after it."""
    sweep_app("hydra/launcher=aws_batch_local", "hydra.launcher.max_parallel=2", "hydra.sweeper.n_trials=1000",
              "hydra.sweeper.n_workers=2", "hydra.sweeper.max_minutes=0.02", "+seconds=5", "hydra.sweep.dir=sweep")
    state = json.loads((sweep_app.app / "sweep" / STATE).read_text())
    deadline = state["created"] + 0.02 * 60
    trials = state["trials"]
    ran = [t for t in trials if t["status"] == "completed"]
    not_run = [t for t in trials if t["status"] != "completed"]
    assert len(ran) >= 2 and len(not_run) == 1, trials
    assert not_run[0]["status"] == "failed" and not_run[0]["error"] == "not run: hydra.sweeper.max_minutes was up"
    assert max(t["submitted"] for t in trials) < deadline + 0.5  # nothing new once time is up
    assert max(t["started"] for t in ran) < deadline + 0.5  # nor does a waiting one start
    assert sum(t["submitted"] < deadline < t["ended"] for t in ran) >= 2  # in flight then, and ended since


@pytest.mark.integration
def test_bad_settings_are_refused_at_once_before_anything_runs(sweep_app):
    proc = sweep_app("hydra.sweeper.n_workers=0", "hydra.sweeper.direction=up", "+y=tag(log, interval(0, 1))",
                     "hydra.sweeper.patience=-2", "hydra.sweeper.n_queued=-1", "hydra.sweep.dir=sweep", check=False)
    assert proc.returncode == 1
    for problem in ("+y: a log scale needs a lower bound above 0", "hydra.sweeper.direction=up: minimize or "
                    "maximize", "hydra.sweeper.n_workers=0: at least 1", "hydra.sweeper.patience=-2: at least 0",
                    "hydra.sweeper.n_queued=-1: 0 or more"):
        assert problem in proc.stderr, proc.stderr
    assert not (sweep_app.app / "sweep").exists()


@pytest.mark.integration
def test_failures_in_a_row_stop_the_sweep_with_the_last_error(sweep_app):
    proc = sweep_app("hydra.sweeper.n_trials=10", "hydra.sweeper.n_workers=2", "hydra.sweeper.max_failures=2",
                     "+fail_above=-1", "hydra.sweep.dir=sweep", check=False)
    assert proc.returncode == 1
    assert "2 trials failed in a row (hydra.sweeper.max_failures)" in proc.stderr
    assert "is too large" in proc.stderr
    assert [t["status"] for t in trials_csv(sweep_app.app / "sweep")] == ["failed", "failed"]


@pytest.mark.integration
def test_a_stalled_sweep_restarts_says_so_and_a_resume_keeps_its_searches(sweep_app):
    """hydra.sweeper.patience=3 on the basic launcher: the sweep's log says when the search restarts, the state
    keeps the searches, and a resumed sweep goes on from them (its results come back in another order)."""
    proc = sweep_app("hydra.sweeper.n_trials=24", "hydra.sweeper.n_workers=2", "hydra.sweeper.patience=3",
                     "hydra.sweep.dir=sweep")
    said = proc.stdout + proc.stderr
    assert "(patience): the search restarts from trial" in said, said[-3000:]
    state = json.loads((sweep_app.app / "sweep" / STATE).read_text())
    assert len(state["searches"]) >= 2 and state["searches"][0] == [0, 0, []]
    fresh = state["searches"][1]
    assert fresh[0] == fresh[1] > 4  # the trials from it on: a Sobol design of their own, then their GP
    assert len(fresh[2]) == 1  # the basin it keeps away from: the first search's best and its GP's lengthscales
    sweep_app("hydra.sweeper.n_trials=26", "hydra.sweeper.n_workers=2", "hydra.sweeper.patience=3",
              "hydra.sweep.dir=sweep", "hydra.sweeper.resume=true")
    resumed = json.loads((sweep_app.app / "sweep" / STATE).read_text())
    assert resumed["searches"][:len(state["searches"])] == state["searches"]
    assert len(resumed["trials"]) == 26 and len(sweep_app.calls()) == 26


# --------------------------------------------------------------------------------------- aws_batch_local
@pytest.mark.integration
@pytest.mark.alone
@pytest.mark.parametrize("workers, median, most", [("max_parallel=3", 2.5, 5.0), ("workers=3", 1.0, 3.0)],
                         ids=["a process per trial", "warm workers"])
def test_every_worker_stays_busy_on_aws_batch_local(sweep_app, workers, median, most):
    """15 trials of random length (0.1 s to 1.6 s of work, plus a process start each, or a fork on a warm
    worker), 3 running and one waiting for a worker (hydra.sweeper.n_queued=1)."""
    proc = sweep_app("hydra/launcher=aws_batch_local", f"hydra.launcher.{workers}", "hydra.sweeper.n_trials=15",
                     "hydra.sweeper.n_workers=3", "+seconds=1.2", "hydra.sweep.dir=sweep")
    sweep = sweep_app.app / "sweep"
    # one trial more than the launcher runs at once waits for a worker (hydra.sweeper.n_queued=1), never a 4th
    assert "The launcher runs 3 trials at once: 1 more wait for a worker" in proc.stdout + proc.stderr
    trials = trials_csv(sweep)
    assert [t["status"] for t in trials] == ["completed"] * 15 and len(sweep_app.calls()) == 15
    assert all(float(t["task_s"]) >= 0.1 and float(t["starting_s"]) >= 0 and t["ending_s"] for t in trials)
    jobs = manifest(sweep)["jobs"]
    assert len(jobs) == 15 and {j["state"] for j in jobs} == {"SUCCEEDED"}
    by_num = {j["num"]: j for j in jobs}
    first_end = min(j["task_ended"] for j in jobs)
    assert by_num[3]["submitted"] < first_end <= by_num[3]["task_started"]  # queued, started once one freed
    spans = [(j["task_started"], j["task_ended"]) for j in jobs]
    assert max(sum(s <= start < e for s, e in spans) for start, _ in spans) == 3
    gaps = sorted(refill_gaps(jobs, 3))
    # a freed worker waits for the watcher (0.05 s) to hand it the waiting trial (or, when several free at once,
    # for a proposal), then a Python process's start (~1 s here), or on a warm worker its look at its assignment
    # (0.05 s) and a fork
    print("refill gaps:", gaps)
    assert len(gaps) == 12 and gaps[6] < median and gaps[-1] < most, gaps
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(trials, key=lambda t: float(t["value"]))
    assert results["best_value"] == float(best["value"]) and results["name"] == "thompson"
    assert set(results["best_params"]) == {"+x", "+n", "+kind"}
    assert (sweep / "convergence.png").stat().st_size > 10_000
    staged = sweep / ".staging" / "sweeps" / manifest(sweep)["sweep_id"] / STATE  # the launcher keeps a copy
    assert staged.read_text() == (sweep / STATE).read_text()


@pytest.mark.integration
def test_resume_on_aws_batch_local_runs_the_trials_that_died_with_the_sweeper(sweep_app, tmp_path):
    """Local jobs die with the sweeper; a resume runs those trials again, and none of the finished ones. The
    resumed run is given a new sweep dir beside the first (as ${now:} makes one): it finds the first."""
    import os
    import signal
    import time

    args = [*THOMPSON, *SPACE, "hydra/launcher=aws_batch_local", "hydra.sweeper.n_trials=6",
            "hydra.sweeper.n_workers=2", "+seconds=2.5", "hydra.sweep.dir=runs/first"]
    proc = subprocess.Popen([sys.executable, "my_app.py", "--multirun", *args], cwd=sweep_app.app,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = sweep_app.app / "runs/first" / STATE
    deadline = time.time() + 120
    while time.time() < deadline and not (state.exists() and '"completed"' in state.read_text()):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t["number"]: t for t in trials_csv(sweep_app.app / "runs/first")}
    sweep_app("hydra/launcher=aws_batch_local", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_workers=2",
              "+seconds=2.5", "hydra.sweep.dir=runs/second", "hydra.sweeper.resume=true")
    assert not (sweep_app.app / "runs/second").exists()
    trials = trials_csv(sweep_app.app / "runs/first")
    assert len(trials) == 6 and {t["status"] for t in trials} == {"completed"}
    for number, earlier in before.items():  # finished ones kept; the others ran again under new job numbers
        later = trials[int(number)]
        if earlier["status"] == "completed":
            assert later == earlier
        else:
            assert later["job"] != earlier["job"] and later["+x"] == earlier["+x"]
    assert 0 < sum(t["status"] == "completed" for t in before.values()) < 6
    assert len({t["job"] for t in trials}) == 6


# ------------------------------------------------------------------------------------------- benchmark
@pytest.mark.integration
def test_the_async_bo_benchmark_runs_at_a_reduced_size(tmp_path):
    """bench/async_bo.py at CI's size (one seed, a fifth of the time budget), so that it cannot rot."""
    import json

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "bench/async_bo.py", "--seeds", "1", "--panels", "hartmann3",
                           "--budget-scale", "0.2", "--latency-decisions", "3", "--out", str(tmp_path / "abo")],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "abo.json").read_text())
    rows = {row["method"]: row for row in summary["rows"]}
    assert set(rows) == {"asyTS", "asyTS+1", "synTS", "asyRAND", "synRAND", "asyTPE"}
    assert rows["asyTS"]["evaluations"] > rows["synTS"]["evaluations"]  # no worker waits for a batch
    assert rows["asyTS+1"]["evaluations"] > rows["synTS"]["evaluations"]
    assert summary["latency_300"]["median"] < 3.0
    assert (tmp_path / "abo.png").stat().st_size > 10_000


@pytest.mark.unit
def test_a_botorch_that_fails_to_import_is_said_with_its_own_error(monkeypatch):
    """Not a missing module (a broken shared library, say): the problem names the libraries and the import's own
    error, never `needs None`."""
    import builtins

    from omegaconf import OmegaConf

    from hydra_plugins.hydra_thompson_sweeper import _check

    real = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("botorch"):
            raise ImportError("libtorch_cpu.so: cannot open shared object file")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    conf = OmegaConf.create({k: v for k, v in asdict_conf().items() if k not in ("_target_", "params")})
    problems = _check.settings(conf, launcher=None)
    assert ("hydra/sweeper=thompson needs BoTorch and matplotlib, which failed to import (libtorch_cpu.so: cannot "
            "open shared object file): pip install 'hydra-awsbatch-launcher[bo]'") in problems
    assert not any("None" in p for p in problems)


def asdict_conf() -> dict:
    from dataclasses import asdict

    return asdict(ThompsonSweeperConf())


class InterruptedWhileSubmitting(Reporting):
    """An asynchronous launcher whose second submission is cut by a Ctrl-C (as one landing while the sweeper
    proposes or submits, not while it waits)."""

    def __init__(self):
        super().__init__()
        self.launches = 0

    def launch_async(self, job_overrides, initial_job_idx):
        self.launches += 1
        if self.launches == 2:
            raise KeyboardInterrupt
        return [concurrent.futures.Future() for _ in job_overrides]  # running on

    def resume_async(self, nums):
        return {}

    def mirror(self, name, data):
        pass


@pytest.mark.unit
def test_a_ctrl_c_outside_the_wait_leaves_every_unfinished_trial_interrupted_to_run_again(tmp_path, caplog):
    from hydra_plugins.hydra_thompson_sweeper._jobs import TrialJobs
    from hydra_plugins.hydra_thompson_sweeper._trials import SweepFiles
    from hydra_plugins.hydra_thompson_sweeper.thompson_sweeper import ThompsonSweeper

    conf = {k: v for k, v in asdict_conf().items() if k not in ("_target_", "params")}
    sweeper = ThompsonSweeper(**dict(conf, n_workers=2, n_queued=0, n_trials=6))
    sweeper.launcher, sweeper.asynchronous = InterruptedWhileSubmitting(), True
    sweeper.study = Study(Space([Dimension.interval("x", 0, 1)]), n_initial=2)
    sweeper.files = SweepFiles(tmp_path, sweeper.study)
    sweeper.jobs = TrialJobs(sweeper.launcher, sweeper.study, sweeper.conf, sweeper.files, [], lambda batch: None)
    first = sweeper.study.ask()  # in flight, then a freed worker's trial is cut mid-submission
    first.job, first.status = 0, TrialStatus.RUNNING
    done = concurrent.futures.Future()
    done.set_result(finished_job("COMPLETED", 0.5).result())
    with pytest.raises(KeyboardInterrupt):
        sweeper.run({done: first}, [])
    unfinished = [t for t in sweeper.study.trials if not t.done]
    assert unfinished and all(t.status == TrialStatus.INTERRUPTED for t in unfinished), sweeper.study.trials
    assert "continue the sweep with hydra.sweeper.resume=true" in caplog.text
