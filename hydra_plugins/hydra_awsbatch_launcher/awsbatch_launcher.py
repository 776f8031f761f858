"""The launchers: Hydra's adapter. launch() reads as the story of a sweep: check, compose, stage, submit, wait.

`aws_batch_local` and `aws_batch` are one class with two executors; everything heavy is imported inside
the methods, since Hydra imports this module at start-up. The steps live in their own modules: _compose.py,
_stage.py, and the engine that owns the sweep and its manifest from there on, _sweep.py.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydra_awsbatch_launcher._errors import LaunchError

log = logging.getLogger(__name__)


class BaseAwsBatchLauncher(Launcher):
    """Hydra's Launcher, and the asynchronous launcher of async_api.py."""

    where = "abstract"  # in the "Launching N jobs ..." line
    writes_in_place = False  # True: job dirs are written straight into the sweep dir
    watching = True  # False: submit and return (aws_batch's wait=false)
    checks_staging = True  # aws_batch checks it last, after Batch's settings
    conf_class: type = object  # the dataclass of the launcher's options (config.py)

    def __init__(self, **params: Any) -> None:
        self.params = OmegaConf.create(params)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.composer = None  # _compose.ComposeOnce, on the sweep's config loader
        self.sweep = None  # the sweep engine (_sweep.Sweep), from the first jobs on
        self.stager = None  # the stage step (_stage.Stager) of that sweep
        self.claimed = (None, None)  # (the sweep dir, its lock), taken at setup where the dir exists

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra_plugins.hydra_awsbatch_launcher._compose import ComposeOnce
        from hydra_plugins.hydra_awsbatch_launcher._sweep import claim

        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.composer = ComposeOnce.install(hydra_context.config_loader) if hydra_context.config_loader else None
        if config.hydra.mode == RunMode.MULTIRUN:  # before the sweeper writes multirun.yaml into a busy dir
            self.claimed = (self.sweep_dir, claim(self.sweep_dir))

    # ---------------------------------------------------------------------------------------- the story
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's blocking call: submit, then wait for all."""
        try:
            futures = self.launch_async(job_overrides, initial_job_idx)
        except KeyboardInterrupt:  # while its jobs were still being submitted
            if self.sweep is not None:
                self.sweep.interrupted()
            raise
        if not futures or self.dry_run or not self.watching:  # nothing to wait for
            return [future.result() for future in futures]
        return self.sweep.wait(futures)

    def launch_async(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Future]:
        """Check, compose, stage and submit these jobs into this launcher's one sweep, while others may run;
        a `Future[JobReturn]` per job, resolved when it ends and is collected (by the sweep's one watcher)."""
        from hydra_plugins.hydra_awsbatch_launcher import _collect, _compose, _sweep
        from hydra_plugins.hydra_awsbatch_launcher.async_api import finished

        with _sweep.interrupts_kept():  # Ctrl-C while composing or staging: a KeyboardInterrupt, whatever unwinds
            setup_globals()
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            for chatty in ("botocore", "boto3", "s3transfer", "urllib3"):  # "Found credentials in ..." at INFO
                logging.getLogger(chatty).setLevel(logging.WARNING)
            if not job_overrides:
                log.info("Launching 0 jobs: nothing to do")
                return []
            if self.sweep is None:  # the sweep's first jobs: check everything before anything is spent
                self.check_settings()
                self.sweep_dir.mkdir(parents=True, exist_ok=True)
                self.open(_sweep.create(self.staging_root(), self.sweep_dir, self.executor,
                                        launcher=type(self).__name__, settings=self.manifest_settings(),
                                        **self.engine_options()))
            log.info(f"Launching {len(job_overrides)} jobs {self.where}")
            self.composer.check(self.config, job_overrides)  # all of them, before the first chunk goes out
            if not self.dry_run:
                self.sweep.announce(len(job_overrides))
            futures = []
            # the first jobs go out at once
            for start, stop in _compose.chunks(len(job_overrides), whole=self.dry_run):
                jobs = _compose.compose_batch(self.composer, self.config, job_overrides[start:stop],
                                              initial_job_idx + start, self.sweep_dir)
                staged = self.stager.stage(jobs)
                if self.dry_run:
                    self.show_dry_run(staged)
                    return [finished(_collect.unfinished_return(recipe.task)) for recipe in jobs.recipes]
                futures += self.sweep.submit(staged, watch=self.watching)
            if not self.watching:
                self.sweep.not_waiting()
            return futures

    def resume_async(self, nums: Sequence[int]) -> dict[int, Future]:
        """Continue the sweep of this sweep dir after the process that launched it died: new jobs join it, and
        jobs `nums` come back as futures where they still run (Batch) or ended with a result; those left out
        died with that process, or were never submitted."""
        from hydra_plugins.hydra_awsbatch_launcher import _sweep

        sweep = _sweep.reopen(self.sweep_dir, self.executor, **self.engine_options())
        if sweep is None:
            return {}  # the earlier process died before it submitted anything
        self.check_settings()
        self.open(sweep)
        return sweep.resume(list(nums))

    def open(self, sweep) -> None:
        """From now on, jobs go into `sweep`, staged next to its manifest."""
        from hydra_plugins.hydra_awsbatch_launcher._stage import Stager

        self.sweep = sweep
        self.stager = Stager(sweep.manifest.staging, self.sweep_dir, self.code_root(), self.task_function,
                             self.hydra_context.callbacks, self.params, dry_run=self.dry_run)

    def engine_options(self) -> dict:
        held = self.claimed[1] if self.claimed[0] == self.sweep_dir else None  # a sweeper may move the sweep dir
        return {"writes_in_place": self.writes_in_place, "held": held,
                "metrics_interval_s": float(self.params.metrics_interval_s),
                "terminate_on_interrupt": bool(self.params.get("terminate_on_interrupt", True))}

    def job_environment(self) -> dict[str, str]:
        from hydra_plugins.hydra_awsbatch_launcher._metrics import ENV_INTERVAL
        from hydra_plugins.hydra_awsbatch_launcher._nodes import ENV_PROCS_PER_NODE

        environment = dict(self.params.environment, **{ENV_INTERVAL: str(self.params.metrics_interval_s)})
        if self.params.get("procs_per_node"):  # the worker starts them (_nodes.py)
            environment[ENV_PROCS_PER_NODE] = str(self.params.procs_per_node)
        if self.params.get("workers"):
            from hydra_plugins.hydra_awsbatch_launcher._workers import ENV_FRESH, ENV_IDLE_TIMEOUT, ENV_TRIAL_TIMEOUT

            environment[ENV_IDLE_TIMEOUT] = str(self.params.idle_timeout_s)
            environment[ENV_FRESH] = "1" if self.params.fresh_interpreter else "0"
            if self.params.get("timeout_min"):  # each trial's, kept by its worker (the worker job lives on)
                environment[ENV_TRIAL_TIMEOUT] = str(max(60, int(self.params.timeout_min * 60)))
        return environment

    def warm(self, workers, staging):
        """The executor of the sweep's trials: `workers` itself, or warm workers that it runs (workers=M)."""
        if not self.params.get("workers"):
            return workers
        from hydra_plugins.hydra_awsbatch_launcher._workers import WarmPool

        return WarmPool(workers, staging.pool, int(self.params.workers))

    # ----------------------------------------------------------------------------------- async_api.py
    def job_times(self, num: int) -> tuple[float | None, float | None] | None:
        job = self.sweep.manifest.jobs_by_num().get(num) if self.sweep is not None else None
        return (job.started, job.stopped) if job is not None else None

    def capacity(self) -> int | None:  # async_api's optional call: warm workers; Batch runs every job it is given
        return int(self.params.get("workers") or 0) or None

    def job_latency(self, num: int) -> dict[str, float]:  # async_api's optional call
        job = self.sweep.manifest.jobs_by_num().get(num) if self.sweep is not None else None
        return job.latency() if job is not None else {}

    def mirror(self, name: str, data: bytes) -> None:
        if self.stager is not None:
            self.stager.mirror(name, data)

    def stop(self, nums: Sequence[int], reason: str, grace_s: float = 0.0) -> None:
        if self.sweep is not None:
            self.sweep.stop(reason, nums=set(nums), grace_s=grace_s)

    def metrics(self, num: int, since: int = 0) -> list[dict]:
        return self.sweep.metrics(num, since) if self.sweep is not None else []

    # ------------------------------------------------------------------------------------------- check
    def check_settings(self) -> None:
        """What every executor refuses before anything is staged: one line per problem."""
        from hydra_plugins.hydra_awsbatch_launcher import _check

        problems = self.check_options()
        if not problems and self.checks_staging:
            problems = _check.staging(self.staging_root(), self.params.staging_uri, self.dry_run)
        if problems:
            raise LaunchError(problems)

    def check_options(self) -> list[str]:
        from hydra_plugins.hydra_awsbatch_launcher import _check

        return _check.options(self.params, self.conf_class, self.code_root())

    # -------------------------------------------------------------------------------------- settings
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

        return _manifest.settings_of(OmegaConf.to_container(self.params), self.code_root())

    def executor(self, staging):
        """What runs this sweep's jobs (an _executor.Executor); `staging`: the sweep's (_manifest.Staging)."""
        raise NotImplementedError

    def show_dry_run(self, staged) -> None:
        raise NotImplementedError


class AwsBatchLocalLauncher(BaseAwsBatchLauncher):
    """Each job runs the Batch worker as a local process."""

    where = "as local processes (aws_batch_local)"

    @property
    def conf_class(self) -> type:
        from hydra_plugins.hydra_awsbatch_launcher.config import AwsBatchLocalLauncherConf

        return AwsBatchLocalLauncherConf

    def check_options(self) -> list[str]:
        problems = super().check_options()
        if self.params.get("max_parallel") is not None and int(self.params.max_parallel) < 1:
            problems.append(f"hydra.launcher.max_parallel={self.params.max_parallel}: at least 1 (null: one per CPU)")
        return problems

    def capacity(self) -> int | None:  # warm workers, or local processes (max_parallel; null: one per CPU)
        return super().capacity() or max(1, self.params.max_parallel or os.cpu_count() or 1)

    @property
    def writes_in_place(self) -> bool:
        return bool(self.params.in_place)

    def executor(self, staging):
        from hydra_plugins.hydra_awsbatch_launcher._local import LocalExecutor

        warm = int(self.params.get("workers") or 0)  # warm workers: all of them at once, logging apart
        logs = self.sweep_dir / ".logs" / ("workers" if warm else "")
        return self.warm(LocalExecutor(warm or self.params.max_parallel, logs, cwd=os.getcwd(),
                                       in_place=self.params.in_place, environment=self.job_environment(),
                                       nodes=int(self.params.get("nodes", 1)),
                                       procs_per_node=self.params.get("procs_per_node")), staging)


class AwsBatchLauncher(BaseAwsBatchLauncher):
    """Each launched batch of jobs becomes one AWS Batch array job."""

    where = "on AWS Batch"
    checks_staging = False  # checked last in check_settings, once Batch's settings are known

    @property
    def conf_class(self) -> type:
        from hydra_plugins.hydra_awsbatch_launcher.config import AwsBatchLauncherConf

        return AwsBatchLauncherConf

    @property
    def writes_in_place(self) -> bool:
        return bool(self.params.get("shared_sweep_dir", False))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._api = None

    @property
    def api(self):
        if self._api is None:
            from hydra_plugins.hydra_awsbatch_launcher._batch import BatchApi, BatchError

            try:
                self._api = BatchApi(self.params.region, self.params.profile)
            except BatchError as error:
                raise LaunchError([str(error)]) from None
        return self._api

    def check_settings(self) -> None:
        """Everything Batch would refuse, and what the stack gives, before anything is uploaded."""
        from hydra_plugins.hydra_awsbatch_launcher import _batch, _check, _storage

        try:
            super().check_settings()
            problems = []
        except LaunchError as error:
            problems = list(error.problems)
        p = self.params
        if not p.wait and p.get("workers"):
            problems.append(f"hydra.launcher.workers={p.workers} with wait=false: warm workers run only while the "
                            "launcher feeds them; use wait=true, or workers=0")
        elif not p.wait and "BasicSweeper" not in str(self.config.hydra.sweeper.get("_target_", "")):
            problems.append("hydra.launcher.wait=false hands no results to the sweeper; only the basic sweeper "
                            "can go on without them: use wait=true with this sweeper")
        problems += _batch.check_tags(dict(p.tags))
        session_problems = self.api.check_session()
        if session_problems:
            raise LaunchError(problems + session_problems)
        nodes = int(p.get("nodes", 1))
        if p.stack_name:
            try:
                outputs = self.api.stack_outputs(p.stack_name, multinode=nodes > 1)
            except _batch.BatchError as error:
                raise LaunchError([*problems, str(error)]) from None
            for setting, value in outputs.items():  # explicit settings win
                if p.get(setting) in (None, "", _batch.DEFAULT_LOG_GROUP if setting == "log_group" else None):
                    p[setting] = value
        queue_problems, compute_environments = self.api.check_queue(p.job_queue)
        definition_problems, definition = self.api.check_job_definition(p.job_definition)
        problems += queue_problems + definition_problems
        if not queue_problems and not definition_problems and nodes > 1:
            problems += _batch.check_multinode(nodes, p.job_queue, compute_environments, definition)
        problems += _batch.check_resources(p.vcpus, p.memory_mib, p.gpus, p.timeout_min, p.attempts,
                                           compute_environments)
        name = _batch.sanitize_job_name(p.job_name)
        if not _batch.JOB_NAME.match(name):
            problems.append(f"hydra.launcher.job_name='{p.job_name}' has no letter or digit to start a Batch job "
                            "name: set hydra.launcher.job_name")
        if not p.staging_uri or not _storage.is_s3(p.staging_uri):
            problems.append(f"hydra.launcher.staging_uri={p.staging_uri}: Batch jobs need an s3://bucket/prefix "
                            "(or set hydra.launcher.stack_name)")
        elif not problems:  # last: it writes (and deletes) one object; a dry run only looks
            problems = _check.staging(p.staging_uri, p.staging_uri, self.dry_run)
        if problems:
            raise LaunchError(problems)
        if _batch.loopback_endpoint() and (p.memory_mib is not None or p.vcpus is not None):
            log.warning(f"The local cloud runs its containers without limits: hydra.launcher.memory_mib="
                        f"{p.memory_mib} and vcpus={p.vcpus} are not enforced here, where AWS Batch would kill a job "
                        "that outgrows its memory")

    def manifest_settings(self) -> dict:
        return dict(super().manifest_settings(), region=self.api.session.region_name)

    @property
    def watching(self) -> bool:
        return bool(self.params.wait)

    def requests(self, sweep_id: str, payload_uri: str, first_num: int, size: int) -> list[tuple[int, int, dict]]:
        """The SubmitJob request(s) of one staged payload of sweep `sweep_id`."""
        from hydra_plugins.hydra_awsbatch_launcher import _batch
        from hydra_plugins.hydra_awsbatch_launcher.worker import ENV_IN_PLACE

        p = self.params
        environment = dict(self.job_environment(), **({ENV_IN_PLACE: "1"} if self.writes_in_place else {}))
        endpoint = _batch.loopback_endpoint()
        if endpoint:  # the local cloud: containers reach moto on this machine with dummy credentials
            environment.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION=self.api.session.region_name,
                               **_batch.DUMMY_CREDENTIALS)
        return _batch.submit_requests(
            job_name=_batch.sanitize_job_name(p.job_name), queue=p.job_queue, job_definition=p.job_definition,
            payload_uri=payload_uri, sweep_id=sweep_id, first=first_num, size=size,
            environment=environment, resources={"VCPU": p.vcpus, "MEMORY": p.memory_mib, "GPU": p.gpus},
            timeout_s=self.timeout_s(), attempts=p.attempts,
            tags={**_batch.automatic_tags(sweep_id, p.job_name), **p.tags},
            share_identifier=p.share_identifier, scheduling_priority=p.scheduling_priority,
            nodes=int(p.get("nodes", 1)))

    def timeout_s(self) -> int | None:
        """A job's Batch timeout: the trial's (timeout_min); a warm worker's is WORKER_LIFE_S (its trials keep
        theirs), since the job definition's would end it mid-sweep."""
        if self.params.get("workers"):
            from hydra_plugins.hydra_awsbatch_launcher._workers import WORKER_LIFE_S

            return WORKER_LIFE_S
        return None if self.params.timeout_min is None else max(60, int(self.params.timeout_min * 60))

    def show_dry_run(self, staged) -> None:
        import json

        for _, _, request in self.requests(self.sweep.manifest.sweep_id, staged.payload_uri, staged.first,
                                           len(staged.nums)):
            print(f"SubmitJob request (dry run, nothing submitted):\n{json.dumps(request, indent=2)}")
        log.info("Dry run: nothing was uploaded or submitted")

    def executor(self, staging):
        import functools

        from hydra_plugins.hydra_awsbatch_launcher import _batch

        return self.warm(_batch.BatchExecutor(self.api, self.params.poll_interval_s,
                                              request_for=functools.partial(self.requests, staging.sweep_id)), staging)
