"""Resources per config (issue 39): hydra.launcher's vcpus, memory_mib, gpus, job_queue... read from each job's own
config, resolved per job; one array per resource set on Batch (moto's server), local processes per set on
aws_batch_local, a warm pool per set, and what cannot be met refused naming the job before anything is staged."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import boto3
import pytest

from hydra_plugins.hydra_awsbatch_launcher import _batch, _resources
from tests.conftest import cli, manifest

# A small app with a config group whose options ask different resources: `size=small,large`.
APP = """
    import os

    import hydra

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def main(cfg):
        return {"loss": (cfg.x - 0.3) ** 2, "x": cfg.x, "size": cfg.size.name,
                "threads": os.environ.get("OMP_NUM_THREADS")}

    if __name__ == "__main__":
        main()
"""
CONFIG = "defaults:\n  - size: small\n  - _self_\nx: 0\n"
SIZES = {"small": "name: small\nvcpus: 1\nmemory_mib: 1024\ngpus: 0\nqueue: null\n",
         "large": "name: large\nvcpus: 2\nmemory_mib: 4096\ngpus: 1\nqueue: null\n"}
PER_SIZE = ["hydra.launcher.vcpus=${size.vcpus}", "hydra.launcher.memory_mib=${size.memory_mib}",
            "hydra.launcher.gpus=${size.gpus}"]


@pytest.fixture
def sized_app(tmp_path, app_env):
    """Write the app (sizes as given) into tmp_path/app; `run(*args, env=...)` runs `python my_app.py -m ARGS`."""
    app = tmp_path / "app"

    def run(*args: str, env: dict | None = None, sizes: dict | None = None, config: str = CONFIG):
        (app / "conf" / "size").mkdir(parents=True, exist_ok=True)
        (app / "my_app.py").write_text(textwrap.dedent(APP))
        (app / "conf" / "config.yaml").write_text(config)
        for name, text in (sizes or SIZES).items():
            (app / "conf" / "size" / f"{name}.yaml").write_text(text)
        return subprocess.run([sys.executable, "my_app.py", "-m", "hydra.sweep.dir=sweep", *args], cwd=app,
                              env=env or app_env, capture_output=True, text=True, timeout=300)

    run.app = app
    return run


# -------------------------------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_neighbours_asking_the_same_go_out_together_and_sets_gather_the_rest():
    small, large = (_resources.Resources((("gpus", g), ("vcpus", v))) for g, v in ((0, 1), (1, 4)))
    asked = [small, small, large, large, small]
    assert _resources.runs(10, asked) == [(10, 2, small), (12, 2, large), (14, 1, small)]
    assert _resources.sets(asked, range(10, 15)) == {small: [10, 11, 14], large: [12, 13]}
    assert _resources.numbers([10, 11, 14, 15, 16, 20]) == "10-11,14-16,20"
    assert _resources.Resources.of(large.as_dict()) == _resources.Resources((("vcpus", 4), ("gpus", 1)))
    assert _resources.varying([small.as_dict(), large.as_dict()]) == ["vcpus=1 gpus=0", "vcpus=4 gpus=1"]


@pytest.mark.unit
def test_gpus_asked_of_a_queue_without_gpu_instances_name_the_queue_and_its_compute():
    cpu = {"computeEnvironmentName": "cpu-ce", "computeResources": {"type": "SPOT", "instanceTypes": ["optimal"]}}
    gpu = {"computeEnvironmentName": "gpu-ce", "computeResources": {"type": "EC2", "instanceTypes": ["g5.xlarge"]}}
    (problem,) = _batch.check_gpus(1, "cpu-queue", [cpu])
    assert "job queue 'cpu-queue' has no GPU instances" in problem and "cpu-ce (optimal)" in problem
    assert _batch.check_gpus(1, "gpu-queue", [cpu, gpu]) == [] and _batch.check_gpus(0, "cpu-queue", [cpu]) == []


# ------------------------------------------------------------------------------------- aws_batch_local
@pytest.mark.integration
def test_the_example_sweep_asks_per_model_on_aws_batch_local(run_app, tmp_path, app_env):
    """model=mlp,resnet: the mlp jobs and the resnet jobs each run with what their model's config asks (GPU
    counts 0 here), as two arrays; status and the sweep page show it."""
    run_app("--multirun", "model=mlp,resnet", "lr=1e-3,1e-4", "epochs=1", "batch_size=256", "model.resources.gpus=0",
            "hydra/launcher=aws_batch_local_by_model", "hydra.sweep.dir=sweep")
    record = manifest(tmp_path / "sweep")
    asked = {j["num"]: j["resources"] for j in record["jobs"]}
    assert asked[0] == asked[1] == {"vcpus": 1, "memory_mib": 2048, "gpus": 0, "nodes": 1}
    assert asked[2] == asked[3] == {"vcpus": 4, "memory_mib": 15000, "gpus": 0, "nodes": 1}
    assert [(a["first"], a["size"]) for a in record["batches"][0]["arrays"]] == [(0, 2), (2, 2)]
    assert [j["state"] for j in record["jobs"]] == ["SUCCEEDED"] * 4
    status = cli("status", str(tmp_path / "sweep"), env=app_env).stdout
    row = next(line for line in status.splitlines() if line.split()[:1] == ["2"])
    assert "model=resnet" in row and "vcpus=4 memory_mib=15000" in row, status
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert "<th>resources</th>" in page and "vcpus=4 memory_mib=15000 gpus=0" in page


@pytest.mark.integration
def test_a_gpu_this_machine_lacks_is_refused_before_anything_runs(run_app, tmp_path, app_env):
    proc = run_app("--multirun", "model=mlp,resnet", "lr=1e-3,1e-4", "hydra/launcher=aws_batch_local_by_model",
                   "hydra.sweep.dir=sweep", env=dict(app_env, CUDA_VISIBLE_DEVICES=""), check=False)
    assert proc.returncode == 1
    assert ("job #2 (model=resnet lr=0.001) and 1 more job(s) asking the same: hydra.launcher.gpus=1 (from "
            "${model.resources.gpus}): this machine has 0 GPU(s)") in proc.stderr, proc.stderr
    assert not (tmp_path / "sweep" / ".staging").exists() and not (tmp_path / "sweep" / "manifest.json").exists()


@pytest.mark.integration
def test_a_job_whose_config_cannot_say_is_named_with_hydras_words(sized_app):
    sizes = dict(SIZES, large="name: large\nvcpus: two\nmemory_mib: 4096\n")  # no gpus, and vcpus not a number
    proc = sized_app("size=small,large", "x=1", "hydra/launcher=aws_batch_local", *PER_SIZE, sizes=sizes)
    assert proc.returncode == 1, proc.stderr
    assert "job #1 (size=large x=1): hydra.launcher.vcpus=${size.vcpus}: InterpolationValidationError" in proc.stderr
    assert "Value 'two' of type 'str' could not be converted to Float" in proc.stderr
    assert "job #1 (size=large x=1): hydra.launcher.gpus=${size.gpus}: InterpolationKeyError" in proc.stderr
    assert "job #0" not in proc.stderr and not (sized_app.app / "sweep" / "manifest.json").exists()


@pytest.mark.integration
def test_each_resource_set_keeps_its_own_warm_workers(sized_app, app_env):
    """A pool per set: the small trials run on the small set's warm worker, the large ones on the large set's,
    each with the threads its vcpus ask."""
    proc = sized_app("size=small,large", "x=1,2", "hydra/launcher=aws_batch_local", *PER_SIZE,
                     "hydra.launcher.gpus=0", "hydra.launcher.workers=1")
    assert proc.returncode == 0, proc.stderr
    sweep = sized_app.app / "sweep"
    record = manifest(sweep)
    assert [j["resources"]["vcpus"] for j in record["jobs"]] == [1, 1, 2, 2]
    logs = {p.parent.name: p.read_text() for p in (sweep / ".logs").glob("workers*/*.log")}
    assert sorted(logs) == ["workers", "workers-1"], logs  # worker 0 of each pool
    small, large = (next(text for text in logs.values() if f"trial {n} starts" in text) for n in (0, 2))
    assert "trial 1 starts" in small and "trial 3 starts" in large and small != large
    results = [j["result"] for j in record["jobs"]]
    assert "'threads': '1'" in results[0] and "'threads': '2'" in results[2], results
    shown = cli("logs", "sweep", "3", env=app_env, cwd=sized_app.app)  # a trial of the second set's pool: its own lines
    assert shown.returncode == 0 and "trial 3 starts" in shown.stdout and "trial 2 starts" not in shown.stdout, (
        shown.stdout + shown.stderr)


@pytest.mark.integration
def test_thompson_searches_a_choice_that_changes_resources_each_trial_on_its_own_pool(sized_app):
    proc = sized_app("hydra/sweeper=thompson", "size=choice(small,large)", "x=interval(0,1)",
                     "hydra.sweeper.objective=loss", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_workers=2",
                     "hydra.sweeper.n_initial=4", "hydra/launcher=aws_batch_local", *PER_SIZE, "hydra.launcher.gpus=0",
                     "hydra.launcher.workers=1")
    assert proc.returncode == 0, proc.stderr
    sweep = sized_app.app / "sweep"
    jobs = manifest(sweep)["jobs"]
    assert len(jobs) == 6 and {j["state"] for j in jobs} == {"SUCCEEDED"}
    size = {j["num"]: "large" if "size=large" in j["overrides"] else "small" for j in jobs}
    assert all(j["resources"]["vcpus"] == (2 if size[j["num"]] == "large" else 1) for j in jobs), jobs
    for log in (sweep / ".logs").glob("workers*/*.log"):  # a warm worker serves one resource set
        ran = {int(n) for n in re.findall(r"trial (\d+) starts", log.read_text())}
        assert len({size[n] for n in ran}) == 1, (log, ran, size)


# ----------------------------------------------------------------------------------- aws_batch on moto
@pytest.fixture
def on_batch(sized_app, aws_env, batch_resources):
    """The sized app on aws_batch against moto; each size on a queue of its own (`large` asks a GPU)."""
    base = ["hydra/launcher=aws_batch", "hydra.launcher.poll_interval_s=0.1",
            f"hydra.launcher.job_definition={batch_resources['job_definition']}",
            f"hydra.launcher.staging_uri={batch_resources['staging']}", "hydra.launcher.job_queue=${size.queue}",
            *PER_SIZE]
    sizes = {"small": SIZES["small"].replace("queue: null", f"queue: {batch_resources['queue']}"),
             "large": SIZES["large"].replace("queue: null", f"queue: {batch_resources['gpu_queue']}")}
    def run(*args: str, sizes: dict = sizes, config: str = CONFIG):
        return sized_app(*base, *args, env=aws_env, sizes=sizes, config=config)

    run.app = sized_app.app
    return run


def in_queues(resources) -> int:
    client = boto3.client("batch")
    return sum(len(client.list_jobs(jobQueue=q, jobStatus=s)["jobSummaryList"])
               for q in (resources["queue"], resources["gpu_queue"]) for s in ("SUBMITTED", "SUCCEEDED", "FAILED"))


def staged(resources) -> list[str]:
    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=resources["bucket"]).get("Contents", [])]


@pytest.mark.integration
def test_a_dry_run_lists_the_resource_sets_and_a_request_per_set(on_batch, batch_resources):
    jobs, objects = in_queues(batch_resources), staged(batch_resources)
    proc = on_batch("size=small,large", "x=1,2", "hydra.launcher.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    assert "Resource sets (dry run, nothing submitted): 2" in proc.stdout
    assert f"2 job(s) #2-3: vcpus=2 memory_mib=4096 gpus=1 nodes=1 job_queue={batch_resources['gpu_queue']}" in (
        proc.stdout)
    texts = proc.stdout.split("SubmitJob request (dry run, nothing submitted):\n")[1:]
    requests = [json.JSONDecoder().raw_decode(text)[0] for text in texts]
    assert [r["jobQueue"] for r in requests] == [batch_resources["queue"], batch_resources["gpu_queue"]]
    assert [r["containerOverrides"]["resourceRequirements"] for r in requests] == [
        [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "1024"}, {"type": "GPU", "value": "0"}],
        [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "4096"}, {"type": "GPU", "value": "1"}]]
    offsets = [{e["name"]: e["value"] for e in r["containerOverrides"]["environment"]}["HYDRA_AWSBATCH_INDEX_OFFSET"]
               for r in requests]
    assert offsets == ["0", "2"] and [r["arrayProperties"]["size"] for r in requests] == [2, 2]
    assert in_queues(batch_resources) == jobs and staged(batch_resources) == objects


@pytest.mark.integration
def test_a_gpu_job_on_a_queue_without_gpus_is_refused_naming_both_before_staging(on_batch, batch_resources):
    jobs, objects = in_queues(batch_resources), staged(batch_resources)
    cpu_only = {"small": SIZES["small"].replace("queue: null", f"queue: {batch_resources['queue']}"),
                "large": SIZES["large"].replace("queue: null", f"queue: {batch_resources['queue']}")}
    proc = on_batch("size=small,large", "x=1,2", sizes=cpu_only)
    assert proc.returncode == 1
    assert (f"job #2 (size=large x=1) and 1 more job(s) asking the same: hydra.launcher.gpus=1 (from ${{size.gpus}}):"
            f" job queue '{batch_resources['queue']}' has no GPU instances") in proc.stderr, proc.stderr
    assert "job #0" not in proc.stderr
    assert in_queues(batch_resources) == jobs and staged(batch_resources) == objects


def as_submitted(endpoint: str, job_ids: list[str]) -> list[dict]:
    """The containerOverrides moto's server at `endpoint` (the local cloud's, a process of its own) took for these
    jobs (its DescribeJobs shows the job definition's resources, not those asked), read from its state dump: the
    resources asked, by type."""
    import urllib.request

    jobs = {j["job_id"]: j for j in json.loads(urllib.request.urlopen(f"{endpoint}/moto-api/data.json",
                                                                      timeout=120).read())["batch"]["Job"]}
    return [asked(jobs[i]["container_overrides"]) for i in job_ids]


def asked(container_overrides: dict) -> dict:
    """A job's containerOverrides' resource requirements, by type."""
    return {r["type"]: r["value"] for r in container_overrides.get("resourceRequirements", [])}


def as_submitted_here(job_ids: list[str]) -> list[dict]:
    """The containerOverrides moto's server (in this process: tests/moto_batch.py) took for these jobs over HTTP
    (its DescribeJobs shows the job definition's resources, not those asked): the resources asked, by type. Read
    from its Batch backend, job by job (its /moto-api/data.json dump takes minutes once a session's tests have
    submitted a 10,000-job array)."""
    from moto.batch.models import batch_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    def job(job_id: str):
        return next(found for backend in batch_backends[DEFAULT_ACCOUNT_ID].values()
                    for found in [backend.get_job_by_id(job_id)] if found is not None)

    return [asked(job(i).container_overrides) for i in job_ids]


@pytest.mark.integration
def test_each_resource_set_is_one_array_with_what_its_configs_asked(on_batch, batch_resources):
    proc = on_batch("size=small,large", "x=1,2", "hydra.launcher.wait=false")
    assert proc.returncode == 0, proc.stderr
    record = manifest(on_batch.app / "sweep")
    arrays = record["batches"][0]["arrays"]
    assert [(a["first"], a["size"]) for a in arrays] == [(0, 2), (2, 2)]
    described = boto3.client("batch").describe_jobs(jobs=[a["job_id"] for a in arrays])["jobs"]
    assert [j["arrayProperties"]["size"] for j in described] == [2, 2]
    assert [j["jobQueue"].rsplit("/", 1)[-1] for j in described] == [batch_resources["queue"],
                                                                      batch_resources["gpu_queue"]]
    assert as_submitted_here([a["job_id"] for a in arrays]) == [
        {"VCPU": "1", "MEMORY": "1024", "GPU": "0"}, {"VCPU": "2", "MEMORY": "4096", "GPU": "1"}]
    assert [j["resources"]["gpus"] for j in record["jobs"]] == [0, 0, 1, 1]


@pytest.mark.integration
@pytest.mark.parametrize("default", ["small", "large"])
def test_a_configs_queue_may_name_the_stacks_output(on_batch, batch_resources, default):
    """`queue: GpuJobQueue` in the large size's config: the stack's GPU queue; `null`: the stack's JobQueue, not the
    queue of the primary config's default size (Hydra resolves the launcher's options against it)."""
    import secrets

    stack = f"resources-{secrets.token_hex(3)}"
    outputs = {"JobQueue": batch_resources["queue"], "GpuJobQueue": batch_resources["gpu_queue"]}
    boto3.client("cloudformation").create_stack(StackName=stack, TemplateBody=json.dumps({
        "Resources": {"Nothing": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()}}))
    sizes = {"small": SIZES["small"], "large": SIZES["large"].replace("queue: null", "queue: GpuJobQueue")}
    proc = on_batch("size=small,large", "x=1", f"hydra.launcher.stack_name={stack}", "hydra.launcher.dry_run=true",
                    sizes=sizes, config=CONFIG.replace("size: small", f"size: {default}"))
    assert proc.returncode == 0, proc.stderr
    texts = proc.stdout.split("SubmitJob request (dry run, nothing submitted):\n")[1:]
    queues = [json.JSONDecoder().raw_decode(text)[0]["jobQueue"] for text in texts]
    assert queues == [batch_resources["queue"], batch_resources["gpu_queue"]]


@pytest.mark.integration
def test_a_value_override_that_an_option_reads_is_resolved_per_job(sized_app):
    """Not per config group alone: `hydra.launcher.vcpus=${x}` with x=1,2 gives each job its own vCPUs (threads,
    here), one set each."""
    proc = sized_app("x=1,2", "hydra/launcher=aws_batch_local", "hydra.launcher.vcpus=${x}",
                     "hydra.launcher.max_parallel=1")  # one job at a time: each may have every CPU
    assert proc.returncode == 0, proc.stderr
    record = manifest(sized_app.app / "sweep")
    assert [j["resources"]["vcpus"] for j in record["jobs"]] == [1, 2]
    assert [(a["first"], a["size"]) for a in record["batches"][0]["arrays"]] == [(0, 1), (1, 1)]
    assert "'threads': '1'" in record["jobs"][0]["result"] and "'threads': '2'" in record["jobs"][1]["result"]
