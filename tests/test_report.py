"""The sweep page (report.html) and the CLI's view of a sweep: real sweeps of aws_batch_local (thompson with a
pruner, Hydra's basic sweeper), each page opened in a real headless Chromium; a 1,000-trial page's size and
write time; status, logs and logs -f as a user runs them."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hydra_plugins.hydra_awsbatch_launcher import _report
from tests.conftest import cli, wait_for

REPORTING_APP = """
import math, time
import hydra
from omegaconf import DictConfig
from hydra_plugins.hydra_awsbatch_launcher import report

@hydra.main(version_base=None, config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    lr, width, opt = float(cfg.lr), int(cfg.width), str(cfg.opt)
    print(f"training lr={lr} width={width}", flush=True)
    if lr > 0.05:
        raise RuntimeError(f"diverged at lr={lr}")
    final = (math.log10(lr) + 2.5) ** 2 + 100 / width + (0.2 if opt == "sgd" else 0.0)
    value = final
    for step in range(1, 10):
        value = final + 3 * math.exp(-step / 3)
        if report(step, val_loss=value, acc=1 / (1 + value)):
            return value
        time.sleep(float(cfg.get("pause", 0.3)))
    return value

if __name__ == "__main__":
    main()
"""

LOCAL = "hydra/launcher=aws_batch_local"


def run(folder: Path, env: dict, *args: str, fails: bool = False) -> subprocess.CompletedProcess:
    """`python app.py --multirun ARGS`; a job that fails makes Hydra's basic sweeper exit 1 (`fails`)."""
    proc = subprocess.run([sys.executable, "app.py", "--multirun", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == int(fails), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def app_folder(tmp_path) -> Path:
    (tmp_path / "app.py").write_text(REPORTING_APP)
    return tmp_path


# ------------------------------------------------------------------------------------------- the browser
def chromium_problem() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "Debian's chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    return None


def open_page(page: Path, script: str | None = None) -> dict:
    """Open `page` in a headless Chromium as a user opens it from disk: its plots, the console's errors, every
    request it made, and what `script` returned after it was drawn."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-unsafe-swiftshader", "--window-size=1300,1000"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get_log("performance")  # what the browser did before the page (its own new-tab page)
        driver.get(page.resolve().as_uri())
        wait_for(lambda: driver.execute_script("return document.readyState") == "complete", timeout=60)
        seen = {
            "plots": driver.execute_script("return document.querySelectorAll('.js-plotly-plot').length"),
            "drawn": driver.execute_script(
                "return Array.from(document.querySelectorAll('.js-plotly-plot')).filter("
                "d => d.querySelector('.main-svg') && d._fullData && d._fullData.length).length"),
            "sections": driver.execute_script(
                "return Object.fromEntries(Array.from(document.querySelectorAll('section .views')).map("
                "v => [v.id, v.querySelectorAll('.js-plotly-plot').length]))"),
            "result": driver.execute_script(script) if script else None,
        }
        seen["errors"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        seen["requests"] = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
        return seen
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


needs_chromium = pytest.mark.skipif(chromium_problem() is not None, reason=str(chromium_problem()))

HOVER = """
const gd = document.getElementById('curves-plot');
const trace = gd.data.findIndex(t => t.mode === 'lines');
Plotly.Fx.hover(gd, [{curveNumber: trace, pointNumber: 0}]);
return [gd.data[trace].text[0], document.querySelector('#curves-plot .hoverlayer').textContent];
"""


def offline(requests: list[str], page: Path) -> list[str]:
    """The requests the page made beyond its own file: to a network or another file (data: and blob: URIs are in
    the page; chrome:// and chrome-untrusted:// are the browser's own new-tab page, Chromium 150 asks the latter
    after the page)."""
    own = page.resolve().as_uri()
    made = requests[requests.index(own):] if own in requests else requests
    return [url for url in made if url != own and url.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp", "file")]


@pytest.mark.unit
def test_a_request_beyond_the_page_is_seen_and_the_browsers_own_pages_are_not(tmp_path):
    page = tmp_path / "report.html"
    requests = ["chrome://new-tab-page/", "https://www.google.com/async/ntp", page.resolve().as_uri(),
                "data:image/png;base64,AAAA", "chrome-untrusted://new-tab-page/one-google-bar?paramsencoded=",
                "https://cdn.plot.ly/plotly-2.35.2.min.js", (tmp_path / "plotly.js").as_uri()]
    assert offline(requests, page) == ["https://cdn.plot.ly/plotly-2.35.2.min.js", (tmp_path / "plotly.js").as_uri()]


# ------------------------------------------------------------------------------------------- real sweeps
@needs_chromium
def test_a_pruned_thompson_sweep_gets_its_page_live_and_at_its_end(app_folder, app_env):
    sweep = app_folder / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--multirun", "hydra/sweeper=thompson", LOCAL,
         "+lr=tag(log, interval(1e-4, 1e-1))", "+width=range(8, 256)", "+opt=choice(adam, sgd)",
         "hydra.sweeper.n_trials=12", "hydra.sweeper.n_workers=3", "hydra.sweeper.n_initial=6",
         "hydra.sweeper.pruner=asha", "hydra.sweeper.metric=val_loss", "hydra.sweeper.min_resource=1",
         "hydra.sweeper.max_resource=9", "hydra.sweeper.max_failures=12", "hydra.launcher.metrics_interval_s=0.3",
         "hydra.sweep.dir=sweep"], cwd=app_folder, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    page = sweep / "report.html"
    live = wait_for(lambda: page.is_file() and proc.poll() is None and page.read_text(), timeout=120)  # while it runs
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert live and "http-equiv='refresh'" in live  # the live page reloads itself
    state = json.loads((sweep / "thompson_state.json").read_text())
    statuses = [t["status"] for t in state["trials"]]
    assert "pruned" in statuses and "completed" in statuses, statuses
    final = page.read_text()
    assert "http-equiv='refresh'" not in final and ", ended," in final  # rewritten at the end
    assert page.stat().st_size < 8 * 2**20
    assert "<script src" not in final and "<link" not in final  # Plotly inlined, nothing fetched

    seen = open_page(page, HOVER)
    assert not seen["errors"], seen["errors"]
    assert not offline(seen["requests"], page), seen["requests"]
    views = seen["sections"]
    assert views["v-best"] == 2 and views["v-params"] == 3 and views["v-parallel"] == 1
    assert views["v-curves"] == 1 and views["v-timeline"] == 1 and views["v-rungs"] == 1
    assert seen["drawn"] == seen["plots"] == sum(views.values())
    label, hovered = seen["result"]
    trial = int(label.split()[1])
    params = next(t["params"] for t in state["trials"] if t["number"] == trial)
    assert f"trial {trial} " in hovered and all(f"{name}=" in hovered for name in params), hovered

    status = cli("status", str(sweep), env=app_env)
    assert status.returncode == 0
    pruned = [t["job"] for t in state["trials"] if t["status"] == "pruned"]
    rows = {int(line.split()[0]): line for line in status.stdout.splitlines()[2:] if line.split()[0].isdigit()}
    assert all(rows[num].split()[1] == "PRUNED" for num in pruned), status.stdout
    full = next(t for t in state["trials"] if t["job"] == 0)["params"]["+lr"]
    assert f"+lr={full}" in rows[0]  # the searched value in full, not cut at 40 characters


@needs_chromium
def test_a_basic_sweep_gets_its_page_with_its_failures(app_folder, app_env):
    run(app_folder, app_env, LOCAL, "+lr=1e-4,1e-3,0.1", "+width=16,64", "+opt=adam", "+pause=0.01",
        "hydra.sweep.dir=sweep", fails=True)
    sweep = app_folder / "sweep"
    page = sweep / "report.html"
    text = page.read_text()
    assert "2 failed" in text and "RuntimeError: diverged at lr=0.1" in text and ".logs/4.log" in text
    seen = open_page(page)
    assert not seen["errors"], seen["errors"]
    assert not offline(seen["requests"], page), seen["requests"]
    views = seen["sections"]
    assert views["v-best"] == 2 and views["v-params"] == 2 and views["v-curves"] == 1 and views["v-timeline"] == 1
    assert seen["drawn"] == seen["plots"]

    other = app_folder / "elsewhere/page.html"
    made = cli("report", str(sweep), "-o", str(other), env=app_env)
    assert made.returncode == 0 and other.is_file(), made.stdout + made.stderr
    assert "4 completed, 2 failed" in made.stdout
    assert "at On-Demand prices of" in made.stdout


def test_logs_prints_a_local_jobs_log_and_follows_a_running_one(app_folder, app_env):
    run(app_folder, app_env, LOCAL, "+lr=1e-3,0.1", "+width=16", "+opt=adam", "+pause=0.01", "hydra.sweep.dir=done",
        fails=True)
    tail = cli("logs", str(app_folder / "done"), "1", "-n", "3", env=app_env)
    assert tail.returncode == 0 and "RuntimeError: diverged at lr=0.1" in tail.stdout, tail.stdout + tail.stderr

    slow = subprocess.Popen([sys.executable, "app.py", "--multirun", LOCAL, "+lr=1e-3", "+width=16", "+opt=adam",
                             "+pause=1", "hydra.sweep.dir=slow"], cwd=app_folder, env=app_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (app_folder / "slow/.logs/0.log").is_file(), timeout=60)
        follow = cli("logs", str(app_folder / "slow"), "0", "-f", env=app_env, timeout=120)
        assert slow.wait(timeout=60) == 0
    finally:
        slow.kill()
    assert follow.returncode == 0 and "training lr=0.001 width=16" in follow.stdout, follow.stdout + follow.stderr


def test_status_rounds_numbers_and_logs_no_info_of_other_libraries(app_folder, app_env):
    run(app_folder, app_env, LOCAL, "+lr=1e-3,3e-3", "+width=16", "+opt=adam", "+pause=0.01", "hydra.sweep.dir=s")
    status = cli("status", str(app_folder / "s"), env=app_env)
    assert status.returncode == 0 and not status.stderr, status.stderr
    values = [line.split()[4] for line in status.stdout.splitlines()[2:]]
    assert all(len(v.replace(".", "").lstrip("0")) <= 6 for v in values), status.stdout
    from hydra_plugins.hydra_awsbatch_launcher import cli as cli_module

    root = logging.getLogger()
    before = root.level, list(root.handlers)
    try:
        cli_module.main(["status", str(app_folder / "s")])
        assert root.level == logging.WARNING and logging.getLogger("botocore.credentials").getEffectiveLevel() \
            == logging.WARNING and cli_module.log.getEffectiveLevel() == logging.INFO
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]


def test_without_a_terminal_a_count_line_only_when_the_counts_change(caplog):
    from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

    progress = Progress("s1", ["RUNNING", "SUCCEEDED"], live=False)
    with caplog.at_level("INFO", logger="hydra_plugins.hydra_awsbatch_launcher"):
        for step in range(20):  # reports change every round, the counts do not
            progress.update(["RUNNING", "RUNNING"], None, {0: {"step": step, "loss": 1 / (step + 1)}})
        progress.update(["RUNNING", "SUCCEEDED"], None, {})
    lines = [r.getMessage().splitlines()[0] for r in caplog.records]
    assert lines == ["sweep s1: 2 RUNNING", "sweep s1: 1 RUNNING, 1 SUCCEEDED"], lines


# ---------------------------------------------------------------------------------------- a large sweep
def large_sweep(folder: Path, trials: int = 1000, steps: int = 27) -> Path:
    """A finished 1,000-trial thompson sweep with a pruner, as its files say it: the manifest, the sweeper's state
    (every curve), multirun.yaml."""
    from hydra_plugins.hydra_awsbatch_launcher._manifest import BatchState, JobRecord, Manifest

    rng = random.Random(0)
    folder.mkdir(parents=True)
    t0 = time.time() - 3600
    manifest = Manifest("20261206-120000-abcdef", str(folder / ".staging"), str(folder), "AwsBatchLocalLauncher",
                        settings={"script": "app.py", "code_root": str(folder)})
    records, free = [], [t0] * 32
    for n in range(trials):
        lr, width, opt = 10 ** rng.uniform(-4, -1), rng.randint(8, 255), rng.choice(["adam", "sgd"])
        final = (math.log10(lr) + 2.5) ** 2 + 100 / width + rng.random() * 0.1
        status = rng.choice(["completed", "pruned", "pruned", "failed"]) if n > 10 else "completed"
        last = {"completed": steps, "pruned": rng.choice([1, 3, 9]), "failed": rng.randint(1, steps)}[status]
        worker = min(range(32), key=free.__getitem__)
        submitted = free[worker]
        started, task_started = submitted + rng.random() * 20, submitted + 25 + rng.random() * 5
        curve = [{"step": s, "time": task_started + 2 * s, "val_loss": final + 3 * math.exp(-s / 5), "acc": 0.5}
                 for s in range(1, last + 1)]
        task_ended = task_started + 2 * last
        free[worker] = task_ended + 3
        value = curve[-1]["val_loss"] if status != "failed" else None
        manifest.jobs.append(JobRecord(
            n, [f"+lr={lr!r}", f"+width={width}", f"+opt={opt}"], str(n),
            BatchState.FAILED if status == "failed" else BatchState.SUCCEEDED, f"local-1-{n}", 0, "", submitted,
            started, task_ended + 2, task_started, task_ended, task_ended + 3,
            "RuntimeError: boom" if status == "failed" else repr(value), curve[-1]))
        records.append({"number": n, "job": n, "params": {"+lr": lr, "+width": width, "+opt": opt},
                        "status": status, "value": value, "submitted": submitted, "started": started,
                        "ended": task_ended + 3, "curve": curve, "stop_reason": "ASHA: not in the top 1/3" if
                        status == "pruned" else "", "error": "Traceback...\nRuntimeError: boom" if
                        status == "failed" else ""})
    (folder / "manifest.json").write_text(manifest.to_json())
    signature = {"space": {"+lr": "+lr: float in [0.0001, 0.1], log scale", "+width": "+width: 248 values 8..255",
                           "+opt": "+opt: choice(adam, sgd)"}, "direction": "minimize", "objective": None,
                 "pruner": "asha", "metric": "val_loss", "min_resource": 1.0, "max_resource": float(steps),
                 "reduction_factor": 3}
    (folder / "thompson_state.json").write_text(json.dumps({"format": 1, "signature": signature, "trials": records}))
    (folder / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    hydra: [hydra/sweeper=thompson, hydra/launcher=aws_batch_local]\n"
        "    task: ['+lr=tag(log, interval(1e-4, 1e-1))']\n  runtime:\n    cwd: /tmp\n"
        "    choices: {hydra/sweeper: thompson, hydra/launcher: aws_batch_local}\n")
    return folder


def test_a_1000_trial_page_is_small_and_quick_to_write(tmp_path):
    sweep = large_sweep(tmp_path / "big")
    _report.write(str(sweep))  # warm: the imports (plotly, scikit-learn) are a sweep's once
    start = time.perf_counter()
    page, data = _report.write(str(sweep))
    took = time.perf_counter() - start
    size = page.stat().st_size
    print(f"1,000 trials: {size / 2**20:.2f} MiB written in {took:.2f} s")
    assert size < 8 * 2**20 and took < 2.0, (size, took)
    assert len(data.trials) == 1000 and {t.status for t in data.trials} == {"completed", "pruned", "failed"}
    text = page.read_text()
    assert "permutation importance" in text
    if chromium_problem() is None:
        seen = open_page(page)
        assert not seen["errors"], seen["errors"]
        assert seen["sections"]["v-importance"] == 1 and seen["sections"]["v-rungs"] == 1
        assert seen["drawn"] == seen["plots"] == 2 + 3 + 1 + 1 + 1 + 1 + 1


def test_the_cost_is_each_jobs_resources_times_its_running_time(tmp_path):
    sweep = large_sweep(tmp_path / "big", trials=30)
    data = _report.read(str(sweep))
    table = _report.price_table()
    spent = _report.cost(data, table)
    hours = sum(t.marks["stopped"] - t.marks["started"] for t in data.trials) / 3600
    rates = table["families"]["m6i"]["on_demand"]
    assert spent.on_demand == pytest.approx(hours * (2 * rates["vcpu_hour"] + 4 * rates["gib_hour"]))
    assert spent.local and "had it run on Batch" in spent.line() and table["date"] in spent.line()
    assert 0 < spent.spot < spent.on_demand


def test_rank_correlation_at_each_rung():
    data = _report.SweepData("s", "/nowhere", "aws_batch_local", "thompson", "", "minimize", "v", "loss", [], [],
                             False, {}, {}, {"pruner": "asha", "min_resource": 1, "max_resource": 9,
                                         "reduction_factor": 3})
    for n in range(10):  # rung 1 ranks the trials as their ends do; rung 3 the other way round
        curve = [{"step": 1, "loss": n}, {"step": 3, "loss": -n}, {"step": 9, "loss": n}]
        data.trials.append(_report.Trial(n, n, {}, "completed", float(n), curve=curve))
    assert [(r["level"], r["rho"]) for r in _report.rungs(data)] == [(1, 1.0), (3, -1.0)]


def test_the_best_is_the_sweepers_where_it_says_so_else_the_best_value():
    data = _report.SweepData("s", "/nowhere", "aws_batch_local", "thompson", "", "minimize", "v", None, [], [],
                             False, {}, {}, {})
    data.trials = [_report.Trial(n, n, {"w": w}, "completed", v) for n, (w, v) in enumerate([(1, 0.1), (2, 0.3),
                                                                                              (1, 0.9)])]
    assert _report._best(data).number == 0  # no judgement: the best value
    data.best = 1  # config w=1 means 0.5: the study's best is trial 1
    assert _report._best(data).number == 1


def test_report_of_a_sweep_in_s3_staging(app_folder, aws_env, bucket, tmp_path):
    staging = f"s3://{bucket}/staging"
    run(app_folder, aws_env, LOCAL, "+lr=1e-3,1e-2", "+width=16", "+opt=adam", "+pause=0.01",
        "hydra.launcher.in_place=false", f"hydra.launcher.staging_uri={staging}", "hydra.sweep.dir=sweep")
    sweep_id = json.loads((app_folder / "sweep/manifest.json").read_text())["sweep_id"]
    page = tmp_path / "from-s3.html"
    made = cli("report", f"{staging}/sweeps/{sweep_id}", "-o", str(page), env=aws_env)
    assert made.returncode == 0 and "2 completed" in made.stdout, made.stdout + made.stderr
    data = json.loads(page.read_text().split("id='data'>")[1].split("</script>")[0])
    assert [len(t["cx"]) for t in data["trials"]] == [9, 9]  # each curve, from the metrics parts in staging


def test_an_optuna_sweep_gets_its_page(app_folder, app_env):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    run(app_folder, app_env, "hydra/sweeper=optuna", LOCAL, "+lr=tag(log, interval(1e-4, 1e-2))",
        "+width=range(8, 256)", "+opt=choice(adam, sgd)", "+act=choice(relu)", "+where=${hydra:runtime.cwd}",
        "+pause=0.01", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3", "hydra.sweep.dir=sweep")
    data = _report.read(str(app_folder / "sweep"))
    assert data.sweeper == "optuna" and [t.status for t in data.trials] == ["completed"] * 6
    # every parameter swept shows, even one every trial drew alike (+act has one choice; +opt may, 1 run in 32)
    assert [p.name for p in data.params] == ["+lr", "+width", "+opt", "+act"] and data.objective == "val_loss"
    assert "hydra/sweeper=optuna" in data.command and "'+opt=choice(adam, sgd)'" in data.command  # as typed,
    assert "'+where=${hydra:runtime.cwd}'" in data.command  # its interpolations unresolved
    assert "keeps no record" not in data.command  # the manifest keeps it
    assert "6 completed" in (app_folder / "sweep/report.html").read_text()
