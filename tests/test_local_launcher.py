"""aws_batch_local as a user drives it: the example sweep, failures, odd overrides, version mismatches,
code packages staged once, outputs brought back through staging, Ctrl-C."""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest
import yaml

from hydra_plugins.hydra_awsbatch_launcher import _manifest, _wire
from tests.conftest import manifest

pytestmark = pytest.mark.integration
LOCAL = "hydra/launcher=aws_batch_local"



@pytest.fixture
def run_script(tmp_path, app_env):
    """Write a small Hydra app into tmp_path/app and run it with arguments; returns the process."""

    def run(body: str, *args: str, env: dict | None = None, helper: str | None = None):
        app = tmp_path / "app"
        app.mkdir(exist_ok=True)
        (app / "my_app.py").write_text(textwrap.dedent(body))
        if helper is not None:
            (app / "helper_mod.py").write_text(textwrap.dedent(helper))
        return subprocess.run([sys.executable, "my_app.py", *args], cwd=app, env=env or app_env,
                              capture_output=True, text=True, timeout=300)

    return run


def test_example_sweep_matches_the_basic_launcher(run_app, tmp_path):
    basic = run_app("--multirun", "lr=1e-3,1e-4", "hydra.sweep.dir=basic")
    local = run_app("--multirun", "lr=1e-3,1e-4", LOCAL, "hydra.sweep.dir=local")
    expected = re.findall(r"Finished: val_loss=(\S+)", basic.stdout)
    assert len(expected) == 2

    jobs = manifest(tmp_path / "local")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "SUCCEEDED"]
    assert [j["overrides"] for j in jobs] == [["lr=0.001"], ["lr=0.0001"]]
    for job, value in zip(jobs, expected):
        assert float(job["result"]) == pytest.approx(float(value), abs=1e-4)  # the log rounds to 4 places
        job_dir = tmp_path / "local" / str(job["num"])
        assert f"Finished: val_loss={value}" in (job_dir / "train_model.log").read_text()
        assert yaml.safe_load((job_dir / ".hydra/overrides.yaml").read_text()) == job["overrides"]
    assert "#0 lr=0.001: SUCCEEDED" in local.stdout and "Sweep 2" in local.stdout


def test_outputs_come_back_through_s3_and_checkpoints_stay_there(run_app, aws_env, bucket, tmp_path):
    staging = f"s3://{bucket}/staging"
    proc = run_app("--multirun", "lr=1e-3,1e-4", "epochs=2", LOCAL, "hydra.launcher.in_place=false",
                   f"hydra.launcher.staging_uri={staging}", "hydra.sweep.dir=sweep", env=aws_env)
    sweep = tmp_path / "sweep"
    sweep_id = manifest(sweep)["sweep_id"]
    for num in (0, 1):
        job_dir = sweep / str(num)
        assert "epoch 2/2" in (job_dir / "train_model.log").read_text()
        assert (job_dir / ".hydra/config.yaml").exists()
        assert not list(job_dir.rglob("*.pt"))  # sync_exclude left them in staging ...
        kept = f"{staging}/sweeps/{sweep_id}/{num}/output/checkpoints/ckpt-e00002-s0000000.pt"
        assert kept in proc.stdout  # ... and said where
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"staging/sweeps/{sweep_id}/manifest.json" in keys
    assert f"staging/sweeps/{sweep_id}/1/output/checkpoints/ckpt-e00002-s0000000.pt" in keys


FAILING_APP = """
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        print(f"job x={cfg.x}")
        if cfg.x == 2:
            raise ValueError(f"boom {cfg.x}")
        return cfg.x * 10

    if __name__ == "__main__":
        main()
"""


def test_a_failing_job_fails_alone_with_its_exception(run_script, tmp_path):
    proc = run_script(FAILING_APP, "-m", "+x=1,2,3", LOCAL, "hydra.sweep.dir=sweep")
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "ValueError: boom 2" in output
    assert "Remote traceback" in output and 'raise ValueError(f"boom {cfg.x}")' in output
    sweep = tmp_path / "app/sweep"
    jobs = manifest(sweep)["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert [j["result"] for j in jobs] == ["10", "ValueError: boom 2", "30"]
    assert "job x=3" in (sweep / ".logs/2.log").read_text()  # the job's own output, in its log file
    assert (sweep / "2/.hydra/config.yaml").is_file()


def test_failed_job_returns_the_original_exception(hydra_sweep_runner, tmpdir):
    def task(cfg):
        if cfg.a == 1:
            raise KeyError("missing thing")
        return cfg.a

    sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=task,
                               config_path="configs", config_name="compose.yaml",
                               overrides=[LOCAL, "+a=0,1"], temp_dir=tmpdir)
    with pytest.raises(KeyError, match="missing thing") as error:
        with sweep:
            pass
    assert any("Remote traceback of job #1" in note for note in getattr(error.value, "__notes__", []))
    assert (Path(tmpdir) / "0/.hydra/config.yaml").exists()  # the other job completed and came back


def test_shell_metacharacters_reach_the_job_unchanged(run_script, tmp_path):
    app = """
        import hydra

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            return cfg.note

        if __name__ == "__main__":
            main()
    """
    proc = run_script(app, "-m", LOCAL, "hydra.sweep.dir=sweep", """+note='a;b $(x) "q" & | > <'""")
    assert proc.returncode == 0, proc.stderr
    job_config = yaml.safe_load((tmp_path / "app/sweep/0/.hydra/config.yaml").read_text())
    assert job_config["note"] == 'a;b $(x) "q" & | > <'
    assert manifest(tmp_path / "app/sweep")["jobs"][0]["result"] == repr('a;b $(x) "q" & | > <')


def test_code_package_is_staged_once_and_the_job_imports_from_it(run_script, tmp_path):
    app = """
        import hydra
        import helper_mod

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            return helper_mod.answer()

        if __name__ == "__main__":
            main()
    """
    helper = "def answer():\n    return 42\n"
    staging = tmp_path / "staging"
    args = ("-m", LOCAL, f"hydra.launcher.staging_uri={staging}", "hydra.sweep.dir=sweep")
    first = run_script(app, *args, helper=helper)
    assert first.returncode == 0, first.stderr
    assert "uploaded as" in first.stdout and "-> 42" in first.stdout
    packages = list((staging / "code").iterdir())
    assert len(packages) == 1

    second = run_script(app, *args, helper=helper)
    assert "already staged as" in second.stdout and list((staging / "code").iterdir()) == packages

    third = run_script(app, *args, helper="def answer():\n    return 43\n")
    assert "-> 43" in third.stdout and len(list((staging / "code").iterdir())) == 2


def test_reserved_environment_names_are_refused_before_staging(run_script, tmp_path):
    proc = run_script(FAILING_APP, "-m", "+x=1", LOCAL, "hydra.sweep.dir=sweep",
                      "+hydra.launcher.environment.AWS_BATCH_JOB_ID=x")
    assert proc.returncode == 1
    assert "hydra.launcher.environment.AWS_BATCH_JOB_ID" in proc.stderr and "reserved" in proc.stderr
    assert not (tmp_path / "app/sweep/.staging").exists()


def test_worker_refuses_a_payload_from_another_python(tmp_path, app_env):
    staging = _manifest.Staging(str(tmp_path / "staging"), "s1")
    data, _ = _wire.dump_payload({"code_uri": "unused", "code_root": "/", "sync_outputs": True},
                                  _wire.PayloadBody("never", "unpickled", {}), [], [])
    payload = pickle.loads(data)
    payload["header"]["versions"]["python"] = "3.8.10"
    Path(staging.payload(4)).parent.mkdir(parents=True)
    Path(staging.payload(4)).write_bytes(pickle.dumps(payload))

    env = dict(app_env, HYDRA_AWSBATCH_PAYLOAD_URI=staging.payload(4), AWS_BATCH_JOB_ID="abc:1")
    proc = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.worker"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    result = _wire.load_result(Path(staging.result(5)).read_bytes())
    assert result["status"] == _wire.Outcome.FAILED and result["num"] == 5
    assert "Python 3.8.10 made the sweep" in result["error"]["message"]
    assert f"Python {_wire.versions()['python']}" in result["error"]["message"]


def test_worker_without_a_payload_says_what_is_missing(app_env):
    proc = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.worker"],
                          env=app_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "HYDRA_AWSBATCH_PAYLOAD_URI is not set" in proc.stderr


def test_ctrl_c_stops_every_job_and_records_it(tmp_path, app_env):
    app = tmp_path / "app"
    app.mkdir()
    (app / "my_app.py").write_text(textwrap.dedent("""
        import time
        import hydra

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            print("sleeping", flush=True)
            time.sleep(600)

        if __name__ == "__main__":
            main()
    """))
    parent = subprocess.Popen([sys.executable, "my_app.py", "-m", "+x=1,2,3", LOCAL, "hydra.sweep.dir=sweep",
                               "hydra.launcher.max_parallel=2"], cwd=app, env=app_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = app / "sweep/.logs"
    deadline = time.time() + 60
    while time.time() < deadline and not (
            logs.is_dir() and sum("sleeping" in p.read_text() for p in logs.glob("*.log")) == 2):
        time.sleep(0.2)
    parent.send_signal(signal.SIGINT)
    output, _ = parent.communicate(timeout=90)
    assert parent.returncode != 0
    assert "Stopped 3 unfinished jobs" in output
    jobs = manifest(app / "sweep")["jobs"]
    assert [j["state"] for j in jobs] == ["FAILED"] * 3
    assert all(j["reason"] == "interrupted by the user" for j in jobs)
    for num in (0, 1):  # the two that ran were stopped with SIGTERM and said so
        result = _wire.load_result(next((app / "sweep/.staging/sweeps").glob(f"*/{num}/result.pkl")).read_bytes())
        assert result["status"] == _wire.Outcome.INTERRUPTED
    leftover = subprocess.run(["pgrep", "-f", "hydra_awsbatch_launcher.worker"], capture_output=True, text=True)
    assert not [pid for pid in leftover.stdout.split() if os.path.exists(f"/proc/{pid}")
                and str(app) in os.readlink(f"/proc/{pid}/cwd")]


def test_attach_after_a_local_launcher_died_submitting_gives_advice_true_for_it(run_script, tmp_path, app_env):
    """A local sweep (Hydra's basic sweeper) whose launcher died while it submitted: one job staged and never
    started, one never staged. attach collects the two that ran and says what is true here: local jobs never
    outlive their launcher (nothing of Batch), and a rerun of the command runs all four jobs again."""
    import json

    from tests.conftest import cli

    app = """
        import hydra

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            return cfg.x * 10

        if __name__ == "__main__":
            main()
    """
    proc = run_script(app, "-m", "+x=1,2", "hydra/launcher=aws_batch_local", "hydra.sweep.dir=sweep")
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = tmp_path / "app/sweep" / _manifest.MANIFEST
    record = manifest(tmp_path / "app/sweep")  # what a launcher killed while it submitted leaves
    record["jobs"].append({"num": 2, "overrides": ["+x=3"], "subdir": "2", "state": "STAGED"})
    record["announced"] = 4
    path.write_text(json.dumps(record))

    attach = cli("attach", str(tmp_path / "app/sweep"), env=app_env)
    assert "2 jobs completed, 0 failed" in attach.stdout, attach.stdout + attach.stderr
    assert "1 jobs were staged but never started (local jobs" in attach.stdout
    assert "1 of the sweep's 4 jobs were never submitted" in attach.stdout
    assert "all 4 jobs run again, the 2 completed ones included" in attach.stdout
    assert "Batch" not in attach.stdout and attach.returncode == 1
