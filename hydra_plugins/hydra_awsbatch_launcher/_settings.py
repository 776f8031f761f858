"""hydra.launcher's options as the steps of a launch need them: the sweep dir, the code root, staging, what the
sweep engine and every job are told, the warm workers around the jobs' executor, and the checks every launcher
makes of them before anything is staged. Hydra's adapter (awsbatch_launcher.py) holds one and tells the story."""

from __future__ import annotations

import inspect
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydra_awsbatch_launcher._errors import LaunchError


class LaunchSettings:
    def __init__(self, params: DictConfig, config: DictConfig, task_function, conf_class: type,
                 writes_in_place: bool, checks_staging: bool) -> None:
        self.params, self.config, self.task_function = params, config, task_function
        self.conf_class = conf_class  # the dataclass of the launcher's options (config.py)
        self.writes_in_place = writes_in_place  # job dirs are written straight into the sweep dir
        self.checks_staging = checks_staging  # False: the launcher checks staging itself (aws_batch, last)

    @property
    def sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir)).absolute()

    @property
    def dry_run(self) -> bool:
        return bool(self.params.get("dry_run", False))

    def staging_root(self) -> str:
        from hydra_plugins.hydra_awsbatch_launcher._manifest import staging_root

        return staging_root(self.params.staging_uri, self.sweep_dir)

    def code_root(self) -> Path:
        if self.params.code_root:
            return Path(self.params.code_root).expanduser().resolve()
        try:
            return Path(inspect.getsourcefile(self.task_function)).resolve().parent
        except (TypeError, OSError):
            return Path(self.config.hydra.runtime.cwd).resolve()

    def manifest_settings(self) -> dict:
        """What `hydra-awsbatch` needs to find this sweep's jobs and outputs again."""
        from hydra_plugins.hydra_awsbatch_launcher import _manifest

        typed = OmegaConf.select(self.config, "hydra.overrides.task", default=None)  # as typed: ${...} unresolved
        command = OmegaConf.to_container(typed, resolve=False) if typed is not None else []
        return _manifest.settings_of(OmegaConf.to_container(self.params), self.code_root(), command)

    def engine_options(self, held) -> dict:
        """The sweep engine's options (_sweep.create / reopen); `held`: the sweep dir's lock, if taken."""
        return {"writes_in_place": self.writes_in_place, "held": held,
                "metrics_interval_s": float(self.params.metrics_interval_s),
                "terminate_on_interrupt": bool(self.params.get("terminate_on_interrupt", True))}

    def job_environment(self, asked=None) -> dict[str, str]:
        """What every job of the sweep (of resource set `asked`) is told: the user's variables and the options
        jobs read (_job.py)."""
        from hydra_plugins.hydra_awsbatch_launcher._job import JobSettings

        options = dict(self.params, **self.effective(asked)) if asked is not None else self.params
        return dict(self.params.environment, **JobSettings.of(options).environment())

    def resources(self, composer, job_overrides, first: int, check) -> list:
        """What each job's config asks (_resources.Resources), its sets checked by `check(sets, name)` (a list of
        problems) before anything is staged: a LaunchError naming the jobs whose config asks what cannot be."""
        import dataclasses

        from hydra_plugins.hydra_awsbatch_launcher import _resources

        keys = [f.name for f in dataclasses.fields(self.conf_class)]
        asked = _resources.of_jobs(composer, self.config, job_overrides, first, str(self.sweep_dir), keys)
        problems = check(_resources.sets(asked, range(first, first + len(asked))),
                         lambda resources, nums: _resources.askers(resources, nums, lambda n: job_overrides[n - first]))
        if problems:
            raise LaunchError(problems)
        return asked

    def effective(self, asked) -> dict:
        """A resource set's settings: what its jobs' configs say (null included: the default, the job definition's
        or the stack's, not the sweep's primary config's value), else the launcher's."""
        from hydra_plugins.hydra_awsbatch_launcher._resources import KEYS, Resources

        given = dict(asked.values) if isinstance(asked, Resources) else dict(asked or {})
        return {k: given[k] if k in given else self.params.get(k) for k in KEYS if k in self.params}

    def routed(self, make, resources_of, staging):
        """The sweep's executor: one of `make(resources, index)` per resource set (_resources.Routed), each in
        warm workers of its own where there are any (a pool per set); `resources_of(num)`: what the manifest
        says job `num` asked."""
        from hydra_plugins.hydra_awsbatch_launcher._resources import Resources, Routed

        return Routed(lambda asked, index: self.warm(make(asked, index), staging),
                      lambda num: Resources.of(resources_of(num)))

    def warm(self, workers, staging):
        """The executor of the sweep's trials: `workers` itself, or warm workers that it runs (workers=M)."""
        if not self.params.get("workers"):
            return workers
        from hydra_plugins.hydra_awsbatch_launcher._workers import WarmPool

        return WarmPool(workers, staging.pool, int(self.params.workers))

    def check(self, more: list[str] = ()) -> None:
        """What every executor refuses before anything is staged (and `more` problems): one line per problem."""
        from hydra_plugins.hydra_awsbatch_launcher import _check

        problems = _check.options(self.params, self.conf_class, self.code_root()) + list(more)
        if not problems and self.checks_staging:
            problems = _check.staging(self.staging_root(), self.params.staging_uri, self.dry_run)
        if problems:
            raise LaunchError(problems)
