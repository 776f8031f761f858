"""The stage step: the code package (once per sweep: every job of it runs the same code) and each batch's payload
into staging. It returns what it staged, for the engine to submit; a dry run pickles everything (what cannot
pickle fails now) and writes nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from hydra_plugins.hydra_awsbatch_launcher import _package, _storage, _wire
from hydra_plugins.hydra_awsbatch_launcher._errors import LaunchError
from hydra_plugins.hydra_awsbatch_launcher._manifest import Staging

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")


class StagedBatch(NamedTuple):
    """What the stage step wrote for one batch of jobs: the engine records it and submits it."""

    payload_uri: str
    code_uri: str
    jobs: object  # the batch as composed (_compose.ComposedBatch)

    @property
    def first(self) -> int:  # the batch's first job number
        return self.jobs.first

    @property
    def nums(self) -> list[int]:
        return [recipe.num for recipe in self.jobs.recipes]


class Stager:
    """Stages the batches of one sweep. `options`: the launcher's (code_include, code_exclude, use_gitignore,
    code_max_mib, sync_outputs)."""

    def __init__(self, staging: Staging, sweep_dir: Path, code_root: Path, task_function, callbacks, options,
                 dry_run: bool = False):
        self.staging, self.sweep_dir, self.code_root = staging, sweep_dir, code_root
        self.task_function, self.callbacks, self.options, self.dry_run = task_function, callbacks, options, dry_run
        self.script = _wire.ScriptFunction.of(task_function, code_root)
        self._code_uri = ""

    def stage(self, jobs) -> StagedBatch:
        """The payload of these jobs (a _compose.ComposedBatch), and the code package the first time, into
        staging."""
        from hydra.core.singleton import Singleton
        from hydra.types import HydraContext

        header = {"code_uri": self.code(), "code_root": str(self.code_root),
                  "sync_outputs": self.options.sync_outputs, "sweep_dir": jobs.sweep_dir}
        state = Singleton.get_state()
        bases = jobs.base_configs()
        without_foreign_plugins(state, bases)  # the user's other Hydra plugins stay home
        # The job calls run_job, which needs the callbacks alone: the config loader (and the configs it cached,
        # other plugins' among them) stays home.
        context = HydraContext(config_loader=None, callbacks=self.callbacks)
        body = _wire.PayloadBody(context, self.script or self.task_function, state)
        # pickled even in a dry run: what cannot pickle fails now
        payload, modules = _wire.dump_payload(header, body, bases, jobs.recipes)
        needed = sorted(m for m in modules if _wire.is_foreign_plugin(m))
        if needed:
            log.warning(f"The jobs need {', '.join(needed)} (e.g. a callback of hydra.callbacks): the job image "
                        "must have it installed")
        payload_uri = self.staging.payload(jobs.first)
        if not self.dry_run:
            _storage.write_bytes(payload_uri, payload)
        return StagedBatch(payload_uri, header["code_uri"], jobs)

    def mirror(self, name: str, data: bytes) -> None:
        """A copy of a file of the sweep's (a sweeper's state) beside its manifest; nothing in a dry run."""
        if not self.dry_run:
            _storage.write_bytes(_storage.join(self.staging.sweep, name), data)

    def code(self) -> str:
        """The code package's URI, packed and uploaded the first time (unless staging has it already)."""
        if self._code_uri:
            return self._code_uri
        o, root = self.options, self.code_root
        # Outputs of this very sweep must not ship, nor change the package's hash from one run to the next.
        own = [Path(p).resolve() for p in (self.sweep_dir, self.staging.root) if not _storage.is_s3(str(p))]
        exclude = [*o.code_exclude, *(p.relative_to(root).as_posix() for p in own
                                      if p.is_relative_to(root) and p != root)]
        package = _package.package_code(root, o.code_include, exclude, o.use_gitignore, o.code_max_mib)
        if self.script is not None and self.script.relpath not in package.files:
            raise LaunchError([f"the code package of {root} leaves out your script {self.script.relpath} "
                               f"({len(package.files)} files packed): a .gitignore there ignores it. Ship it "
                               f"with hydra.launcher.code_include=[{self.script.relpath}], or set "
                               "hydra.launcher.use_gitignore=false"])
        code_uri = self.staging.code(package.sha256)
        uploaded = not self.dry_run and not _storage.exists(code_uri)
        if uploaded:
            _storage.write_bytes(code_uri, package.data)
        log.info(f"Code package of {root}: {len(package.files)} files, {len(package.data) / 1024:.1f} KiB, "
                 f"{'uploaded' if uploaded else 'not uploaded (dry run)' if self.dry_run else 'already staged'}"
                 f" as {code_uri}")
        self._code_uri = code_uri
        return code_uri


_FOREIGN_ENTRIES: dict[tuple, bool] = {}  # ConfigStore path -> whether its entry names another plugin


def without_foreign_plugins(singleton_state: dict, configs: list) -> None:
    """Drop from what goes to the job every trace of other Hydra plugins (in place): their ConfigStore
    entries, and the object types of their nodes under `hydra` in each (base) config (made plain containers)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf, open_dict, read_write

    store = singleton_state["instances"].get(ConfigStore)
    if store is not None:
        def prune(tree: dict, path: tuple) -> None:
            for name, entry in list(tree.items()):
                if isinstance(entry, dict):
                    prune(entry, (*path, name))
                    continue
                key = (*path, name, getattr(entry, "provider", None))
                if key not in _FOREIGN_ENTRIES:  # the store's entries stay put: decided once per process
                    _FOREIGN_ENTRIES[key] = any(_wire.is_foreign_plugin(m) for m in _wire.pickled(entry)[1])
                if _FOREIGN_ENTRIES[key]:
                    del tree[name]
        prune(store.repo, ())
    def foreign(node) -> bool:
        parent = node._get_parent()
        node._set_parent(None)  # the node alone, not the tree it hangs in
        try:
            return any(_wire.is_foreign_plugin(m) for m in _wire.pickled(node)[1])
        finally:
            node._set_parent(parent)

    decided: dict[tuple, bool] = {}  # configs with the same choices of Hydra's groups share their node types
    for config in configs:
        hydra_node = config.hydra
        choices = repr(OmegaConf.to_container(hydra_node.runtime.choices)) if "runtime" in hydra_node else ""
        for key in list(hydra_node.keys()):
            node = hydra_node._get_node(key)
            if not OmegaConf.is_config(node):
                continue
            if (key, choices) not in decided:
                decided[key, choices] = foreign(node)
            if decided[key, choices]:
                plain = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
                with read_write(hydra_node), open_dict(hydra_node):
                    hydra_node[key] = plain
