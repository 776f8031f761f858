"""Every AWS Batch, CloudFormation and CloudWatch Logs call of the `aws_batch` launcher, with its throttling.

S3 stays in _storage.py; this module asks it only whether the staging bucket can be written.
"""

from __future__ import annotations

import functools
import getpass
import ipaddress
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from hydra_plugins.hydra_awsbatch_launcher import _job, worker
from hydra_plugins.hydra_awsbatch_launcher._executor import JobInfo
from hydra_plugins.hydra_awsbatch_launcher._manifest import FINAL, Array, BatchState
from hydra_plugins.hydra_awsbatch_launcher.config import DEFAULT_LOG_GROUP

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")

WORKER_COMMAND = ["python", "-m", worker.MODULE]
MAX_ARRAY = 10_000  # Batch's largest array job
DESCRIBE_CHUNK = 100  # DescribeJobs takes at most 100 ids
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
FARGATE_VCPUS = (0.25, 0.5, 1, 2, 4, 8, 16)
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing"}
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")  # us-east-1, ap-southeast-2, us-gov-west-1
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 128, 256  # Batch's limits per job
# The states whose count in an array's statusSummary, when it grows, is worth listing the children for.
GROWING = (BatchState.RUNNABLE, BatchState.STARTING, BatchState.RUNNING, BatchState.SUCCEEDED, BatchState.FAILED)
STACK_OUTPUTS = {"job_queue": "JobQueue", "job_definition": "JobDefinition", "staging_uri": "StagingUri",
                 "log_group": "LogGroup"}
# hydra.launcher.nodes > 1: the stack's multi-node queue and job definition (template.yaml, UseMultiNode=true)
MULTINODE_OUTPUTS = dict(STACK_OUTPUTS, job_queue="MultiNodeJobQueue", job_definition="MultiNodeJobDefinition")


class BatchError(Exception):
    """Settings to fix before anything is submitted; one line per problem."""


def sanitize_job_name(name: str) -> str:
    """Batch's pattern: a letter or digit, then up to 127 letters, digits, - or _."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).lstrip("-_")
    return name[:128]


def loopback_endpoint() -> str | None:
    """AWS_ENDPOINT_URL when it names this machine (the local cloud), else None."""
    url = os.environ.get("AWS_ENDPOINT_URL", "")
    host = urlparse(url).hostname or ""
    try:
        return url if host == "localhost" or ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def retry_strategy(attempts: int) -> dict:
    """Retry host loss (Spot reclaim) and the app's SIGTERM exit code; give up on anything else."""
    return {"attempts": attempts, "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"},
        {"onExitCode": str(_job.EXIT_INTERRUPTED), "action": "RETRY"},
        {"onReason": "*", "action": "EXIT"},
    ]}


class BatchApi:
    def __init__(self, region: str | None = None, profile: str | None = None):
        import boto3
        from botocore.exceptions import ProfileNotFound

        self._definitions: dict = {}  # job definition name -> check_job_definition's answer
        try:
            self.session = boto3.session.Session(region_name=region, profile_name=profile)
        except ProfileNotFound as error:
            name = profile or error.kwargs.get("profile")
            variable = next((v for v in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE") if os.environ.get(v)), "AWS_PROFILE")
            setting = f"hydra.launcher.profile={profile}" if profile else f"{variable}={name} (environment)"
            raise BatchError(f"{setting}: no such profile '{name}' in ~/.aws/config or ~/.aws/credentials: fix the "
                             f"name, or run `aws configure --profile {name}`") from None

    def _client(self, service: str):
        from botocore.config import Config

        return self.session.client(service, config=Config(retries={"mode": "adaptive", "max_attempts": 10}))

    # Clients are made on first use: without a region, check_session() must get to say so first.
    batch = functools.cached_property(lambda self: self._client("batch"))
    logs = functools.cached_property(lambda self: self._client("logs"))
    cloudformation = functools.cached_property(lambda self: self._client("cloudformation"))

    # -------------------------------------------------------------------------------------- settings
    def check_session(self) -> list[str]:
        problems = []
        if self.session.get_credentials() is None:
            problems.append("no AWS credentials found: run `aws configure` or `aws sso login`, set "
                            "hydra.launcher.profile, or export AWS_PROFILE")
        region = self.session.region_name
        if not region:
            problems.append("no AWS region: set hydra.launcher.region or export AWS_DEFAULT_REGION")
        elif not REGION.match(region) and region not in self.batch_regions():
            problems.append(f"region '{region}' is not an AWS region name (like us-east-1): fix "
                            "hydra.launcher.region, AWS_DEFAULT_REGION or the profile's region")
        elif region not in self.batch_regions():
            import botocore

            problems.append(f"region '{region}' is not one where AWS Batch runs (botocore {botocore.__version__} "
                            "knows of none by that name; upgrade boto3 if AWS opened it lately): fix "
                            "hydra.launcher.region, AWS_DEFAULT_REGION or the profile's region")
        return problems

    def batch_regions(self) -> set[str]:
        """Every region of every partition (aws, aws-cn, aws-us-gov...) where botocore knows Batch runs."""
        return {region for partition in self.session.get_available_partitions()
                for region in self.session.get_available_regions("batch", partition_name=partition)}

    def outputs_of(self, stack_name: str) -> dict[str, str]:
        """The stack's outputs: OutputKey -> OutputValue (JobQueue, GpuJobQueue, JobDefinition...)."""
        from botocore.exceptions import ClientError

        try:
            stacks = self.cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        except ClientError as error:
            raise BatchError(f"stack '{stack_name}' not found ({error.response['Error']['Message']}): deploy "
                             "template.yaml or fix hydra.launcher.stack_name") from None
        return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}

    def stack_outputs(self, stack_name: str, multinode: bool = False) -> dict[str, str]:
        """The launcher settings that the stack's outputs give (job_queue, job_definition, staging_uri...);
        `multinode`: its multi-node queue and job definition."""
        outputs = self.outputs_of(stack_name)
        wanted = MULTINODE_OUTPUTS if multinode else STACK_OUTPUTS
        return {setting: outputs[key] for setting, key in wanted.items() if key in outputs}

    def check_queue(self, queue: str | None) -> tuple[list[str], list[dict]]:
        """Problems with the queue, and its compute environments."""
        if not queue:
            return ["no job queue: set hydra.launcher.job_queue or hydra.launcher.stack_name"], []
        found = self.batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
        if not found:
            return [f"job queue '{queue}' does not exist in {self.session.region_name}: fix "
                    "hydra.launcher.job_queue (or the region)"], []
        q = found[0]
        problems = []
        if q.get("state") != "ENABLED":
            problems.append(f"job queue '{queue}' is {q.get('state')}: enable it or set hydra.launcher.job_queue")
        if q.get("status") != "VALID":
            problems.append(f"job queue '{queue}' is {q.get('status')} ({q.get('statusReason', '')}): fix it "
                            "or set hydra.launcher.job_queue")
        arns = [ce["computeEnvironment"] for ce in q.get("computeEnvironmentOrder", [])]
        envs = self.batch.describe_compute_environments(computeEnvironments=arns)["computeEnvironments"] if arns else []
        return problems, envs

    def check_job_definition(self, name: str | None) -> tuple[list[str], dict | None]:
        """Problems with job definition `name`, and the revision SubmitJob takes; described once per name (the
        launcher's checks and each job's threads ask again)."""
        if name not in self._definitions:
            self._definitions[name] = self._check_job_definition(name)
        problems, found = self._definitions[name]
        return list(problems), found

    def _check_job_definition(self, name: str | None) -> tuple[list[str], dict | None]:
        if not name:
            return ["no job definition: set hydra.launcher.job_definition or hydra.launcher.stack_name"], None
        if name.startswith("arn:") or ":" in name:  # one revision
            found = self.batch.describe_job_definitions(jobDefinitions=[name])["jobDefinitions"]
        else:  # the latest ACTIVE revision, as SubmitJob takes it
            found = self.batch.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"]
        if not found:
            return [f"job definition '{name}' does not exist: fix hydra.launcher.job_definition"], None
        active = [d for d in found if d.get("status") == "ACTIVE"]
        if not active:
            return [f"job definition '{name}' is INACTIVE: register a new revision or set "
                    "hydra.launcher.job_definition"], found[0]
        return [], max(active, key=lambda d: d.get("revision", 0))

    # -------------------------------------------------------------------------------------------- submit
    def submit(self, requests: list[dict]) -> list[str]:
        return [self.batch.submit_job(**request)["jobId"] for request in requests]

    # --------------------------------------------------------------------------------------------- watch
    def describe(self, job_ids: list[str]) -> list[dict]:
        jobs = []
        for i in range(0, len(job_ids), DESCRIBE_CHUNK):
            jobs += self.batch.describe_jobs(jobs=job_ids[i:i + DESCRIBE_CHUNK])["jobs"]
        return jobs

    def children(self, array_id: str, status: str, max_results: int | None = None) -> list[dict]:
        """Summaries of the array's children in `status` (ListJobs pages of up to 1,000)."""
        return self.list_jobs(bool(max_results), arrayJobId=array_id, jobStatus=status,
                              maxResults=max_results or 1000)

    def created_since(self, queue: str, since: float) -> list[dict]:
        """Summaries of the jobs (array parents, not their children) created in `queue` since `since` (epoch
        seconds; ListJobs' AFTER_CREATED_AT filter, which lists every status)."""
        found = self.list_jobs(jobQueue=queue, maxResults=1000,
                               filters=[{"name": "AFTER_CREATED_AT", "values": [str(int(since * 1000))]}])
        return [s for s in found if ":" not in s["jobId"]]

    def list_jobs(self, first_page_only: bool = False, **kwargs) -> list[dict]:
        """ListJobs' summaries for `kwargs`, page after page (the first only, with `first_page_only`)."""
        found, token = [], None
        while True:
            page = self.batch.list_jobs(**kwargs, **({"nextToken": token} if token else {}))
            found += page.get("jobSummaryList", [])
            token = page.get("nextToken")
            if not token or first_page_only:
                return found

    def terminate(self, job_ids: list[str], reason: str) -> None:
        for job_id in job_ids:
            self.batch.terminate_job(jobId=job_id, reason=reason)

    def job_log_tail(self, job: dict, configured: str, lines: int = 50) -> tuple[str, list[str]] | None:
        """The tail of a described job's log stream, wherever it was written (the job definition's awslogs
        group, the configured one, Batch's default, where moto writes): "GROUP/STREAM" and its lines; None
        while the job has no stream."""
        attempts = job.get("attempts") or [{}]
        stream = (job.get("container", {}).get("logStreamName")
                  or attempts[-1].get("container", {}).get("logStreamName"))
        if not stream and job.get("nodeProperties") and "#" not in job["jobId"]:  # a multi-node job: its main
            main = self.describe([f"{job['jobId']}#{job['nodeProperties'].get('mainNode', 0)}"])  # node's stream
            return self.job_log_tail(main[0], configured, lines) if main else None
        if not stream:
            return None
        group, tail = self.find_log_tail(_log_groups(job, configured), stream, lines)
        return f"{group}/{stream}", tail

    def find_log_tail(self, groups: list[str], stream: str, lines: int = 50) -> tuple[str, list[str]]:
        """The first of `groups` that has the stream, and its tail."""
        for group in groups:
            tail = self.log_tail(group, stream, lines)
            if not tail or not tail[0].startswith("(no log stream"):
                return group, tail
        return groups[0], tail

    def log_tail(self, log_group: str, stream: str, lines: int = 50) -> list[str]:
        from botocore.exceptions import ClientError

        try:
            events = self.logs.get_log_events(logGroupName=log_group, logStreamName=stream, limit=lines,
                                              startFromHead=False)["events"]
        except ClientError as error:
            return [f"(no log stream {log_group}/{stream}: {error.response['Error']['Code']})"]
        return [e["message"].rstrip("\n") for e in events]


def definition_vcpus(definition: dict | None) -> float | None:
    """A job definition's vCPUs (a multi-node one's: its first node range's), or None where it names none."""
    if not definition:
        return None
    ranges = (definition.get("nodeProperties") or {}).get("nodeRangeProperties") or [{}]
    container = definition.get("containerProperties") or ranges[0].get("container") or {}
    for requirement in container.get("resourceRequirements") or []:
        if requirement.get("type") == "VCPU":
            return float(requirement["value"])
    return container.get("vcpus")


def _environment(job: dict) -> list[dict]:
    """A described job's environment variables: its container's, or (a multi-node job) its nodes'."""
    if job.get("container", {}).get("environment"):
        return job["container"]["environment"]
    ranges = job.get("nodeProperties", {}).get("nodeRangeProperties", [])
    return [e for r in ranges for e in r.get("container", {}).get("environment", [])]


def _log_groups(job: dict, configured: str) -> list[str]:
    """Where a job's log stream may be: its own awslogs group, the configured one, Batch's default."""
    options = job.get("container", {}).get("logConfiguration", {}).get("options", {})
    groups = [options.get("awslogs-group"), configured, DEFAULT_LOG_GROUP]
    return list(dict.fromkeys(g for g in groups if g))


# ------------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class SubmitSpec:
    """What every SubmitJob of a sweep carries: hydra.launcher's Batch options, resolved and checked."""

    job_name: str
    queue: str
    job_definition: str
    environment: dict = field(default_factory=dict)  # what every job is told (_job.py), besides its payload
    resources: dict = field(default_factory=dict)  # VCPU, MEMORY, GPU; None: the job definition's
    timeout_s: int | None = None
    attempts: int = 1
    tags: dict = field(default_factory=dict)
    share_identifier: str | None = None
    scheduling_priority: int | None = None
    nodes: int = 1

    def requests(self, payload_uri: str, sweep_id: str, first: int, size: int,
                 offset: int = 0) -> list[tuple[int, int, dict]]:
        """(first job number, size, SubmitJob request) for each array of at most 10,000 jobs of one payload, job
        `first` at position `offset` of it; a lone job is a plain job. The command is fixed; the payload URI and
        the index offset travel as environment variables. `nodes` > 1: one multi-node parallel job per config
        (Batch has no arrays of them), its overrides on every node (`nodeOverrides`, targetNodes 0:), the index
        offset naming the config."""
        step = MAX_ARRAY if self.nodes <= 1 else 1
        requests = []
        for start in range(0, size, step):
            n = min(step, size - start)
            env = dict(self.environment, **{_job.PAYLOAD_URI: payload_uri, _job.SWEEP_ID: sweep_id,
                                            _job.INDEX_OFFSET: str(offset + start)})
            overrides: dict[str, Any] = {"command": WORKER_COMMAND, "environment": [
                {"name": k, "value": str(v)} for k, v in sorted(env.items())]}
            requirements = [{"type": t, "value": _number(v)} for t, v in self.resources.items() if v is not None]
            if requirements:
                overrides["resourceRequirements"] = requirements
            request: dict[str, Any] = {
                "jobName": self.job_name, "jobQueue": self.queue, "jobDefinition": self.job_definition,
                "retryStrategy": retry_strategy(self.attempts), "tags": dict(self.tags), "propagateTags": True,
            }
            if self.nodes > 1:
                request["nodeOverrides"] = {"numNodes": self.nodes, "nodePropertyOverrides": [
                    {"targetNodes": "0:", "containerOverrides": overrides}]}
            else:
                request["containerOverrides"] = overrides
            if n > 1:
                request["arrayProperties"] = {"size": n}
            if self.timeout_s is not None:
                request["timeout"] = {"attemptDurationSeconds": int(self.timeout_s)}
            if self.share_identifier is not None:
                request["shareIdentifier"] = self.share_identifier
            if self.scheduling_priority is not None:
                request["schedulingPriorityOverride"] = int(self.scheduling_priority)
            requests.append((first + start, n, request))
        return requests


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def automatic_tags(sweep_id: str, app: str) -> dict:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return {"hydra-awsbatch:sweep-id": sweep_id, "hydra-awsbatch:app": app, "hydra-awsbatch:user": user}


def check_tags(tags: dict) -> list[str]:
    """Batch's limits on the user's tags (three of the 50 are the launcher's own)."""
    problems = []
    if len(tags) + 3 > MAX_TAGS:
        problems.append(f"hydra.launcher.tags: {len(tags)} tags; Batch takes {MAX_TAGS} per job, of which the "
                        f"launcher uses 3: keep at most {MAX_TAGS - 3}")
    for key, value in tags.items():
        key, value = str(key), "" if value is None else str(value)
        if not 1 <= len(key) <= MAX_TAG_KEY:
            problems.append(f"hydra.launcher.tags.{key[:40]}: a tag key has 1 to {MAX_TAG_KEY} characters")
        if key.lower().startswith("aws:"):
            problems.append(f"hydra.launcher.tags.{key}: keys starting with aws: are reserved by AWS")
        if len(value) > MAX_TAG_VALUE:
            problems.append(f"hydra.launcher.tags.{key}: its value has {len(value)} characters; Batch takes at "
                            f"most {MAX_TAG_VALUE}")
    return problems


def check_resources(vcpus, memory_mib, gpus, timeout_min, attempts, compute_environments: list[dict]) -> list[str]:
    """Batch's ranges, checked before anything is submitted."""
    fargate = bool(compute_environments) and all(
        ce.get("computeResources", {}).get("type", "").startswith("FARGATE") for ce in compute_environments)
    problems = []
    if vcpus is not None:
        if fargate and float(vcpus) not in FARGATE_VCPUS:
            problems.append(f"hydra.launcher.vcpus={vcpus}: Fargate takes one of {FARGATE_VCPUS}")
        elif not fargate and (float(vcpus) < 1 or not float(vcpus).is_integer()):
            problems.append(f"hydra.launcher.vcpus={vcpus}: EC2 jobs take a whole number of vCPUs, at least 1")
    if memory_mib is not None and int(memory_mib) < (512 if fargate else 4):
        problems.append(f"hydra.launcher.memory_mib={memory_mib}: at least {512 if fargate else 4} MiB")
    if gpus is not None:
        if int(gpus) < 0:
            problems.append(f"hydra.launcher.gpus={gpus}: must be 0 or more")
        elif int(gpus) > 0 and fargate:
            problems.append(f"hydra.launcher.gpus={gpus}: the queue's compute environments are all Fargate, "
                            "which has no GPUs; use a GPU queue (the stack's GpuJobQueue) via hydra.launcher.job_queue")
    if timeout_min is not None and float(timeout_min) * 60 < 60:
        problems.append(f"hydra.launcher.timeout_min={timeout_min}: Batch needs at least 1 minute (60 s)")
    if not 1 <= int(attempts) <= 10:
        problems.append(f"hydra.launcher.attempts={attempts}: Batch takes 1 to 10")
    return problems


GPU_FAMILIES = re.compile(r"^(p\d|g\d|gr\d)")  # EC2's GPU instance families: p3, p4d, p5, g4dn, g5, g6e, gr6...


def has_gpus(compute_environment: dict) -> bool:
    """Whether a compute environment can start instances with GPUs (a GPU family among its instance types;
    "optimal" picks from C, M and R, which have none)."""
    types = compute_environment.get("computeResources", {}).get("instanceTypes") or []
    return any(GPU_FAMILIES.match(str(t)) for t in types)


def check_gpus(gpus, queue: str, compute_environments: list[dict]) -> list[str]:
    """A job asking GPUs on a queue none of whose compute environments has GPU instances: it would wait in
    RUNNABLE forever."""
    fargate = all(ce.get("computeResources", {}).get("type", "").startswith("FARGATE") for ce in compute_environments)
    if not gpus or int(gpus) <= 0 or fargate or any(map(has_gpus, compute_environments)):
        return []  # (Fargate: check_resources says so)
    names = ", ".join(f"{ce.get('computeEnvironmentName')} "
                      f"({','.join(ce.get('computeResources', {}).get('instanceTypes') or ['Fargate'])})"
                      for ce in compute_environments)
    return [f"hydra.launcher.gpus={gpus}: job queue '{queue}' has no GPU instances (its compute environments: "
            f"{names}); point these jobs at a GPU queue with hydra.launcher.job_queue (the stack's GpuJobQueue), "
            "or ask for gpus=0"]


def check_multinode(nodes: int, queue: str, compute_environments: list[dict], definition: dict | None) -> list[str]:
    """What Batch needs of a queue and job definition to run trials of `nodes` nodes (multi-node parallel jobs):
    On-Demand EC2 compute (neither Fargate nor Spot), a `multinode` job definition of at least `nodes` nodes."""
    if nodes <= 1:
        return []
    fix = "set hydra.launcher.job_queue to a queue of On-Demand EC2 compute (the stack's MultiNodeJobQueue)"
    problems = []
    kinds = {ce.get("computeResources", {}).get("type", "") for ce in compute_environments}
    if kinds and kinds <= {"FARGATE", "FARGATE_SPOT"}:
        problems.append(f"hydra.launcher.nodes={nodes}: job queue '{queue}' runs on Fargate, which runs no "
                        f"multi-node parallel jobs: {fix}")
    elif kinds and kinds <= {"SPOT", "FARGATE_SPOT"}:
        problems.append(f"hydra.launcher.nodes={nodes}: job queue '{queue}' has Spot compute only, which runs no "
                        f"multi-node parallel jobs: {fix}")
    if definition is not None:
        name = f"{definition.get('jobDefinitionName')}:{definition.get('revision')}"
        if definition.get("type") != "multinode":
            problems.append(f"hydra.launcher.nodes={nodes}: job definition '{name}' is of type "
                            f"'{definition.get('type')}', not 'multinode': set hydra.launcher.job_definition to a "
                            "multinode one (the stack's MultiNodeJobDefinition)")
        elif nodes > int((definition.get("nodeProperties") or {}).get("numNodes") or nodes):  # plain moto shows none
            problems.append(f"hydra.launcher.nodes={nodes}: job definition '{name}' has "
                            f"{definition['nodeProperties']['numNodes']} nodes: ask for at most that many, or "
                            "register a revision with more (template.yaml's MultiNodeNumNodes)")
    return problems


# ------------------------------------------------------------------------------------------------- watcher
class BatchExecutor:
    """One watcher for every array of a sweep: DescribeJobs on the array parents with unfinished jobs (100 ids
    a call), ListJobs(arrayJobId, jobStatus) only for states whose count grew, a poll interval that grows while
    nothing changes, and backoff with jitter on throttling. `request_for(payload_uri, first, size)` gives the
    SubmitJob requests of a batch (the launcher's settings; `offset`: job `first`'s position in the payload); a
    sweep opened from its manifest has none."""

    def __init__(self, api: BatchApi, poll_interval_s: float = 5.0, request_for=None):
        self.api, self.request_for = api, request_for
        self.arrays: list[Array] = []
        self.summaries: dict[str, dict] = {}  # array job id -> the statusSummary last listed
        self.jobs: dict[int, JobInfo] = {}
        self.base_interval = self.interval = poll_interval_s
        self.failures = 0

    def add(self, arrays: list[Array]) -> None:
        """Follow these (already submitted) arrays."""
        for array in arrays:
            self.arrays.append(array)
            for i in range(array.size):
                job_id = f"{array.job_id}:{i}" if array.size > 1 else array.job_id
                self.jobs[array.first + i] = JobInfo(array.first + i, state=BatchState.SUBMITTED, job_id=job_id)

    def adopt(self, arrays: list[Array]) -> bool:
        self.add(arrays)  # Batch jobs outlive the process that submitted them
        return True

    def recover(self, payload_uri: str, first: int, size: int, since: float, offset: int = 0) -> list[Array]:
        requests = self.request_for(payload_uri, first, size, offset)
        went_out = {}  # (payload URI, index offset) -> the job that a SubmitJob, its answer lost, made
        named = {request["jobName"] for _, _, request in requests}
        queue = requests[0][2]["jobQueue"]
        candidates = [s["jobId"] for s in self.api.created_since(queue, max(0.0, since - 60))  # clocks may differ
                      if s.get("jobName") in named]
        for job in self.api.describe(candidates) if candidates else []:
            environment = {e["name"]: e["value"] for e in _environment(job)}
            went_out[environment.get(_job.PAYLOAD_URI), environment.get(_job.INDEX_OFFSET)] = job["jobId"]
        found, missing = [], []
        for n_first, n, request in requests:
            job_id = went_out.get((payload_uri, str(n_first - first + offset)))
            if job_id:
                found.append(Array(job_id, n_first, n))
            else:
                missing.append((n_first, n, request))
        self.add(found)
        arrays = sorted(found + self.send(missing), key=lambda a: a.first)
        log.info(f"Jobs {first}-{first + size - 1}, staged but not known to be submitted when the earlier process "
                 f"died: {len(found)} job(s) found in Batch, {len(missing)} submitted now "
                 f"({', '.join(a.job_id for a in arrays)})")
        return arrays

    def submit(self, payload_uri: str, first: int, size: int, offset: int = 0) -> list[Array]:
        arrays = self.send(self.request_for(payload_uri, first, size, offset))
        self.interval = self.base_interval  # news soon
        return arrays

    def send(self, requests: list[tuple[int, int, dict]]) -> list[Array]:
        """Submit these (first job number, size, request)s and follow what they made."""
        job_ids = self.api.submit([request for _, _, request in requests])
        arrays = [Array(job_id, n_first, n) for job_id, (n_first, n, _) in zip(job_ids, requests)]
        self.add(arrays)
        return arrays

    def active(self) -> list[Array]:
        """The arrays with a job not yet final: the only ones a poll round describes."""
        return [a for a in self.arrays
                if any(self.jobs[n].state not in FINAL for n in range(a.first, a.first + a.size))]

    @property
    def poll_interval_s(self) -> float:
        return self.interval

    def poll(self) -> list[JobInfo]:
        from botocore.exceptions import ClientError

        before = {num: s.state for num, s in self.jobs.items()}
        try:
            self._poll()
            self.failures = 0
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("TooManyRequestsException", "ThrottlingException"):
                raise
            self.failures += 1  # botocore's own retries ran out: back off harder, with jitter
            self.interval = min(60.0, self.base_interval * 2 ** self.failures) * random.uniform(0.5, 1.0)
            log.warning("Batch is throttling the watcher; next poll in %.1f s", self.interval)
            return list(self.jobs.values())
        changed = any(self.jobs[n].state != before[n] for n in self.jobs)
        # Quiet rounds stretch the interval, to at most 4 times the first: a job that ends is seen within that,
        # and a sweeper refilling its workers (launch_async) waits no longer.
        self.interval = self.base_interval if changed else min(self.interval * 1.5, 4 * self.base_interval)
        return list(self.jobs.values())

    def _poll(self) -> None:
        active = self.active()
        parents = {job["jobId"]: job for job in self.api.describe([a.job_id for a in active])} if active else {}
        for array in active:
            parent = parents.get(array.job_id)
            if parent is None:
                continue
            if array.size == 1:
                self._update(array.first, parent)
                continue
            summary = parent.get("arrayProperties", {}).get("statusSummary", {})
            before = self.summaries.get(array.job_id, {})
            grown = [s for s, n in summary.items() if n > before.get(s, 0)
                     and s in GROWING]
            for status in grown:
                for child in self.api.children(array.job_id, status):
                    index = int(child["jobId"].rsplit(":", 1)[1])
                    self._update(array.first + index, child)
            self.summaries[array.job_id] = summary  # only once every grown state was listed: a throttle retries

    def _update(self, num: int, job: dict) -> None:
        info = self.jobs[num]
        if info.state in FINAL:
            return
        container = job.get("container", {})
        info.state = BatchState(job["status"])
        info.reason = job.get("statusReason", "") or container.get("reason", "")
        info.exit_code = container.get("exitCode")
        info.created = job["createdAt"] / 1000 if job.get("createdAt") else info.created
        info.started = job["startedAt"] / 1000 if job.get("startedAt") else info.started
        info.stopped = job["stoppedAt"] / 1000 if job.get("stoppedAt") else info.stopped

    def stuck(self) -> dict[str, int]:
        """statusReason -> count for jobs held in RUNNABLE (one ListJobs call per array that has any)."""
        reasons: dict[str, int] = {}
        for array in self.arrays:
            waiting = [s for n, s in self.jobs.items() if array.first <= n < array.first + array.size
                       and s.state == BatchState.RUNNABLE]
            if not waiting:
                continue
            if array.size == 1:
                found = self.api.describe([array.job_id])
            else:
                found = self.api.children(array.job_id, BatchState.RUNNABLE, max_results=100)
            for job in found:
                if job.get("statusReason"):
                    reasons[job["statusReason"]] = reasons.get(job["statusReason"], 0) + 1
        return reasons

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        """Terminate every unfinished job: the array parents first (Batch ends their children), then any
        child still unfinished; `nums`: these jobs only, by their own ids. `force` (a second Ctrl-C): stop
        waiting; what was asked stands."""
        unfinished = [s for s in self.jobs.values() if s.state not in FINAL and (nums is None or s.num in nums)]
        if not unfinished:
            return 0
        if not force:
            if nums is None:
                self.api.terminate([a.job_id for a in self.active()], reason)
                self._poll()
            self.api.terminate([s.job_id for s in unfinished if s.state not in FINAL
                                and (":" in s.job_id or nums is not None)], reason)
            self._poll()
        for s in unfinished:
            if s.state not in FINAL:  # Batch will end it; we stop waiting
                s.state, s.reason = BatchState.FAILED, reason
        return len(unfinished)

    @staticmethod
    def forced_stop_note(sweep: str) -> str:
        return f"some jobs may still run on Batch; stop them with: hydra-awsbatch cancel {sweep}"

    def failure_details(self, nums: list[int], log_group: str, lines: int = 50) -> dict[int, str]:
        """For jobs that ended without a result: Batch's reason, the container's exit code and reason, and
        the tail of the CloudWatch log stream (the only CloudWatch calls of a sweep)."""
        details = {}
        jobs = {job["jobId"]: job for job in self.api.describe([self.jobs[n].job_id for n in nums])}
        for num in nums:
            job = jobs.get(self.jobs[num].job_id, {})
            container = job.get("container", {})
            text = [f"Batch status: {job.get('status', self.jobs[num].state)}; "
                    f"statusReason: {job.get('statusReason') or self.jobs[num].reason or '-'}; "
                    f"exit code: {container.get('exitCode', self.jobs[num].exit_code)}; "
                    f"container reason: {container.get('reason') or '-'}"]
            found = self.api.job_log_tail(job, log_group, lines)
            if found:
                text.append(f"Last {len(found[1])} lines of {found[0]}:")
                text += found[1]
            details[num] = "\n".join(text)
        return details

