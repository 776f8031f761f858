"""A user's AWS Batch account, on a moto server: shared by the tests and the benchmarks."""

from __future__ import annotations

import json
import urllib.request


def moto_client(endpoint: str, service: str):
    from hydra_plugins.hydra_awsbatch_launcher._local_cloud import client

    return client(endpoint, service)


def start_moto_server():
    """moto's server in a thread on a free port of 127.0.0.1: (server, endpoint URL)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def moto_api(endpoint: str, path: str, body: dict | None = None) -> bytes:
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", method="POST",
                                     data=json.dumps(body or {}).encode())
    return urllib.request.urlopen(request).read()


def create_batch_resources(endpoint: str) -> dict:
    """moto's Batch in its no-container mode (jobs end at once), with an EC2 queue and job definition, a
    Fargate-only queue, a disabled queue, a queue of GPU instances, and a staging bucket."""
    moto_api(endpoint, "config", {"batch": {"use_docker": False}})
    iam, ec2, batch = (moto_client(endpoint, s) for s in ("iam", "ec2", "batch"))
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
    gpu_env = compute_environment("test-gpu", {"type": "EC2", "minvCpus": 0, "maxvCpus": 64,
                                               "instanceTypes": ["g4dn.xlarge"], "instanceRole": profile})
    batch.register_job_definition(jobDefinitionName="test-job", type="container", containerProperties={
        "image": "hydra-awsbatch:latest", "command": ["python", "-m", "hydra_plugins.hydra_awsbatch_launcher.worker"],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}]})
    moto_client(endpoint, "s3").create_bucket(Bucket="batch-staging")
    return {"queue": queue("test-queue", ec2_env), "fargate_queue": queue("test-fargate-queue", fargate_env),
            "disabled_queue": queue("test-disabled-queue", ec2_env, state="DISABLED"),
            "gpu_queue": queue("test-gpu-queue", gpu_env),
            "job_definition": "test-job", "bucket": "batch-staging", "staging": "s3://batch-staging/staging"}
