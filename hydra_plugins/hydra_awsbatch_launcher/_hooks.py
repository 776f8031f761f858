"""The library internals this project leans on, every one named here once with the releases it was tested on.

A private method, a frame or a keyword another library may rename in any release: each is found through
`hook(name)`, which checks its shape and, where it is gone or has changed, fails at once naming the hook, the
installed release, the range we test and the command that installs a tested one. tests/test_hooks.py checks every
hook (seconds), so the release that moves one is caught by the unit tier, not by a failed sweep. A hook that is
only read (a frame, a keyword list) is checked in its shape; a patched one is looked up where the patch is made.
setup.py caps each of these libraries at the newest release the tests ran on; tools/newest.sh tries the next.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable


class HookMissing(RuntimeError):
    """A library internal we rely on is gone or changed shape in the installed release."""


@dataclass(frozen=True)
class Library:
    distribution: str  # as pip names it
    tested: str  # the releases the tests ran on
    install: str  # a command that installs a tested release
    user: str  # what of ours needs the hooks

    def installed(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.distribution)
        except PackageNotFoundError:
            return "not installed"


MOTO = Library("moto", "5.2.5-5.2.6", "pip install 'moto[server]>=5.2.5,<=5.2.6'", "the local cloud")
HYDRA = Library("hydra-core", "1.3.2-1.3.x", "pip install 'hydra-core>=1.3.2,<1.4'", "the aws_batch launchers")
TORCH = Library("torch", "2.1-2.14", "pip install 'torch>=2.1,<2.15'", "multi-node trials (hydra.launcher.nodes, "
                "procs_per_node)")


@dataclass(frozen=True)
class Hook:
    name: str  # where it lives, dotted
    library: Library
    shape: str  # what we rely on, where more than its being there
    find: Callable[[], Any]  # returns what we use; raises where it is gone or changed

    def resolve(self) -> Any:
        try:
            return self.find()
        except (ImportError, AttributeError, KeyError, TypeError, ValueError, AssertionError) as exc:
            lib = self.library
            why, shape = f": {exc}" if str(exc) else "", f" ({self.shape})" if self.shape else ""
            raise HookMissing(f"{lib.user} supports {lib.distribution} {lib.tested}; this is {lib.distribution} "
                              f"{lib.installed()}, where {self.name}{shape} is gone or changed{why}. "
                              f"{lib.install}") from None


HOOKS: dict[str, Hook] = {}


def _hook(library: Library, name: str, shape: str = ""):
    def register(find: Callable[[], Any]) -> Callable[[], Any]:
        HOOKS[name] = Hook(name, library, shape, find)
        return find

    return register


@functools.cache
def hook(name: str) -> Any:
    """What the named hook finds (looked up and checked once per process)."""
    return HOOKS[name].resolve()


def check(library: Library) -> None:
    """Every hook of this library, before anything depends on it (all problems at once)."""
    if library.installed() == "not installed":
        raise HookMissing(f"{library.user} needs {library.distribution} {library.tested}, which is not installed: "
                          f"{library.install}")
    problems = []
    for item in HOOKS.values():
        if item.library is library:
            try:
                hook(item.name)
            except HookMissing as exc:
                problems.append(str(exc))
    if problems:
        raise HookMissing("\n".join(problems))


def _keywords(function: Callable, *names: str) -> Callable:
    parameters = inspect.signature(function).parameters
    missing = [n for n in names if n not in parameters]
    assert not missing, f"it takes no {', '.join(missing)}"
    return function


# ----------------------------------------------------------------------- moto: the local cloud's Batch (_moto_server)
@_hook(MOTO, "moto.batch.models.JobDefinition.create_from_cloudformation_json")
def _moto_cfn_job_definition():
    from moto.batch.models import JobDefinition

    return _keywords(JobDefinition.create_from_cloudformation_json.__func__, "cls", "resource_name",
                     "cloudformation_json", "account_id", "region_name")


@_hook(MOTO, "moto.batch.models.BatchBackend.register_job_definition")
def _moto_register_job_definition():
    from moto.batch.models import BatchBackend

    return _keywords(BatchBackend.register_job_definition, "def_name", "parameters", "_type", "tags",
                     "retry_strategy", "container_properties", "node_properties", "eks_properties", "timeout",
                     "platform_capabilities", "propagate_tags")


@_hook(MOTO, "moto.batch.models.batch_backends")
def _moto_backends():
    from moto.batch.models import batch_backends

    return batch_backends


@_hook(MOTO, "moto.batch.utils.lowercase_first_key")
def _moto_lowercase_first_key():
    from moto.batch.utils import lowercase_first_key

    assert lowercase_first_key({"NumNodes": 2}) == {"numNodes": 2}, "it lowercases no first key"
    return lowercase_first_key


@_hook(MOTO, "moto.batch.models.JobDefinition.describe")
def _moto_describe_job_definition():
    from moto.batch.models import JobDefinition

    return JobDefinition.describe


@_hook(MOTO, "moto.batch.responses.BatchResponse.submit_job", "SubmitJob's handler")
def _moto_submit_handler() -> tuple[type, str]:
    """(class, method name): `submit_job` from moto 5.2.6 (its protocol parsers), `submitjob` before."""
    from moto.batch.responses import BatchResponse

    assert callable(getattr(BatchResponse, "_get_param", None)), "BatchResponse has no _get_param"
    for name in ("submit_job", "submitjob"):
        if callable(getattr(BatchResponse, name, None)):
            return BatchResponse, name
    raise AttributeError("BatchResponse has neither submit_job nor submitjob")


@_hook(MOTO, "moto.batch.models.Job.__init__", "sets job_definition, job_id")
def _moto_job_init():
    from moto.batch.models import Job

    return _keywords(Job.__init__, "job_def")


@_hook(MOTO, "moto.batch.models.DockerModel.docker_client")
def _moto_docker_client():
    from moto.batch.models import DockerModel, Job

    assert isinstance(DockerModel.docker_client, property), "it is no property"
    assert issubclass(Job, DockerModel), "Job is no DockerModel"
    return DockerModel.docker_client


@_hook(MOTO, "moto.batch.models.Job.run", "names a node's container NAME-ID-N")
def _moto_container_name():
    from moto.batch.models import Job

    assert '"name": f"{self.job_name}-{self.job_id}-{i}"' in inspect.getsource(Job.run), \
        "a node's container is named otherwise"
    return Job.run


@_hook(MOTO, "moto.server.main")
def _moto_server_main():
    from moto.server import main

    return _keywords(main, "argv")


# --------------------------------------------------------------------------- Hydra: composing configs (_compose)
@_hook(HYDRA, "hydra._internal.config_loader_impl.ConfigLoaderImpl._apply_overrides_to_config")
def _hydra_apply_overrides():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return _keywords(ConfigLoaderImpl._apply_overrides_to_config, "overrides", "cfg")


@_hook(HYDRA, "hydra._internal.config_loader_impl.get_overrides_dirname")
def _hydra_overrides_dirname():
    from hydra._internal.config_loader_impl import get_overrides_dirname

    return _keywords(get_overrides_dirname, "overrides", "exclude_keys", "item_sep", "kv_sep")


@_hook(HYDRA, "hydra.plugins.sweeper.Sweeper.validate_batch_is_legal",
       "calls load_sweep_config itself, with `batch` in its frame")
def _hydra_validate_frame():
    from hydra.plugins.sweeper import Sweeper

    code = Sweeper.validate_batch_is_legal.__code__
    assert "load_sweep_config" in code.co_names and "batch" in code.co_varnames, \
        "it no longer calls load_sweep_config itself over a local `batch`"
    return code


@_hook(HYDRA, "hydra.core.singleton.Singleton.set_state", "keeps the Plugins instance it is given")
def _hydra_set_state():
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from omegaconf.basecontainer import BaseContainer

    probe = object.__new__(Plugins)  # never scanned: a set_state that makes its own instance replaces it
    instances, resolvers = Singleton._instances, BaseContainer._resolvers
    try:
        Singleton.set_state({"instances": {Plugins: probe}, "omegaconf_resolvers": {}})
        assert Singleton._instances.get(Plugins) is probe, "it replaces the Plugins instance it is given"
    finally:
        Singleton._instances, BaseContainer._resolvers = instances, resolvers
    return Singleton.set_state


# ---------------------------------------------------------------------- torch: multi-node trials (_nodes.execute)
@_hook(TORCH, "torch.distributed.launcher.api.elastic_launch", "and LaunchConfig's fields")
def _torch_elastic_launch():
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _keywords(LaunchConfig, "min_nodes", "max_nodes", "nproc_per_node", "run_id", "rdzv_backend", "rdzv_endpoint",
              "rdzv_configs", "max_restarts", "monitor_interval", "start_method")
    return LaunchConfig, elastic_launch


@_hook(TORCH, "torch.distributed.elastic.multiprocessing.errors.ChildFailedError",
       "its failures; and SignalException")
def _torch_elastic_errors():
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    _keywords(ChildFailedError, "name", "failures")
    return SignalException, ChildFailedError
