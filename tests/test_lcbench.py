"""The LCBench bench (bench/lcbench.py) at a reduced size, so that it cannot rot: the surrogate wrapper against
values yahpo-gym 1.0.2 gave, the simulated clock of our loop, the regret statistics, and a short run of the bench
itself (one task, two seeds, 900 simulated seconds; random search on our loop, and ours through Study where it
exists). Syne Tune's methods need their own venv and are left to the bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("onnxruntime", reason="the LCBench surrogate runs on onnxruntime (the test extra installs it)")

from bench.lcbench import own, stats  # noqa: E402
from bench.lcbench.surrogate import DATA, EPOCHS, OBJECTIVES, TASKS, LCBench  # noqa: E402
from hydra_plugins.hydra_thompson_sweeper import SweepError  # noqa: E402

# yahpo-gym 1.0.2's BenchmarkSet("lcbench").objective_function for these rows (one row a call), in OBJECTIVES order.
YAHPO = [
    (dict(OpenML_task_id="189908", epoch=52, batch_size=91, learning_rate=0.0031622777, momentum=0.545,
          weight_decay=0.050005, num_layers=3, max_units=256, max_dropout=0.5),
     [872.860595703125, 82.24858093261719, 0.5436476469039917, 0.8262728452682495, 1.7655824422836304,
      0.8283668160438538]),
    (dict(OpenML_task_id="7593", epoch=1, batch_size=512, learning_rate=0.1, momentum=0.99, weight_decay=1e-5,
          num_layers=5, max_units=1024, max_dropout=0.0),
     [53.0220947265625, 14.683881759643555, 1.311725378036499, 0.3465624153614044, 1.7213953733444214,
      0.3381083905696869]),
    (dict(OpenML_task_id="168908", epoch=20, batch_size=16, learning_rate=0.0002, momentum=0.1, weight_decay=0.09,
          num_layers=1, max_units=64, max_dropout=1.0),
     [92.48422241210938, 69.53942108154297, 0.5919319987297058, 0.69571852684021, 0.6164793968200684,
      0.6748204231262207]),
]


@pytest.fixture(scope="module")
def model():
    assert (DATA / "model.onnx").exists(), f"the LCBench surrogate is missing: {DATA} (shared/data/yahpo_lcbench)"
    return LCBench()


def test_wrapper_answers_as_yahpo_gym(model):
    for config, expected in YAHPO:
        got = model.evaluate(config["OpenML_task_id"], [config], [config["epoch"]])[0, 0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=str(config))
    assert len(OBJECTIVES) == 6 and set(TASKS) <= set(model.tasks)


def test_curves_are_a_clock(model):
    times, acc = model.curves("189908", model.sample(np.random.default_rng(0), 20))
    assert times.shape == acc.shape == (20, EPOCHS)
    assert (times[:, 0] >= 0.01).all() and (np.diff(times, axis=1) >= 0.01 - 1e-9).all()
    assert (acc > 0).all() and (acc <= 100).all()


class StopAtTwo(own.RandomSearch):
    """Stops every trial at its second epoch; records what the loop tells it."""

    def __init__(self):
        super().__init__(seed=0)
        self.told = []

    def report(self, trial, step, value):
        return step >= 2

    def tell(self, trial, value=None, state=None):
        self.told.append((trial.number, value, state))


def test_loop_keeps_four_workers_busy_on_the_simulated_clock(model):
    optimiser = StopAtTwo()
    record = own.simulate(model, "189908", optimiser, budget=600.0, workers=4)
    # every trial but those running at the end was stopped at epoch 2 and told "pruned"
    assert record["results"] >= 2 * len(optimiser.told)
    assert all(state == "pruned" for _, _, state in optimiser.told)
    assert record["trials"] == len(optimiser.told) + 4
    # the incumbent only improves, within the budget
    t, best = record["incumbent"]["t"], record["incumbent"]["best"]
    assert all(0 < a <= 600.0 for a in t) and best == sorted(best) and t == sorted(t)
    # the simulated time the trials took, added up, is about 4 workers x 600 s
    total = 0.0
    rng = np.random.default_rng(0)
    for _ in range(len(optimiser.told)):
        u = rng.random(7)
        params = {p.name: float(p.from_unit(np.array([u[j]]))[0]) for j, p in enumerate(own.PARAMS)}
        total += model.curves("189908", [params])[0][0, 1]
    assert total <= 4 * 600.0


def test_a_lever_in_the_method_name_sets_the_study():
    study = own.make_optimiser("ours-asha-b3-n5", seed=0)
    assert (study.settings["pruner"], study.settings["brackets"], study.settings["n_initial"]) == ("asha", 3, 5)
    assert own.make_optimiser("ours", seed=0).settings["pruner"] == "none"
    with pytest.raises(SweepError, match="brackets=3"):  # Study's own error: brackets are asha's
        own.make_optimiser("ours-b3", seed=0)


def test_iqm_and_regret():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)
    run = {"incumbent": {"t": [10.0, 50.0], "best": [60.0, 80.0]}}
    ref = {"best": 90.0, "worst": 50.0}
    assert stats.regret(run, 5.0, ref) == 1.0
    assert stats.regret(run, 10.0, ref) == pytest.approx(0.75)
    assert stats.regret(run, 900.0, ref) == pytest.approx(0.25)


def test_goals_compare_ours_with_every_peer_per_task_and_pooled():
    def run(method, task, seed, times, best):
        return {"method": method, "task": task, "seed": seed, "incumbent": {"t": times, "best": best},
                "decision_median_s": 0.0, "suggest_s": {"median_new": 0.0, "mean_new": 0.0,
                                                        "median_new_at_400_600_results": None},
                "host_s": 1.0, "trials": 1, "results": 1}

    reference = {"tasks": {"a": {"best": 100.0, "worst": 0.0}, "b": {"best": 100.0, "worst": 0.0}}}
    runs = []
    for seed in range(3):
        runs += [run("ours", "a", seed, [100.0], [95.0]),  # regret 0.05 from 100 s on
                 run("ours", "b", seed, [100.0, 3000.0], [70.0, 90.0]),  # 0.3, then 0.1 from 3,000 s
                 run("ASHA-stop", "a", seed, [100.0], [90.0]),  # 0.1
                 run("ASHA-stop", "b", seed, [100.0], [80.0]),  # 0.2
                 run("random", "a", seed, [100.0], [99.0])]  # ours' own loop: not a peer
    goal = stats.goals(stats.summarise(runs, reference, reps=10), runs, reference)["ours"]
    assert goal["tasks"]["a"]["met"] and goal["tasks"]["a"]["gap"]["1800"] == pytest.approx(-0.05)
    assert not goal["tasks"]["b"]["met"] and goal["tasks"]["b"]["gap"]["1800"] == pytest.approx(0.1)
    assert goal["tasks"]["b"]["gap"]["3600"] == pytest.approx(-0.1) and goal["tasks_met"] == 1
    # pooled IQM of [0.05, 0.05, 0.05, 0.3, 0.3, 0.3] is 0.175 against ASHA's 0.15 until 3,000 s
    assert not goal["pooled"]["met"] and goal["pooled"]["gap"]["1800"] == pytest.approx(0.025)
    # ASHA's final pooled IQM (0.15) is reached when b improves, at 3,000 s: 42 % of the budget
    assert goal["reach"]["ASHA-stop"] == {"target": pytest.approx(0.15), "at_s": 3000.0,
                                          "fraction": pytest.approx(3000 / 7200)}
    assert "goal 1 on 1 of 2 tasks (behind on b (1800s +0.1000))" in stats.goals_text({"ours": goal})


def test_reference_covers_the_five_tasks():
    from bench.lcbench.cli import REFERENCE

    reference = json.loads(REFERENCE.read_text())
    for task in TASKS:
        entry = reference["tasks"][task]
        assert 0 < entry["worst"] < entry["best"] <= 100


def test_reduced_bench_runs(tmp_path, capsys):
    from bench.lcbench import cli

    out = tmp_path / "lcbench.json"
    cli.main(["--tasks", "189908", "--methods", "random", "ours", "--seeds", "2", "--seeds-for",
              "--budget", "900", "--jobs", "1", "--nice", "0", "--out", str(out), "--plot", str(tmp_path / "p.png")])
    result = json.loads(out.read_text())
    random = result["summary"]["random"]
    assert random["seeds"] == {"189908": 2}
    for t in ("900", "1800", "3600", "7200"):
        entry = random["pooled"][t]
        assert entry["lo"] <= entry["iqm"] <= entry["hi"] and 0 <= entry["iqm"] < 1
    assert random["host"]["new_config_median_s"] is not None
    assert result["summary"]["ours"]["seeds"] == {"189908": 2} and not result["skipped"]
    assert set(result["goals"]) == {"ours"}  # no Syne Tune peer ran: no goal is met
    assert result["goals"]["ours"]["tasks_met"] == 0 and not result["goals"]["ours"]["pooled"]["met"]
    assert "| random | 2 |" in result["table"]

    # A bench run in parts, summed up in one: more seeds of random later, then the two outputs merged.
    part = tmp_path / "random-more.json"
    cli.main(["--tasks", "189908", "--methods", "random", "--seeds", "2", "--first-seed", "1", "--budget", "900",
              "--jobs", "1", "--nice", "0", "--out", str(part), "--plot", str(tmp_path / "q.png")])
    merged = tmp_path / "merged.json"
    cli.main(["--methods", "--merge", str(part), str(out), "--out", str(merged), "--plot", str(tmp_path / "m.png")])
    both = json.loads(merged.read_text())
    assert sorted(r["seed"] for r in both["runs"] if r["method"] == "random") == [0, 1, 2]
    assert both["settings"]["seeds"] == {"random": 3, "ours": 2} and both["settings"]["tasks"] == ["189908"]
    assert both["settings"]["budget_s"] == 900
    assert both["summary"]["ours"] == result["summary"]["ours"] and (tmp_path / "m.png").exists()
    assert both["measured_at"]["merged_from"][str(part)]["runs_kept"] == 2

    # Runs of another clock are refused, a missing output before anything runs.
    longer = tmp_path / "random-1800.json"
    cli.main(["--tasks", "189908", "--methods", "random", "--seeds", "1", "--first-seed", "5", "--budget", "1800",
              "--jobs", "1", "--nice", "0", "--out", str(longer), "--plot", str(tmp_path / "r.png")])
    assert cli.main(["--methods", "--merge", str(longer), str(out), "--out", str(tmp_path / "x.json")]) == 1
    assert "do not share one clock" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--methods", "random", "--merge", str(tmp_path / "typo.json"), "--out", str(tmp_path / "y.json")])
    assert "no such output" in capsys.readouterr().err
