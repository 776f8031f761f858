"""The launchers: Hydra's adapter. launch() reads as the story of a sweep: check, compose, stage, submit, wait.

`aws_batch_local` and `aws_batch` are one class with two executors; everything heavy is imported inside
the methods, since Hydra imports this module at start-up. The steps live in their own modules: _compose.py,
_stage.py, and the engine that owns the sweep and its manifest from there on, _sweep.py.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydra_awsbatch_launcher._errors import LaunchError
from hydra_plugins.hydra_awsbatch_launcher._settings import LaunchSettings

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
        self.settings: LaunchSettings | None = None  # hydra.launcher's options as the steps need them

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra_plugins.hydra_awsbatch_launcher._compose import ComposeOnce
        from hydra_plugins.hydra_awsbatch_launcher._sweep import claim

        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.settings = LaunchSettings(self.params, config, task_function, self.conf_class, self.writes_in_place,
                                       self.checks_staging)
        self.composer = ComposeOnce.install(hydra_context.config_loader) if hydra_context.config_loader else None
        if config.hydra.mode == RunMode.MULTIRUN:  # before the sweeper writes multirun.yaml into a busy dir
            self.claimed = (self.settings.sweep_dir, claim(self.settings.sweep_dir))

    # ---------------------------------------------------------------------------------------- the story
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's blocking call: submit, then wait for all."""
        try:
            futures = self.launch_async(job_overrides, initial_job_idx)
        except KeyboardInterrupt:  # while its jobs were still being submitted
            if self.sweep is not None:
                self.sweep.interrupted()
            raise
        if not futures or self.settings.dry_run or not self.watching:  # nothing to wait for
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
                self.settings.sweep_dir.mkdir(parents=True, exist_ok=True)
                self.open(_sweep.create(self.settings.staging_root(), self.settings.sweep_dir, self.executor,
                                        launcher=type(self).__name__, settings=self.manifest_settings(),
                                        **self.engine_options()))
            log.info(f"Launching {len(job_overrides)} jobs {self.where}")
            self.composer.check(self.config, job_overrides)  # all of them, before the first chunk goes out
            resources = self.settings.resources(self.composer, job_overrides, initial_job_idx, self.check_resources)
            if not self.settings.dry_run:
                self.sweep.announce(len(job_overrides))
            futures = []
            # the first jobs go out at once
            for start, stop in _compose.chunks(len(job_overrides), whole=self.settings.dry_run):
                jobs = _compose.compose_batch(self.composer, self.config, job_overrides[start:stop],
                                              initial_job_idx + start, self.settings.sweep_dir, resources[start:stop])
                staged = self.stager.stage(jobs)
                if self.settings.dry_run:
                    self.show_dry_run(staged)
                    return [finished(_collect.unfinished_return(recipe.task)) for recipe in jobs.recipes]
                futures += self.sweep.submit(staged, watch=self.watching)
            if not self.watching:
                where = shlex.quote(str(self.settings.sweep_dir))
                log.info(f"Not waiting (wait=false). Follow the sweep with: hydra-awsbatch status {where}; collect "
                         f"it with: hydra-awsbatch attach {where}")
            return futures

    def resume_async(self, nums: Sequence[int]) -> dict[int, Future]:
        """Continue the sweep of this sweep dir after the process that launched it died: new jobs join it, and
        jobs `nums` come back as futures where they still run (Batch) or ended with a result; those left out
        died with that process, or were never submitted."""
        from hydra_plugins.hydra_awsbatch_launcher import _sweep

        sweep = _sweep.reopen(self.settings.sweep_dir, self.executor, **self.engine_options())
        if sweep is None:
            return {}  # the earlier process died before it submitted anything
        self.check_settings()
        self.open(sweep)
        return sweep.resume(list(nums))

    def open(self, sweep) -> None:
        """From now on, jobs go into `sweep`, staged next to its manifest."""
        from hydra_plugins.hydra_awsbatch_launcher._stage import Stager

        self.sweep = sweep
        settings = self.settings
        self.stager = Stager(sweep.manifest.staging, settings.sweep_dir, settings.code_root(), self.task_function,
                             self.hydra_context.callbacks, self.params, dry_run=settings.dry_run)

    def engine_options(self) -> dict:
        held = self.claimed[1] if self.claimed[0] == self.settings.sweep_dir else None  # a sweeper may move it
        return self.settings.engine_options(held)

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

    # -------------------------------------------------------------------------------------- settings
    def check_settings(self) -> None:
        self.settings.check()

    def manifest_settings(self) -> dict:
        return self.settings.manifest_settings()

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

    def check_settings(self) -> None:
        parallel = self.params.get("max_parallel")
        self.settings.check([f"hydra.launcher.max_parallel={parallel}: at least 1 (null: one per CPU)"]
                            if parallel is not None and int(parallel) < 1 else [])

    def capacity(self) -> int | None:  # warm workers, or local processes (max_parallel; null: one per CPU)
        return super().capacity() or max(1, self.params.max_parallel or os.cpu_count() or 1)

    @property
    def writes_in_place(self) -> bool:
        return bool(self.params.in_place)

    def check_resources(self, sets: dict, name) -> list[str]:
        from hydra_plugins.hydra_awsbatch_launcher import _check

        return _check.local_sets(sets, self.settings.effective, name)

    def executor(self, staging):
        """Local processes per resource set, at most max_parallel at once in all; warm workers: a pool per set."""
        from hydra_plugins.hydra_awsbatch_launcher._local import LocalExecutor

        warm, everyone = int(self.params.get("workers") or 0), []  # warm workers: all of them at once, logging apart

        def make(asked, index: int):
            values = self.settings.effective(asked)
            logs = self.settings.sweep_dir / ".logs" / ((f"workers-{index}" if index else "workers") if warm else "")
            return LocalExecutor(warm or self.params.max_parallel, logs, cwd=os.getcwd(), in_place=self.params.in_place,
                                 environment=self.settings.job_environment(asked), nodes=int(values.get("nodes") or 1),
                                 procs_per_node=values.get("procs_per_node"), everyone=None if warm else everyone,
                                 threads=int(values["vcpus"]) if values.get("vcpus") else None)
        return self.settings.routed(make, lambda num: self.sweep.manifest.job(num).resources, staging)


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
        self.outputs: dict[str, str] = {}  # the stack's outputs (hydra.launcher.stack_name), once resolved

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
        """The shared options; then Batch's settings, resolved from the stack, then checked (_check.py), before
        anything is uploaded."""
        from hydra_plugins.hydra_awsbatch_launcher import _batch, _check

        try:
            super().check_settings()
            problems = []
        except LaunchError as error:
            problems = list(error.problems)
        p, session = self.params, self.api.check_session()
        if session:  # nothing else can be asked of AWS
            raise LaunchError(problems + session)
        try:
            self.outputs = _check.resolve(p, self.api)
        except _batch.BatchError as error:
            raise LaunchError([*problems, str(error)]) from None
        problems += _check.batch(p, self.api, str(self.config.hydra.sweeper.get("_target_", "")), self.settings.dry_run)
        if problems:
            raise LaunchError(problems)
        if _batch.loopback_endpoint() and (p.memory_mib is not None or p.vcpus is not None):
            log.warning(f"The local cloud runs its containers without limits: hydra.launcher.memory_mib="
                        f"{p.memory_mib} and vcpus={p.vcpus} are not enforced here, where AWS Batch would kill a job "
                        "that outgrows its memory")

    def effective(self, asked) -> dict:
        """A resource set's Batch settings: its own, else the launcher's, with the stack's outputs."""
        from hydra_plugins.hydra_awsbatch_launcher import _check

        return _check.on_stack(self.settings.effective(asked), asked, self.params, self.outputs)

    def check_resources(self, sets: dict, name) -> list[str]:
        from hydra_plugins.hydra_awsbatch_launcher import _check
        from hydra_plugins.hydra_awsbatch_launcher._resources import Resources

        return _check.batch_sets(sets, self.effective, self.api, name, self.effective(Resources()))

    def manifest_settings(self) -> dict:
        return dict(super().manifest_settings(), region=self.api.session.region_name)

    @property
    def watching(self) -> bool:
        return bool(self.params.wait)

    def submit_spec(self, sweep_id: str, asked):
        """What every SubmitJob of sweep `sweep_id` for jobs of resource set `asked` carries (_batch.SubmitSpec)."""
        from hydra_plugins.hydra_awsbatch_launcher import _batch
        from hydra_plugins.hydra_awsbatch_launcher._job import IN_PLACE

        p, v = self.params, self.effective(asked)
        environment = {**self.threads(v), **self.settings.job_environment(asked),
                       **({IN_PLACE: "1"} if self.writes_in_place else {})}
        endpoint = _batch.loopback_endpoint()
        if endpoint:  # the local cloud: containers reach moto on this machine with dummy credentials
            environment.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION=self.api.session.region_name,
                               **_batch.DUMMY_CREDENTIALS)
        return _batch.SubmitSpec(
            _batch.sanitize_job_name(p.job_name), v["job_queue"], v["job_definition"], environment,
            {"VCPU": v["vcpus"], "MEMORY": v["memory_mib"], "GPU": v["gpus"]}, self.timeout_s(v["timeout_min"]),
            p.attempts, {**_batch.automatic_tags(sweep_id, p.job_name), **p.tags}, p.share_identifier,
            p.scheduling_priority, int(v.get("nodes") or 1))

    def threads(self, v: dict) -> dict:
        """OMP_NUM_THREADS and the like for a job of settings `v`: its vCPUs (else its job definition's) over its
        processes on a node, at least 1; the user's environment, merged over them, wins."""
        from hydra_plugins.hydra_awsbatch_launcher import _batch
        from hydra_plugins.hydra_awsbatch_launcher._job import THREAD_VARIABLES

        vcpus = v.get("vcpus")
        if vcpus is None:
            vcpus = _batch.definition_vcpus(self.api.check_job_definition(v["job_definition"])[1])
        if not vcpus:
            return {}
        per_node = int(v.get("procs_per_node") or v.get("gpus") or 1)
        return dict.fromkeys(THREAD_VARIABLES, str(max(1, int(float(vcpus)) // per_node)))

    def timeout_s(self, timeout_min) -> int | None:
        """A job's Batch timeout: the trial's (timeout_min); a warm worker's is WORKER_LIFE_S (its trials keep
        theirs), since the job definition's would end it mid-sweep."""
        if self.params.get("workers"):
            from hydra_plugins.hydra_awsbatch_launcher._workers import WORKER_LIFE_S

            return WORKER_LIFE_S
        return None if timeout_min is None else max(60, int(timeout_min * 60))

    def show_dry_run(self, staged) -> None:
        """The resource sets of the jobs, then each SubmitJob request (one per run of neighbours of a set)."""
        import json

        from hydra_plugins.hydra_awsbatch_launcher import _resources

        sweep_id = self.sweep.manifest.sweep_id
        asked = staged.jobs.resources or [_resources.Resources()] * len(staged.nums)
        groups = _resources.sets(asked, staged.nums)
        print(f"Resource sets (dry run, nothing submitted): {len(groups)}")
        for resources, nums in groups.items():
            values = " ".join(f"{k}={_resources.show(v)}" for k, v in self.effective(resources).items()
                              if v is not None)
            print(f"  {len(nums)} job(s) #{_resources.numbers(nums)}: {values}")
        for first, size, resources in _resources.runs(staged.first, asked):
            for _, _, request in self.submit_spec(sweep_id, resources).requests(staged.payload_uri, sweep_id, first,
                                                                                size, first - staged.first):
                print(f"SubmitJob request (dry run, nothing submitted):\n{json.dumps(request, indent=2)}")
        log.info("Dry run: nothing was uploaded or submitted")

    def executor(self, staging):
        """One watcher per resource set (its own SubmitSpec); warm workers: a pool per set."""
        from hydra_plugins.hydra_awsbatch_launcher import _batch

        sweep_id = staging.sweep_id  # the spec made at each submission: a resumed sweep's executor is made before
        # its settings are resolved from the stack (resume_async)

        def make(asked, index: int):
            return _batch.BatchExecutor(self.api, self.params.poll_interval_s, request_for=lambda payload, first, size,
                                        offset=0: self.submit_spec(sweep_id, asked).requests(payload, sweep_id, first,
                                                                                            size, offset))
        return self.settings.routed(make, lambda num: self.sweep.manifest.job(num).resources, staging)
