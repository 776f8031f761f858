"""Trials that talk back: `report(step, **metrics)` from the task, everywhere a Hydra job runs, and the sweep
reading it while the job runs (the launcher's metrics(), the live line, hydra-awsbatch status)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hydra_plugins.hydra_awsbatch_launcher import _metrics
from tests.conftest import cli, manifest, wait_for

REPORTING_APP = """
    import time

    import hydra
    from hydra_plugins.hydra_awsbatch_launcher import report

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        for step in range(1, cfg.steps + 1):
            time.sleep(cfg.get("pause", 0))
            report(step, loss=1.0 / step, lr=cfg.lr)
        return 1.0 / cfg.steps

    if __name__ == "__main__":
        main()
"""


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- the job
@pytest.mark.unit
def test_report_checks_what_it_is_given():
    reporter = _metrics.Reporter(None, None, interval_s=10)
    reporter.report(2, {"loss": 0.5})
    with pytest.raises(TypeError, match=r"report\(\): accuracy='high' is not a number"):
        reporter.report(3, {"accuracy": "high"})
    with pytest.raises(ValueError, match=r"report\(\): step 1 comes after step 2; steps never go back"):
        reporter.report(1, {"loss": 0.4})
    for step, metrics, problem in [(3, {"loss": "0.5"}, r"loss='0.5' is not a number"),  # not converted
                                   (3, {"best": True}, r"best=True is not a number"),
                                   (3, {"best": np.bool_(True)}, r"best=\S*True\S* is not a number"),
                                   (float("nan"), {"loss": 0.4}, r"step=nan is not a finite number"),
                                   ("4", {"loss": 0.4}, r"step='4' is not a number"),
                                   (3, {"time": 5.0}, r"time= is the name of the time each report is made at")]:
        with pytest.raises((TypeError, ValueError), match=r"report\(\): " + problem):
            reporter.report(step, metrics)
    reporter.report(2.5, {"loss": float("nan")})  # a NaN is a value (a pruner stops such a trial)
    reporter.report(3, {"loss": np.float32(0.25)})  # numpy's scalars (and torch's 0-d tensors) are numbers
    assert [r["step"] for r in reporter.buffer] == [2, 2.5, 3] and reporter.buffer[-1]["loss"] == 0.25


@pytest.mark.unit
def test_report_writes_at_most_once_an_interval_and_never_raises_a_storage_error(tmp_path, caplog):
    reporter = _metrics.Reporter(tmp_path / "metrics.jsonl", str(tmp_path / "staging/metrics"), interval_s=3600)
    for step in range(1000):
        reporter.report(step, {"loss": 1.0})
    assert reporter.writes == 0 and not (tmp_path / "metrics.jsonl").exists()  # buffered
    reporter.flush()
    assert reporter.writes == 1 and len(records(tmp_path / "metrics.jsonl")) == 1000
    assert [p.name for p in (tmp_path / "staging/metrics").iterdir()] == ["part-000000.jsonl"]

    blocked = _metrics.Reporter(tmp_path / "a-file/metrics.jsonl", None, interval_s=0)
    (tmp_path / "a-file").write_text("a file where a folder should be")
    with caplog.at_level("WARNING"):
        for step in range(3):
            blocked.report(step, {"loss": 1.0})  # each call tries to write; none raises
    assert [r.getMessage() for r in caplog.records].count(next(
        r.getMessage() for r in caplog.records if "writing metrics failed" in r.getMessage())) == 1  # said once
    assert len(blocked.buffer) == 3  # nothing lost: the next write tries again


@pytest.mark.unit
def test_a_metrics_file_read_while_the_job_appends_to_it_gives_whole_records_only(tmp_path):
    """aws_batch_local with in_place=true: the sweep reads the job's metrics.jsonl as the job appends to it. Half
    a record is left for the next read; with the rest written, it is there. A record cut by a job killed
    mid-write is skipped, never raised out of the watch, and the record appended after it is kept."""
    channel = _metrics.Channel(staging=None)
    path = tmp_path / _metrics.FILE
    whole, half = '{"step": 1, "time": 5.0, "loss": 0.5}\n', '{"step": 2, "time": 6.0, "loss": 0.4}\n'
    path.write_text(whole + half[:15])
    assert channel.records(7, tmp_path) == [{"step": 1, "time": 5.0, "loss": 0.5}]
    path.write_text(whole + half)
    assert [r["step"] for r in channel.records(7, tmp_path)] == [1, 2]
    path.write_text(whole + half[:15] + half + '{"step": 3')  # killed mid-write, run again, being written
    assert [r["step"] for r in channel.records(7, tmp_path)] == [1, 2]
    assert _metrics.parse('{"step": 1, "lo\n{"step"\n') == []  # nothing whole: nothing, and no error


@pytest.mark.integration
def test_a_plain_run_and_hydras_basic_launcher_write_metrics_jsonl(tmp_path, app_env):
    (tmp_path / "app.py").write_text(textwrap.dedent(REPORTING_APP))
    run = subprocess.run([sys.executable, "app.py", "+steps=3", "+lr=0.1", "hydra.run.dir=run"], cwd=tmp_path,
                         env=app_env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert [(r["step"], r["loss"]) for r in records(tmp_path / "run/metrics.jsonl")] == [(1, 1.0), (2, 0.5),
                                                                                       (3, 1 / 3)]
    sweep = subprocess.run([sys.executable, "app.py", "-m", "+steps=2,4", "+lr=0.1", "hydra.sweep.dir=sweep"],
                           cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=120)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert [len(records(tmp_path / f"sweep/{n}/metrics.jsonl")) for n in (0, 1)] == [2, 4]  # one file a job


@pytest.mark.integration
def test_a_metric_that_is_not_a_number_fails_the_job_and_names_it(tmp_path, app_env):
    (tmp_path / "app.py").write_text(textwrap.dedent(REPORTING_APP))
    proc = subprocess.run([sys.executable, "app.py", "-m", "+steps=2", "+lr=fast", "hydra.sweep.dir=sweep",
                           "hydra/launcher=aws_batch_local"], cwd=tmp_path, env=app_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "report(): lr='fast' is not a number" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- the sweep
@pytest.mark.integration
def test_the_sweep_reads_the_metrics_of_jobs_while_they_run(tmp_path, app_env):
    """Jobs of aws_batch_local, their outputs brought back through staging as from Batch, report a step every
    0.2 s for 4 s; with metrics_interval_s=0.5, hydra-awsbatch status shows a job's last report while it runs,
    the live line logs them, and each job dir ends with all of them."""
    (tmp_path / "app.py").write_text(textwrap.dedent(REPORTING_APP))
    parent = subprocess.Popen(
        [sys.executable, "app.py", "-m", "+steps=20", "+pause=0.2", "+lr=0.1,0.2", "hydra.sweep.dir=sweep",
         "hydra/launcher=aws_batch_local", "hydra.launcher.in_place=false", "hydra.launcher.metrics_interval_s=0.5"],
        cwd=tmp_path, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep = tmp_path / "sweep"

    def reported_while_running():
        jobs = manifest(sweep)["jobs"] if (sweep / "manifest.json").exists() else []
        return [j for j in jobs if j["state"] == "RUNNING" and j.get("last_report", {}).get("step", 0) >= 3]

    assert wait_for(reported_while_running, timeout=60), parent.kill()
    status = cli("status", str(sweep), env=app_env)
    assert "RUNNING" in status.stdout and "step " in status.stdout and "loss=" in status.stdout, status.stdout
    output, _ = parent.communicate(timeout=120)
    assert parent.returncode == 0, output[-3000:]
    assert "  #0 step " in output and "loss=" in output  # the live line, logged as it changes
    jobs = manifest(sweep)["jobs"]
    assert [j["last_report"]["step"] for j in jobs] == [20, 20]
    for num in (0, 1):
        assert [r["step"] for r in records(sweep / f"{num}/metrics.jsonl")] == list(range(1, 21))
    staged = next((sweep / ".staging/sweeps").iterdir()) / "0/metrics"
    parts = sorted(p.name for p in staged.iterdir())
    assert 2 <= len(parts) <= 12, parts  # written every 0.5 s or so, not at each of the 20 calls


@pytest.mark.integration
def test_launch_async_offers_what_a_running_job_reported(inprocess_launcher, tmp_path):
    task = textwrap.dedent("""
        import time

        from hydra_plugins.hydra_awsbatch_launcher import report


        def task(cfg):
            for step in range(1, 31):
                report(step, loss=1.0 / step)
                time.sleep(0.1)
            return step
    """)
    launcher = inprocess_launcher(["hydra/launcher=aws_batch_local", "hydra.sweep.dir=sweep",
                                   "hydra.launcher.metrics_interval_s=0.3"], task)
    (future,) = launcher.launch_async([[]], initial_job_idx=0)
    assert wait_for(lambda: len(launcher.metrics(0)) >= 5, timeout=60)
    seen = launcher.metrics(0)
    assert not future.done() and [r["step"] for r in seen] == list(range(1, len(seen) + 1))
    assert future.result(timeout=60).return_value == 30
    assert [r["step"] for r in launcher.metrics(0)] == list(range(1, 31))  # all of it, once it ended
    assert time.time() - seen[-1]["time"] < 60


@pytest.mark.unit
def test_report_hears_a_request_to_stop_within_seconds_whatever_the_metrics_interval(tmp_path, monkeypatch):
    """A task reporting every batch with metrics written once an hour: report() looks for a request at most every
    STOP_LOOK_S, not only when it writes (the sweep's request reached the task only at its next write)."""
    monkeypatch.setattr(_metrics, "STOP_LOOK_S", 0.2)
    stop = tmp_path / "stop"
    reporter = _metrics.Reporter(None, str(tmp_path / "metrics"), interval_s=3600, stop_uri=str(stop))
    assert reporter.report(1, {"loss": 1.0}) is False
    stop.write_text("pruned")
    started, step = time.monotonic(), 1
    while not reporter.report(step := step + 1, {"loss": 1.0}) and time.monotonic() - started < 5:
        time.sleep(0.01)
    assert reporter.stop_requested and time.monotonic() - started < 1.0 and reporter.writes == 0


@pytest.mark.unit
def test_report_says_when_the_sweep_asks_the_job_to_stop(tmp_path):
    stop = tmp_path / "stop"
    reporter = _metrics.Reporter(None, str(tmp_path / "metrics"), interval_s=0, stop_uri=str(stop))
    assert reporter.report(1, {"loss": 1.0}) is False
    stop.write_text("pruned")
    assert reporter.report(2, {"loss": 0.9}) is True and reporter.report(3, {"loss": 0.8}) is True


STOPPABLE = """
import time

from hydra_plugins.hydra_awsbatch_launcher import report


def task(cfg):
    for step in range(1, 601):
        if report(step, loss=1.0 / step) and cfg.listens:
            return f"stopped at step {step}"
        time.sleep(0.05)
    return "ran to the end"
"""


@pytest.mark.integration
@pytest.mark.parametrize("listens", [True, False])
@pytest.mark.parametrize("warm", [[], ["hydra.launcher.workers=1", "hydra.launcher.idle_timeout_s=2"]],
                         ids=["a process per job", "on a warm worker"])
def test_a_job_asked_to_stop_returns_or_is_terminated_after_the_grace_period(inprocess_launcher, listens, warm):
    launcher = inprocess_launcher(["hydra/launcher=aws_batch_local", "hydra.sweep.dir=sweep",
                                   "hydra.launcher.metrics_interval_s=0.2", *warm], STOPPABLE)
    (future,) = launcher.launch_async([[f"+listens={listens}"]], initial_job_idx=0)
    assert wait_for(lambda: len(launcher.metrics(0)) >= 3, timeout=60)
    asked = time.time()
    launcher.stop([0], "pruned by a test", grace_s=3)
    assert not future.done()  # asked, not terminated: the call returns at once
    ret = future.result(timeout=60)
    job = manifest(Path("sweep"))["jobs"][0]
    assert job["stop_request"] == "pruned by a test"
    if listens:  # it saw the request at its next write and returned what it had
        assert ret.return_value.startswith("stopped at step") and job["state"] == "SUCCEEDED"
        assert time.time() - asked < 3
    else:  # it went on: terminated once the grace period was over
        assert ret.status.name == "FAILED" and job["state"] == "FAILED" and time.time() - asked >= 3
        assert "went on past the grace period" in job["reason"]


@pytest.mark.unit
def test_report_where_hydra_is_set_up_but_runs_no_job(tmp_path, monkeypatch):
    """compose() (a test, a notebook) leaves Hydra's config without an output dir: nothing to write, no error."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        HydraConfig.instance().set_config(compose(return_hydra_config=True))
    try:
        from hydra_plugins.hydra_awsbatch_launcher import report

        assert report(1, loss=0.5) is False and report(2, loss=0.4) is False
        _metrics.finish()
        assert not list(tmp_path.rglob("metrics.jsonl"))
    finally:
        HydraConfig.instance().cfg = None
        _metrics.finish()


MANY_REPORTS = """
from hydra_plugins.hydra_awsbatch_launcher import report


def task(cfg):
    for step in range(cfg.reports):
        report(step, loss=1.0 / (step + 1), accuracy=0.5, lr=0.001, grad_norm=3.25)
    return cfg.reports
"""


@pytest.mark.integration
def test_the_launchers_memory_stays_flat_whatever_the_count_of_reports(inprocess_launcher):
    """Two jobs of aws_batch_local (outputs home through staging, as from Batch) report 40,000 times each, read
    by the watcher every 0.2 s and by nobody else (Hydra's basic sweeper asks for no curve): what the launcher
    holds after they ended is what its watcher needs (a last report a job, cursors), not the 80,000 reports
    (about 1.3 KB each, kept until a caller took them). A caller with a cursor still gets every record, from
    disk; and the job dirs end with all of them."""
    import gc
    import tracemalloc

    reports = 40_000
    launcher = inprocess_launcher(["hydra/launcher=aws_batch_local", "hydra.sweep.dir=sweep",
                                   "hydra.launcher.in_place=false", "hydra.launcher.metrics_interval_s=0.2"],
                                  MANY_REPORTS)
    warm_up = launcher.launch_async([["+reports=10"]] * 2, initial_job_idx=0)  # what a sweep imports, first
    assert [f.result(timeout=300).return_value for f in warm_up] == [10] * 2
    pytest.importorskip("sklearn.inspection")  # and what the sweep page imports once 4 jobs completed
    pytest.importorskip("plotly.offline")
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        futures = launcher.launch_async([[f"+reports={reports}"]] * 2, initial_job_idx=2)
        assert [f.result(timeout=300).return_value for f in futures] == [reports] * 2
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"the launcher holds {held / 1e6:.2f} MB more after {2 * reports:,} reports")
    assert held < 4e6, f"the launcher holds {held / 1e6:.1f} MB more after {2 * reports:,} reports"
    assert [r["step"] for r in launcher.metrics(3, since=reports - 2)] == [reports - 2, reports - 1]
    assert len(launcher.metrics(2)) == reports == len(records(Path("sweep/2") / _metrics.FILE))


@pytest.mark.unit
def test_report_outside_a_hydra_job_checks_what_a_job_checks_and_records_nothing(tmp_path, monkeypatch):
    """The task called by a unit test (no Hydra job): a metric that is no number, a step going back, a NaN step
    raise as in every job of a sweep, and nothing is written; each call of the task starts its steps afresh."""
    from hydra_plugins.hydra_awsbatch_launcher import report

    monkeypatch.chdir(tmp_path)

    def task(steps, loss=0.5):
        for step in steps:
            report(step, loss=loss)
        return "done"

    assert task([1, 2, 3]) == task([1, 2]) == task([0.5]) == "done"  # a new call, a new start
    with pytest.raises(TypeError, match=r"report\(\): loss='0.5' is not a number"):
        task([1, 2], loss="0.5")
    with pytest.raises(ValueError, match=r"report\(\): step 2 comes after step 3; steps never go back"):
        task([1, 3, 2])
    with pytest.raises(ValueError, match=r"report\(\): step=nan is not a finite number"):
        task([float("nan")])
    with pytest.raises(TypeError, match=r"report\(\): time= is the name"):
        report(1, time=5.0)
    assert report(7, loss=0.1) is False and report(8, loss=0.1) is False
    assert not list(tmp_path.iterdir()) and _metrics._current is None  # nothing recorded
