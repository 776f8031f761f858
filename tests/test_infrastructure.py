"""template.yaml, Dockerfile and container_shell_script.sh: linted as a reviewer would, and the template
deployed into moto's CloudFormation over HTTP for both GPU conditions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
TEMPLATE = ROOT / "template.yaml"
LINT_VENV = ROOT / ".venv-lint"


@pytest.fixture(scope="session")
def lint_bin() -> Path:
    """cfn-lint, checkov and hadolint, in a virtual environment of their own (made on first use)."""
    bin_dir = LINT_VENV / "bin"
    if not all((bin_dir / tool).exists() for tool in ("cfn-lint", "checkov", "hadolint")):
        subprocess.run([sys.executable, "-m", "venv", str(LINT_VENV)], check=True)
        subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "-r",
                        str(ROOT / "requirements-lint.txt")], check=True, timeout=900)
    return bin_dir


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, BC_SKIP_MAPPING="TRUE"))


def test_cfn_lint_has_no_errors_or_warnings(lint_bin):
    proc = run(str(lint_bin / "cfn-lint"), "template.yaml")
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("target", ["template.yaml", "Dockerfile"])
def test_checkov_fails_nothing_and_every_skip_says_why(lint_bin, target):
    proc = run(str(lint_bin / "checkov"), "-f", target, "--skip-download", "--output", "json")
    report = json.loads(proc.stdout)
    results = report["results"]
    assert results["failed_checks"] == [], [c["check_id"] for c in results["failed_checks"]]
    assert report["summary"]["passed"] > 20
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} is skipped without a reason"


def test_hadolint_is_clean(lint_bin):
    proc = run(str(lint_bin / "hadolint"), "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_is_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: apt-get install shellcheck (.ci/run does)"
    proc = run(shellcheck, "container_shell_script.sh", "tools/newest.sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- the template
class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref x -> {"Ref": x}, !Sub s -> {"Fn::Sub": s}, ...)."""


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        return {name: value.split(".", 1) if suffix == "GetAtt" else value}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def statements(role: dict) -> list[dict]:
    return [s for policy in role["Properties"].get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]


def test_job_role_reaches_only_this_bucket(template):
    role = template["Resources"]["JobRole"]
    assert "ManagedPolicyArns" not in role["Properties"]
    resources = [s["Resource"] for s in statements(role)]
    assert resources == [{"Fn::Sub": "${Bucket.Arn}/*"}, {"Fn::GetAtt": ["Bucket", "Arn"]}]
    actions = {a for s in statements(role) for a in s["Action"]}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:GetBucketLocation"}


def test_no_full_access_and_no_wildcard_where_a_resource_can_be_named(template):
    text = TEMPLATE.read_text()
    assert "FullAccess" not in text and "AWSBatchServiceRole" not in text
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for statement in statements(resource):
            if statement["Resource"] == "*":  # only what takes no resource-level permission
                assert statement["Action"] == "ecr:GetAuthorizationToken", (name, statement)
    instance = template["Resources"]["InstanceRole"]["Properties"]["ManagedPolicyArns"]
    assert instance == [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                                    "AmazonEC2ContainerServiceforEC2Role"}]


def test_retry_strategy_matches_the_launchers(template):
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    jobdef = template["Resources"]["JobDefinition"]["Properties"]
    launcher = _batch.retry_strategy(3)["evaluateOnExit"]
    ours = [{k[0].lower() + k[1:]: v for k, v in rule.items()} for rule in jobdef["RetryStrategy"]["EvaluateOnExit"]]
    assert ours == launcher
    assert jobdef["ContainerProperties"]["Command"] == _batch.WORKER_COMMAND
    assert jobdef["Timeout"] == {"AttemptDurationSeconds": {"Ref": "JobTimeoutSeconds"}}
    assert template["Parameters"]["JobTimeoutSeconds"]["Default"] == 86400


def test_bucket_blocks_public_access_and_plain_http(template):
    bucket = template["Resources"]["Bucket"]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                                        "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    (statement,) = template["Resources"]["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_staging_expires_but_checkpoints_do_not(template):
    rules = template["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = {r.get("Prefix") for r in rules if "ExpirationInDays" in r}
    assert expiring == {"code/", "sweeps/"}


# ------------------------------------------------------------------------------------- deployed into moto
@pytest.fixture(scope="module")
def deploy(moto_server):
    """Deploy template.yaml into moto's CloudFormation; returns its outputs."""
    from tests.moto_batch import moto_client

    cloudformation, iam = moto_client(moto_server, "cloudformation"), moto_client(moto_server, "iam")
    from hydra_plugins.hydra_awsbatch_launcher._local_cloud import batch_service_role

    service_role = batch_service_role(iam)

    def create(name: str, **parameters: str) -> dict:
        # UseMultiNode=false: plain moto's CloudFormation cannot create a multinode job definition
        # (test_moto_cannot_deploy_the_multinode_parts_yet); the local cloud's server can (_moto_server.py).
        params = {"EnvironmentName": name, "ServiceRoleArn": service_role, "UseMultiNode": "false", **parameters}
        cloudformation.create_stack(StackName=name, TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_IAM"],
                                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}

    return create


@pytest.mark.parametrize("gpu", [False, True], ids=["gpu-off", "gpu-on"])
def test_template_deploys_a_usable_batch(deploy, aws_env, gpu):
    name = "stack-gpu" if gpu else "stack-cpu"
    outputs = deploy(name, **({"GpuInstanceTypes": "g5.xlarge,g5.2xlarge"} if gpu else {}))
    assert {"JobQueue", "JobDefinition", "Bucket", "StagingUri", "RepositoryUri", "LogGroup"} <= set(outputs)
    assert ("GpuJobQueue" in outputs) == gpu
    assert not {"MultiNodeJobQueue", "MultiNodeJobDefinition"} & set(outputs)  # UseMultiNode=false leaves them out
    batch, s3 = boto3.client("batch"), boto3.client("s3")

    queues = [outputs["JobQueue"], *([outputs["GpuJobQueue"]] if gpu else [])]
    for queue in batch.describe_job_queues(jobQueues=queues)["jobQueues"]:
        assert (queue["state"], queue["status"]) == ("ENABLED", "VALID")
    (main_queue,) = batch.describe_job_queues(jobQueues=[outputs["JobQueue"]])["jobQueues"]
    order = sorted(main_queue["computeEnvironmentOrder"], key=lambda o: o["order"])
    environments = batch.describe_compute_environments(
        computeEnvironments=[o["computeEnvironment"] for o in order])["computeEnvironments"]
    kinds = {e["computeEnvironmentArn"]: e["computeResources"]["type"] for e in environments}
    assert [kinds[o["computeEnvironment"]] for o in order] == ["SPOT", "EC2"]  # Spot first
    assert all(e["computeResources"]["minvCpus"] == 0 for e in environments)

    (jobdef,) = batch.describe_job_definitions(jobDefinitions=[outputs["JobDefinition"]])["jobDefinitions"]
    assert jobdef["status"] == "ACTIVE"
    assert jobdef["retryStrategy"]["attempts"] == 3
    assert {"onExitCode": "75", "action": "retry"} in [dict(r, action=r["action"].lower())
                                                      for r in jobdef["retryStrategy"]["evaluateOnExit"]]
    # moto's CloudFormation reads the job definition's timeout from a lowercase "timeout" key and so drops
    # CloudFormation's "Timeout"; the template's own value is checked in test_retry_strategy_matches_the_launchers.
    assert jobdef["containerProperties"]["image"] == f"{outputs['RepositoryUri']}:latest"

    bucket = outputs["Bucket"]
    assert outputs["StagingUri"] == f"s3://{bucket}"
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # moto's CloudFormation applies a bucket's encryption but not its PublicAccessBlockConfiguration (nor
    # AWS::S3::BucketPolicy); those are checked in the template: test_bucket_blocks_public_access_and_plain_http.


# ------------------------------------------------------------------------------------------- multi-node trials
MULTI_NODE = ["MultiNodeSecurityGroup", "MultiNodeIngressFromPeers", "MultiNodeEgressToPeers", "ClusterPlacementGroup",
              "MultiNodeComputeEnvironment", "MultiNodeJobQueue", "MultiNodeJobDefinition"]


def _if(value, condition: str) -> tuple:
    """The (true, false) branches of `!If [condition, a, b]`; a plain value is both."""
    if isinstance(value, dict) and "Fn::If" in value:
        assert value["Fn::If"][0] == condition, value
        return value["Fn::If"][1], value["Fn::If"][2]
    return value, value


def test_multinode_job_definition_runs_the_single_node_container_on_every_node(template):
    single = template["Resources"]["JobDefinition"]["Properties"]
    multi = template["Resources"]["MultiNodeJobDefinition"]["Properties"]
    assert multi["Type"] == "multinode" and multi["PlatformCapabilities"] == ["EC2"]  # no Fargate
    nodes = multi["NodeProperties"]
    assert nodes["MainNode"] == 0
    assert nodes["NumNodes"] == {"Ref": "MultiNodeNumNodes"}
    assert template["Parameters"]["MultiNodeNumNodes"]["Default"] == 2
    (group,) = nodes["NodeRangeProperties"]
    assert group["TargetNodes"] == "0:"  # every node, however many a submission asks for
    node, container = group["Container"], single["ContainerProperties"]
    for key in ("Image", "Command", "JobRoleArn", "ExecutionRoleArn", "LogConfiguration", "Privileged",
                "ReadonlyRootFilesystem"):
        assert node[key] == container[key], key
    assert node["Image"] == {"Fn::Sub": "${Repository.RepositoryUri}:${ImageTag}"}
    assert node["JobRoleArn"] == {"Fn::GetAtt": ["JobRole", "Arn"]}
    with_gpus, without = _if(node["ResourceRequirements"], "HasGpu")
    assert without == container["ResourceRequirements"]
    assert with_gpus == [*container["ResourceRequirements"], {"Type": "GPU", "Value": {"Ref": "MultiNodeGpusPerNode"}}]
    for key in ("RetryStrategy", "Timeout", "PropagateTags"):
        assert multi[key] == single[key], key


def test_multinode_compute_environment_is_on_demand_ec2_in_a_cluster_placement_group(template):
    resources = template["Resources"]
    environment = resources["MultiNodeComputeEnvironment"]["Properties"]
    compute = environment["ComputeResources"]
    assert environment["Type"] == "MANAGED"
    assert compute["Type"] == "EC2"  # On-Demand: Batch runs no multi-node job on SPOT or FARGATE
    assert "BidPercentage" not in compute and "SpotIamFleetRole" not in compute
    group = compute["PlacementGroup"]["Ref"]
    assert resources[group]["Type"] == "AWS::EC2::PlacementGroup"
    assert resources[group]["Properties"]["Strategy"] == "cluster"
    for subnets in _if(compute["Subnets"], "Private"):  # a cluster placement group lives in one Availability Zone
        assert len(subnets) == 1, subnets
    assert compute["MinvCpus"] == 0 and compute["MaxvCpus"] == {"Ref": "MultiNodeMaxVcpus"}
    gpu_types, cpu_types = _if(compute["InstanceTypes"], "HasGpu")
    assert gpu_types == {"Fn::Split": [",", {"Ref": "GpuInstanceTypes"}]}
    assert cpu_types == {"Fn::Split": [",", {"Ref": "CpuInstanceTypes"}]}
    assert _if(compute["Ec2Configuration"], "HasGpu")[0] == [{"ImageType": "ECS_AL2_NVIDIA"}]
    # Its own queue, and the Spot-first queue does not reach it.
    queue = resources["MultiNodeJobQueue"]["Properties"]
    (order,) = queue["ComputeEnvironmentOrder"]
    assert order == {"Order": 1, "ComputeEnvironment": {"Ref": "MultiNodeComputeEnvironment"}}
    assert "MultiNodeComputeEnvironment" not in json.dumps(resources["JobQueue"])
    assert queue["JobStateTimeLimitActions"] == resources["JobQueue"]["Properties"]["JobStateTimeLimitActions"]


def test_multinode_nodes_reach_each_other_and_nothing_else_reaches_them(template):
    resources = template["Resources"]
    group = {"Fn::GetAtt": ["MultiNodeSecurityGroup", "GroupId"]}
    ingress = resources["MultiNodeIngressFromPeers"]
    assert ingress["Type"] == "AWS::EC2::SecurityGroupIngress"
    assert ingress["Properties"]["GroupId"] == ingress["Properties"]["SourceSecurityGroupId"] == group
    assert ingress["Properties"]["IpProtocol"] == "-1"  # torchrun's rendezvous and NCCL pick their ports
    egress = resources["MultiNodeEgressToPeers"]
    assert egress["Type"] == "AWS::EC2::SecurityGroupEgress"
    assert egress["Properties"]["GroupId"] == egress["Properties"]["DestinationSecurityGroupId"] == group
    # No other way in: no inline ingress and no other ingress resource names either group.
    assert "SecurityGroupIngress" not in resources["MultiNodeSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in resources["JobSecurityGroup"]["Properties"]
    ingresses = [n for n, r in resources.items() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert ingresses == ["MultiNodeIngressFromPeers"]
    compute = resources["MultiNodeComputeEnvironment"]["Properties"]["ComputeResources"]
    assert compute["SecurityGroupIds"] == [{"Ref": "MultiNodeSecurityGroup"}]


def test_multinode_outputs_name_the_queue_and_job_definition(template):
    outputs, resources = template["Outputs"], template["Resources"]
    for name in ("MultiNodeJobQueue", "MultiNodeJobDefinition"):
        assert outputs[name]["Value"] == {"Ref": name}
        assert outputs[name]["Condition"] == "HasMultiNode" and outputs[name]["Description"]
    for name in MULTI_NODE:  # UseMultiNode=false leaves out every part, and only those
        assert resources[name].get("Condition") == "HasMultiNode", name
    assert template["Parameters"]["UseMultiNode"]["Default"] == "true"
    assert sorted(n for n, r in resources.items() if r.get("Condition") == "HasMultiNode") == sorted(MULTI_NODE)


@pytest.mark.xfail(strict=True, reason="moto 5.2.5's CloudFormation registers every AWS::Batch::JobDefinition as "
                   "type container (it ignores Type) and so refuses NodeProperties without ContainerProperties "
                   "('containerProperties or eksProperties must be provided'); it also skips "
                   "AWS::EC2::PlacementGroup and AWS::EC2::SecurityGroupEgress. The local cloud's server patches "
                   "the first (_moto_server.py); when this passes, that patch can go.")
def test_moto_cannot_deploy_the_multinode_parts_yet():
    """On a moto server of its own, so a half-made stack is left in no other test's way."""
    from hydra_plugins.hydra_awsbatch_launcher._local_cloud import batch_service_role
    from tests.moto_batch import moto_client, start_moto_server

    server, endpoint = start_moto_server()
    try:
        cloudformation = moto_client(endpoint, "cloudformation")
        params = {"EnvironmentName": "stack-mnp", "ServiceRoleArn": batch_service_role(moto_client(endpoint, "iam")),
                  "UseMultiNode": "true"}
        cloudformation.create_stack(StackName="stack-mnp", TemplateBody=TEMPLATE.read_text(),
                                    Capabilities=["CAPABILITY_IAM"],
                                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
        stack = cloudformation.describe_stacks(StackName="stack-mnp")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        batch = moto_client(endpoint, "batch")
        (jobdef,) = batch.describe_job_definitions(jobDefinitions=[outputs["MultiNodeJobDefinition"]])["jobDefinitions"]
        assert jobdef["type"] == "multinode" and jobdef["nodeProperties"]["mainNode"] == 0
    finally:
        server.stop()


def test_two_local_clouds_of_one_stack_name_run_an_image_each(tmp_path):
    """Two local clouds (two checkouts, each with its own state dir) deploy stack hydra-batch on moto servers of
    their own: each job definition names its own cloud's image, so the second `up` builds a tag the first
    cloud's jobs never run (one tag for both retagged it silently, and the first cloud ran the second's code)."""
    import signal

    from hydra_plugins.hydra_awsbatch_launcher import _local_cloud

    images = {}
    for name in ("checkout-a", "checkout-b"):
        state = tmp_path / name
        state.mkdir()
        pid, endpoint = _local_cloud.start_moto(state)
        try:
            outputs, image = _local_cloud.deploy(endpoint, _local_cloud.STACK, state)
            batch = _local_cloud.client(endpoint, "batch")
            (jobdef,) = batch.describe_job_definitions(jobDefinitions=[outputs["JobDefinition"]])["jobDefinitions"]
            images[name] = (image, jobdef["containerProperties"]["image"])
        finally:
            os.kill(pid, signal.SIGTERM)
    (image_a, used_a), (image_b, used_b) = images.values()
    assert image_a == used_a and image_b == used_b  # what up builds is what the cloud's jobs run
    assert image_a != image_b and image_a.rsplit(":", 1)[0] == image_b.rsplit(":", 1)[0]  # one repository
    assert _local_cloud.image_tag(tmp_path / "checkout-a") == image_a.rsplit(":", 1)[1]  # the same cloud, again
