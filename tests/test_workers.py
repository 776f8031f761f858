"""Warm workers (`hydra.launcher.workers=M`) on aws_batch_local: M worker processes run trial after trial, each
trial in a process of its own; a worker that dies costs only its trial; workers leave when idle, when the sweep
ends and when the launcher goes silent. (In containers: tests/test_e2e.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hydra_plugins.hydra_awsbatch_launcher import _workers
from tests.conftest import ROOT, manifest, wait_for

pytestmark = pytest.mark.integration
WARM = ["hydra/launcher=aws_batch_local", "hydra.launcher.workers=2", "hydra.launcher.idle_timeout_s=5"]
LEAKY = """
    import json, os, subprocess, sys, time
    import hydra

    SEEN = []  # a global: a trial must not find an earlier one's here

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        SEEN.append(cfg.x)
        found = {"seen": list(SEEN), "leak": os.environ.get("LEAK"), "cwd": os.getcwd(), "pid": os.getpid(),
                 "job": os.environ.get("AWS_BATCH_JOB_ID")}
        os.environ["LEAK"] = str(cfg.x)  # and the environment, and the working directory
        os.chdir("/")
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # left running
        open(f"{cfg.out}/child-{cfg.x}", "w").write(str(child.pid))
        daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        open(f"{cfg.out}/daemon-{cfg.x}", "w").write(str(daemon.pid))  # and one in a session of its own
        open(f"{cfg.out}/found-{cfg.x}.json", "w").write(json.dumps(found))
        time.sleep(cfg.get("seconds", 0))
        return cfg.x

    if __name__ == "__main__":
        main()
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_processes(parent: int) -> dict[int, int]:
    """Warm worker number -> pid, among the children of the launching process `parent` (not its trials, which
    are the workers' children)."""
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(v.split("=", 1) for v in environ.read_bytes().decode(errors="replace").split("\0") if "=" in v)
            ppid = int(Path(environ.parent, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == parent and _workers.is_pool(env.get("HYDRA_AWSBATCH_PAYLOAD_URI", "")):
            found[int(env.get("AWS_BATCH_JOB_ARRAY_INDEX") or 0)] = int(environ.parent.name)
    return found


@pytest.fixture
def app(tmp_path, app_env):
    (tmp_path / "my_app.py").write_text(textwrap.dedent(LEAKY))
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()  # the jobs' temporary folder, to see what they leave there

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "my_app.py", "--multirun", f"+out={tmp_path / 'out'}",
                                 "hydra.sweep.dir=sweep", *args], cwd=tmp_path,
                                env=dict(app_env, TMPDIR=str(tmp_path / "tmp")),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    return start


def test_two_warm_workers_run_twelve_trials_each_in_a_process_of_its_own(app, tmp_path):
    proc = app("+x=range(0,12)", *WARM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    jobs = manifest(tmp_path / "sweep")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 12
    found = [json.loads((tmp_path / "out" / f"found-{x}.json").read_text()) for x in range(12)]
    assert [f["seen"] for f in found] == [[x] for x in range(12)]  # no trial saw another's globals
    assert {f["leak"] for f in found} == {None} and {f["cwd"] for f in found} == {str(tmp_path)}
    assert len({f["pid"] for f in found}) == 12  # twelve processes...
    workers = {j["job_id"] for j in jobs}
    assert len(workers) == 2 and workers == {f["job"] for f in found}  # ...on two warm workers, named per trial
    logs = sorted((tmp_path / "sweep/.logs/workers").iterdir())
    assert [p.name for p in logs] == ["0.log", "1.log"]
    assert sum(p.read_text().count(": trial ") for p in logs) == 24  # each trial's start and end, once
    children = [int(p.read_text()) for p in (tmp_path / "out").glob("child-*")]
    assert len(children) == 12 and not [pid for pid in children if alive(pid)]  # what a trial left, it took along
    daemons = [int(p.read_text()) for p in (tmp_path / "out").glob("daemon-*")]
    assert len(daemons) == 12 and not [pid for pid in daemons if alive(pid)]  # its own session's too
    assert wait_for(lambda: not worker_processes(proc.pid), timeout=10)  # and the workers left with the sweep
    assert {j["reason"] for j in jobs} == {""}  # a trial that succeeded is not worded as a crash
    for job in jobs:  # where each trial's time went, in order
        marks = [job[name] for name in ("submitted", "started", "task_started", "task_ended", "home")]
        assert None not in marks and marks == sorted(marks), marks
    status = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.cli", "status", "sweep"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.count(" task ") == 12, status.stdout + status.stderr
    assert "waiting" in status.stdout and "starting" in status.stdout and "ending" in status.stdout


PROBED = """
    import os, pathlib, sys
    import hydra

    with open(os.environ["IMPORT_PROBE"], "a") as probe:  # each import of this script, by process
        probe.write(f"{os.getpid()} {__name__}\\n")
    flag = pathlib.Path(os.environ["IMPORT_PROBE"] + ".failed")
    if __name__ != "__main__" and os.environ.get("FAIL_FIRST_IMPORT") and not flag.exists():
        flag.write_text("")
        raise RuntimeError("this script's first import in a job fails")

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        return cfg.x

    if __name__ == "__main__":
        main()
"""


@pytest.mark.parametrize("fail_first", [False, True], ids=["warm", "warm-up-fails"])
def test_a_warm_worker_imports_the_script_once_and_says_once_why_it_could_not(tmp_path, app_env, fail_first):
    """The script (its module-level imports: torch in a training script) is imported once per warm worker, before
    its first trial, not once per trial. A warm-up that fails is said once, in the launcher's log and the
    worker's, and the trials import the script themselves."""
    (tmp_path / "my_app.py").write_text(textwrap.dedent(PROBED))
    env = dict(app_env, IMPORT_PROBE=str(tmp_path / "imports"), FAIL_FIRST_IMPORT="1" if fail_first else "")
    proc = subprocess.run([sys.executable, "my_app.py", "--multirun", "+x=range(0,6)", "hydra.sweep.dir=sweep",
                           "hydra/launcher=aws_batch_local", "hydra.launcher.workers=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [j["state"] for j in manifest(tmp_path / "sweep")["jobs"]] == ["SUCCEEDED"] * 6
    imports = (tmp_path / "imports").read_text().splitlines()
    assert sum(line.endswith(" __main__") for line in imports) == 1  # the launcher's own run of the script
    in_jobs = [line for line in imports if not line.endswith(" __main__")]
    worker_log = (tmp_path / "sweep/.logs/workers/0.log").read_text()
    said = "its warm-up failed (RuntimeError: this script's first import in a job fails)"
    if not fail_first:
        assert len(in_jobs) == 1, imports  # the worker's, before its first trial: the six trials are forks of it
        assert "warm-up failed" not in proc.stderr + worker_log
    else:
        assert len(in_jobs) == 1 + 6, imports  # the failed warm-up, then each trial for itself
        assert worker_log.count(said) == 1, worker_log
        assert proc.stdout.count("warm-up failed") == 1 and said in proc.stdout, proc.stdout[-3000:]


def test_a_warm_worker_that_dies_costs_only_its_trial(app, tmp_path):
    proc = app("+x=range(0,6)", "+seconds=2", *WARM)
    try:
        sweep = tmp_path / "sweep"
        assert wait_for(lambda: (sweep / "manifest.json").exists() and "RUNNING" in
                        [j["state"] for j in manifest(sweep)["jobs"]], timeout=120)
        workers = wait_for(lambda: worker_processes(proc.pid) if len(worker_processes(proc.pid)) == 2 else None)
        os.killpg(workers[1], signal.SIGKILL)  # worker 1 and its trial, as a lost instance takes them
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    jobs = manifest(tmp_path / "sweep")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 6
    assert [j["result"] for j in jobs] == [str(x) for x in range(6)]
    assert [json.loads((tmp_path / "out" / f"found-{x}.json").read_text())["seen"] for x in range(6)] == [
        [x] for x in range(6)]
    assert "runs again on another worker" in output
    assert len({j["job_id"] for j in jobs}) >= 2
    assert not list((tmp_path / "tmp").glob("hydra-awsbatch-*"))  # the dead worker's scratch, its trial's: removed


def test_a_job_without_warm_workers_leaves_no_child_running(app, tmp_path):
    """A job's children end with it, those in a session of their own too, as they would with its container."""
    proc = app("+x=range(0,2)", "hydra/launcher=aws_batch_local")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    left = [int(p.read_text()) for p in (tmp_path / "out").glob("*-[01]") if p.name.split("-")[0] in ("child",
                                                                                                        "daemon")]
    assert len(left) == 4 and not [pid for pid in left if alive(pid)]


HELPERS = """
    import multiprocessing, os
    from multiprocessing import shared_memory
    import hydra

    if __name__ != "__main__":  # imported in a job (once per warm worker): a helper process of the script's own
        MANAGER = multiprocessing.Manager()

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        shared = MANAGER.dict()  # the helper serves every trial
        shared["x"] = cfg.x
        leaked = shared_memory.SharedMemory(create=True, size=64, name=f"{cfg.shm}-{cfg.x}")  # never unlinked:
        leaked.close()  # multiprocessing's resource tracker removes it when the job's process ends
        return shared["x"]

    if __name__ == "__main__":
        main()
"""


@pytest.mark.parametrize("warm", [False, True], ids=["a process per job", "warm workers"])
def test_a_jobs_helpers_serve_it_and_multiprocessing_cleans_up_after_it(tmp_path, app_env, warm):
    """What the script starts at import (a multiprocessing Manager) is the warm worker's own: it is not ended with a
    trial, and serves the next. multiprocessing's resource tracker is left to do its work when the job ends (a
    shared memory segment the task never unlinked is removed), with nothing in the logs."""
    (tmp_path / "my_app.py").write_text(textwrap.dedent(HELPERS))
    shm = f"hab-test-{os.getpid()}-{int(warm)}"
    launcher = ["hydra.launcher.workers=1"] if warm else ["hydra.launcher.max_parallel=2"]
    proc = subprocess.run([sys.executable, "my_app.py", "--multirun", "+x=range(0,3)", f"+shm={shm}",
                           "hydra.sweep.dir=sweep", "hydra/launcher=aws_batch_local", *launcher], cwd=tmp_path,
                          env=app_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [j["result"] for j in manifest(tmp_path / "sweep")["jobs"]] == ["0", "1", "2"]
    assert wait_for(lambda: not list(Path("/dev/shm").glob(f"{shm}-*")), timeout=10), list(
        Path("/dev/shm").glob(f"{shm}-*"))
    logs = "".join(p.read_text() for p in (tmp_path / "sweep/.logs").rglob("*.log"))
    assert "died unexpectedly" not in logs and "Traceback" not in logs, logs[-3000:]


def test_a_warm_trials_times_are_each_measured_on_one_clock(app, tmp_path, app_env):
    """A launcher whose clock is an hour behind its workers' (as on Batch, where the workers' clock is the
    instances'): status shows seconds for every span of a warm trial, not an hour (waiting is the launcher's
    queue on its own clock; starting and task the worker's; ending the worker's part plus the launcher's)."""
    import re

    behind = tmp_path / "clock-behind"
    behind.mkdir()
    (behind / "sitecustomize.py").write_text("import time\n_now = time.time\ntime.time = lambda: _now() - 3600\n")
    env = dict(app_env, PYTHONPATH=os.pathsep.join([str(behind), app_env["PYTHONPATH"]]))  # the jobs do not
    proc = subprocess.run([sys.executable, "my_app.py", "--multirun", f"+out={tmp_path / 'out'}", "+x=range(0,3)",
                           "hydra.sweep.dir=sweep", "hydra/launcher=aws_batch_local", "hydra.launcher.workers=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # get PYTHONPATH
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.cli", "status", "sweep"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    spans = re.findall(r"\b(waiting|starting|task|ending) (-?[\d.]+)s", status.stdout)
    assert {name for name, _ in spans} == {"waiting", "starting", "task", "ending"}, status.stdout
    assert all(float(seconds) < 120 for _, seconds in spans), status.stdout


HARD_ENDS = """
    import os, signal, time
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        print(f"trial {cfg.x} says hello", flush=True)
        time.sleep(0.5)
        if cfg.x == 1:
            os.kill(os.getpid(), signal.SIGSEGV)
        if cfg.x == 2:
            os._exit(0)
        return cfg.x

    if __name__ == "__main__":
        main()
"""


def test_a_warm_trial_that_dies_hard_is_told_in_its_own_words_and_leaves_no_scratch(tmp_path, app_env):
    """A segfault and an os._exit(0) on a warm worker: each trial's error says how its process ended (not a
    container's exit code, nor the worker job's RUNNING state), with its own lines of the worker's log, which
    `logs SWEEP N` shows too; no scratch folder is left in the temporary folder, a kill -9'd worker's neither."""
    (tmp_path / "my_app.py").write_text(textwrap.dedent(HARD_ENDS))
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(app_env, TMPDIR=str(temp))
    proc = subprocess.run([sys.executable, "my_app.py", "--multirun", "+x=range(0,4)", "hydra.sweep.dir=sweep",
                           "hydra/launcher=aws_batch_local", "hydra.launcher.workers=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    jobs = manifest(tmp_path / "sweep")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "FAILED", "SUCCEEDED"], jobs
    said = proc.stdout + proc.stderr
    assert "its process was killed by SIGSEGV" in said and "exit code -11" not in said, said[-3000:]
    assert "its process exited with code 0 (before it wrote its result" in said, said[-3000:]
    assert "RUNNING; exit code" not in said and "trial 1 says hello" in said and "trial 0 says hello" not in said
    logs = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.cli", "logs", "sweep", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert logs.returncode == 0 and "trial 2 says hello" in logs.stdout, logs.stdout + logs.stderr
    assert "trial 1 says hello" not in logs.stdout and "trial 3 says hello" not in logs.stdout
    assert not list(temp.glob("hydra-awsbatch-*")), list(temp.iterdir())


@pytest.mark.parametrize("why, setting, said", [
    ("idle", {"idle": "1", "silence": "600"}, "no work for 1 s"),
    ("orphaned", {"idle": "600", "silence": "1"}, "the launcher was silent for 1 s"),
    ("told", {"idle": "600", "silence": "600", "stop": True}, "the sweep ended"),
])
def test_a_warm_worker_leaves_when_idle_orphaned_or_told(tmp_path, why, setting, said):
    """The worker alone, on a pool folder: an orphaned sweep must not keep instances billing."""
    pool = tmp_path / "sweeps" / "s1" / "pool"
    pool.mkdir(parents=True)
    (pool / "parent").write_text(json.dumps({"beat": 1, "stop": bool(setting.get("stop"))}))
    code = (f"import sys; from hydra_plugins.hydra_awsbatch_launcher import _workers; "
            f"_workers.PARENT_SILENCE_S = {setting['silence']}; "
            f"from hydra_plugins.hydra_awsbatch_launcher import worker; "
            f"sys.exit(_workers.serve(worker, {str(pool)!r}, 0, {setting['idle']}))")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and time.monotonic() - started < 20, proc.stdout + proc.stderr
    assert json.loads((pool / "w0" / "state").read_text()) == {"state": "exited", "exit_why": said}
    assert f"exits: {said}" in proc.stdout


def test_ctrl_c_stops_the_warm_workers_and_their_trials(app, tmp_path):
    proc = app("+x=range(0,4)", "+seconds=600", *WARM)
    sweep = tmp_path / "sweep"
    assert wait_for(lambda: (sweep / "manifest.json").exists() and [j["state"] for j in manifest(sweep)["jobs"]]
                    .count("RUNNING") == 2, timeout=120)
    workers = worker_processes(proc.pid)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Stopped 4 unfinished jobs" in output, output[-3000:]
    assert [j["state"] for j in manifest(sweep)["jobs"]] == ["FAILED"] * 4
    children = [int(p.read_text()) for p in (tmp_path / "out").glob("child-*")]
    assert wait_for(lambda: not [p for p in [*workers.values(), *children] if alive(p)], timeout=10)


@pytest.mark.parametrize("args, named", [
    (["hydra.launcher.workers=-1"], "hydra.launcher.workers=-1: a whole number of warm workers, at least 0"),
    (["hydra.launcher.workers=2", "hydra.launcher.nodes=2"], "warm workers run trials of one node"),
    (["hydra.launcher.workers=2", "hydra.launcher.idle_timeout_s=0"],
     "hydra.launcher.idle_timeout_s=0.0: seconds, above 0"),
])
def test_bad_warm_worker_settings_are_refused_before_anything_is_staged(app, tmp_path, args, named):
    proc = app("+x=1", "hydra/launcher=aws_batch_local", *args)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and named in output, output[-3000:]
    assert not (tmp_path / "sweep" / ".staging").exists()


def test_the_warm_workers_benchmark_runs_at_a_reduced_size(tmp_path):
    """bench/warm_workers.py at its smallest, so that it cannot rot: every variant runs every job."""
    proc = subprocess.run([sys.executable, "bench/warm_workers.py", "--jobs", "6", "--repeats", "1",
                           "--out", str(tmp_path / "warm")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "warm.json").read_text())
    assert set(summary["median_s"]) == {"joblib", "aws_batch_local", "aws_batch_local, warm workers",
                                        "warm workers, fresh interpreter"}
    assert all(value > 0 for value in summary["median_s"].values())
    assert set(summary["warm_trial_start_median_s"]) == {"trivial script", "torch script"}
    assert all(len(starts) == 6 for starts in summary["warm_trial_start_s"].values())


def test_the_end_summary_of_a_large_sweep_groups_jobs_by_outcome(caplog):
    """A block per job buries what matters in a sweep of hundreds: their counts, and the jobs that failed."""
    import logging

    from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

    rows = [{"num": n, "overrides": f"+x={n}", "state": "FAILED" if n in (7, 300) else "SUCCEEDED",
             "duration": "0.1s", "result": "ValueError: bad" if n in (7, 300) else str(n),
             "job_dir": f"/sweeps/s/{n}"} for n in range(500)]
    with caplog.at_level(logging.INFO, logger="hydra_plugins.hydra_awsbatch_launcher"):
        Progress.summary(rows)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "sweep summary: 500 jobs: 498 SUCCEEDED, 2 FAILED; job dirs under /sweeps/s"
    assert len(lines) == 3 and "#7 +x=7: FAILED" in lines[1] and "#300 +x=300: FAILED" in lines[2]
