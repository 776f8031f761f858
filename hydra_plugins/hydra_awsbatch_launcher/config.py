"""Launcher configs, stored in Hydra's ConfigStore as hydra/launcher=aws_batch_local (and aws_batch later).

No boto3 here: Hydra imports this module at start-up for every app.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class BaseAwsBatchLauncherConf:
    """What every executor shares: how a sweep is staged, and what comes back."""

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


@dataclass
class AwsBatchLocalLauncherConf(BaseAwsBatchLauncherConf):
    """The same staging and worker as on Batch; each job runs as a local process."""

    _target_: str = "hydra_plugins.hydra_awsbatch_launcher.awsbatch_launcher.AwsBatchLocalLauncher"
    # Jobs running at once (local processes); null: the number of CPUs
    max_parallel: Optional[int] = None
    # true: each job writes its output dir straight into the sweep dir, as Hydra's basic launcher does;
    # false: in a scratch folder, brought back through staging, exactly as from a Batch container
    in_place: bool = True


def _store(name: str, node: Any) -> None:
    ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="hydra-awsbatch-launcher")


_store("aws_batch_local", AwsBatchLocalLauncherConf)
