"""Every library internal the project leans on (_hooks.py), checked against the installed releases in seconds:
each is found and has the shape we use, and each, taken away or changed, fails naming itself, the installed
release and the range we test. A release of moto, Hydra or torch that moves one is caught here, not by a sweep."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from hydra_plugins.hydra_awsbatch_launcher import _hooks

pytestmark = pytest.mark.unit


def gone(*args, **kwargs):  # what a hook turns into when a release renames or reshapes it
    return None


# Each hook, and how a release could take it away: (module, owner's attribute path, attribute, how).
BREAKS = {
    "moto.batch.models.JobDefinition.create_from_cloudformation_json":
        ("moto.batch.models", "JobDefinition", "create_from_cloudformation_json", classmethod(gone)),
    "moto.batch.models.BatchBackend.register_job_definition":
        ("moto.batch.models", "BatchBackend", "register_job_definition", gone),
    "moto.batch.models.batch_backends": ("moto.batch.models", "", "batch_backends", None),
    "moto.batch.utils.lowercase_first_key": ("moto.batch.utils", "", "lowercase_first_key", None),
    "moto.batch.models.JobDefinition.describe": ("moto.batch.models", "JobDefinition", "describe", None),
    "moto.batch.responses.BatchResponse.submit_job": ("moto.batch.responses", "BatchResponse", "submit_job", None),
    "moto.batch.models.Job.__init__": ("moto.batch.models", "Job", "__init__", gone),
    "moto.batch.models.DockerModel.docker_client": ("moto.batch.models", "DockerModel", "docker_client", None),
    "moto.batch.models.Job.run": ("moto.batch.models", "Job", "run", gone),
    "moto.server.main": ("moto.server", "", "main", gone),
    "hydra._internal.config_loader_impl.ConfigLoaderImpl._apply_overrides_to_config":
        ("hydra._internal.config_loader_impl", "ConfigLoaderImpl", "_apply_overrides_to_config", staticmethod(gone)),
    "hydra._internal.config_loader_impl.get_overrides_dirname":
        ("hydra._internal.config_loader_impl", "", "get_overrides_dirname", None),
    "hydra.plugins.sweeper.Sweeper.validate_batch_is_legal":
        ("hydra.plugins.sweeper", "Sweeper", "validate_batch_is_legal", gone),
    "hydra.core.singleton.Singleton.set_state": ("hydra.core.singleton", "Singleton", "set_state", staticmethod(gone)),
    "torch.distributed.launcher.api.elastic_launch": ("torch.distributed.launcher.api", "", "elastic_launch", None),
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError":
        ("torch.distributed.elastic.multiprocessing.errors", "", "ChildFailedError", gone),
}


def test_every_hook_has_a_way_to_break_it_here():
    assert set(BREAKS) == set(_hooks.HOOKS)


@pytest.mark.parametrize("name", sorted(_hooks.HOOKS))
def test_the_installed_release_has_the_hook(name):
    assert _hooks.HOOKS[name].resolve() is not None


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_a_hook_taken_away_fails_naming_itself_and_the_release(name, monkeypatch):
    module, owner_path, attribute, replacement = BREAKS[name]
    owner = importlib.import_module(module)
    for part in filter(None, owner_path.split(".")):
        owner = getattr(owner, part)
    if replacement is None:
        names = [attribute, *(["submitjob"] if attribute == "submit_job" else [])]  # moto before 5.2.6: submitjob
        for gone in [n for n in names if n in vars(owner)] or [attribute]:
            monkeypatch.delattr(owner, gone)
    else:
        monkeypatch.setattr(owner, attribute, replacement)
    hook = _hooks.HOOKS[name]
    with pytest.raises(_hooks.HookMissing) as raised:
        hook.resolve()
    message = str(raised.value)
    library = hook.library
    assert name in message and f"{library.distribution} {library.installed()}" in message
    assert library.tested in message and library.install in message


def test_a_library_that_is_not_installed_is_said_once_with_the_command_to_install_it(monkeypatch):
    absent = _hooks.Library("no-such-distribution", "1.0-1.1", "pip install 'no-such-distribution<1.2'", "a feature")
    with pytest.raises(_hooks.HookMissing, match="a feature needs no-such-distribution 1.0-1.1, which is not "
                                                 "installed: pip install 'no-such-distribution<1.2'"):
        _hooks.check(absent)


BROKEN_MOTO = """
from moto.batch import responses
for name in ("submit_job", "submitjob"):
    if hasattr(responses.BatchResponse, name):
        delattr(responses.BatchResponse, name)
"""


def test_local_cloud_up_refuses_a_moto_without_the_hooks_in_the_terminal_before_starting_anything(tmp_path):
    """As a moto release that renames SubmitJob's handler would: `local-cloud up` exits at once, saying which moto
    it is, the range it supports and what to install; no server is started, no state written."""
    (tmp_path / "sitecustomize.py").write_text(BROKEN_MOTO)
    env = {"PATH": f"{sys.prefix}/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.cli", "local-cloud", "up"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert (f"the local cloud supports moto {_hooks.MOTO.tested}; this is moto {_hooks.MOTO.installed()}"
            in proc.stderr), proc.stderr
    assert "moto.batch.responses.BatchResponse.submit_job" in proc.stderr and _hooks.MOTO.install in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".cache").exists()  # nothing started, nothing recorded
