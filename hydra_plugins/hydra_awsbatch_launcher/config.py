"""Launcher configs, stored in Hydra's ConfigStore as hydra/launcher=aws_batch_local (and aws_batch later).

No boto3 here: Hydra imports this module at start-up for every app.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

DEFAULT_LOG_GROUP = "/aws/batch/job"  # where Batch writes job logs unless the job definition says otherwise


@dataclass
class BaseAwsBatchLauncherConf:
    """What every executor shares: how a sweep is staged, what comes back, and what each job asks (its
    resources, which may interpolate the job's own config, resolved per job: _resources.py)."""

    # Where code, payloads and results go: s3://bucket/prefix or a local folder; null: <sweep dir>/.staging
    staging_uri: Optional[str] = None
    # Folder shipped as the code package and put first on the job's sys.path; null: the app script's folder
    code_root: Optional[str] = None
    # Glob patterns shipped even when a .gitignore leaves them out (e.g. "conf/local/*.yaml")
    code_include: List[str] = field(default_factory=list)
    # Glob patterns never shipped, on top of caches, .git, venvs and earlier outputs
    code_exclude: List[str] = field(default_factory=list)
    # Honour .gitignore files under code_root
    use_gitignore: bool = True
    # Refuse a code package larger than this (MiB, before compression): data belongs in S3
    code_max_mib: float = 50.0
    # Bring each job's output dir back into the local sweep dir
    sync_outputs: bool = True
    # Glob patterns of job outputs left in staging (their URIs are printed), e.g. large checkpoints
    sync_exclude: List[str] = field(default_factory=lambda: ["*.pt", "*.pth", "*.ckpt", "*.safetensors"])
    # Extra environment variables for every job (names starting with AWS_BATCH_ are reserved)
    environment: Dict[str, str] = field(default_factory=dict)
    # Seconds between two writes of what a job's report() calls recorded (and between two reads of them here)
    metrics_interval_s: float = 10.0
    # The price table of the sweep page's cost estimate (a YAML file like the package's prices.yaml); null: the
    # package's own, dated
    price_table: Optional[str] = None
    # vCPUs per job; null: the job definition's. Also the job's threads (OMP_NUM_THREADS, MKL_, OPENBLAS_: vCPUs
    # over its processes on a node) unless environment sets them (aws_batch_local, null: its share of the CPUs).
    # This and the next three, nodes, procs_per_node, job_queue and job_definition may read the job's own config
    # (gpus: ${model.gpus}), resolved per job: see docs/resources.md
    vcpus: Optional[float] = None
    # Memory per job in MiB; null: the job definition's (aws_batch_local: not enforced)
    memory_mib: Optional[int] = None
    # GPUs per job; null: the job definition's (aws_batch_local: refused where this machine has fewer)
    gpus: Optional[int] = None
    # Minutes an attempt may run before Batch stops it (at least 1); null: the job definition's timeout
    # (aws_batch_local: a warm worker's trial only)
    timeout_min: Optional[float] = None
    # Nodes per trial: above 1, each trial is a multi-node parallel job whose nodes each run procs_per_node
    # processes, started as torchrun does (RANK, WORLD_SIZE, MASTER_ADDR... set; rank 0's return is the trial's)
    nodes: int = 1
    # Processes per node (torchrun's nproc_per_node); null: the node's GPUs (at least 1) where nodes > 1, else 1
    procs_per_node: Optional[int] = None
    # Warm workers: this many long-lived worker jobs run trial after trial (each trial in a fresh process), so a
    # trial pays no job start of its own; 0: a job per trial
    workers: int = 0
    # A warm worker exits after this many seconds without a trial (and when the launcher goes silent)
    idle_timeout_s: float = 60.0
    # true: each trial on a warm worker starts a new Python, which imports everything anew; false: it is forked
    # from the warm worker, which has imported Hydra and the task's modules once
    fresh_interpreter: bool = False


@dataclass
class AwsBatchLocalLauncherConf(BaseAwsBatchLauncherConf):
    """The same staging and worker as on Batch; each job runs as a local process."""

    _target_: str = "hydra_plugins.hydra_awsbatch_launcher.awsbatch_launcher.AwsBatchLocalLauncher"
    # Jobs running at once (local processes); null: the number of CPUs
    max_parallel: Optional[int] = None
    # true: each job writes its output dir straight into the sweep dir, as Hydra's basic launcher does;
    # false: in a scratch folder, brought back through staging, exactly as from a Batch container
    in_place: bool = True


@dataclass
class AwsBatchLauncherConf(BaseAwsBatchLauncherConf):
    """Each launched batch of jobs becomes one AWS Batch array job."""

    _target_: str = "hydra_plugins.hydra_awsbatch_launcher.awsbatch_launcher.AwsBatchLauncher"
    # CloudFormation stack (our template.yaml) whose outputs give the queue, job definition and staging bucket
    stack_name: Optional[str] = None
    # Job queue name or ARN, or the name of an output of the stack (GpuJobQueue); null: the stack's JobQueue output
    job_queue: Optional[str] = None
    # Job definition: name, name:revision or ARN; null: the stack's JobDefinition output
    job_definition: Optional[str] = None
    # AWS region; null: boto3's chain (AWS_REGION, AWS_DEFAULT_REGION, the profile's region)
    region: Optional[str] = None
    # Named profile from ~/.aws/config; null: boto3's chain
    profile: Optional[str] = None
    # Attempts per job, 1-10: retried on host loss (Spot reclaim) and on the app's SIGTERM exit code 75
    attempts: int = 3
    # Tags for every job, on top of hydra-awsbatch:sweep-id, :app and :user
    tags: Dict[str, str] = field(default_factory=dict)
    # Fair-share queues: the share identifier and scheduling priority of the jobs; null: none
    share_identifier: Optional[str] = None
    scheduling_priority: Optional[int] = None
    # Batch job name, sanitised to letters, digits, - and _ (at most 128)
    job_name: str = "${hydra.job.name}"
    # Seconds between status polls; the interval grows to 4 times this while nothing changes
    poll_interval_s: float = 5.0
    # false: submit, print how to follow the sweep (hydra-awsbatch status/attach), and return
    wait: bool = True
    # On Ctrl-C or SIGTERM, terminate every unfinished job of the sweep
    terminate_on_interrupt: bool = True
    # Print the exact SubmitJob request(s) and submit nothing
    dry_run: bool = False
    # CloudWatch log group of the jobs, read for the log tail of a failed job
    log_group: str = DEFAULT_LOG_GROUP
    # true: the jobs see the sweep dir at the same path (an EFS volume of the job definition, say), so they
    # write their job dirs there directly and keep the launching working directory; nothing is downloaded
    shared_sweep_dir: bool = False


def _store(name: str, node: Any) -> None:
    ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="hydra-awsbatch-launcher")


_store("aws_batch_local", AwsBatchLocalLauncherConf)
_store("aws_batch", AwsBatchLauncherConf)
