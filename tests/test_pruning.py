"""Early stopping in hydra/sweeper=thompson: the pruners' rules on their own, then ASHA and the median rule
stopping real jobs of aws_batch_local from what they report while they run."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hydra_plugins.hydra_thompson_sweeper._pruners import Reports, make, settings_problems
from tests.conftest import ROOT


class Fed:
    """A pruner fed as the study feeds it: the trials' records kept here (the study's role), the pruner reading
    them through its view and keeping only its rung tables."""

    def __init__(self, *args, **kwargs):
        self.records: dict[int, list[dict]] = {}
        self.pruner = make(*args, **kwargs, reports=Reports(lambda n: self.records.get(n, []), lambda: self.records))

    def observe(self, trial: int, step: float, value: float) -> str | None:
        self.records.setdefault(trial, []).append({"step": step, "value": value})
        return self.pruner.observe(trial, step, value)

    def forget(self, trial: int) -> None:
        self.records.pop(trial, None)
        self.pruner.forget(trial)

    def __getattr__(self, name):
        return getattr(self.pruner, name)


@pytest.mark.unit
def test_asha_keeps_the_top_third_at_each_rung_without_waiting_for_it_to_fill():
    asha = Fed("asha", 1, 27, 3)
    assert asha.levels == [1.0, 3.0, 9.0]
    assert asha.observe(0, 1, 0.5) is None and asha.observe(1, 1, 0.3) is None  # under 3 at the rung: go on
    assert asha.observe(2, 1, 0.9).startswith("ASHA: 0.9 at step 1 is not in the top 1/3 of the 3 trials")
    assert asha.observe(3, 1, 0.1) is None  # the best so far goes on, whenever it comes
    assert asha.observe(0, 2, 0.4) is None and asha.observe(0, 3, 0.35) is None  # step 3: alone at that rung
    assert asha.observe(4, 2, 0.6) is not None  # reaching rung 1 late (at step 2): judged by its value there
    assert asha.observe(5, 27, 0.01) is None  # past every rung at once: the best at each
    assert asha.fidelities(0) == [(1 / 27, 0.5), (3 / 27, 0.35)]  # what the GP learns: values at the levels
    assert asha.fidelities(5) == [(1 / 27, 0.01), (3 / 27, 0.01), (9 / 27, 0.01)]


@pytest.mark.unit
def test_the_gp_learns_a_trial_s_values_at_the_levels_and_its_last_report_between_them():
    """What a trial's curve gives the GP (Syne Tune's rungs_and_last): each level it reached, and its last report
    where no level took it, before max_resource; never twice the same report, never a value that is not finite."""
    pruner = Fed("extrapolate", 1, 27, 3)
    for step in range(1, 15):  # stopped at step 14, between the levels 9 and 27
        pruner.observe(0, step, 1.0 / step)
    assert pruner.fidelities(0) == [(1 / 27, 1.0), (3 / 27, 1 / 3), (9 / 27, 1 / 9), (14 / 27, 1 / 14)]
    assert pruner.fidelities(0)[:3] == [(1 / 27, 1.0), (3 / 27, 1 / 3), (9 / 27, 1 / 9)]  # its levels
    for step in (1, 2, 3):  # stopped at a level: nothing more
        pruner.observe(1, step, 0.5)
    assert pruner.fidelities(1) == [(1 / 27, 0.5), (3 / 27, 0.5)]
    pruner.observe(2, 0.5, 0.9)
    pruner.observe(2, 5, 0.4)  # one report taken by the levels 1 and 3: it is not its own point as well
    assert pruner.fidelities(2) == [(1 / 27, 0.4), (3 / 27, 0.4)]
    pruner.observe(3, 0.5, 0.9)  # before min_resource: no level, and not learnt
    assert pruner.fidelities(3) == []
    for step in (1, 27):  # done: its final value is learnt as a full training, not here
        pruner.observe(4, step, 0.2)
    assert pruner.fidelities(4) == [(1 / 27, 0.2), (3 / 27, 0.2), (9 / 27, 0.2)]
    for step, value in ((1, 0.5), (5, math.nan)):
        pruner.observe(5, step, value)
    assert pruner.fidelities(5) == [(1 / 27, 0.5)]


@pytest.mark.unit
@pytest.mark.parametrize("crossing", [True, False])
def test_measured_rungs_stop_nothing_until_done_trials_show_the_rung_ranks_them(crossing):
    """rungs=measured: no stop before 8 trials are done; then rung 1 stops trials only where the done trials'
    order there is their final order (curves that cross: it stops nothing), while rung 3, which ranks them
    right in both cases, stops."""
    asha = Fed("asha", 1, 9, 3, rungs="measured")
    for trial in range(8):  # trial i ends at i; at step 1 its order is the reverse where curves cross
        first = 1.0 - trial / 10 if crossing else 1.0 + trial / 10
        for step, value in [(1, first), (3, 0.5 + trial / 10), (9, trial / 10)]:
            assert asha.observe(trial, step, value) is None  # not measured yet: nothing stops
    assert asha.reversed_share(1.0) == (1.0 if crossing else 0.0) and asha.reversed_share(3.0) == 0.0
    assert (asha.observe(8, 1, 5.0) is None) is crossing  # the worst at rung 1
    assert asha.observe(8, 3, 5.0).startswith("ASHA: 5 at step 3 is not in the top 1/3")


@pytest.mark.unit
def test_hyperband_brackets_judge_a_trial_from_its_bracket_s_first_rung_among_its_bracket_only():
    """brackets=4 over rungs 1, 3, 9 (below 27): the trials go to the brackets in equal shares, the same after a
    rebuild; bracket b first judges a trial at rung b, against its own bracket's trials; bracket 3 stops nothing."""
    asha = Fed("asha", 1, 27, 3, brackets=4)
    assert {asha.bracket(t) for t in range(8)} == {0, 1, 2, 3}  # the first few trials meet every bracket
    assert all(23 <= [asha.bracket(t) for t in range(100)].count(b) <= 27 for b in range(4))  # equal shares
    assert [asha.bracket(t) for t in range(100)] == [Fed("asha", 1, 27, 3, brackets=4).bracket(t)
                                                     for t in range(100)]
    by_bracket = {b: [t for t in range(40) if asha.bracket(t) == b] for b in range(4)}
    for trials in by_bracket.values():
        for rank, trial in enumerate(trials[:2]):  # two good trials in each bracket (under 3: they go on)
            for step in (1, 3, 9):
                assert asha.observe(trial, step, rank / 10) is None
    worst = {b: trials[2] for b, trials in by_bracket.items()}  # a third trial, the worst at every step
    assert asha.observe(worst[0], 1, 9.0).startswith("ASHA: 9 at step 1 is not in the top 1/3 of the 3 trials "
                                                     "of bracket 0 there")
    assert asha.observe(worst[1], 1, 9.0) is None  # bracket 1: rung 1 is not its
    assert asha.observe(worst[1], 3, 9.0).startswith("ASHA: 9 at step 3 is not in the top 1/3 of the 3 trials "
                                                     "of bracket 1 there")
    assert asha.observe(worst[2], 3, 9.0) is None and asha.observe(worst[2], 9, 9.0) is not None
    assert all(asha.observe(worst[3], step, 9.0) is None for step in (1, 3, 9, 27))  # the last bracket: none
    # rungs are kept per bracket: a bracket-0 trial is not compared with bracket 1's values at rung 3
    assert len(asha.at_rung[0, 3.0]) == 2 and len(asha.at_rung[1, 3.0]) == 3


@pytest.mark.unit
def test_extrapolation_stops_a_fast_starter_that_flattened_out_worse_and_lets_a_slow_starter_go_on():
    """pruner=extrapolate on curves like bench/pruning.py's (noise sd 0.05): nothing stops before a trial has
    finished; a fast starter that has flattened out at -0.5 stops once its curve shows it (the best finished trial
    ended at -1.95), while a slow starter heading for -3, worse than the fast one at every step it has trained,
    goes on. A pruner rebuilt from the same reports (a resume) judges alike."""
    rng = random.Random(0)

    def curve(final, tau, steps):
        return [(step, final + (1 - final) * math.exp(-step / tau) + rng.gauss(0, 0.05)) for step in steps]

    finished = {0: curve(-1.0, 3, range(1, 28)), 1: curve(-2.0, 6, range(1, 28))}
    pruner = Fed("extrapolate", 1, 27, 3)
    fast, slow = curve(-0.5, 1, range(1, 10)), curve(-3.0, 8, range(1, 10))
    assert all(pruner.observe(2, step, value) is None for step, value in fast[:5])  # nothing finished yet
    for trial, points in finished.items():
        assert all(pruner.observe(trial, step, value) is None for step, value in points)
    assert pruner.finals == {0: finished[0][-1][1], 1: finished[1][-1][1]}
    assert all(v_slow > v_fast for (_, v_slow), (_, v_fast) in zip(slow[:3], fast[:3]))  # the slow one looks worse
    reasons = [pruner.observe(2, step, value) for step, value in fast[5:]]
    stopped_at = next(step for (step, _), reason in zip(fast[5:], reasons) if reason)
    assert 6 <= stopped_at <= 9
    reason = next(r for r in reasons if r)
    assert re.match(r"extrapolated: its curve ends at step 27 at -0\.\d+ at best, worse than the best finished "
                    r"trial's -1\.9", reason), reason
    assert all(pruner.observe(3, step, value) is None for step, value in slow)
    rebuilt = Fed("extrapolate", 1, 27, 3)
    for trial, points in [(2, fast), *finished.items(), (3, slow)]:  # another order, as a resume replays them
        for step, value in points:
            rebuilt.observe(trial, step, value)
    assert (rebuilt.finals, rebuilt.dof) == (pruner.finals, pruner.dof)
    assert rebuilt.squares == pytest.approx(pruner.squares)
    assert rebuilt.fidelities(2) == pruner.fidelities(2) == [(level / 27, fast[level - 1][1]) for level in (1, 3, 9)]


@pytest.mark.unit
def test_extrapolation_knows_power_laws_and_takes_odd_reports_without_failing():
    """Training curves often decay as power laws, slower than any exponential: a trial on the best one's curve,
    0.05 lower, goes on, a trial 0.5 higher stops. Reports at one step several times, at step 0, or after a
    NaN do not break the fits (a degenerate fit is never plausible)."""
    pruner = Fed("extrapolate", 1, 27, 3)
    for trial, offset in enumerate([0.05, 0.0]):  # the second ends better than the first, which has finished
        for step in range(1, 28):
            assert pruner.observe(trial, step, offset + step**-0.5) is None
    assert all(pruner.observe(2, step, -0.05 + step**-0.5) is None for step in range(1, 27))
    assert pruner.observe(3, 1, 1.5) is None and pruner.observe(3, 2, 0.5 + 2**-0.5) is None
    assert pruner.observe(3, 3, 0.5 + 3**-0.5).startswith("extrapolated: its curve ends at step 27 at ")
    assert all(pruner.observe(4, 1, 0.3) is None for _ in range(4))  # one step, four times: nothing to fit
    assert pruner.observe(5, 0, 2.0) is None and pruner.observe(5, 1, math.nan).startswith("its value is nan")
    assert pruner.observe(5, 2, 1.5) is None and pruner.observe(5, 3, 1.5) is None  # a curve of two points
    assert pruner.observe(5, 4, 1.5) is not None  # three finite points after the NaN, flat: fitted, and hopeless
    every_batch = Fed("extrapolate", 1, 10_000, 3)  # a task that reports every batch, 10,000 in all
    for trial, offset in enumerate([0.01, 0.0]):
        for step in [*range(1, 10_000, 50), 10_000]:
            every_batch.observe(trial, step, offset + step**-0.5)
    assert all(every_batch.observe(2, step, -0.01 + step**-0.5) is None for step in range(1, 10_000))
    assert len(every_batch.fitted(2)) == 100  # its fits take 100 of its reports, spread from first to last
    assert every_batch.fitted(2)[0][0] == 1 and every_batch.fitted(2)[-1][0] == 9_999
    assert every_batch.observe(3, 1, 1.5) is None and every_batch.observe(3, 2, 0.5 + 2**-0.5) is None
    assert every_batch.observe(3, 3, 0.5 + 3**-0.5) is not None


@pytest.mark.unit
@pytest.mark.parametrize("pruner", ["asha", "extrapolate"])
def test_a_trial_run_again_is_judged_on_its_new_reports_only(pruner):
    """A trial that died with an earlier sweeper runs again from its start (the sweeper's submit forgets it):
    its old reports neither sit at a rung nor join its new curve."""
    rule = Fed(pruner, 1, 9, 3)
    for trial in range(3):
        for step in range(1, 10):
            rule.observe(trial, step, 1.0 + trial / 10 + 1 / step)
    for step in (1, 2, 3):
        rule.observe(3, step, 9.0 + 1 / step)  # hopeless, then it dies with the sweeper
    rule.forget(3)
    assert all(3 not in here for here in getattr(rule, "at_rung", {}).values())
    assert all(rule.observe(3, step, 0.5 + 1 / step) is None for step in range(1, 10))  # now the best
    assert rule.fidelities(3) == [(level / 9, 0.5 + 1 / level) for level in (1, 3)]  # its new curve
    if pruner == "extrapolate":  # one that had reached its end before it died: its final value no longer counts
        assert rule.best == 0.5 + 1 / 9
        rule.forget(3)
        assert rule.best == 1.0 + 1 / 9 and 3 not in rule.finals


@pytest.mark.unit
def test_median_rule_and_values_that_are_not_numbers():
    median = Fed("median", 2, 10, 3)
    for trial, values in enumerate([[1.0, 0.8, 0.6], [1.0, 0.7, 0.5]]):
        for step, value in enumerate(values, start=1):
            assert median.observe(trial, step, value) is None
    assert median.observe(2, 1, 5.0) is None  # before min_resource
    assert median.observe(2, 2, 0.9).startswith("median rule: 0.9 at step 2, worse than the median 0.75 of 2")
    assert Fed("none", 1, None, 3).observe(0, 1, math.nan) == "its value is nan at step 1"
    assert median.observe(3, 2, math.nan) == "its value is nan at step 2"
    # a NaN is no trial's value at a step: the others' median there is 0.8, of 0.7, 0.8 and 0.9
    assert median.observe(4, 2, 0.84) == "median rule: 0.84 at step 2, worse than the median 0.8 of 3"


@pytest.mark.unit
def test_a_value_that_is_not_finite_at_a_rung_ranks_last_and_the_rung_goes_on_stopping():
    """A trial whose value is NaN at a rung is stopped; what it reports before it hears must not leave a NaN
    among the rung's values, where it would make every cut-off NaN and the rung stop nobody again."""
    asha = Fed("asha", 1, 9, 3)
    assert asha.observe(0, 1, math.nan) == "its value is nan at step 1"
    assert asha.observe(0, 2, 0.5) is None  # reported before it heard: the rung counts it as the worst
    assert asha.observe(1, 1, 0.5) is None and asha.observe(2, 1, 0.4) is None
    assert asha.observe(3, 1, 0.45) == ("ASHA: 0.45 at step 1 is not in the top 1/3 of the 4 trials there "
                                        "(cut-off 0.4)")
    assert asha.observe(4, 1, 0.3) is None and asha.at_rung[(0, 1.0)][0] == math.inf


@pytest.mark.unit
@pytest.mark.parametrize("args, problem", [
    (("hyperband", 1, 9, 3), "pruner=hyperband: one of none, median, asha, extrapolate"),
    (("asha", 1, None, 3), "max_resource=null: asha needs the step at which a trial is done"),
    (("median", 1, None, 3), "max_resource=null: median needs the step at which a trial is done"),
    (("asha", 3, 2, 3), "max_resource=2: above min_resource=3"),
    (("median", 0, None, 1), "min_resource=0: the first step that counts, above 0"),
    (("asha", 1, 9, 1), "reduction_factor=1: at least 2"),
    (("asha", 1, 9, 3, "sometimes"), "rungs=sometimes: one of always, measured"),
    (("asha", 1, 27, 3, "always", 5), "brackets=5: 1 (ASHA) to 4 (one per rung, and one that stops nothing)"),
    (("asha", 1, 27, 3, "always", 0), "brackets=0: 1 (ASHA) to 4"),
    (("median", 1, 27, 3, "always", 2), "brackets=2: brackets are asha's (asynchronous Hyperband)"),
    (("extrapolate", 1, None, 3), "max_resource=null: extrapolate needs the step at which a trial is done"),
    (("extrapolate", 1, 27, 3, "measured"), "rungs=measured: rungs are asha's; leave it at always"),
])
def test_pruner_settings_are_checked(args, problem):
    assert any(p.startswith(problem) for p in settings_problems(*args)), settings_problems(*args)


CURVES = """
    import time

    import hydra
    from hydra_plugins.hydra_awsbatch_launcher import report

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        loss = None
        if cfg.x > cfg.get("diverge_above", 1.0):  # three hopeless values reported at once, then an error
            for step in range(1, 4):
                report(step, loss=100.0 * step)
            raise RuntimeError(f"diverged at step {step}")
        for step in range(1, 10):
            time.sleep(cfg.get("step_s", 0.0) * (1 + abs(cfg.x - 0.3)) or 0.3)  # step_s: the worse, the slower
            loss = (cfg.x - 0.3) ** 2 + 0.5 / step  # the same order at every step: the pruners' easy case
            if report(step, loss=loss) and not cfg.get("ignores_stop", False):
                return {"loss": loss}
        return {"loss": loss}

    if __name__ == "__main__":
        main()
"""


def sweep_command(tmp_path, *args):
    (tmp_path / "app.py").write_text(textwrap.dedent(CURVES))
    return [sys.executable, "app.py", "-m", "hydra/sweeper=thompson", "+x=interval(0, 1)",
            "hydra.sweeper.objective=loss", "hydra.sweeper.n_trials=9", "hydra.sweeper.n_workers=3",
            "hydra.sweeper.n_initial=9", "hydra/launcher=aws_batch_local", "hydra.launcher.metrics_interval_s=0.2",
            "hydra.sweep.dir=sweep", *args]


def run_sweep(tmp_path, env, *args):
    return subprocess.run(sweep_command(tmp_path, *args), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.integration
@pytest.mark.parametrize("pruner, brackets", [("asha", 1), ("median", 1), ("asha", 2), ("extrapolate", 1)])
def test_pruners_stop_hopeless_trials_while_they_run(tmp_path, app_env, pruner, brackets):
    # steps of 0.5 s or more: a stop request reaches a task within STOP_LOOK_S (2 s), so it hears it before its end
    proc = run_sweep(tmp_path, app_env, f"hydra.sweeper.pruner={pruner}", "hydra.sweeper.max_resource=9",
                     "hydra.sweeper.min_resource=2", f"hydra.sweeper.brackets={brackets}", "+step_s=0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "sweep/trials.csv") as stream:
        trials = list(csv.DictReader(stream))
    pruned = [t for t in trials if t["status"] == "pruned"]
    completed = [t for t in trials if t["status"] == "completed"]
    assert len(pruned) >= 2 and len(completed) >= 2 and len(pruned) + len(completed) == 9, trials
    assert all(int(t["last_step"]) < 9 and t["stop_reason"] for t in pruned)
    assert all(t["last_step"] == "9" for t in completed)
    assert all(t["stop_reason"].startswith({"asha": "ASHA", "median": "median rule", "extrapolate": "extrapolated"}
                                           [pruner]) for t in pruned)
    if brackets == 2:  # rungs at steps 2 and 6: bracket 0 judges from step 2, bracket 1 from step 6 only
        assert all(re.search(r"at step (2|6) .* of bracket 0 there|at step 6 .* of bracket 1 there", t["stop_reason"])
                   for t in pruned), pruned
        assert {t["stop_reason"].split(" of bracket ")[1][0] for t in pruned} == {"0", "1"}, pruned
    best = min(completed, key=lambda t: float(t["value"]))
    assert all(float(t["value"]) >= float(best["value"]) for t in pruned)  # the stopped ones were worse
    with open(tmp_path / "sweep/metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == sum(int(t["last_step"]) for t in trials) < 9 * 9  # steps not trained: the saving
    assert (tmp_path / "sweep/curves.png").stat().st_size > 10_000
    state = json.loads((tmp_path / "sweep/thompson_state.json").read_text())
    assert all(t["curve"] for t in state["trials"])


@pytest.mark.integration
def test_a_resumed_sweep_keeps_its_stopped_trials_and_its_rungs(tmp_path, app_env):
    """ASHA's rungs are rebuilt from the trials' curves on resume: the stopped trials stay stopped (none runs
    again, and the GP gets its stand-in for each), and the new trials are judged against the earlier ones."""
    asha = ("hydra.sweeper.pruner=asha", "hydra.sweeper.min_resource=2", "hydra.sweeper.max_resource=9",
            "+step_s=0.5")  # steps of 0.5 s or more: a trial asked to stop hears it (STOP_LOOK_S) before its end
    first = run_sweep(tmp_path, app_env, *asha, "hydra.sweeper.n_trials=6")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    with open(tmp_path / "sweep/trials.csv") as stream:
        before = list(csv.DictReader(stream))
    assert sum(t["status"] == "pruned" for t in before) >= 1, before

    other = run_sweep(tmp_path, app_env, *asha, "hydra.sweeper.n_trials=9", "hydra.sweeper.resume=true",
                      "hydra.sweeper.brackets=2")  # the trials' brackets would move: refused
    assert other.returncode == 1 and "had another brackets: brackets=1" in other.stderr, other.stderr[-3000:]
    other = run_sweep(tmp_path, app_env, *asha, "hydra.sweeper.n_trials=9", "hydra.sweeper.resume=true",
                      "hydra.sweeper.pruner=median", "hydra.sweeper.max_resource=12")  # other levels and fractions
    assert other.returncode == 1 and "had another pruner, max_resource: pruner=asha, max_resource=9" in other.stderr, \
        other.stderr[-3000:]
    second = run_sweep(tmp_path, app_env, *asha, "hydra.sweeper.n_trials=9", "hydra.sweeper.resume=true")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    with open(tmp_path / "sweep/trials.csv") as stream:
        after = list(csv.DictReader(stream))
    assert after[:6] == before and len(after) == 9  # nothing of the first run changed, none ran again
    # Every curve keeps its order at every step, so a trial's rank at the rung at step 2 is that of |x - 0.3|.
    # A new trial meets the 6 earlier ones there, and 7 to 9 trials keep 2 or 3: one that went on is among the
    # 3 best of the earlier ones and itself; one that is not was stopped there (with no rungs it would go on).
    third_best = sorted(abs(float(t["+x"]) - 0.3) for t in before)[2]
    worse = [t for t in after[6:] if abs(float(t["+x"]) - 0.3) > third_best]
    assert worse, after  # the case that shows the rungs (the seed's Sobol points give it)
    assert all(t["status"] == "pruned" and "at step 2 is not in the top 1/3" in t["stop_reason"] for t in worse), (
        worse, second.stdout[-3000:])


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_trial_asked_to_stop_when_the_sweeper_ends_is_not_run_again_on_resume(tmp_path, app_env, sig):
    """Ctrl-C (its jobs are terminated, their ends recorded) or a kill (its local jobs die unrecorded) while a
    trial asked to stop still runs (it ignores the request, within a long stop_grace_s): the resumed sweep
    records it stopped early, with what it reported, instead of training the config judged hopeless again in
    full, or taking its termination for a failure; the others run again if they were in flight. (With step_s,
    a worse trial's steps are slower: the last of the three to reach a rung, the one ASHA stops, is never the
    best.)"""
    settings = ("hydra.sweeper.pruner=asha", "hydra.sweeper.min_resource=2", "hydra.sweeper.max_resource=9",
                "hydra.sweeper.stop_grace_s=120", "+ignores_stop=true", "+step_s=1", "hydra.sweeper.n_trials=3")
    proc = subprocess.Popen(sweep_command(tmp_path, *settings), cwd=tmp_path, env=app_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    said = []
    for line in proc.stdout:  # Hydra's log goes to stdout
        said.append(line)
        if "asked to stop: ASHA" in line:
            time.sleep(1.0)  # the request made, and saved in the sweep's state
            proc.send_signal(sig)
            break
    said += proc.stdout.readlines()
    assert proc.wait(timeout=120) != 0, "".join(said)[-3000:]
    stopped = int(re.search(r"Trial (\d+) \(job #\d+\) asked to stop", "".join(said)).group(1))

    resumed = run_sweep(tmp_path, app_env, *settings, "hydra.sweeper.resume=true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    if sig == signal.SIGKILL:
        assert "1 that it had asked to stop are stopped early" in resumed.stdout, resumed.stdout[-3000:]
    with open(tmp_path / "sweep/trials.csv") as stream:
        trials = {int(t["number"]): t for t in csv.DictReader(stream)}
    assert len(trials) == 3
    assert trials[stopped]["status"] == "pruned" and int(trials[stopped]["last_step"]) < 9, trials[stopped]
    assert trials[stopped]["stop_reason"].startswith("ASHA") and trials[stopped]["value"], trials[stopped]
    assert all(t["status"] == "completed" and t["last_step"] == "9" for n, t in trials.items() if n != stopped)


@pytest.mark.integration
def test_a_trial_that_fails_on_its_own_is_failed_with_its_error_not_stopped_early(tmp_path, app_env):
    """Trials above x=0.5 report three hopeless values at once and raise: the sweeper hears of their end and of
    their reports in the same look, and must not take them for trials it stopped (their error would be lost,
    and max_failures would not count them)."""
    proc = run_sweep(tmp_path, app_env, "hydra.sweeper.pruner=asha", "hydra.sweeper.min_resource=2",
                     "hydra.sweeper.max_resource=9", "hydra.sweeper.max_failures=9", "+diverge_above=0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "sweep/trials.csv") as stream:
        trials = list(csv.DictReader(stream))
    diverged = [t for t in trials if float(t["+x"]) > 0.5]
    assert len(diverged) >= 3, trials  # the seed's Sobol points: several, some after 3 trials reached step 2
    assert all(t["status"] == "failed" and "RuntimeError: diverged at step 3" in t["error"]
               and not t["stop_reason"] for t in diverged), diverged


@pytest.mark.integration
def test_a_trial_that_goes_on_after_the_request_is_terminated_and_counts_as_stopped(tmp_path, app_env):
    """A task that ignores report()'s True is terminated after stop_grace_s: its job fails, and the trial is
    pruned (its value its last report), not failed."""
    proc = run_sweep(tmp_path, app_env, "hydra.sweeper.pruner=asha", "hydra.sweeper.min_resource=2",
                     "hydra.sweeper.max_resource=9", "hydra.sweeper.stop_grace_s=1", "+ignores_stop=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "sweep/trials.csv") as stream:
        trials = list(csv.DictReader(stream))
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned and all(t["stop_reason"].startswith("ASHA") and not t["error"] and int(t["last_step"]) < 9
                          for t in pruned), trials
    assert {t["status"] for t in trials} == {"pruned", "completed"}, trials


@pytest.mark.integration
def test_what_the_sweep_says_when_its_settings_do_not_fit_its_trials(tmp_path, app_env):
    """max_resource above the steps the task runs is said after the first trial (nothing would count as
    finished for the pruner); a sweep whose every trial failed or was stopped says how many of each."""
    short = ("hydra.sweeper.n_trials=3", "hydra.sweeper.n_initial=3", "hydra.sweeper.pruner=asha")
    proc = run_sweep(tmp_path, app_env, *short, "hydra.sweeper.max_resource=20")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert said.count("returned at step 9, before hydra.sweeper.max_resource=20: set max_resource") == 1, said[-3000:]
    proc = run_sweep(tmp_path, app_env, *short, "hydra.sweeper.max_resource=9", "+diverge_above=-1",
                     "hydra.sweep.dir=failing")
    assert proc.returncode == 1 and "no trial completed (3 failed): see trials.csv" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.integration
@pytest.mark.parametrize("setting", ["hydra.sweeper.metric=accuracy", "hydra.sweeper.objective=accuracy"])
def test_a_metric_the_task_never_reports_is_said_when_the_first_trial_ends(tmp_path, app_env, setting):
    """The metric the pruner compares is the objective unless hydra.sweeper.metric names another: the error
    names the setting the user gave."""
    proc = run_sweep(tmp_path, app_env, "hydra.sweeper.pruner=median", setting, "hydra.sweeper.max_resource=9")
    assert proc.returncode == 1
    assert (f"{setting}: trial" in proc.stderr
            and "ended having reported only loss, so hydra.sweeper.pruner=median has nothing to compare"
            in proc.stderr), proc.stderr[-3000:]
    with open(tmp_path / "sweep/trials.csv") as stream:
        ended = sum(t["status"] in ("completed", "failed") for t in csv.DictReader(stream))
    assert 1 <= ended <= 3  # when the first trial ended (with any that ended in the same watch round), not after 9


@pytest.mark.integration
def test_a_pruner_needs_a_launcher_that_reads_trials_while_they_run(tmp_path, app_env):
    (tmp_path / "app.py").write_text(textwrap.dedent(CURVES))
    proc = subprocess.run([sys.executable, "app.py", "-m", "hydra/sweeper=thompson", "+x=interval(0, 1)",
                           "hydra.sweeper.pruner=asha", "hydra.sweeper.objective=loss", "hydra.sweep.dir=sweep",
                           "hydra.sweeper.rungs=sometimes"],
                          cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "hydra.sweeper.rungs=sometimes: one of always, measured" in proc.stderr
    assert "hydra.sweeper.max_resource=null: asha needs the step at which a trial is done" in proc.stderr
    assert "hydra.sweeper.pruner=asha reads trials while they run, which BasicLauncher cannot" in proc.stderr
    assert "Traceback" not in proc.stderr  # the problems alone, as Hydra prints its own errors in the config
    assert not (tmp_path / "sweep").exists()


NOISE_SD = 0.012  # sd of the example CNN's val_loss after 20 epochs over seed=0..4, at lr 0.0027, 0.0048, 0.0081


def example_sweep(tmp_path, env, pruner: str) -> list[dict]:
    """The example app (the CNN, 20 epochs) for 12 Sobol trials of lr, 3 in flight: the same 12 configs with
    or without a pruner."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_model.py"), "--multirun", "experiment=cnn_digits", "epochs=20",
         "hydra/sweeper=thompson", "lr=tag(log, interval(1e-4, 1e-1))", "hydra.sweeper.n_trials=12",
         "hydra.sweeper.n_workers=3", "hydra.sweeper.n_initial=12", "hydra.sweeper.metric=val_loss",
         f"hydra.sweeper.pruner={pruner}", "hydra.sweeper.min_resource=2", "hydra.sweeper.max_resource=20",
         "hydra/launcher=aws_batch_local", "hydra.launcher.metrics_interval_s=0.1", f"hydra.sweep.dir={pruner}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / pruner / "trials.csv") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.integration
def test_asha_trains_the_example_far_less_and_keeps_one_of_its_best_configs(tmp_path, app_env):
    """Measured (2-core machine, four runs): 9 of 12 trials stopped, 121-124 epochs against 240, best val_loss
    0.0252 against 0.0232 (the best config stopped at epoch 2, where it trailed; the second best kept). The
    noise: one config's val_loss after 20 epochs varies by 0.012 (sd over `seed`=0..4, for each of the three
    best lr here), so 0.002 is well within it."""
    pruned, full = example_sweep(tmp_path, app_env, "asha"), example_sweep(tmp_path, app_env, "none")
    assert [t["lr"] for t in pruned] == [t["lr"] for t in full]  # the same configs
    assert sum(t["status"] == "pruned" for t in pruned) >= 6  # at least half stopped early
    epochs = sum(int(t["last_step"]) for t in pruned)
    assert epochs <= 0.6 * sum(int(t["last_step"]) for t in full) == 0.6 * 240  # 40 % fewer epochs or more
    best = min(float(t["value"]) for t in pruned if t["status"] == "completed")
    assert best <= sorted(float(t["value"]) for t in full)[2]  # one of the three best configs ran to its end
    assert best <= min(float(t["value"]) for t in full) + NOISE_SD  # as good within noise


@pytest.mark.integration
def test_the_pruning_benchmark_runs_at_a_reduced_size(tmp_path):
    """bench/pruning.py at CI's size (one seed, a fifth of the budget), so that it cannot rot: every method
    runs, ASHA stops trials, and asyTS without a pruner stops none."""
    proc = subprocess.run([sys.executable, "bench/pruning.py", "--seeds", "1", "--budget-scale", "0.2",
                           "--processes", "1", "--out", str(tmp_path / "pruning")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "pruning.json").read_text())
    assert {row["method"] for row in summary["rows"]} == {"asyTS", "asyTS+ASHA", "RAND+ASHA", "TPE+SH"}
    stopped = {row["method"]: row["stopped"] for row in summary["rows"] if row["fraction"] == 1.0}
    assert stopped["asyTS"] == 0 and stopped["asyTS+ASHA"] > 0 and stopped["RAND+ASHA"] > 0, stopped
    assert summary["goals"]["decision_latency"]["median_s"] < 3.0
    assert "worker_seconds_to_asyTS_final_median" in summary["goals"]
    assert (tmp_path / "pruning.png").stat().st_size > 10_000
