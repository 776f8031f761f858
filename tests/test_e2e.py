"""The full cloud path on this machine: template.yaml deployed into moto's CloudFormation, moto's Batch
running every job in a real container of our image (Docker engine with host networking, moto on 127.0.0.1)."""

from __future__ import annotations

import csv
import json
import os
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
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.hydra_awsbatch_launcher import _local_cloud
from tests.conftest import DUMMY_AWS, ROOT, SLEEP_TASK, cli, keep_busy, manifest, refill_gaps, wait_for

pytestmark = pytest.mark.e2e
STACK = "e2e-batch"
# One thread for torch in each container: the example's model is tiny, and on this 2-core machine, shared with the
# tests of the other pytest process, two threads wait on each other (60 epochs: 18 s with one, 89 s with two).
BATCH = ["hydra/launcher=aws_batch", f"hydra.launcher.stack_name={STACK}", "hydra.launcher.poll_interval_s=0.5",
         "+hydra.launcher.environment.OMP_NUM_THREADS=1"]


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory):
    """moto's server (a background process, its Batch in Docker mode), the stack, and the job image."""
    problem = _local_cloud.docker_answers()
    assert problem is None, problem
    state = tmp_path_factory.mktemp("local-cloud")
    pid, endpoint = _local_cloud.start_moto(state)
    try:
        outputs = _local_cloud.deploy_stack(endpoint, STACK)
        _local_cloud.build_image(outputs["RepositoryUri"] + ":latest", _local_cloud.base_image())
        yield {"endpoint": endpoint, "outputs": outputs, "bucket": outputs["Bucket"]}
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.fixture
def cloud_env(local_cloud, app_env, monkeypatch) -> dict:
    env = dict(app_env, AWS_ENDPOINT_URL=local_cloud["endpoint"], **DUMMY_AWS)
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return env



@pytest.fixture
def script(tmp_path, cloud_env):
    """Write an app into tmp_path/app; start it (Popen) or run it to the end (returns the process)."""

    def make(body: str):
        app = tmp_path / "app"
        app.mkdir(exist_ok=True)
        (app / "my_app.py").write_text(textwrap.dedent(body))
        return app

    def run(body: str, *args: str, timeout: float = 400):
        app = make(body)
        return subprocess.run([sys.executable, "my_app.py", "-m", *BATCH, "hydra.sweep.dir=sweep", *args],
                              cwd=app, env=cloud_env, capture_output=True, text=True, timeout=timeout)

    def start(body: str, *args: str):
        app = make(body)
        return subprocess.Popen([sys.executable, "my_app.py", "-m", *BATCH, "hydra.sweep.dir=sweep", *args],
                                cwd=app, env=cloud_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    run.start, run.app = start, lambda: tmp_path / "app"
    return run


def batch_states(job_ids: list[str]) -> list[str]:
    return [j["status"] for j in boto3.client("batch").describe_jobs(jobs=job_ids)["jobs"]]



def children(sweep_dir: Path) -> list[str]:
    return [j["job_id"] for j in manifest(sweep_dir)["jobs"] if j.get("job_id")]


# ------------------------------------------------------------------------------------------ the example
def test_example_sweep_matches_the_basic_launcher(local_cloud, run_app, cloud_env, tmp_path):
    ckpt = f"checkpoint.uri=s3://{local_cloud['bucket']}/checkpoints/e2e/${{hydra:job.num}}"
    basic = run_app("--multirun", "lr=1e-3,1e-4", "epochs=3", "hydra.sweep.dir=basic")
    batch = run_app("--multirun", "lr=1e-3,1e-4", "epochs=3", *BATCH, ckpt, "hydra.sweep.dir=batch", env=cloud_env)
    expected = [float(v) for v in re.findall(r"Finished: val_loss=(\S+)", basic.stdout)]
    jobs = manifest(tmp_path / "batch")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "SUCCEEDED"], batch.stdout + batch.stderr
    for job, value in zip(jobs, expected):
        assert float(job["result"]) == pytest.approx(value, abs=1e-4)
        job_dir = tmp_path / "batch" / str(job["num"])
        assert "epoch 3/3" in (job_dir / "train_model.log").read_text()
        assert (job_dir / ".hydra/overrides.yaml").exists()
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=local_cloud["bucket"], Prefix="checkpoints/e2e/")["Contents"]]
    assert {"checkpoints/e2e/0/ckpt-e00003-s0000000.pt", "checkpoints/e2e/1/ckpt-e00003-s0000000.pt"} <= set(keys)


def test_optuna_drives_a_batch_sweep_while_only_the_launching_side_has_it(local_cloud, run_app, cloud_env,
                                                                         tmp_path):
    """The job image has neither Optuna nor its Hydra plugin (it installs .[example]); the user's machine has
    both. The sweeper still gets every job's value."""
    probe = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python",
                            local_cloud["outputs"]["RepositoryUri"] + ":latest", "-c",
                            "import importlib.util as u; print(u.find_spec('hydra_plugins.hydra_optuna_sweeper'))"],
                           capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "None", probe.stdout + probe.stderr
    proc = run_app("--multirun", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                   "lr=interval(1e-4,1e-2)", "epochs=2", *BATCH, "hydra.sweep.dir=optuna", env=cloud_env)
    jobs = manifest(tmp_path / "optuna")["jobs"]
    assert len(jobs) == 4 and {j["state"] for j in jobs} == {"SUCCEEDED"}, proc.stdout[-3000:]
    best = min(float(j["result"]) for j in jobs)
    assert f"Best value: {best}" in proc.stdout


FAILURES = """
    import os
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        if cfg.x == 1:
            raise ValueError("no good value")
        if cfg.x == 2:
            print("about to vanish", flush=True)
            os._exit(137)
        return cfg.x

    if __name__ == "__main__":
        main()
"""


def test_failures_come_back_with_their_reasons(script, cloud_env):
    proc = script(FAILURES, "+x=0,1,2")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "ValueError: no good value" in output and 'raise ValueError("no good value")' in output
    assert "job #2 ended without a result" in output
    assert "Batch status: FAILED" in output and "exit code: 137" in output
    assert "about to vanish" in output.split("job #2 ended without a result", 1)[1]  # from CloudWatch
    jobs = manifest(script.app() / "sweep")["jobs"]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "FAILED"]
    logs = cli("logs", str(script.app() / "sweep"), "2", env=cloud_env)  # moto writes to /aws/batch/job
    assert logs.returncode == 0 and "about to vanish" in logs.stdout, logs.stdout + logs.stderr


SLEEPER = """
    import time
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        time.sleep(cfg.seconds)
        return cfg.x

    if __name__ == "__main__":
        main()
"""


def test_ctrl_c_terminates_every_running_job(script):
    parent = script.start(SLEEPER, "+x=1,2,3,4", "+seconds=600")
    sweep = script.app() / "sweep"
    assert wait_for(lambda: (sweep / "manifest.json").exists() and len(children(sweep)) == 4)
    jobs = children(sweep)
    assert wait_for(lambda: batch_states(jobs).count("RUNNING") == 4)
    parent.send_signal(signal.SIGINT)
    output, _ = parent.communicate(timeout=120)
    assert parent.returncode != 0 and "Stopped 4 unfinished jobs" in output, output

    def all_ended():
        states = batch_states(jobs)
        return states if all(s in ("FAILED", "SUCCEEDED") for s in states) else None

    assert wait_for(all_ended, timeout=60) == ["FAILED"] * 4  # none left RUNNING or RUNNABLE
    assert [j["state"] for j in manifest(sweep)["jobs"]] == ["FAILED"] * 4


def test_attach_collects_after_the_parent_was_killed(script, cloud_env):
    parent = script.start(SLEEPER, "+x=1,2,3", "+seconds=8")
    sweep = script.app() / "sweep"
    assert wait_for(lambda: (sweep / "manifest.json").exists() and len(children(sweep)) == 3)
    jobs = children(sweep)
    assert wait_for(lambda: "RUNNING" in batch_states(jobs))
    parent.send_signal(signal.SIGKILL)
    parent.communicate(timeout=30)
    attach = cli("attach", "sweep", cwd=script.app(), env=cloud_env)
    assert attach.returncode == 0, attach.stdout + attach.stderr
    assert "3 jobs completed, 0 failed" in attach.stdout
    assert [j["result"] for j in manifest(sweep)["jobs"]] == ["1", "2", "3"]
    for num in range(3):
        assert (sweep / str(num) / ".hydra/config.yaml").exists()


def test_cancel_terminates_running_containers(script, cloud_env):
    proc = script(SLEEPER, "+x=1,2,3", "+seconds=600", "hydra.launcher.wait=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = script.app() / "sweep"
    jobs = children(sweep)
    assert wait_for(lambda: batch_states(jobs).count("RUNNING") == 3)
    done = cli("cancel", "sweep", cwd=script.app(), env=cloud_env)
    assert done.returncode == 0 and "terminated 3 unfinished jobs" in done.stdout, done.stdout + done.stderr

    def all_ended():
        states = batch_states(jobs)
        return states if all(s in ("FAILED", "SUCCEEDED") for s in states) else None

    assert wait_for(all_ended, timeout=60) == ["FAILED"] * 3
    assert [(j["state"], j["reason"]) for j in manifest(sweep)["jobs"]] == [
        ("FAILED", "cancelled with hydra-awsbatch cancel")] * 3


@pytest.mark.alone
def test_launch_async_keeps_every_batch_worker_busy(local_cloud, cloud_env, inprocess_launcher, tmp_path):
    """Twenty jobs of 0.1 s to 2 s, four in flight, each a Batch job in a container of its own."""
    launcher = inprocess_launcher(["hydra/launcher=aws_batch", f"hydra.launcher.stack_name={STACK}",
                                   "hydra.launcher.poll_interval_s=0.5", "hydra.sweep.dir=sweep",
                                   "hydra.job.name=sleepy"], SLEEP_TASK)
    seconds = [round(0.1 + (n * 7 % 20) / 10, 1) for n in range(20)]
    returns = keep_busy(launcher, seconds, workers=4)
    assert [r.return_value for r in returns] == seconds
    jobs = manifest(tmp_path / "sweep")["jobs"]
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    assert len(manifest(tmp_path / "sweep")["batches"]) == 17
    gaps = sorted(refill_gaps(jobs, 4))
    # Batch's own times: a freed worker waits for the watcher's poll (0.5 s), one launch_async and moto's steps
    # from SUBMITTED to RUNNING (about a second).
    assert len(gaps) == 16 and gaps[8] < 4.0 and gaps[-1] < 8.0, gaps


def test_sigterm_to_a_training_container_saves_and_the_rerun_resumes(local_cloud, run_app, cloud_env, tmp_path):
    """60 epochs: the SIGTERM lands within the first few (about 0.15 s each on an idle machine, up to 1 s or more
    while the other pytest process trains: each epoch saves a checkpoint to S3)."""
    ckpt_prefix, epochs = "checkpoints/spot", 60
    args = ("--multirun", f"epochs={epochs}", *BATCH, f"checkpoint.uri=s3://{local_cloud['bucket']}/{ckpt_prefix}")
    first = subprocess.Popen([sys.executable, str(ROOT / "train_model.py"), *args, "hydra.sweep.dir=first"],
                             cwd=tmp_path, env=cloud_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    s3 = boto3.client("s3")
    wait_for(lambda: s3.list_objects_v2(Bucket=local_cloud["bucket"], Prefix=ckpt_prefix).get("KeyCount", 0) > 0,
             timeout=180)
    (job_id,) = children(tmp_path / "first")
    containers = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    (name,) = [n for n in containers.split() if job_id.replace(":", "-") in n]
    subprocess.run(["docker", "kill", "--signal", "TERM", name], check=True, capture_output=True)
    output, _ = first.communicate(timeout=180)
    assert first.returncode == 1, output
    job = manifest(tmp_path / "first")["jobs"][0]
    assert (job["state"], job["exit_code"]) == ("FAILED", 75), job
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=local_cloud["bucket"], Prefix=ckpt_prefix)["Contents"]]
    saved = max(int(re.search(r"ckpt-e(\d+)", k).group(1)) for k in keys)
    assert 0 < saved < epochs

    run_app(*args, "hydra.sweep.dir=second", env=cloud_env, timeout=600)  # the rest of the epochs
    log = (tmp_path / "second/0/train_model.log").read_text()
    assert f"Resumed from s3://{local_cloud['bucket']}/{ckpt_prefix}/ckpt-e{saved:05d}" in log
    assert f"epoch {epochs}/{epochs}" in log and f"epoch 1/{epochs} " not in log
    assert len(re.findall(rf"epoch \d+/{epochs} ", log)) == epochs - saved


# ---------------------------------------------------------------------------------------- Hydra's suites
@pytest.fixture
def in_the_cloud(cloud_env):
    """Hydra's in-process suites talk to the local cloud (cloud_env sets the AWS variables)."""
    return cloud_env


@pytest.mark.parametrize("launcher_name, overrides", [("aws_batch", BATCH[1:])])
@pytest.mark.usefixtures("in_the_cloud")
class TestLauncherInContainers(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides",
                         [("aws_batch", [*BATCH[1:], "hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"])])
@pytest.mark.usefixtures("in_the_cloud")
class TestBatchedSweeperInContainers(BatchedSweeperTestSuite):
    pass


# IntegrationTestSuite's apps write what they see to a file at an absolute path of this machine, and expect
# the job's working directory at the launching machine's path: jobs must see this machine's disk. So these
# run with a job definition that mounts a shared folder at the same path (as an EFS volume would on AWS), and
# with hydra.launcher.shared_sweep_dir=true.
SHARED = Path("/tmp/hydra-awsbatch-e2e-shared")


@pytest.fixture(scope="session")
def shared_job_definition(local_cloud) -> str:
    from tests.moto_batch import moto_client

    SHARED.mkdir(exist_ok=True)
    SHARED.chmod(0o777)  # the job image runs as a non-root user
    batch = moto_client(local_cloud["endpoint"], "batch")
    (base,) = batch.describe_job_definitions(jobDefinitions=[local_cloud["outputs"]["JobDefinition"]])["jobDefinitions"]
    properties = {k: v for k, v in base["containerProperties"].items()
                  if k in ("image", "command", "resourceRequirements", "jobRoleArn", "executionRoleArn")}
    properties["volumes"] = [{"name": "shared", "host": {"sourcePath": str(SHARED)}}]
    properties["mountPoints"] = [{"sourceVolume": "shared", "containerPath": str(SHARED), "readOnly": False}]
    batch.register_job_definition(jobDefinitionName="e2e-shared", type="container", containerProperties=properties)
    return "e2e-shared"


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, [
    "-m", *BATCH, "hydra.launcher.job_definition=e2e-shared", "hydra.launcher.shared_sweep_dir=true"])])
class TestIntegrationInContainers(IntegrationTestSuite):
    @pytest.fixture(autouse=True)
    def shared_disk(self, shared_job_definition, cloud_env):
        previous = os.umask(0)  # folders the launching side makes must be writable by the job's user
        yield
        os.umask(previous)

    def get_test_scratch_dir(self, tmpdir) -> Path:
        scratch = SHARED / Path(str(tmpdir)).name
        scratch.mkdir(exist_ok=True)
        return scratch


def running_containers(image: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-q", "--filter", f"ancestor={image}", "--filter", "status=running"],
                          capture_output=True, text=True).stdout.split()


def test_local_cloud_command_up_status_down(local_cloud, tmp_path, app_env):
    env = dict(app_env, HYDRA_AWSBATCH_LOCAL_CLOUD_DIR=str(tmp_path / "state"))

    def local_cloud_cli(*args):
        return cli("local-cloud", *args, env=env, timeout=900)

    up = local_cloud_cli("up", "--stack", "cli-batch")
    assert up.returncode == 0, up.stdout + up.stderr
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", up.stdout, flags=re.M))
    assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:") and exports["AWS_ACCESS_KEY_ID"] == "testing"
    assert "hydra.launcher.stack_name=cli-batch" in up.stdout
    state = json.loads((tmp_path / "state/state.json").read_text())
    images = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                            text=True).stdout.split()
    assert state["image"] in images

    assert local_cloud_cli("status").returncode == 0
    again = local_cloud_cli("up", "--stack", "cli-batch")  # idempotent: says so, and prints the exports again
    assert "already up" in again.stdout and exports["AWS_ENDPOINT_URL"] in again.stdout

    app = tmp_path / "app"  # a job that runs for long, in this cloud's container, when `down` comes
    app.mkdir()
    (app / "my_app.py").write_text(textwrap.dedent(SLEEPER))
    sweep = subprocess.Popen([sys.executable, "my_app.py", "-m", "hydra/launcher=aws_batch", "+x=1", "+seconds=600",
                              "hydra.launcher.stack_name=cli-batch", "hydra.launcher.poll_interval_s=1",
                              "hydra.sweep.dir=sweep"], cwd=app, env=dict(env, **exports),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: running_containers(state["image"]), timeout=240)
        down = local_cloud_cli("down")
    finally:
        sweep.kill()
        sweep.wait()
    assert down.returncode == 0 and "stopped and removed 1 job containers" in down.stdout, down.stdout
    assert f"stopped moto's server (pid {state['pid']})" in down.stdout
    assert not subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={state['image']}", "--filter",
                               f"name={down.stdout.split('job containers: ')[1].split()[0]}"],
                              capture_output=True, text=True).stdout.strip()
    assert not Path(f"/proc/{state['pid']}").exists() or "zombie" in Path(f"/proc/{state['pid']}/status").read_text()
    assert local_cloud_cli("status").returncode == 1


def test_the_image_runs_as_non_root_and_refuses_to_start_without_a_payload(local_cloud):
    image = local_cloud["outputs"]["RepositoryUri"] + ":latest"
    who = subprocess.run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "id", image],
                         capture_output=True, text=True, timeout=120)
    assert who.stdout.startswith("uid=10001(app)"), who.stdout + who.stderr
    bare = subprocess.run(["docker", "run", "--rm", "--network", "host", image], capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode == 2
    assert "HYDRA_AWSBATCH_PAYLOAD_URI is not set" in bare.stderr
    assert "hydra-awsbatch job (not on Batch)" in bare.stdout and "torch 2." in bare.stdout  # the header


# --------------------------------------------------------------------------------- the thompson sweeper
def test_thompson_sweeper_runs_the_example_on_batch(local_cloud, run_app, cloud_env, tmp_path):
    """6 trials, 3 in flight: a design of 3, then a proposal of the GP each time a Batch worker frees."""
    run_app("--multirun", "hydra/sweeper=thompson", "hydra.sweeper.n_workers=3", "hydra.sweeper.n_trials=6",
            "hydra.sweeper.n_initial=3", "lr=tag(log, interval(1e-4, 1e-1))", "epochs=2", *BATCH,
            "hydra.sweep.dir=thompson", env=cloud_env)
    sweep = tmp_path / "thompson"
    with open(sweep / "trials.csv") as stream:
        trials = list(csv.DictReader(stream))
    assert [t["status"] for t in trials] == ["completed"] * 6
    jobs = manifest(sweep)["jobs"]
    assert len(jobs) == 6 and {j["state"] for j in jobs} == {"SUCCEEDED"}
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(float(t["value"]) for t in trials)
    assert 1e-4 <= results["best_params"]["lr"] <= 1e-1
    assert (sweep / "convergence.png").stat().st_size > 10_000


SLOW_QUADRATIC = """
    import time
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        time.sleep(3 + 3 * cfg.x)
        return (cfg.x - 0.3) ** 2

    if __name__ == "__main__":
        main()
"""


def test_thompson_sweeper_resumes_after_sigkill_and_reattaches_batch_jobs(script):
    args = ("hydra/sweeper=thompson", "+x=interval(0, 1)", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_workers=3",
            "hydra.sweeper.n_initial=3")
    parent = script.start(SLOW_QUADRATIC, *args)
    state = script.app() / "sweep" / "thompson_state.json"

    def mid_sweep():
        trials = json.loads(state.read_text())["trials"] if state.exists() else []
        return [t for t in trials if t["status"] == "running"] if any(
            t["status"] == "completed" for t in trials) else None

    in_flight = wait_for(mid_sweep, timeout=240)
    assert in_flight, parent.stdout.read() if parent.poll() is not None else "no trial ended"
    parent.send_signal(signal.SIGKILL)
    parent.communicate(timeout=30)
    running_jobs = [j["job_id"] for j in manifest(script.app() / "sweep")["jobs"]
                    if j["num"] in {t["job"] for t in in_flight}]

    resumed = script(SLOW_QUADRATIC, *args, "hydra.sweeper.resume=true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    with open(script.app() / "sweep" / "trials.csv") as stream:
        trials = list(csv.DictReader(stream))
    assert len(trials) == 6 and {t["status"] for t in trials} == {"completed"}
    jobs = manifest(script.app() / "sweep")["jobs"]
    assert len(jobs) == 6 and {j["state"] for j in jobs} == {"SUCCEEDED"}  # no trial submitted twice
    assert sorted(int(t["job"]) for t in trials) == [j["num"] for j in jobs]
    for trial in in_flight:  # re-attached: it ended in the very Batch job it had when the sweeper died
        assert trials[trial["number"]]["job"] == str(trial["job"]) and trials[trial["number"]]["status"] == "completed"
    assert batch_states(running_jobs) == ["SUCCEEDED"] * len(running_jobs)


REPORTING = """
    import time

    import boto3
    import hydra
    from hydra_plugins.hydra_awsbatch_launcher import report

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        for step in range(1, 81):
            time.sleep(0.3 if cfg.x < 0.5 else 0.6)  # the better one reaches each rung first
            if report(step, loss=cfg.x + 1.0 / step):  # asked to stop: save, then return what it has
                boto3.client("s3").put_object(Bucket=cfg.bucket, Key=f"ckpt/{cfg.x}.txt", Body=str(step).encode())
                return cfg.x + 1.0 / step
        return cfg.x

    if __name__ == "__main__":
        main()
"""


def test_a_trial_stopped_early_in_its_container_saves_and_ends(script, local_cloud):
    """Two trials in containers, x=0.1 and x=0.9; ASHA (halving) stops the worse one at a rung: its task hears it
    through report(), saves its checkpoint to S3 and returns; its trial is pruned, its job not retried, its
    container gone."""
    proc = script(REPORTING, "hydra/sweeper=thompson", "+x=choice(0.1, 0.9)", "hydra.sweeper.n_trials=2",
                  "hydra.sweeper.n_workers=2", "hydra.sweeper.n_initial=2", "hydra.sweeper.objective=null",
                  "hydra.sweeper.metric=loss", "hydra.sweeper.pruner=asha", "hydra.sweeper.min_resource=4",
                  "hydra.sweeper.max_resource=80", "hydra.sweeper.reduction_factor=2",
                  "hydra.launcher.metrics_interval_s=1", f"+bucket={local_cloud['bucket']}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(script.app() / "sweep" / "trials.csv") as stream:
        trials = {float(t["+x"]): t for t in csv.DictReader(stream)}
    assert trials[0.9]["status"] == "pruned" and int(trials[0.9]["last_step"]) < 80, trials
    assert trials[0.1]["status"] == "completed" and trials[0.1]["last_step"] == "80"
    saved = boto3.client("s3").list_objects_v2(Bucket=local_cloud["bucket"], Prefix="ckpt/").get("Contents", [])
    assert [o["Key"] for o in saved] == ["ckpt/0.9.txt"]
    jobs = {j["num"]: j for j in manifest(script.app() / "sweep")["jobs"]}
    stopped = jobs[int(trials[0.9]["job"])]
    assert stopped["stop_request"].startswith("stopped early by the thompson sweeper: ASHA")
    (described,) = boto3.client("batch").describe_jobs(jobs=[stopped["job_id"]])["jobs"]
    assert described["status"] == "SUCCEEDED" and len(described.get("attempts", [])) <= 1  # ended; not retried
    image = local_cloud["outputs"]["RepositoryUri"] + ":latest"
    assert wait_for(lambda: not running_containers(image), timeout=60)


STUBBORN = """
    import time
    import hydra
    from hydra_plugins.hydra_awsbatch_launcher import report

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        for step in range(1, 61):
            time.sleep(0.3 if cfg.x < 0.5 else 0.6)  # the better one reaches each rung first
            report(step, loss=cfg.x + 1.0 / step)  # a request to stop is not heard: the job is terminated
        return cfg.x

    if __name__ == "__main__":
        main()
"""


def test_a_trial_asked_to_stop_is_asked_again_when_the_sweep_resumes(script, local_cloud):
    """ASHA stops x=0.9, which does not listen, and the sweeper is killed within the grace period (600 s): its
    Batch job runs on. The resumed sweeper re-attaches it and asks again (here with a 2 s grace period), so its
    job is terminated and the trial is pruned, where it would otherwise train to its end."""
    args = ("hydra/sweeper=thompson", "+x=choice(0.1, 0.9)", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_workers=2",
            "hydra.sweeper.n_initial=2", "hydra.sweeper.objective=null", "hydra.sweeper.metric=loss",
            "hydra.sweeper.pruner=asha", "hydra.sweeper.min_resource=4", "hydra.sweeper.max_resource=60",
            "hydra.sweeper.reduction_factor=2", "hydra.launcher.metrics_interval_s=1")
    parent = script.start(STUBBORN, *args, "hydra.sweeper.stop_grace_s=600")
    state = script.app() / "sweep" / "thompson_state.json"

    def asked():
        trials = json.loads(state.read_text())["trials"] if state.exists() else []
        return [t for t in trials if t["stop_reason"] and t["status"] == "running"]

    (stopped,) = wait_for(asked, timeout=240) or [None]
    assert stopped, parent.stdout.read() if parent.poll() is not None else "no trial was asked to stop"
    parent.send_signal(signal.SIGKILL)
    parent.communicate(timeout=30)
    (job,) = [j for j in manifest(script.app() / "sweep")["jobs"] if j["num"] == stopped["job"]]
    assert batch_states([job["job_id"]]) in (["STARTING"], ["RUNNING"])  # its job runs on without the sweeper

    resumed = script(STUBBORN, *args, "hydra.sweeper.resume=true", "hydra.sweeper.stop_grace_s=2")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    with open(script.app() / "sweep" / "trials.csv") as stream:
        trials = {float(t["+x"]): t for t in csv.DictReader(stream)}
    assert trials[0.9]["status"] == "pruned" and int(trials[0.9]["last_step"]) < 60, trials[0.9]
    assert trials[0.9]["job"] == str(stopped["job"])  # re-attached, not run again
    assert trials[0.1]["status"] == "completed" and trials[0.1]["last_step"] == "60", trials[0.1]
    assert batch_states([job["job_id"]]) == ["FAILED"]  # terminated


# ------------------------------------------------------------------------------------------ multi-node trials
NODES = ["hydra.launcher.nodes=2", "hydra.launcher.procs_per_node=1"]


def test_a_two_node_trial_runs_in_two_containers(local_cloud, run_app, cloud_env, tmp_path):
    """A config of 2 nodes is one multi-node parallel job on the stack's multi-node queue and job definition; the
    local cloud's moto runs it as two containers, each with the variables Batch gives its node, torch's launcher
    joins them, and the trial trains as it does in two local processes."""
    args = ("--multirun", "epochs=1", *NODES)
    run_app(*args, "hydra/launcher=aws_batch_local", "hydra.sweep.dir=local")
    batch = run_app(*args, *BATCH, "hydra.sweep.dir=batch", env=cloud_env)
    (job,) = manifest(tmp_path / "batch")["jobs"]
    assert job["state"] == "SUCCEEDED", batch.stdout[-3000:] + batch.stderr[-3000:]
    (local_job,) = manifest(tmp_path / "local")["jobs"]
    assert float(job["result"]) == pytest.approx(float(local_job["result"]), rel=1e-5), (job, local_job)
    (described,) = boto3.client("batch").describe_jobs(jobs=[job["job_id"]])["jobs"]
    assert described["nodeProperties"]["numNodes"] == 2 and "arrayProperties" not in described
    assert described["jobQueue"] == local_cloud["outputs"]["MultiNodeJobQueue"]
    logs = {p.name: p.read_text() for p in (tmp_path / "batch/0").glob("train_model*.log")}
    assert sorted(logs) == ["train_model.log", "train_model.rank1.log"], sorted(logs)  # node 1's, brought home
    assert "rank 0 of 2" in logs["train_model.log"] and "rank 1 of 2" in logs["train_model.rank1.log"]
    node_log = subprocess.run(["hydra-awsbatch", "logs", "batch", "0", "--node", "1", "-n", "500"], cwd=tmp_path,
                              env=cloud_env, capture_output=True, text=True, timeout=120)
    assert node_log.returncode == 0 and "node 1 of 2" in node_log.stdout, node_log.stdout + node_log.stderr


RANKS_THAT_WAIT = """
    import os, time
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        print(f"rank {os.environ['RANK']} on node {os.environ['NODE_RANK']} started", flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        main()
"""


def node_containers(job_id: str) -> list[str]:
    """The running containers of a multi-node job's nodes (moto names them NAME-JOBID-NODE)."""
    return subprocess.run(["docker", "ps", "--format", "{{.Names}}", "--filter", f"name={job_id}-"],
                          capture_output=True, text=True).stdout.split()


def started_child_node(script) -> tuple[str, str]:
    """(job id, node 1's container) of the sweep's one multi-node job, once node 1's rank runs the task."""
    sweep = script.app() / "sweep"
    assert wait_for(lambda: (sweep / "manifest.json").exists() and len(children(sweep)) == 1)
    (job_id,) = children(sweep)

    def child_started():
        names = [name for name in node_containers(job_id) if name.endswith("-1")]
        logs = subprocess.run(["docker", "logs", names[0]], capture_output=True, text=True) if names else None
        return names[0] if logs and "rank 1 on node 1 started" in logs.stdout + logs.stderr else None

    child = wait_for(child_started, timeout=180)
    assert child, "node 1 did not start its rank"
    return job_id, child


def test_a_child_node_that_dies_fails_its_trial_naming_it(script):
    """Batch does nothing when a child node dies; the main node's worker sees it and ends the trial, naming the
    node, within 60 s."""
    parent = script.start(RANKS_THAT_WAIT, "+x=1", *NODES)
    try:
        job_id, child = started_child_node(script)
        subprocess.run(["docker", "kill", child], check=True, capture_output=True)
        killed = time.monotonic()
        assert wait_for(lambda: batch_states([job_id]) == ["FAILED"], timeout=90)
        assert time.monotonic() - killed < 60
        output, _ = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert parent.returncode != 0
    assert f"node 1 of 2 ({job_id}#1) stopped before the trial ended" in output, output[-3000:]


def test_ctrl_c_stops_every_node_of_a_batch_trial(script):
    parent = script.start(RANKS_THAT_WAIT, "+x=1", *NODES)
    try:
        job_id, _ = started_child_node(script)
        assert len(node_containers(job_id)) == 2
        parent.send_signal(signal.SIGINT)
        output, _ = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert parent.returncode != 0 and "Stopped 1 unfinished jobs" in output, output[-3000:]
    assert wait_for(lambda: batch_states([job_id]) == ["FAILED"], timeout=60)
    assert wait_for(lambda: not node_containers(job_id), timeout=60), node_containers(job_id)


# ------------------------------------------------------------------------------------------ warm workers
def test_two_warm_workers_run_eight_trials_in_two_containers(script, cloud_env):
    """The pool's protocol over S3: 8 trials, 2 Batch jobs (one array of 2 workers), each trial forked in its
    worker's container; the workers leave when the sweep ends."""
    proc = script(SLEEPER, "+x=range(0,8)", "+seconds=0", "hydra.launcher.workers=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = manifest(script.app() / "sweep")["jobs"]
    assert [(j["state"], j["result"]) for j in jobs] == [("SUCCEEDED", str(x)) for x in range(8)]
    workers = sorted({j["job_id"] for j in jobs})
    assert len(workers) == 2 and {w.rsplit(":", 1)[0] for w in workers} == {workers[0].rsplit(":", 1)[0]}
    (array,) = boto3.client("batch").describe_jobs(jobs=[workers[0].rsplit(":", 1)[0]])["jobs"]
    assert array["arrayProperties"]["size"] == 2  # two containers ran the eight trials
    assert wait_for(lambda: batch_states(workers) == ["SUCCEEDED"] * 2, timeout=60)  # told to leave at the end
    for command in ("attach", "cancel"):  # the workers went with the launcher that fed them: nothing to follow
        done = cli(command, "sweep", cwd=script.app(), env=cloud_env)
        assert done.returncode == 1 and "ran on 2 warm workers" in done.stderr, done.stdout + done.stderr


# ------------------------------------------------------------------------------------ resources per config
def test_each_model_goes_out_as_one_array_with_what_its_config_asks(local_cloud, run_app, cloud_env, tmp_path):
    """model=mlp,resnet on the example's per-model resources (GPU counts 0 here, and the stack's one queue): two
    arrays, each SubmitJob with the vCPUs and memory its model's config asks, and every job trained."""
    from tests.test_resources import as_submitted

    proc = run_app("--multirun", "model=mlp,resnet", "lr=1e-3,1e-4", "epochs=1", "batch_size=256",
                   "model.resources.gpus=0", "model.resources.queue=null", "hydra/launcher=aws_batch_by_model",
                   *BATCH[1:], "hydra.sweep.dir=sweep", env=cloud_env)
    record = manifest(tmp_path / "sweep")
    assert [j["state"] for j in record["jobs"]] == ["SUCCEEDED"] * 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    arrays = record["batches"][0]["arrays"]
    assert [(a["first"], a["size"]) for a in arrays] == [(0, 2), (2, 2)]
    assert as_submitted(local_cloud["endpoint"], [a["job_id"] for a in arrays]) == [
        {"VCPU": "1", "MEMORY": "2048", "GPU": "0"}, {"VCPU": "4", "MEMORY": "15000", "GPU": "0"}]
    assert all(float(j["result"]) > 0 for j in record["jobs"])
