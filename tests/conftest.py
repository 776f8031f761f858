"""Shared fixtures: the example app run as a user runs it, and a moto server on 127.0.0.1 over real HTTP."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """A HOME of the tests' own, so the app's default data cache lands there, prepared once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def app_env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return env


@pytest.fixture
def run_app(tmp_path, app_env):
    """Run `python train_model.py ARGS` in a fresh folder, as a user would; returns the finished process."""

    def run(*args: str, env: dict | None = None, check: bool = True, timeout: float = 300):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train_model.py"), *args],
            cwd=tmp_path, env=env or app_env, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"train_model.py {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return run


@pytest.fixture(scope="session")
def moto_server():
    """moto's server in a thread on a free port of 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_server, app_env, monkeypatch) -> dict:
    """Environment that points boto3 (here and in subprocesses) at the moto server with dummy credentials."""
    env = dict(app_env, AWS_ENDPOINT_URL=moto_server, **DUMMY_AWS)
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def bucket(aws_env, request) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"test-{name}-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def moto_client(endpoint: str, service: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def batch_resources(moto_server) -> dict:
    """Batch as a user's account would have it, on the moto server in its no-container mode (jobs end at
    once): an EC2 queue and job definition, a Fargate-only queue, a disabled queue, a staging bucket."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{moto_server}/moto-api/config", method="POST",
                                     data=json.dumps({"batch": {"use_docker": False}}).encode())
    urllib.request.urlopen(request).read()
    iam, ec2, batch = (moto_client(moto_server, s) for s in ("iam", "ec2", "batch"))
    role = iam.create_role(RoleName="batch-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    iam.create_instance_profile(InstanceProfileName="batch-test")
    iam.add_role_to_instance_profile(InstanceProfileName="batch-test", RoleName="batch-test")
    profile = iam.get_instance_profile(InstanceProfileName="batch-test")["InstanceProfile"]["Arn"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    network = {"subnets": subnets, "securityGroupIds": [group]}

    def compute_environment(name: str, resources: dict) -> str:
        return batch.create_compute_environment(computeEnvironmentName=name, type="MANAGED", state="ENABLED",
                                                computeResources={**resources, **network},
                                                serviceRole=role)["computeEnvironmentArn"]

    def queue(name: str, environment: str, state: str = "ENABLED") -> str:
        batch.create_job_queue(jobQueueName=name, state=state, priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}])
        return name

    ec2_env = compute_environment("test-ec2", {"type": "EC2", "minvCpus": 0, "maxvCpus": 64,
                                               "instanceTypes": ["optimal"], "instanceRole": profile})
    fargate_env = compute_environment("test-fargate", {"type": "FARGATE", "maxvCpus": 16})
    batch.register_job_definition(jobDefinitionName="test-job", type="container", containerProperties={
        "image": "hydra-awsbatch:latest", "command": ["python", "-m", "hydra_plugins.hydra_awsbatch_launcher.worker"],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}]})
    moto_client(moto_server, "s3").create_bucket(Bucket="batch-staging")
    return {"queue": queue("test-queue", ec2_env), "fargate_queue": queue("test-fargate-queue", fargate_env),
            "disabled_queue": queue("test-disabled-queue", ec2_env, state="DISABLED"),
            "job_definition": "test-job", "bucket": "batch-staging", "staging": "s3://batch-staging/staging"}
