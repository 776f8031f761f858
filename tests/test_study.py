"""Study, the thompson sweeper's mind on its own: ask / report / tell / save / load as a notebook, a simulation or
another launcher uses it, with Hydra absent; its space read from Hydra's override grammar as Hydra reads it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hydra_plugins.hydra_thompson_sweeper import Study, SweepError
from hydra_plugins.hydra_thompson_sweeper._space import parse_space, search_space

ROOT = Path(__file__).resolve().parent.parent

# Four workers on a simulated clock: each trial trains 27 epochs of a curve that decays towards its final loss
# (x's distance from 0.3, times 10, plus the choice's offset), an epoch taking 0.5-1.5 s of simulated time; the
# study's pruner may stop it at any report; a freed worker gets the study's next trial at once.
SIMULATION = """
    import heapq, json, math, random, sys
    from hydra_plugins.hydra_thompson_sweeper import Study

    study = Study({"x": "interval(0, 1)", "depth": "range(1, 5)", "act": "choice(relu, gelu)"},
                  direction="minimize", seed=0, n_initial=6, pruner="asha", min_resource=1, max_resource=27)
    rng, clock, events, running = random.Random(0), 0.0, [], {}

    def final(params):
        return 10 * (params["x"] - 0.3) ** 2 + 0.1 * params["depth"] + (0.0 if params["act"] == "gelu" else 0.5)

    def start(now):
        trial = study.ask()
        running[trial.number] = (trial, rng.uniform(0.5, 1.5), 0)
        heapq.heappush(events, (now + running[trial.number][1], trial.number))

    for _ in range(4):
        start(0.0)
    told = 0
    while told < 40:
        now, number = heapq.heappop(events)
        trial, epoch_s, step = running.pop(number)
        step += 1
        loss = final(trial.params) + 5 * math.exp(-step / 4) + rng.gauss(0, 0.01)
        stop = study.report(trial, step, loss)
        if step == 27 or stop:
            study.tell(trial, loss) if step == 27 else study.tell(trial, state="pruned")
            told += 1
            start(now)
        else:
            running[number] = (trial, epoch_s, step)
            heapq.heappush(events, (now + epoch_s, number))
    study.save(sys.argv[1])
    print(json.dumps({"told": told, "in_flight": len(study.running()), "best": study.best.value,
                      "best_params": study.best.params,
                      "statuses": sorted({t.status.value for t in study.trials}),
                      "pruned": sum(t.status.value == "pruned" for t in study.trials),
                      "hydra": "hydra" in sys.modules}))
"""


@pytest.mark.integration
def test_a_study_drives_a_whole_asynchronous_simulation_without_hydra(tmp_path):
    """Hydra made unimportable: the study asks, judges reports and learns from what it is told, on a simulated
    clock with four workers; ASHA stops hopeless trials; the best is near the optimum; the state it saves loads
    (with Hydra there) into a study with the same trials and best."""
    (tmp_path / "hydra").mkdir()
    (tmp_path / "hydra" / "__init__.py").write_text("raise ImportError('no Hydra here')")
    (tmp_path / "sim.py").write_text(textwrap.dedent(SIMULATION))
    proc = subprocess.run([sys.executable, "sim.py", str(tmp_path / "state.json")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["told"] == 40 and result["in_flight"] == 4 and not result["hydra"]
    assert result["statuses"] == ["completed", "pruned", "running"] and result["pruned"] >= 10
    assert result["best"] < 0.8 and result["best_params"]["act"] == "gelu", result  # optimum 0.1 at x=0.3, depth 1

    loaded = Study.load(tmp_path / "state.json")
    assert len(loaded.trials) == 44 and loaded.best.value == result["best"]
    assert len(loaded.running()) == 4 and loaded.trials[0].curve  # the curves, kept once, come back
    assert loaded.optimizer.observations  # what the GP had learnt, learnt again
    trial = loaded.ask()
    assert trial.number == 44 and set(trial.params) == {"x", "depth", "act"}


@pytest.mark.unit
def test_asha_in_a_study_stops_a_hopeless_trial_and_the_gp_learns_its_levels():
    study = Study({"x": "interval(0, 1)"}, seed=0, n_initial=4, pruner="asha", min_resource=1, max_resource=9,
                  reduction_factor=3)
    good, fair, bad = study.ask(), study.ask(), study.ask()
    for trial, value in ((good, 0.1), (fair, 0.5)):
        assert not study.report(trial, 1, value)
    assert study.report(bad, 1, 0.9)  # the third at rung 1, worse than the top third
    assert bad.stop_reason.startswith("ASHA") and study.report(bad, 2, 0.8)  # it goes on saying so
    study.tell(bad, state="pruned")
    assert bad.value == 0.8 and bad.status.value == "pruned"
    # each one's level 1, and the stopped one's last report past it (Syne Tune's rungs_and_last)
    assert sorted(o.fraction for o in study.optimizer.observations) == [1 / 9] * 3 + [2 / 9]
    study.tell(good, 0.05)
    assert study.best is good and [o.fraction for o in study.optimizer.observations].count(1.0) == 1
    with pytest.raises(ValueError, match="trial 0 was told already"):
        study.tell(good, 0.01)  # told once: a second value would be learnt twice


@pytest.mark.unit
def test_bad_settings_and_a_bad_space_are_refused_naming_each_problem():
    with pytest.raises(SweepError) as raised:
        Study({"lr": "tag(log, interval(0, 1))", "n": "range(3, 3)"}, direction="up")
    assert raised.value.problems == ["lr: a log scale needs a lower bound above 0, not 0.0",
                                     "n=range(3, 3): it holds no value", "direction=up: minimize or maximize"]
    with pytest.raises(SweepError, match="max_resource=null: asha needs the step at which a trial is done"):
        Study({"x": "interval(0, 1)"}, pruner="asha")


@pytest.mark.unit
@pytest.mark.parametrize("sweep", ["interval(0, 1)", "tag(log, interval(1e-5, 1e-1))", "range(1, 9)",
                                   "range(0.1, 0.5, 0.1)", "tag(log, range(1, 64, 8))", "choice(relu, gelu)",
                                   "16,32,64", "choice(1, 2.5, true, 'a b')", "range(5, 1, -2)", "range(7, 8)"])
def test_the_space_reads_the_override_grammar_as_hydra_reads_it(sweep):
    assert parse_space({"p": sweep}) == search_space({"p": sweep}, [])[0]


@pytest.mark.unit
@pytest.mark.parametrize("pruner", ["asha", "median", "extrapolate"])
def test_a_running_curve_is_kept_once_by_the_study_and_the_pruner_keeps_only_its_tables(pruner):
    """A trial's reports live in its curve, the study's; the pruner reads them through a view and keeps its rung
    tables and counters only, so its memory does not grow with the reports. A maximised metric is signed for it."""
    study = Study({"x": "interval(0, 1)"}, direction="maximize", seed=0, n_initial=4, pruner=pruner,
                  metric="acc", min_resource=1, max_resource=500, reduction_factor=3)
    trials = [study.ask() for _ in range(3)]
    for step in range(1, 501):
        for i, trial in enumerate(trials):
            study.report(trial, step, 0.5 + i / 10 - 1 / step, loss=1.0 / step)
    assert [len(t.curve) for t in trials] == [500] * 3 and trials[2].curve[-1]["loss"] == 1 / 500

    def held(value) -> int:  # the entries a pruner's field holds, nested containers counted in full
        if isinstance(value, dict):
            return len(value) + sum(held(v) for v in value.values())
        return len(value) + sum(held(v) for v in value) if isinstance(value, (list, set, tuple)) else 0

    assert sum(held(v) for k, v in vars(study.pruner).items() if k != "reports") < 60, vars(study.pruner)
    assert list(study.pruner.reports.curve(1))[:2] == [(1, -(0.6 - 1)), (2, -(0.6 - 0.5))]  # signed: lower wins
    assert not trials[2].stop_reason  # the best goes on


def _tell_design(study: Study, values: list[float]) -> list:
    trials = [study.ask() for _ in values]
    for trial, value in zip(trials, values):
        study.tell(trial, value)
    return trials


@pytest.mark.unit
def test_on_a_grid_a_noisy_best_is_run_again_before_it_is_believed_and_the_answer_is_the_best_mean(caplog):
    """A config's value is one draw of a noisy training: once the design is in, the best config tried once is
    asked again; a second, poor draw takes it off the top, and the answer is the config with the best mean."""
    caplog.set_level(logging.INFO, logger="hydra_plugins.hydra_thompson_sweeper")
    study = Study({"width": "range(0, 50)", "act": "choice(relu, gelu, tanh)"}, seed=0, n_initial=4)
    design = _tell_design(study, [0.9, 0.5, 0.7, 0.8])
    assert len({str(t.params) for t in design}) == 4
    lucky = design[1]
    again = study.ask()
    assert again.params == lucky.params and again.number == 4  # confirmed before anything new
    assert "Trial 4 runs the best config (trial 1's) a second time before it is believed" in caplog.text
    assert study.ask().params != lucky.params  # in flight: not asked a third time
    study.tell(again, 1.1)  # the lucky draw's config means 0.8 now: the 0.7 is the best config
    assert study.best is design[2] and study.best.value == 0.7
    assert json.loads(study.to_json())["best"] == design[2].number  # what the sweep page marks best
    assert study.ask().params == design[2].params  # which is confirmed in turn


def _confirmations(confirm: str, asks: int = 40) -> tuple[list[int], list[int]]:
    """A sequential study on a grid of a deterministic objective: the asks that ran the best config again while it
    had one completed trial, and the asks where the best config had one completed trial (design over)."""
    offset = {"relu": 0.0, "gelu": 0.3, "tanh": 0.6}
    study = Study({"width": "range(0, 100)", "act": "choice(relu, gelu, tanh)"}, seed=1, n_initial=5,
                  confirm=confirm)
    confirmed, could = [], []
    for _ in range(asks):
        best, completed = study.best, len(study.completed())
        trial = study.ask()
        if best is not None and completed >= 5 and [t.params for t in study.completed()].count(best.params) == 1:
            could.append(trial.number)
            if trial.params == best.params:
                confirmed.append(trial.number)
        study.tell(trial, abs(trial.params["width"] - 37) / 10 + offset[trial.params["act"]])
    return confirmed, could


@pytest.mark.unit
def test_confirmation_stops_on_a_deterministic_objective_and_never_runs_on_a_float_interval():
    confirmed, could = _confirmations("always")
    assert confirmed == could and len(could) >= 3  # each new best run again
    confirmed, could = _confirmations("auto")
    assert confirmed[:3] == could[:3] and set(could) - set(confirmed)  # 3 same values: deterministic, stops
    confirmed, could = _confirmations("never")
    assert confirmed[:1] != could[:1]  # the GP's own proposal after the design, not the best again
    study = Study({"x": "interval(0, 1)", "act": "choice(relu, gelu)"}, seed=0, n_initial=2)
    done = _tell_design(study, [0.5, 0.4])
    assert study.ask().params != done[1].params
    study = Study({"width": "range(0, 100)", "act": "choice(relu, gelu, tanh)"}, algorithm="asy_random",
                  n_initial=2)
    done = _tell_design(study, [0.5, 0.4])
    assert study.ask().params != done[1].params  # random search stays random
    with pytest.raises(SweepError, match="confirm=twice: one of auto, always, never"):
        Study({"x": "interval(0, 1)"}, confirm="twice")
