"""The aws_batch launcher against moto's server over HTTP (Batch in its no-container mode, S3,
CloudFormation, CloudWatch Logs): validation, submission shape, stack outputs, failures, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import boto3
import pytest

from hydra_plugins.hydra_awsbatch_launcher import _batch
from tests.conftest import cli, manifest, run_like_a_container, wait_for

pytestmark = pytest.mark.integration
STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
APP = """
    import logging

    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        logging.getLogger(__name__).info(f"job x={cfg.x}")
        return cfg.x * 10

    if __name__ == "__main__":
        main()
"""


@pytest.fixture
def app(tmp_path):
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "my_app.py").write_text(textwrap.dedent(APP))
    return directory


@pytest.fixture
def sweep(app, aws_env, batch_resources):
    """Run `python my_app.py -m ... hydra/launcher=aws_batch` against moto; returns the finished process."""

    def run(*args: str, values: str = "1,2,3", env: dict | None = None, settings: bool = True):
        base = [f"hydra.launcher.job_queue={batch_resources['queue']}",
                f"hydra.launcher.job_definition={batch_resources['job_definition']}",
                f"hydra.launcher.staging_uri={batch_resources['staging']}"] if settings else []
        cmd = [sys.executable, "my_app.py", "-m", f"+x={values}", "hydra/launcher=aws_batch",
               "hydra.sweep.dir=sweep", "hydra.launcher.poll_interval_s=0.1", *base, *args]
        return subprocess.run(cmd, cwd=app, env=env or aws_env, capture_output=True, text=True, timeout=300)

    return run


def jobs_in_queues(resources) -> int:
    batch = boto3.client("batch")
    return sum(len(batch.list_jobs(jobQueue=q, jobStatus=s)["jobSummaryList"])
               for q in (resources["queue"], resources["fargate_queue"]) for s in STATUSES)


def staged_objects(resources) -> list[str]:
    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=resources["bucket"]).get("Contents", [])]



@pytest.fixture
def deregistered_definition(batch_resources, aws_env) -> str:
    batch = boto3.client("batch")
    arn = batch.register_job_definition(jobDefinitionName="test-retired-job", type="container",
                                        containerProperties={"image": "x", "vcpus": 1, "memory": 512})
    batch.deregister_job_definition(jobDefinition=arn["jobDefinitionArn"])
    return "test-retired-job"


@pytest.mark.parametrize("overrides, message", [
    (["hydra.launcher.job_queue=no-such-queue"], "job queue 'no-such-queue' does not exist"),
    (["hydra.launcher.job_queue=test-disabled-queue"], "job queue 'test-disabled-queue' is DISABLED: enable it or "
                                                       "set hydra.launcher.job_queue"),
    (["hydra.launcher.job_definition=no-such-job"], "job definition 'no-such-job' does not exist: fix "
                                                    "hydra.launcher.job_definition"),
    (["hydra.launcher.job_definition=test-retired-job"], "job definition 'test-retired-job' is INACTIVE"),
    (["hydra.launcher.staging_uri=s3://no-such-bucket/staging"], "bucket 'no-such-bucket' does not exist"),
    (["hydra.launcher.staging_uri=/tmp/local-staging"], "hydra.launcher.staging_uri=/tmp/local-staging: Batch jobs "
                                                        "need an s3://bucket/prefix"),
    (["hydra.launcher.vcpus=0.5"], "hydra.launcher.vcpus=0.5: EC2 jobs take a whole number of vCPUs"),
    (["hydra.launcher.memory_mib=2"], "hydra.launcher.memory_mib=2: at least 4 MiB"),
    (["hydra.launcher.gpus=-1"], "hydra.launcher.gpus=-1: must be 0 or more"),
    (["hydra.launcher.timeout_min=0.5"], "hydra.launcher.timeout_min=0.5: Batch needs at least 1 minute"),
    (["hydra.launcher.attempts=11"], "hydra.launcher.attempts=11: Batch takes 1 to 10"),
    (["hydra.launcher.job_name=___"], "hydra.launcher.job_name='___' has no letter or digit"),
    (["+hydra.launcher.environment.AWS_BATCH_JOB_ID=x"], "hydra.launcher.environment.AWS_BATCH_JOB_ID: names "
                                                         "starting with AWS_BATCH_ are reserved"),
    (["hydra.launcher.job_queue=test-fargate-queue", "hydra.launcher.gpus=1"],
     "the queue's compute environments are all Fargate, which has no GPUs"),
    (["hydra.launcher.job_queue=test-fargate-queue", "hydra.launcher.vcpus=3"], "Fargate takes one of"),
])
@pytest.mark.usefixtures("deregistered_definition")
def test_bad_settings_are_refused_before_anything_is_spent(sweep, batch_resources, overrides, message):
    jobs, objects = jobs_in_queues(batch_resources), staged_objects(batch_resources)
    proc = sweep(*overrides)
    assert proc.returncode == 1
    assert "cannot launch the sweep" in proc.stderr and message in proc.stderr, proc.stderr
    assert jobs_in_queues(batch_resources) == jobs and staged_objects(batch_resources) == objects


def test_every_problem_is_named_at_once(sweep, batch_resources):
    proc = sweep("hydra.launcher.vcpus=0.5", "hydra.launcher.attempts=0", "hydra.launcher.job_queue=no-such-queue")
    problems = [line for line in proc.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3, proc.stderr


@pytest.mark.parametrize("remove, message", [
    (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), "no AWS credentials found"),
    (("AWS_DEFAULT_REGION",), "no AWS region: set hydra.launcher.region"),
])
def test_missing_credentials_or_region(sweep, aws_env, tmp_path, remove, message):
    env = {k: v for k, v in aws_env.items() if k not in remove}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    proc = sweep(env=env)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_dry_run_prints_the_request_and_submits_nothing(sweep, batch_resources):
    jobs, objects = jobs_in_queues(batch_resources), staged_objects(batch_resources)
    proc = sweep("hydra.launcher.dry_run=true", "hydra.launcher.vcpus=2", "hydra.launcher.memory_mib=2048",
                 "hydra.launcher.gpus=1", f"hydra.launcher.job_queue={batch_resources['gpu_queue']}",
                 "hydra.launcher.attempts=4", "hydra.launcher.timeout_min=5",
                 "hydra.launcher.share_identifier=vision", "hydra.launcher.scheduling_priority=7")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.split("SubmitJob request (dry run, nothing submitted):\n", 1)[1]
    request = json.JSONDecoder().raw_decode(text)[0]
    assert request["arrayProperties"] == {"size": 3}
    assert request["containerOverrides"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "2048"}, {"type": "GPU", "value": "1"}]
    assert request["retryStrategy"] == {"attempts": 4, "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onExitCode": "75", "action": "RETRY"},
        {"onReason": "*", "action": "EXIT"}]}
    assert request["timeout"] == {"attemptDurationSeconds": 300}
    assert (request["shareIdentifier"], request["schedulingPriorityOverride"]) == ("vision", 7)
    assert jobs_in_queues(batch_resources) == jobs and staged_objects(batch_resources) == objects


def test_each_job_is_told_its_threads_and_the_users_own_win(sweep, batch_resources):
    """In a container a math library sees every CPU of the instance and starts a thread for each: every job is
    told its vCPUs (its job definition's where hydra.launcher.vcpus is null) over its processes on a node as
    OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS; the user's environment wins."""
    from hydra_plugins.hydra_awsbatch_launcher._job import THREAD_VARIABLES

    boto3.client("batch").register_job_definition(
        jobDefinitionName="test-four-vcpus", type="container", containerProperties={
            "image": "x", "resourceRequirements": [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "512"}]})

    def told(*args: str) -> list:
        proc = sweep(f"hydra.launcher.job_queue={batch_resources['queue']}",
                     f"hydra.launcher.staging_uri={batch_resources['staging']}", "hydra.launcher.dry_run=true", *args,
                     settings=False)
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout.split("SubmitJob request (dry run, nothing submitted):\n", 1)[1]
        overrides = json.JSONDecoder().raw_decode(text)[0]["containerOverrides"]
        env = {e["name"]: e["value"] for e in overrides["environment"]}
        return [env.get(name) for name in THREAD_VARIABLES]

    assert told("hydra.launcher.job_definition=test-four-vcpus") == ["4", "4", "4"]
    assert told("hydra.launcher.job_definition=test-four-vcpus", "hydra.launcher.vcpus=2") == ["2", "2", "2"]
    assert told("hydra.launcher.job_definition=test-four-vcpus", "hydra.launcher.procs_per_node=3") == ["1", "1", "1"]
    assert told(f"hydra.launcher.job_definition={batch_resources['job_definition']}", "hydra.launcher.vcpus=3",
                "+hydra.launcher.environment.OMP_NUM_THREADS=8") == ["8", "3", "3"]


def test_submission_shape_read_back_from_batch(sweep, app, batch_resources):
    proc = sweep("hydra.launcher.wait=false", "hydra.launcher.timeout_min=5", "+hydra.launcher.tags.team=vision",
                 "+hydra.launcher.environment.DATA=s3://data")
    assert proc.returncode == 0, proc.stderr
    assert "hydra-awsbatch attach" in proc.stdout
    record = manifest(app / "sweep")
    (job_id,) = record["batches"][0]["batch_job_ids"]
    job = boto3.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["arrayProperties"]["size"] == 3
    assert job["jobName"] == "my_app" and job["jobQueue"].endswith(batch_resources["queue"])
    assert job["container"]["command"] == _batch.WORKER_COMMAND
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    payload = f"{batch_resources['staging']}/sweeps/{record['sweep_id']}/payload-0.pkl"
    assert env["HYDRA_AWSBATCH_PAYLOAD_URI"] == payload
    assert env["HYDRA_AWSBATCH_SWEEP_ID"] == record["sweep_id"] and env["HYDRA_AWSBATCH_INDEX_OFFSET"] == "0"
    assert env["DATA"] == "s3://data"
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")  # moto on loopback: the local cloud
    assert job["timeout"] == {"attemptDurationSeconds": 300}
    assert job["tags"]["team"] == "vision" and job["tags"]["hydra-awsbatch:sweep-id"] == record["sweep_id"]
    assert job["tags"]["hydra-awsbatch:app"] == "my_app"
    assert [j["job_id"] for j in record["jobs"]] == [f"{job_id}:{i}" for i in range(3)]
    assert f"sweeps/{record['sweep_id']}/payload-0.pkl" in "".join(staged_objects(batch_resources))


def test_one_config_is_a_plain_job(sweep, app):
    assert sweep("hydra.launcher.wait=false", values="7").returncode == 0
    (job_id,) = manifest(app / "sweep")["batches"][0]["batch_job_ids"]
    job = boto3.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    assert "arrayProperties" not in job or "size" not in job["arrayProperties"]
    assert manifest(app / "sweep")["jobs"][0]["job_id"] == job_id


def test_more_than_10000_configs_make_two_arrays(batch_resources, aws_env):
    requests = _batch.SubmitSpec(
        "big", batch_resources["queue"], batch_resources["job_definition"]).requests("s3://b/p.pkl", "s", 5, 10_001)
    assert [(first, size) for first, size, _ in requests] == [(5, 10_000), (10_005, 1)]
    ids = _batch.BatchApi().submit([request for _, _, request in requests])
    big, plain = boto3.client("batch").describe_jobs(jobs=ids)["jobs"]
    assert big["arrayProperties"]["size"] == 10_000 and "size" not in plain.get("arrayProperties", {})
    offsets = [{e["name"]: e["value"] for e in j["container"]["environment"]}["HYDRA_AWSBATCH_INDEX_OFFSET"]
               for j in (big, plain)]
    assert offsets == ["0", "10000"]


def test_a_sweep_by_stack_name_alone(sweep, app, batch_resources, aws_env):
    template = {
        "Resources": {"Staging": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "stack-staging"}}},
        "Outputs": {
            "JobQueue": {"Value": batch_resources["queue"]},
            "JobDefinition": {"Value": batch_resources["job_definition"]},
            "StagingUri": {"Value": {"Fn::Sub": "s3://${Staging}/staging"}},
            "LogGroup": {"Value": "/aws/batch/stack-jobs"},
        },
    }
    boto3.client("cloudformation").create_stack(StackName="hydra-batch", TemplateBody=json.dumps(template))
    proc = sweep("hydra.launcher.stack_name=hydra-batch", "hydra.launcher.wait=false", settings=False)
    assert proc.returncode == 0, proc.stderr
    record = manifest(app / "sweep")
    assert record["staging_uri"] == "s3://stack-staging/staging"
    assert record["settings"]["log_group"] == "/aws/batch/stack-jobs"
    job = boto3.client("batch").describe_jobs(jobs=record["batches"][0]["batch_job_ids"])["jobs"][0]
    assert job["jobQueue"].endswith(batch_resources["queue"])

    missing = sweep("hydra.launcher.stack_name=no-such-stack", settings=False)
    assert missing.returncode == 1 and "stack 'no-such-stack' not found" in missing.stderr




def test_status_and_attach_bring_back_what_the_jobs_made(sweep, app, aws_env):
    assert sweep("hydra.launcher.wait=false").returncode == 0
    record = manifest(app / "sweep")
    batch = boto3.client("batch")
    for job in record["jobs"]:  # the containers' part: moto's no-container Batch runs nothing
        described = batch.describe_jobs(jobs=[job["job_id"]])["jobs"][0]
        assert run_like_a_container(described, aws_env).returncode == 0

    status = cli("status", "sweep", env=aws_env, cwd=app)
    assert status.returncode == 0 and status.stdout.count("SUCCEEDED") == 3, status.stdout + status.stderr

    attach = cli("attach", "sweep", env=aws_env, cwd=app)
    assert attach.returncode == 0, attach.stdout + attach.stderr
    assert "3 jobs completed, 0 failed" in attach.stdout
    assert [j["result"] for j in manifest(app / "sweep")["jobs"]] == ["10", "20", "30"]
    for num in range(3):
        job_dir = app / "sweep" / str(num)
        assert f"job x={num + 1}" in (job_dir / "my_app.log").read_text()
        assert (job_dir / ".hydra/overrides.yaml").read_text().strip() == f"- +x={num + 1}"


def test_status_of_a_warm_sweep_whose_launcher_died_shows_its_trials_stopped(app, aws_env, batch_resources):
    """Warm workers stop within a minute of their launcher: a warm sweep whose launcher was killed shows its
    unfinished trials STOPPED, not RUNNING for ever, and says how to go on."""
    import os
    import signal

    cmd = [sys.executable, "my_app.py", "-m", "+x=1,2,3", "hydra/launcher=aws_batch", "hydra.sweep.dir=sweep",
           "hydra.launcher.poll_interval_s=0.1", "hydra.launcher.workers=2",
           f"hydra.launcher.job_queue={batch_resources['queue']}",
           f"hydra.launcher.job_definition={batch_resources['job_definition']}",
           f"hydra.launcher.staging_uri={batch_resources['staging']}"]
    proc = subprocess.Popen(cmd, cwd=app, env=aws_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # moto's no-container Batch runs no worker: the trials wait
        assert wait_for(lambda: (app / "sweep/manifest.json").is_file() and manifest(app / "sweep")["jobs"],
                        timeout=120)
        running = cli("status", "sweep", env=aws_env, cwd=app)
        assert "STOPPED" not in running.stdout, running.stdout + running.stderr
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    status = cli("status", "sweep", env=aws_env, cwd=app)
    assert status.returncode == 0 and status.stdout.count("STOPPED") == 3 + 1, status.stdout + status.stderr
    assert "were running on warm workers when the sweep's launching process ended" in status.stdout
    assert "starts the sweep anew: all 3 jobs run again, the 0 completed ones included" in status.stdout


def test_status_measures_each_interval_on_one_clock(sweep, app, aws_env, tmp_path):
    """A launcher's machine whose clock is an hour behind (its Python's time.time, as a wrong system clock makes
    it) launches on Batch, whose clock is right; status on that machine shows where each job's time went in
    seconds, not "waiting 3600.0s": waiting is measured on Batch's clock, ending's launcher part on the
    launcher's."""
    import os
    import re

    behind = tmp_path / "clock-behind"
    behind.mkdir()
    (behind / "sitecustomize.py").write_text("import time\n_now = time.time\ntime.time = lambda: _now() - 3600\n")
    launcher_env = dict(aws_env, PYTHONPATH=os.pathsep.join(filter(None, [str(behind), aws_env.get("PYTHONPATH")])))
    assert sweep("hydra.launcher.wait=false", values="1", env=launcher_env).returncode == 0
    batch = boto3.client("batch")
    for job in manifest(app / "sweep")["jobs"]:  # the container's clock is Batch's
        assert run_like_a_container(batch.describe_jobs(jobs=[job["job_id"]])["jobs"][0], aws_env).returncode == 0
    assert cli("attach", "sweep", env=launcher_env, cwd=app).returncode == 0
    status = cli("status", "sweep", env=launcher_env, cwd=app)
    spans = dict(re.findall(r"\b(waiting|starting|task|ending) (-?[\d.]+)s", status.stdout))
    assert set(spans) == {"waiting", "starting", "task", "ending"}, status.stdout
    assert all(float(seconds) < 120 for seconds in spans.values()), status.stdout


def test_attach_does_not_count_a_job_staged_but_never_heard_submitted(sweep, app, aws_env):
    """A launcher killed after it recorded a batch and before Batch's answer came leaves a job with no job id:
    attach follows the others and says what to do about it, instead of counting it completed."""
    assert sweep("hydra.launcher.wait=false", values="1,2").returncode == 0
    batch = boto3.client("batch")
    for job in manifest(app / "sweep")["jobs"]:
        assert run_like_a_container(batch.describe_jobs(jobs=[job["job_id"]])["jobs"][0], aws_env).returncode == 0
    path = app / "sweep" / "manifest.json"
    record = json.loads(path.read_text())  # what a launcher killed between recording and hearing leaves
    record["jobs"].append({"num": 2, "overrides": ["+x=3"], "subdir": "2", "state": "STAGED"})
    record["batches"].append({"first": 2, "size": 1, "payload_uri": record["batches"][-1]["payload_uri"],
                              "staged_at": time.time()})
    path.write_text(json.dumps(record))

    attach = cli("attach", "sweep", env=aws_env, cwd=app)
    assert attach.returncode == 1, attach.stdout + attach.stderr
    assert "2 jobs completed, 0 failed" in attach.stdout, attach.stdout
    assert "1 jobs were staged but not known to be submitted" in attach.stdout
    # Hydra's basic sweeper does not resume: a rerun runs every job again, which the advice says (not "run the
    # sweep again, which submits the others")
    assert "Running the same command again starts the sweep anew: all 3 jobs run again, the 2 completed ones " \
           "included" in attach.stdout, attach.stdout
    assert "launch them by their overrides, e.g. +x=3" in attach.stdout
    (app / "sweep" / "thompson_state.json").write_text('{"trials": []}')  # a thompson sweep resumes instead
    attach = cli("attach", "sweep", env=aws_env, cwd=app)
    assert "Run the same command again: the thompson sweeper resumes this sweep, follows the jobs that went out " \
           "on Batch and runs only the trials that did not end" in attach.stdout, attach.stdout
    assert "starts the sweep anew" not in attach.stdout


def test_a_job_without_a_result_says_why_and_shows_its_log_tail(sweep, app, aws_env, monkeypatch):
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # the server runs in this process
    assert sweep("hydra.launcher.wait=false", values="1,2").returncode == 0
    batch, logs = boto3.client("batch"), boto3.client("logs")
    try:
        logs.create_log_group(logGroupName="/aws/batch/job")
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now = int(time.time() * 1000)  # CloudWatch refuses events older than 14 days
    for job in manifest(app / "sweep")["jobs"]:
        batch.terminate_job(jobId=job["job_id"], reason="Host EC2 (instance i-0abc) terminated.")
        stream = batch.describe_jobs(jobs=[job["job_id"]])["jobs"][0]["container"]["logStreamName"]
        logs.create_log_stream(logGroupName="/aws/batch/job", logStreamName=stream)
        logs.put_log_events(logGroupName="/aws/batch/job", logStreamName=stream, logEvents=[
            {"timestamp": now + i, "message": f"log line {i}"} for i in range(1, 61)])

    attach = cli("attach", "sweep", env=aws_env, cwd=app)
    output = attach.stdout + attach.stderr
    assert attach.returncode == 1, output
    assert "job #1 ended without a result" in output
    assert "statusReason: Host EC2 (instance i-0abc) terminated." in output
    assert "Last 50 lines of /aws/batch/job/" in output and "log line 60" in output, output
    assert "log line 11" in output and "log line 10\n" not in output
    assert [j["state"] for j in manifest(app / "sweep")["jobs"]] == ["FAILED", "FAILED"]

    tail = cli("logs", "sweep", "1", "-n", "5", env=aws_env, cwd=app)
    assert tail.returncode == 0 and tail.stdout.splitlines() == [f"log line {i}" for i in range(56, 61)]
    assert "Found credentials" not in tail.stderr  # botocore's INFO lines stay out
    follow = cli("logs", "sweep", "1", "-n", "5", "-f", env=aws_env, cwd=app)  # the job ended: its tail, and done
    assert follow.returncode == 0 and follow.stdout.splitlines() == [f"log line {i}" for i in range(56, 61)]


def test_cli_names_a_missing_manifest(tmp_path, aws_env):
    proc = cli("status", str(tmp_path), env=aws_env, cwd=tmp_path)
    assert proc.returncode != 0 and "no sweep manifest at" in proc.stderr


class CallCounter:
    """Counts Batch API calls per operation with botocore's event hooks; throttles every `throttle`-th."""

    def __init__(self, api, throttle: int = 0):
        self.calls, self.throttled, self.throttle = [], 0, throttle
        api.batch.meta.events.register("before-call.batch.*", self.before_call)

    def before_call(self, model, **kwargs):
        self.calls.append(model.name)
        if self.throttle and len(self.calls) % self.throttle == 0:
            from botocore.awsrequest import AWSResponse

            self.throttled += 1
            error = {"Error": {"Code": "TooManyRequestsException", "Message": "Too Many Requests"},
                     "ResponseMetadata": {"HTTPStatusCode": 429}}
            return AWSResponse("http://throttled", 429, {}, None), error
        return None


def submit_array(api, resources, size: int) -> _batch.Array:
    (request,) = [r for _, _, r in _batch.SubmitSpec(
        "watch", resources["queue"], resources["job_definition"]).requests("s3://b/p.pkl", "s", 0, size)]
    (job_id,) = api.submit([request])
    return _batch.Array(job_id, 0, size)


def watcher(api, arrays) -> _batch.BatchExecutor:
    executor = _batch.BatchExecutor(api, poll_interval_s=0.01)
    executor.add(arrays)
    return executor


def test_watcher_calls_per_round_for_1000_children(batch_resources, aws_env):
    api = _batch.BatchApi()
    executor = watcher(api, [submit_array(api, batch_resources, 1000)])
    counter = CallCounter(api)
    per_round = []
    for _ in range(3):
        before = len(counter.calls)
        executor.poll()
        per_round.append(len(counter.calls) - before)
    assert all(s.state == "SUCCEEDED" for s in executor.jobs.values())
    assert max(per_round) <= 1000 // 100 + 2, per_round
    assert per_round[-1] == 0  # once every child has ended, a round asks nothing
    assert counter.calls.count("DescribeJobs") <= 2  # one per round while it runs: the array parent


def test_watcher_outlasts_throttling(batch_resources, aws_env):
    api = _batch.BatchApi()
    counter = CallCounter(api, throttle=3)  # submit, describe, then the third: the children's listing
    executor = watcher(api, [submit_array(api, batch_resources, 250)])
    for _ in range(20):
        states = executor.poll()
        if all(s.state in ("SUCCEEDED", "FAILED") for s in states):
            break
    assert all(s.state == "SUCCEEDED" for s in executor.jobs.values())
    assert counter.throttled >= 1


def test_job_names_are_sanitised():
    assert _batch.sanitize_job_name("my app.v2/run#1") == "my-app-v2-run-1"
    assert _batch.sanitize_job_name("__x") == "x"
    assert len(_batch.sanitize_job_name("a" * 300)) == 128


def test_local_cloud_credentials_only_for_a_loopback_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    assert _batch.loopback_endpoint() == "http://127.0.0.1:5000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://batch.eu-west-1.amazonaws.com")
    assert _batch.loopback_endpoint() is None
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert _batch.loopback_endpoint() is None
