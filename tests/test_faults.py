"""Bad input and faults, as a stranger meets them. Each case asserts what the user would check: the exit code,
a message naming the setting to fix, nothing staged and no job or process left behind, results intact."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest

from hydra_plugins.hydra_awsbatch_launcher import _local_cloud, _manifest, _package, _stage, _wire
from tests.conftest import SLEEP_TASK, cli, manifest, run_like_a_container, wait_for

pytestmark = pytest.mark.integration
LOCAL = "hydra/launcher=aws_batch_local"
APP = """
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        return cfg.x * 10

    if __name__ == "__main__":
        main()
"""



def workers_of(folder: Path) -> list[int]:
    """Pids of worker processes (and their children) still running whose working directory lies in `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if str(folder) in os.readlink(entry / "cwd"):
                environ = (entry / "environ").read_bytes()
                if b"HYDRA_AWSBATCH_PAYLOAD_URI" in environ or b"FAULTS_CHILD" in environ:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found



@pytest.fixture
def app(tmp_path):
    """A folder with the app script (and helper files written by the test)."""
    folder = tmp_path / "app"
    folder.mkdir()

    def write(body: str = APP, name: str = "my_app.py") -> Path:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(body))
        return folder

    write.folder = folder
    return write


@pytest.fixture
def launch(app, app_env):
    """Run `python my_app.py -m ARGS` in the app folder (or `cwd`); the finished process."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None, script: str = "my_app.py",
            timeout: float = 240):
        return subprocess.run([sys.executable, str(app.folder / script), "-m", *args], cwd=cwd or app.folder,
                              env=env or app_env, capture_output=True, text=True, timeout=timeout)

    return run


def start(app_folder: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "my_app.py", "-m", *args], cwd=app_folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def nothing_staged(sweep_dir: Path) -> bool:
    return not (sweep_dir / "manifest.json").exists() and not list(sweep_dir.glob(".staging/**/payload-*.pkl"))


# ------------------------------------------------------------------------------- settings refused up front
@pytest.mark.parametrize("args, named", [
    (["hydra.launcher.code_root=/no/such/folder"], "hydra.launcher.code_root=/no/such/folder: no such folder"),
    (["+hydra.launcher.max_paralel=2"], "hydra.launcher.max_paralel: not an option of this launcher; did you mean "
                                        "hydra.launcher.max_parallel?"),
    (["+hydra.launcher.zzz=1"], "hydra.launcher.zzz: not an option of this launcher; the options are:"),
    (["hydra.launcher.max_parallel=-1"], "hydra.launcher.max_parallel=-1: at least 1"),
    (["hydra.launcher.max_parallel=0"], "hydra.launcher.max_parallel=0: at least 1"),
    (["+hydra.launcher.environment.HYDRA_AWSBATCH_X=1"], "hydra.launcher.environment.HYDRA_AWSBATCH_X: names "
                                                         "starting with HYDRA_AWSBATCH_ are reserved"),
])
def test_local_settings_are_refused_before_anything_is_staged(app, launch, args, named):
    app()
    proc = launch("+x=1,2", LOCAL, "hydra.sweep.dir=sweep", *args)
    assert proc.returncode != 0
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr  # the message alone, as Hydra prints its own errors in the config
    assert nothing_staged(app.folder / "sweep")


def test_a_missing_bucket_is_named_before_anything_is_staged(app, launch, aws_env):
    app()
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep", "hydra.launcher.staging_uri=s3://no-such-bucket-x/p",
                  env=aws_env)
    assert proc.returncode != 0
    assert "hydra.launcher.staging_uri=s3://no-such-bucket-x/p: bucket 'no-such-bucket-x' does not exist" in proc.stderr
    assert nothing_staged(app.folder / "sweep")


def test_no_credentials_for_s3_staging_is_named(app, launch, aws_env, bucket, tmp_path):
    app()
    env = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                         "AWS_SESSION_TOKEN")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep", f"hydra.launcher.staging_uri=s3://{bucket}/p", env=env)
    assert proc.returncode != 0
    assert f"hydra.launcher.staging_uri=s3://{bucket}/p: no AWS credentials found" in proc.stderr
    assert not boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents")


def test_a_read_only_staging_folder_is_named(app, launch):
    app()
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep", "hydra.launcher.staging_uri=/proc/staging")  # even root
    assert proc.returncode != 0
    assert "hydra.launcher.staging_uri=/proc/staging: /proc is not writable" in proc.stderr
    assert nothing_staged(app.folder / "sweep")


def test_a_staging_path_under_a_file_is_named(app, launch, tmp_path):
    app()
    (tmp_path / "a-file").write_text("x")
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep", f"hydra.launcher.staging_uri={tmp_path}/a-file/staging")
    assert proc.returncode != 0
    assert f"hydra.launcher.staging_uri={tmp_path}/a-file/staging: {tmp_path}/a-file is not a folder" in proc.stderr
    assert nothing_staged(app.folder / "sweep")


def test_a_gitignore_that_hides_the_script_says_so(app, launch):
    app()
    (app.folder / ".gitignore").write_text("*\n")
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep")
    assert proc.returncode != 0
    assert "leaves out your script my_app.py" in proc.stderr and ".gitignore" in proc.stderr
    assert "hydra.launcher.code_include=[my_app.py]" in proc.stderr
    assert not list((app.folder / "sweep").glob(".staging/**/payload-*.pkl"))
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep2", "hydra.launcher.code_include=[my_app.py]")
    assert proc.returncode == 0, proc.stderr
    assert manifest(app.folder / "sweep2")["jobs"][0]["state"] == "SUCCEEDED"


def test_a_zero_job_batch_launches_nothing(inprocess_launcher, tmp_path):
    launcher = inprocess_launcher(["hydra/launcher=aws_batch_local", "hydra.sweep.dir=sweep"], SLEEP_TASK)
    assert launcher.launch([], initial_job_idx=0) == []
    assert launcher.launch_async([], initial_job_idx=0) == []
    assert not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------------- what the payload carries
def test_other_hydra_plugins_stay_out_of_the_payload(tmp_path, monkeypatch):
    """With the Optuna sweeper installed (and even driving the sweep), the payload names none of its modules."""
    from hydra import compose, initialize_config_dir
    from hydra.core.singleton import Singleton

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        config = compose("config", overrides=["hydra/sweeper=optuna", "hydra/launcher=aws_batch_local"],
                         return_hydra_config=True)
        state = Singleton.get_state()
        _, before = _wire.pickled((state, [config]))
        assert "hydra_plugins.hydra_optuna_sweeper.config" in before  # the failure this guards against
        _stage.without_foreign_plugins(state, [config])
        _, after = _wire.pickled((state, [config]))
    assert not [m for m in after if _wire.is_foreign_plugin(m)]
    assert config.hydra.sweeper.direction == "minimize"  # the sweeper's settings stay readable, as plain values
    assert "hydra_plugins.hydra_awsbatch_launcher.config" in after  # our own launcher's config stays


BLOCK_OPTUNA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("hydra_plugins.hydra_optuna_sweeper") or name == "optuna":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def test_optuna_drives_a_sweep_whose_jobs_lack_the_plugin(app, launch, tmp_path):
    """The jobs run in an environment without Optuna or its Hydra plugin (as the job image lacks them)."""
    app()
    image_like = tmp_path / "image-site"
    image_like.mkdir()
    (image_like / "sitecustomize.py").write_text(BLOCK_OPTUNA)
    proc = launch(LOCAL, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                  "+x=range(1,5)", "hydra.sweep.dir=sweep", f"+hydra.launcher.environment.PYTHONPATH={image_like}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = manifest(app.folder / "sweep")["jobs"]
    assert len(jobs) == 4 and {j["state"] for j in jobs} == {"SUCCEEDED"}
    best = min(float(j["result"]) for j in jobs)
    assert f"Best value: {best}" in proc.stdout + proc.stderr  # the sweeper got every job's value


def test_a_module_the_job_lacks_is_named_with_the_fix(app, launch, tmp_path, app_env):
    """Code outside code_root imports in the launching shell (PYTHONPATH) but not in a job, as on Batch."""
    app("""
        import hydra
        import outside_helper

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            return outside_helper.value()

        if __name__ == "__main__":
            main()
    """)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "outside_helper.py").write_text("def value():\n    return 7\n")
    env = dict(app_env, PYTHONPATH=f"{outside}:{app_env.get('PYTHONPATH', '')}")
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep", env=env)
    assert proc.returncode != 0
    job = manifest(app.folder / "sweep")["jobs"][0]
    assert job["state"] == "FAILED"
    assert "the job needs the module 'outside_helper'" in job["result"]
    assert "install it in the job image" in proc.stderr and "ship it in the code package" in proc.stderr


def test_the_launching_folder_is_not_on_the_jobs_path(app, launch, tmp_path, app_env):
    app("""
        import hydra

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            import cwd_only
            return cwd_only.VALUE

        if __name__ == "__main__":
            main()
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cwd_only.py").write_text("VALUE = 1\n")
    proc = launch("+x=1", LOCAL, "hydra.sweep.dir=sweep", cwd=elsewhere)
    job = manifest(elsewhere / "sweep")["jobs"][0]
    assert proc.returncode != 0 and job["state"] == "FAILED"
    assert "the job needs the module 'cwd_only'" in job["result"]


DATACLASS_APP = """
    from dataclasses import dataclass

    import hydra

    @dataclass
    class Result:
        loss: float

    class TrainingDiverged(Exception):
        pass

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        if cfg.x == 2:
            raise TrainingDiverged("loss is nan")
        return Result(loss=cfg.x / 10)

    if __name__ == "__main__":
        main()
"""

CHECK_RESULT = """
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _wire

@dataclass
class Result:
    loss: float

result = _wire.load_result(Path(sys.argv[1]).read_bytes())
value = result["job_return"].return_value
print(type(value) is Result, value == Result(0.1))
"""


def test_values_and_exceptions_of_script_classes_come_back_as_themselves(app, launch, app_env, tmp_path):
    app(DATACLASS_APP)
    proc = launch("+x=1,2", LOCAL, "hydra.sweep.dir=sweep")
    jobs = manifest(app.folder / "sweep")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED"]
    assert jobs[0]["result"] == "Result(loss=0.1)"
    assert jobs[1]["result"] == "TrainingDiverged: loss is nan"  # its own type, not a stand-in
    assert "TrainingDiverged: loss is nan" in proc.stderr
    # In a process whose __main__ defines Result (as the launching script does), the value is that very class.
    (tmp_path / "check.py").write_text(CHECK_RESULT)
    result = next((app.folder / "sweep/.staging/sweeps").glob("*/0/result.pkl"))
    check = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(result)], env=app_env,
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.split() == ["True", "True"], check.stderr


# ------------------------------------------------------------------------------------------ results kept
@pytest.mark.parametrize("task, state, exit_code, result", [
    ("import sys; sys.exit(0)", "SUCCEEDED", 0, "None"),
    ("import sys; sys.exit()", "SUCCEEDED", 0, "None"),
    ("import sys; sys.exit(3)", "FAILED", 3, "RemoteJobError: job #0 failed: builtins.SystemExit: the task exited "
                                             "with code 3"),
    ("import threading; return threading.Lock()", "FAILED", 1, "RemoteJobError: job #0 failed: builtins.TypeError: "
                                                                "the task's result could not be pickled"),
])
def test_how_a_task_ends_is_recorded_truthfully(app, launch, task, state, exit_code, result):
    app(f"""
        import hydra

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            {task}

        if __name__ == "__main__":
            main()
    """)
    launch("+x=1", LOCAL, "hydra.sweep.dir=sweep")
    job = manifest(app.folder / "sweep")["jobs"][0]
    assert (job["state"], job["exit_code"]) == (state, exit_code)
    assert job["result"].startswith(result)


OUTPUT_APP = """
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        (out / "model.pt").write_bytes(b"w" * 1000)
        (out / "metrics.txt").write_text(str(cfg.x))
        return cfg.x

    if __name__ == "__main__":
        main()
"""


def test_a_relative_staging_folder_keeps_every_result(app, launch):
    app(OUTPUT_APP)
    proc = launch("+x=1,2", LOCAL, "hydra.sweep.dir=sweep", "hydra.launcher.in_place=false",
                  "hydra.launcher.staging_uri=rel-staging")
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = manifest(app.folder / "sweep")["jobs"]
    assert [(j["state"], j["result"]) for j in jobs] == [("SUCCEEDED", "1"), ("SUCCEEDED", "2")]
    assert (app.folder / "sweep/1/metrics.txt").read_text() == "2"
    assert manifest(app.folder / "sweep")["staging_uri"] == str(app.folder / "rel-staging")


def test_in_place_jobs_copy_nothing_into_staging(app, launch):
    app(OUTPUT_APP)
    proc = launch("+x=1,2", LOCAL, "hydra.sweep.dir=sweep")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (app.folder / "sweep/0/model.pt").stat().st_size == 1000
    assert not list((app.folder / "sweep/.staging").rglob("model.pt"))
    assert not list((app.folder / "sweep/.staging").rglob("output"))


def test_outputs_that_cannot_be_written_home_fail_that_job_alone(app, launch):
    """A write that fails while collecting (a full disk, a file where a folder should be) fails that job
    with the reason; the other jobs are collected and the summary is printed."""
    app(OUTPUT_APP)
    (app.folder / "sweep").mkdir()
    (app.folder / "sweep/1").write_text("in the way")
    proc = launch("+x=1,2,3", LOCAL, "hydra.sweep.dir=sweep", "hydra.launcher.in_place=false")
    jobs = manifest(app.folder / "sweep")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert "bringing its outputs from" in jobs[1]["result"]
    assert (app.folder / "sweep/2/metrics.txt").read_text() == "3"
    assert "#2 +x=3: SUCCEEDED" in proc.stdout + proc.stderr  # the summary, complete


def test_a_failed_upload_still_leaves_a_result(app, launch, app_env, tmp_path):
    """The job's outputs cannot go to staging (something sits where they go): the worker still writes its
    result, which says what was lost."""
    app("""
        import os
        from pathlib import Path

        import hydra
        from hydra_plugins.hydra_awsbatch_launcher import _manifest

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            staging, first = _manifest.Staging.of_payload(os.environ["HYDRA_AWSBATCH_PAYLOAD_URI"])
            blocker = Path(staging.output(first))
            blocker.parent.mkdir(parents=True, exist_ok=True)
            blocker.write_text("not a folder")
            return 1

        if __name__ == "__main__":
            main()
    """)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    launch("+x=1", LOCAL, "hydra.sweep.dir=sweep", "hydra.launcher.in_place=false",
           env=dict(app_env, TMPDIR=str(scratch)))
    job = manifest(app.folder / "sweep")["jobs"][0]
    assert job["state"] == "FAILED" and "uploading the job's outputs to" in job["result"]
    assert not list(scratch.iterdir())  # the job's scratch folder is gone


# ------------------------------------------------------------------------------------ packages as git sees them
def test_secrets_that_git_ignores_are_not_shipped(tmp_path):
    (tmp_path / "a/b/secrets").mkdir(parents=True)
    (tmp_path / ".gitignore").write_text("**/.env\n**/secrets/\n")
    for rel in ("app.py", ".env", "a/.env", "a/b/.env", "a/b/secrets/key.pem", "a/b/code.py"):
        (tmp_path / rel).write_text("x")
    assert _package.package_code(tmp_path).files == [".gitignore", "a/b/code.py", "app.py"]


def test_a_nested_gitignore_overrides_its_parent_as_in_git(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".gitignore").write_text("*.log\n/build\n")
    (tmp_path / "sub/.gitignore").write_text("!keep.log\n")
    for rel in ("x.log", "sub/keep.log", "sub/y.log", "build", "sub/build", "app.py"):
        (tmp_path / rel).write_text("x")
    assert _package.package_code(tmp_path).files == [".gitignore", "app.py", "sub/.gitignore", "sub/build",
                                                    "sub/keep.log"]


def test_earlier_sweeps_do_not_nest_into_the_next_package(app, launch):
    app()
    first = launch("+x=1", LOCAL, "hydra.sweep.dir=runs/a")
    assert first.returncode == 0, first.stderr[-2000:]
    package = _package.package_code(app.folder)
    assert package.files == ["my_app.py"]
    second = launch("+x=1", LOCAL, "hydra.sweep.dir=runs/b")
    assert "Code package of" in second.stdout and ": 1 files" in second.stdout


# ------------------------------------------------------------------------------------ no job outlives intent
SLEEPY_APP = """
    import subprocess
    import time

    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        child = subprocess.Popen(["sleep", "600"], env={"FAULTS_CHILD": "1", "PATH": "/usr/bin:/bin"})
        print("sleeping", child.pid, flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        main()
"""

STUBBORN_APP = """
    import signal
    import time

    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a task that will not stop politely
        print("sleeping", flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        main()
"""


def started(sweep_dir: Path, n: int) -> bool:
    logs = sweep_dir / ".logs"
    return logs.is_dir() and sum("sleeping" in p.read_text() for p in logs.glob("*.log")) >= n


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_or_a_closed_terminal_stops_the_tasks_children_too(app, app_env, sig):
    app(SLEEPY_APP)
    parent = start(app.folder, app_env, "+x=1,2", LOCAL, "hydra.sweep.dir=sweep")
    assert wait_for(lambda: started(app.folder / "sweep", 2)), parent.kill()
    parent.send_signal(sig)
    output, _ = parent.communicate(timeout=90)
    assert parent.returncode != 0 and "Stopped 2 unfinished jobs" in output
    assert wait_for(lambda: not workers_of(app.folder), timeout=10), workers_of(app.folder)
    assert [j["reason"] for j in manifest(app.folder / "sweep")["jobs"]] == ["interrupted by the user"] * 2


def test_a_second_ctrl_c_kills_what_will_not_stop_and_says_so(app, app_env):
    app(STUBBORN_APP)
    parent = start(app.folder, app_env, "+x=1,2", LOCAL, "hydra.sweep.dir=sweep")
    assert wait_for(lambda: started(app.folder / "sweep", 2)), parent.kill()
    parent.send_signal(signal.SIGINT)
    time.sleep(2)
    assert workers_of(app.folder)  # still there: they ignore SIGTERM
    parent.send_signal(signal.SIGINT)
    output, _ = parent.communicate(timeout=60)
    assert "Second Ctrl-C: killed every job at once (SIGKILL)" in output
    assert wait_for(lambda: not workers_of(app.folder), timeout=10)
    assert [j["state"] for j in manifest(app.folder / "sweep")["jobs"]] == ["FAILED", "FAILED"]


def test_local_jobs_stop_when_the_launcher_is_killed(app, app_env):
    app(SLEEPY_APP)
    parent = start(app.folder, app_env, "+x=1,2", LOCAL, "hydra.sweep.dir=sweep")
    assert wait_for(lambda: started(app.folder / "sweep", 2)), parent.kill()
    parent.kill()  # SIGKILL: no handler runs in the launcher
    parent.wait()
    assert wait_for(lambda: not workers_of(app.folder), timeout=20), workers_of(app.folder)
    results = [_wire.load_result(p.read_bytes()) for p in (app.folder / "sweep/.staging").rglob("result.pkl")]
    assert len(results) == 2
    assert all(r["status"] == _wire.Outcome.INTERRUPTED and "launching process died" in r["error"]["message"]
               for r in results)
    sweep = app.folder / "sweep"
    status = cli("status", str(sweep), env=app_env)  # what happened, not the RUNNING of the manifest's last save
    assert status.returncode == 0 and "RUNN" not in status.stdout, status.stdout
    assert status.stdout.count("ended with its launching process: its result says interrupted") == 2, status.stdout
    attach = cli("attach", str(sweep), env=app_env)  # collects what the jobs wrote on their way out
    assert attach.returncode == 1 and "0 jobs completed, 2 failed" in attach.stdout, attach.stdout + attach.stderr
    jobs = manifest(sweep)["jobs"]
    assert {j["state"] for j in jobs} == {"FAILED"} and all("launching process died" in j["result"] for j in jobs)


def test_a_second_sweep_into_the_same_folder_refuses(app, app_env, launch):
    app(SLEEPY_APP)
    first = start(app.folder, app_env, "+x=1", LOCAL, "hydra.sweep.dir=sweep")
    assert wait_for(lambda: started(app.folder / "sweep", 1)), first.kill()
    before = {name: (app.folder / "sweep" / name).read_text() for name in ("manifest.json", "multirun.yaml")}
    second = launch("+x=5", LOCAL, "hydra.sweep.dir=sweep")
    assert second.returncode != 0
    assert f"hydra.sweep.dir={app.folder / 'sweep'}: another sweep (pid {first.pid}) is running" in second.stderr
    assert {name: (app.folder / "sweep" / name).read_text() for name in before} == before  # refused before a write
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)


# ------------------------------------------------------------------------------------------------- the CLI

@pytest.mark.parametrize("content, message", [
    ("{not json", "is not a sweep manifest of hydra-awsbatch-launcher"),
    ('{"name": "some other tool", "jobs": []}', "is not a sweep manifest of hydra-awsbatch-launcher"),
    ("[1, 2]", "is not a sweep manifest of hydra-awsbatch-launcher"),
])
def test_a_corrupt_or_foreign_manifest_is_named(tmp_path, app_env, content, message):
    (tmp_path / "manifest.json").write_text(content)
    for command in ("status", "attach", "cancel"):
        proc = cli(command, str(tmp_path), env=app_env)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_logs_refuses_a_negative_line_count(tmp_path, app_env):
    proc = cli("logs", str(tmp_path), "0", "-n", "-5", env=app_env)
    assert proc.returncode == 2 and "'-5': give a number of lines, 1 or more" in proc.stderr


def test_logs_and_cancel_of_a_local_sweep_point_to_its_log_files(app, launch, app_env):
    app()
    launch("+x=1,2", LOCAL, "hydra.sweep.dir=my sweep")
    sweep = app.folder / "my sweep"
    proc = cli("logs", str(sweep), "1", env=app_env)  # the app prints nothing: its log is said empty, by its path
    assert proc.returncode == 0 and f"log {shlex.quote(str(sweep / '.logs/1.log'))} is empty" in proc.stderr
    proc = cli("cancel", str(sweep), env=app_env)
    assert proc.returncode != 0 and "local processes, which stop with the launching process" in proc.stderr
    proc = cli("status", str(sweep), env=app_env)
    assert proc.returncode == 0 and "SUCCEEDED" in proc.stdout


# ------------------------------------------------------------------------------------ aws_batch on moto's API
@pytest.fixture
def batch_args(batch_resources) -> list[str]:
    return ["hydra/launcher=aws_batch", f"hydra.launcher.job_queue={batch_resources['queue']}",
            f"hydra.launcher.job_definition={batch_resources['job_definition']}",
            f"hydra.launcher.staging_uri={batch_resources['staging']}", "hydra.launcher.poll_interval_s=0.1"]


def batch_jobs(resources) -> int:
    batch = boto3.client("batch")
    return sum(len(batch.list_jobs(jobQueue=resources["queue"], jobStatus=s)["jobSummaryList"])
               for s in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"))


@pytest.mark.parametrize("args, named", [
    (["hydra.launcher.profile=no-such-profile"], "hydra.launcher.profile=no-such-profile: no such profile"),
    (["hydra.launcher.region=nowhere"], "region 'nowhere' is not an AWS region name"),
    (["hydra.launcher.region=xx-nowhere-9"], "region 'xx-nowhere-9' is not one where AWS Batch runs"),
    (["+hydra.launcher.tags={aws\\:owner:me}"], "hydra.launcher.tags.aws:owner: keys starting with aws: are reserved"),
    (["+hydra.launcher.tags.note=" + "v" * 300], "hydra.launcher.tags.note: its value has 300 characters"),
    (["+hydra.launcher.tags={" + ",".join(f"t{i}:v" for i in range(48)) + "}"],
     "hydra.launcher.tags: 48 tags; Batch takes 50 per job"),
    (["+hydra.launcher.job_queu=x"], "hydra.launcher.job_queu: not an option of this launcher; did you mean "
                                     "hydra.launcher.job_queue?"),
    (["hydra.launcher.dry_run=true", "hydra.launcher.staging_uri=s3://no-such-bucket-y/x"],
     "bucket 'no-such-bucket-y' does not exist"),
])
def test_batch_settings_are_refused_before_anything_is_spent(app, launch, aws_env, batch_resources, batch_args,
                                                            args, named):
    app()
    before = batch_jobs(batch_resources)
    start_time = time.time()
    proc = launch("+x=1,2", "hydra.sweep.dir=sweep", *batch_args, *args, env=aws_env)
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr[-2000:]
    assert time.time() - start_time < 30  # no minute of retries first
    assert batch_jobs(batch_resources) == before and nothing_staged(app.folder / "sweep")


def test_logs_finds_the_stream_where_batch_wrote_it(app, launch, aws_env, batch_args):
    """The sweep names the stack's log group; moto (and a job definition without a group of its own) write to
    Batch's default, /aws/batch/job: `hydra-awsbatch logs` looks in both, as the failure tail does."""
    app()
    proc = launch("+x=1", "hydra.sweep.dir=sweep", "hydra.launcher.wait=false", "hydra.launcher.log_group=/stack/jobs",
                  *batch_args, env=aws_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    batch, logs = boto3.client("batch"), boto3.client("logs")
    try:
        logs.create_log_group(logGroupName="/aws/batch/job")
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    job_id = manifest(app.folder / "sweep")["jobs"][0]["job_id"]
    stream = batch.describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]
    logs.create_log_stream(logGroupName="/aws/batch/job", logStreamName=stream)
    logs.put_log_events(logGroupName="/aws/batch/job", logStreamName=stream,
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "written by the job"}])
    tail = cli("logs", "sweep", "0", env=aws_env, cwd=app.folder)
    assert tail.returncode == 0 and tail.stdout.splitlines() == ["written by the job"], tail.stdout + tail.stderr


def test_a_result_from_a_job_that_batch_calls_failed_is_one_story(app, launch, aws_env, batch_args, monkeypatch):
    """Batch fails the job (moto's server, in this process, fails every job at once), yet its worker wrote a
    whole result: one line says so, and the job counts as succeeded everywhere, not FAILED beside its value."""
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    app()
    proc = launch("+x=2", "hydra.sweep.dir=sweep", "hydra.launcher.wait=false", *batch_args, env=aws_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = app.folder / "sweep"
    wait_for(lambda: boto3.client("batch").describe_jobs(jobs=[manifest(sweep)["jobs"][0]["job_id"]])["jobs"][0][
        "status"] == "FAILED", timeout=60)
    run_jobs_as_batch_would(sweep, aws_env)
    attach = cli("attach", "sweep", env=aws_env, cwd=app.folder)
    output = attach.stdout + attach.stderr
    assert attach.returncode == 0 and "1 jobs completed, 0 failed" in output, output
    assert output.count("Batch says FAILED") == 1 and "counted as succeeded" in output
    job = manifest(sweep)["jobs"][0]
    assert (job["state"], job["result"]) == ("SUCCEEDED", "20") and job["reason"].startswith("Batch said FAILED")
    status = cli("status", "sweep", env=aws_env, cwd=app.folder)
    row = next(line for line in status.stdout.splitlines() if line.split()[:1] == ["0"])
    assert row.split()[1] == "SUCCEEDED" and row.split()[4] == "20", status.stdout


@pytest.mark.parametrize("args, warned", [(["hydra.launcher.memory_mib=512"], True), ([], False)])
def test_limits_the_local_cloud_does_not_enforce_are_said(app, launch, aws_env, batch_args, args, warned):
    app()
    proc = launch("+x=1", "hydra.sweep.dir=sweep", "hydra.launcher.wait=false", *batch_args, *args, env=aws_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("hydra.launcher.memory_mib=512 and vcpus=None are not enforced here" in proc.stdout + proc.stderr) == warned


def test_a_misspelt_aws_profile_names_the_variable_and_the_profile(app, launch, aws_env, batch_args):
    app()
    proc = launch("+x=1", "hydra.sweep.dir=sweep", *batch_args, env=dict(aws_env, AWS_PROFILE="dveloper"))
    assert proc.returncode != 0
    assert "AWS_PROFILE=dveloper (environment): no such profile 'dveloper'" in proc.stderr, proc.stderr[-2000:]
    assert nothing_staged(app.folder / "sweep")


def run_jobs_as_batch_would(sweep_dir: Path, env: dict) -> None:
    """Be the containers: run the worker for each submitted job, with the environment Batch gave it."""
    batch = boto3.client("batch")
    for job in manifest(sweep_dir)["jobs"]:
        run_like_a_container(batch.describe_jobs(jobs=[job["job_id"]])["jobs"][0], env)


MYCONF_APP = """
    from dataclasses import dataclass

    import hydra
    from hydra.core.config_store import ConfigStore

    from myconf import Settings

    ConfigStore.instance().store(name="base", node=Settings)

    @dataclass
    class Result:
        score: float

    @hydra.main(version_base=None, config_path=None, config_name="base")
    def main(cfg):
        return Result(score=cfg.lr * 100)

    if __name__ == "__main__":
        main()
"""


@pytest.fixture
def submitted(app, launch, aws_env, batch_args, tmp_path):
    """A sweep with a structured config in a module beside the script, submitted with wait=false into a sweep
    dir with a space, whose jobs then ran as Batch would run them."""
    app(MYCONF_APP)
    app("from dataclasses import dataclass\n\n@dataclass\nclass Settings:\n    lr: float = 0.1\n", "myconf.py")
    proc = launch("lr=0.1,0.2,0.3", "hydra.sweep.dir=my sweep", "hydra.launcher.wait=false", *batch_args,
                  env=aws_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = app.folder / "my sweep"
    run_jobs_as_batch_would(sweep, aws_env)
    return sweep, proc


def test_follow_up_commands_paste_into_a_shell(submitted, aws_env, tmp_path):
    sweep, proc = submitted
    line = next(line for line in proc.stdout.splitlines() if "Follow the sweep with" in line)
    command = line.split("Follow the sweep with: ", 1)[1].split(";")[0]
    assert command == f"hydra-awsbatch status {shlex.quote(str(sweep))}"
    shell = subprocess.run(command, shell=True, env=aws_env, capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
    assert shell.returncode == 0 and manifest(sweep)["sweep_id"] in shell.stdout


def test_attach_collects_without_importing_the_apps_modules_first(submitted, aws_env, tmp_path):
    sweep, _ = submitted
    proc = cli("attach", str(sweep), env=aws_env, cwd=tmp_path)  # another folder: myconf is not importable here
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [j["result"] for j in manifest(sweep)["jobs"]] == ["Result(score=10.0)", "Result(score=20.0)",
                                                              "Result(score=30.0)"]


def test_one_corrupt_result_and_a_corrupt_payload_do_not_stop_attach(submitted, aws_env, tmp_path):
    sweep, _ = submitted
    record = manifest(sweep)
    staging = _manifest.Staging(record["staging_uri"], record["sweep_id"])
    s3 = boto3.client("s3")
    bucket, _, key = staging.result(1)[len("s3://"):].partition("/")
    s3.put_object(Bucket=bucket, Key=key, Body=b"\x80\x04garbage")
    bucket, _, key = record["batches"][0]["payload_uri"][len("s3://"):].partition("/")
    s3.put_object(Bucket=bucket, Key=key, Body=b"not a payload")
    proc = cli("attach", str(sweep), env=aws_env, cwd=tmp_path)
    assert proc.returncode == 1  # one job failed
    jobs = manifest(sweep)["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert "result object is unreadable" in jobs[1]["result"]
    assert jobs[2]["result"] == "Result(score=30.0)"


@pytest.mark.parametrize("suffix", ["", "/manifest.json"])
def test_an_s3_sweep_uri_with_or_without_the_file_name(submitted, aws_env, suffix):
    sweep, _ = submitted
    record = manifest(sweep)
    uri = _manifest.Staging(record["staging_uri"], record["sweep_id"]).sweep + suffix
    proc = cli("status", uri, env=aws_env)
    assert proc.returncode == 0, proc.stderr
    assert f"sweep {record['sweep_id']}" in proc.stdout


# ---------------------------------------------------------------------------------------------- local cloud
@pytest.mark.parametrize("recorded, said", [
    ({"pid_start": "1"}, "is another process now"),  # the pid was reused
    ({}, "has no start time to prove it is moto's server; left alone"),  # a state file of an older version
])
def test_local_cloud_down_leaves_a_process_it_cannot_prove_its_own_alone(tmp_path, app_env, recorded, said):
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        (state_dir / "state.json").write_text(json.dumps({"pid": bystander.pid, "endpoint": "x", "stack": "s",
                                                          **recorded}))
        env = dict(app_env, HYDRA_AWSBATCH_LOCAL_CLOUD_DIR=str(state_dir))
        proc = cli("local-cloud", "down", env=env)
        assert proc.returncode == 0 and said in proc.stdout, proc.stdout
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()


def test_local_cloud_assets_ship_in_the_package(tmp_path):
    """template.yaml, the Dockerfile and its entry script are package data, and an installed package (no
    checkout around it) makes a build context of its own."""
    for name in ("template.yaml", "Dockerfile", "container_shell_script.sh"):
        assert (_local_cloud.CLOUD / name).is_file()
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheel_dir), str(Path(__file__).resolve().parents[1])], check=True, timeout=300)
    import zipfile

    names = zipfile.ZipFile(next(wheel_dir.glob("*.whl"))).namelist()
    for name in ("template.yaml", "Dockerfile", "container_shell_script.sh"):
        assert f"hydra_plugins/hydra_awsbatch_launcher/cloud/{name}" in names
    context = tmp_path / "context"
    original = _local_cloud.CHECKOUT
    try:
        _local_cloud.CHECKOUT = tmp_path / "not-a-checkout"
        made = _local_cloud.build_context(context)
    finally:
        _local_cloud.CHECKOUT = original
    assert made == context
    assert (context / "hydra_plugins/hydra_awsbatch_launcher/worker.py").is_file()
    pyproject = (context / "pyproject.toml").read_text()
    assert 'name = "hydra-awsbatch-launcher"' in pyproject and re.search(r'"torch[^"]*>=2\.1[^"]*"', pyproject)
    assert (context / "Dockerfile").read_text() == (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()


def test_pickled_payloads_name_their_modules():
    data, modules = _wire.pickled({"a": _manifest.Staging("x", "y")})
    assert "hydra_plugins.hydra_awsbatch_launcher._manifest" in modules
    assert pickle.loads(data)["a"] == _manifest.Staging("x", "y")


LR_APP = """
    import hydra

    @hydra.main(version_base=None, config_path=".", config_name="config")
    def main(cfg):
        return (cfg.lr - 0.003) ** 2

    if __name__ == "__main__":
        main()
"""


def test_the_nothing_to_search_hint_pastes_into_a_shell(app, launch, app_env):
    """Each command that the thompson sweeper's "nothing to search" error suggests runs when pasted."""
    import re

    app(LR_APP)
    app("lr: 0.01\n", "config.yaml")
    proc = launch("hydra/sweeper=thompson", "hydra.sweep.dir=refused")
    assert proc.returncode == 1 and "nothing to search" in proc.stderr, proc.stderr[-2000:]
    message = next(line for line in proc.stderr.splitlines() if "nothing to search" in line)
    suggestions = re.findall(r"`([^`]+)`", message)
    assert len(suggestions) == 2, proc.stderr[-2000:]
    for n, suggestion in enumerate(suggestions):
        command = (f"{shlex.quote(sys.executable)} my_app.py -m hydra/sweeper=thompson hydra.sweeper.n_trials=2 "
                   f"hydra.sweeper.n_workers=1 hydra.sweep.dir=pasted{n} {suggestion}")
        pasted = subprocess.run(command, shell=True, cwd=app.folder, env=app_env, capture_output=True, text=True,
                                timeout=240)
        assert pasted.returncode == 0, (command, pasted.stderr[-2000:])
        assert "Best value" in pasted.stdout + pasted.stderr


def test_a_worker_that_dies_hard_leaves_no_scratch_folder(app, launch, app_env, tmp_path):
    """os._exit and SIGKILL skip the worker's own clean-up; the parent removes what it left."""
    app("""
        import os
        import signal

        import hydra

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            if cfg.x == 1:
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            main()
    """)
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = launch("+x=1,2", LOCAL, "hydra.sweep.dir=sweep", "hydra.launcher.in_place=false",
                  env=dict(app_env, TMPDIR=str(temp)))
    assert proc.returncode != 0 and "ended without a result" in proc.stderr, proc.stderr[-2000:]
    assert [p.name for p in temp.iterdir() if p.name.startswith("hydra-awsbatch-")] == []


THOMPSON_APP = """
    import time

    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        if cfg.x < 0.5:
            time.sleep(600)  # in flight when the sweep stops
        if {fails}:
            raise ValueError("diverged")
        return "not a number" if cfg.x >= 0.5 else 1.0

    if __name__ == "__main__":
        main()
"""


@pytest.mark.parametrize("fails, said", [
    ("False", "the task returned 'not a number': the thompson sweeper needs a number"),
    ("True", "1 trials failed in a row (hydra.sweeper.max_failures)"),
])
def test_a_thompson_sweep_that_stops_on_an_error_stops_its_trials_first_and_says_it_last(app, launch, app_env,
                                                                                         fails, said):
    """Two trials in flight on aws_batch_local (none waiting for a worker), x=0.25 (runs for long) and x=0.75
    (ends at once, with a value that stops the sweep): the one still running is stopped and recorded so, and the
    error is the last word."""
    app(THOMPSON_APP.format(fails=fails))
    proc = launch("hydra/sweeper=thompson", "+x=choice(0.25, 0.75)", "hydra.sweeper.n_workers=2",
                  "hydra.sweeper.n_queued=0", "hydra.sweeper.n_initial=2", "hydra.sweeper.max_failures=1",
                  "hydra.sweeper.seed=0", LOCAL, "hydra.sweep.dir=sweep")
    assert proc.returncode == 1 and said in proc.stderr, proc.stderr[-3000:]
    after = proc.stderr.rsplit(said, 1)[1]
    assert "SIGTERM" not in proc.stderr and "Remote traceback" not in after, after
    trials = {t["number"]: t for t in json.loads((app.folder / "sweep/thompson_state.json").read_text())["trials"]}
    assert sorted(t["status"] for t in trials.values()) == ["failed", "stopped"]
    assert not workers_of(app.folder)
