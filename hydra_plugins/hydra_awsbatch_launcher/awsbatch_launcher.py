"""The launchers. launch() reads as the story of a sweep: check, compose, stage, submit, watch, collect.

`aws_batch_local` and `aws_batch` are one class with two executors; everything heavy is imported inside
the methods, since Hydra imports this module at start-up.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
RESERVED_ENV_PREFIXES = ("AWS_BATCH_", "HYDRA_AWSBATCH_")


class LaunchError(Exception):
    """Settings to fix before anything is staged or submitted: one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("cannot launch the sweep:\n  - " + "\n  - ".join(problems))
        self.problems = problems


class ComposeOnce:
    """Hydra's sweepers compose every config of a batch to check it, then hand the launcher the overrides
    alone, which it must compose again: each config twice, about 50 ms each. Installed on the sweep's config
    loader, this keeps what the sweeper composed so that the launcher takes it instead: the very objects that
    `load_sweep_config` returned, composed once. While composing takes long, it says how far it got."""

    KEEP = 100_000  # configs composed and not yet launched (a sweeper that checks more than it launches)
    EVERY_S = 5.0

    def __init__(self, config_loader) -> None:
        self.compose = config_loader.load_sweep_config  # Hydra's own, bound
        self.kept: dict[tuple, DictConfig] = {}
        self.burst_start = self.last_call = self.last_note = 0.0
        self.burst = 0

    @classmethod
    def install(cls, config_loader) -> ComposeOnce:
        """On this config loader (once): the sweeper's calls go through it from now on."""
        current = config_loader.load_sweep_config
        if isinstance(current, cls):
            return current
        cache = cls(config_loader)
        config_loader.load_sweep_config = cache  # this instance only; Hydra's class is untouched
        return cache

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = self.compose(master_config, sweep_overrides)
        if len(self.kept) >= self.KEEP:
            self.kept.pop(next(iter(self.kept)))
        self.kept[(id(master_config), tuple(sweep_overrides))] = config
        self.note()
        return config

    def take(self, master_config: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """The config the sweeper composed for these overrides, or a fresh one."""
        config = self.kept.pop((id(master_config), tuple(overrides)), None)
        if config is None:
            config = self.compose(master_config, list(overrides))
            self.note()
        return config

    def note(self) -> None:
        now = time.monotonic()
        if now - self.last_call > 1.0:  # a new burst of composing
            self.burst_start, self.burst, self.last_note = now, 0, now
        self.burst += 1
        self.last_call = now
        if now - self.last_note >= self.EVERY_S:
            self.last_note = now
            log.info(f"Composing configs: {self.burst} so far ({self.burst / (now - self.burst_start):.0f}/s)")


class BaseAwsBatchLauncher(Launcher):
    where = "abstract"  # in the "Launching N jobs ..." line
    writes_in_place = False  # True: job dirs are written straight into the sweep dir

    def __init__(self, **params: Any) -> None:
        self.params = OmegaConf.create(params)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.composer: ComposeOnce | None = None
        self.manifest = None
        self.sweep = None  # the sweep engine, from the first jobs submitted on
        self._lock = None  # the sweep dir's lock file, held while this launcher lives

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.composer = ComposeOnce.install(hydra_context.config_loader) if hydra_context.config_loader else None

    # ---------------------------------------------------------------------------------------- the story
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's blocking call: submit, then wait for all."""
        futures = self.launch_async(job_overrides, initial_job_idx)
        if self.sweep is None or not self.watching:  # a dry run or wait=false: nothing to wait for
            return [future.result() for future in futures]
        return self.sweep.wait(futures)

    def launch_async(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Future]:
        """Check, compose, stage and submit these jobs into this launcher's one sweep, while others may run;
        a `Future[JobReturn]` per job, resolved when it ends and is collected (by the sweep's one watcher)."""
        from hydra_plugins.hydra_awsbatch_launcher import _sweep

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        for chatty in ("botocore", "boto3", "s3transfer", "urllib3"):  # "Found credentials in ..." at INFO
            logging.getLogger(chatty).setLevel(logging.WARNING)
        if not job_overrides:
            log.info("Launching 0 jobs: nothing to do")
            return []
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        if self.manifest is None:  # the sweep's first jobs: check everything before anything is spent
            self.check_settings()
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.lock_sweep_dir(sweep_dir)
        log.info(f"Launching {len(job_overrides)} jobs {self.where}")

        configs = self.compose(job_overrides, initial_job_idx, sweep_dir)
        payload_uri = self.stage(configs, initial_job_idx, sweep_dir)
        if self.dry_run:
            self.show_dry_run(payload_uri, initial_job_idx, len(configs))
            return [_sweep.finished(_sweep.unfinished_return(config)) for config in configs]
        if self.sweep is None:
            self.sweep = self.engine()
        return self.sweep.submit(configs, payload_uri, initial_job_idx, watch=self.watching)

    def resume_async(self, nums: Sequence[int]) -> dict[int, Future]:
        """Continue the sweep of this sweep dir after the process that launched it died: its manifest becomes
        this launcher's, new jobs join it, and jobs `nums` come back as futures where they still run (Batch)
        or ended with a result; those left out died with that process, or were never submitted."""
        from hydra_plugins.hydra_awsbatch_launcher import _stage

        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        try:
            manifest = _stage.Manifest.from_json((sweep_dir / _stage.MANIFEST).read_text())
        except FileNotFoundError:
            return {}  # the earlier process died before it submitted anything
        self.check_settings()
        self.lock_sweep_dir(sweep_dir)
        manifest.sweep_dir = str(sweep_dir)
        manifest.code_uri = ""  # new jobs ship the code as it is now (unchanged code is not uploaded again)
        self.manifest = manifest
        log.info(f"Resuming sweep {manifest.sweep_id} ({len(manifest.jobs)} jobs so far), staging at "
                 f"{manifest.staging_uri}")
        self.sweep = self.engine()
        return self.sweep.resume(list(nums))

    def engine(self):
        """The sweep engine of this launcher's manifest, with its executor."""
        from hydra_plugins.hydra_awsbatch_launcher import _sweep

        return _sweep.Sweep(self.manifest, self.executor(), writes_in_place=self.writes_in_place,
                            terminate_on_interrupt=bool(self.params.get("terminate_on_interrupt", True)))

    watching = True  # False: submit and return (aws_batch's wait=false)

    def executor(self):
        """What runs this sweep's jobs (_sweep.Executor)."""
        raise NotImplementedError

    def show_dry_run(self, payload_uri: str, first: int, size: int) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- check
    conf_class: type = object  # the dataclass of the launcher's options (config.py)

    def check_settings(self) -> None:
        """What every executor refuses before anything is staged: one line per problem."""
        from hydra_plugins.hydra_awsbatch_launcher import _storage

        problems = self.check_options()
        problems += [f"hydra.launcher.environment.{name}: names starting with {prefix} are reserved for the "
                     "launcher; rename it" for name in self.params.environment
                     for prefix in RESERVED_ENV_PREFIXES if str(name).startswith(prefix)]
        root = self.code_root()
        if not root.is_dir():
            problems.append(f"hydra.launcher.code_root={self.params.code_root}: no such folder ({root}); point it "
                            "at the folder of your code")
        if not problems and self.checks_staging:
            problem = _storage.check_writable(self.staging_root(), write=not self.dry_run)
            if problem:
                problems.append(f"hydra.launcher.staging_uri={self.params.staging_uri}: {problem}")
        if problems:
            raise LaunchError(problems)

    checks_staging = True  # aws_batch checks it last, after Batch's settings

    def check_options(self) -> list[str]:
        """Misspelt options (`+hydra.launcher.max_paralel=2` is otherwise silently ignored)."""
        known = [f.name for f in dataclasses.fields(self.conf_class)]
        problems = []
        for name in self.params:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                problems.append(f"hydra.launcher.{name}: not an option of this launcher"
                                + (f"; did you mean hydra.launcher.{close[0]}?" if close else
                                   f"; the options are: {', '.join(k for k in known if k != '_target_')}"))
        return problems

    def lock_sweep_dir(self, sweep_dir: Path) -> None:
        """One sweep at a time in a sweep dir: a second one would overwrite the first's manifest."""
        import fcntl

        if self._lock is not None:
            return
        lock = open(sweep_dir / ".hydra-awsbatch.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise LaunchError([f"hydra.sweep.dir={sweep_dir}: another sweep ({holder}) is running into this folder; "
                               "wait for it to end, or give this one another hydra.sweep.dir"]) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        self._lock = lock

    # ------------------------------------------------------------------------------------------ compose
    def compose(self, job_overrides, initial_job_idx: int, sweep_dir: Path) -> list[DictConfig]:
        configs = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.composer.take(self.config, overrides)
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{num}"
                sweep_config.hydra.job.num = num
                sweep_config.hydra.sweep.dir = str(sweep_dir)  # resolved once, here: ${now:} must not move
            configs.append(sweep_config)
        return configs

    # -------------------------------------------------------------------------------------------- stage
    def staging_root(self, sweep_dir: Path | None = None) -> str:
        """`staging_uri` (a relative folder made absolute: jobs run elsewhere), else SWEEP_DIR/.staging."""
        from hydra_plugins.hydra_awsbatch_launcher import _storage

        uri = self.params.staging_uri
        if not uri:
            sweep_dir = sweep_dir or Path(str(self.config.hydra.sweep.dir)).absolute()
            return str(sweep_dir / ".staging")
        return uri if _storage.is_s3(uri) else str(_storage.local_path(uri).expanduser().absolute())

    def code_root(self) -> Path:
        if self.params.code_root:
            return Path(self.params.code_root).expanduser().resolve()
        try:
            return Path(inspect.getsourcefile(self.task_function)).resolve().parent
        except (TypeError, OSError):
            return Path(self.config.hydra.runtime.cwd).resolve()

    @property
    def dry_run(self) -> bool:
        return bool(self.params.get("dry_run", False))

    def stage(self, configs: list[DictConfig], first_num: int, sweep_dir: Path) -> str:
        """Code package, payload and manifest into staging (a dry run writes nothing); the payload's URI."""
        from hydra.core.singleton import Singleton

        from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage, _sweep

        if self.manifest is None:
            sweep_id = _stage.new_sweep_id()
            self.manifest = _stage.Manifest(sweep_id, self.staging_root(sweep_dir), str(sweep_dir),
                                            launcher=type(self).__name__, settings=self.manifest_settings())
            log.info(f"Sweep {sweep_id}, staging at {self.manifest.staging_uri}")
        staging = _stage.Staging(self.manifest.staging_uri, self.manifest.sweep_id)

        root = self.code_root()
        task = _stage.ScriptFunction.of(self.task_function, root)
        if not self.manifest.code_uri:  # once per sweep: every job of it runs the same code
            self.manifest.code_uri = self.stage_code(root, task, sweep_dir, staging)
        code_uri = self.manifest.code_uri

        header = {"code_uri": code_uri, "code_root": str(root), "sync_outputs": self.params.sync_outputs}
        state = Singleton.get_state()
        _stage.without_foreign_plugins(state, configs)  # the user's other Hydra plugins stay home
        # The job calls run_job, which needs the callbacks alone: the config loader (and the configs it cached,
        # other plugins' among them) stays home.
        context = HydraContext(config_loader=None, callbacks=self.hydra_context.callbacks)
        body = _stage.PayloadBody(context, task or self.task_function, state, configs)
        payload_uri = staging.payload(first_num)
        # pickled even in a dry run: what cannot pickle fails now
        payload, modules = _stage.dump_payload(header, body)
        needed = sorted(m for m in modules if _stage.is_foreign_plugin(m))
        if needed:
            log.warning(f"The jobs need {', '.join(needed)} (e.g. a callback of hydra.callbacks): the job image "
                        "must have it installed")
        if self.dry_run:
            return payload_uri
        _storage.write_bytes(payload_uri, payload)

        self.manifest.batches.append(_stage.BatchRecord(first_num, len(configs), payload_uri))
        for config in configs:
            self.manifest.jobs.append(_stage.JobRecord(config.hydra.job.num, list(config.hydra.overrides.task),
                                                       _stage.job_subdir(config), _sweep.STAGED))
        self.manifest.save()
        return payload_uri

    def stage_code(self, root: Path, task, sweep_dir: Path, staging) -> str:
        """The code package of `root`, uploaded unless staging has it already (a dry run uploads nothing)."""
        from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage

        # Outputs of this very sweep must not ship, nor change the package's hash from one run to the next.
        own = [Path(p).resolve() for p in (sweep_dir, self.manifest.staging_uri) if not _storage.is_s3(str(p))]
        exclude = [*self.params.code_exclude, *(p.relative_to(root).as_posix() for p in own
                                                if p.is_relative_to(root) and p != root)]
        package = _stage.package_code(root, self.params.code_include, exclude, self.params.use_gitignore,
                                      self.params.code_max_mib)
        if task is not None and task.relpath not in package.files:
            raise LaunchError([f"the code package of {root} leaves out your script {task.relpath} "
                               f"({len(package.files)} files packed): a .gitignore there ignores it. Ship it "
                               f"with hydra.launcher.code_include=[{task.relpath}], or set "
                               "hydra.launcher.use_gitignore=false"])
        code_uri = staging.code(package.sha256)
        uploaded = not self.dry_run and not _storage.exists(code_uri)
        if uploaded:
            _storage.write_bytes(code_uri, package.data)
        log.info(f"Code package of {root}: {len(package.files)} files, {len(package.data) / 1024:.1f} KiB, "
                 f"{'uploaded' if uploaded else 'not uploaded (dry run)' if self.dry_run else 'already staged'}"
                 f" as {code_uri}")
        return code_uri

    def manifest_settings(self) -> dict:
        """What `hydra-awsbatch` needs to find this sweep's jobs and outputs again."""
        from hydra_plugins.hydra_awsbatch_launcher import _stage

        params = OmegaConf.to_container(self.params)
        keep = ("sync_outputs", "sync_exclude", "region", "profile", "log_group", "shared_sweep_dir")
        settings = {k: params[k] for k in keep if k in params}
        root = self.code_root()
        try:  # attach imports the script by file when a result holds one of its classes
            settings.update(code_root=str(root), script=_stage.script_relpath(root))
        except (AttributeError, KeyError, TypeError, ValueError):
            settings.update(code_root=str(root))
        return settings


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

    @property
    def writes_in_place(self) -> bool:
        return bool(self.params.in_place)

    def executor(self):
        from hydra_plugins.hydra_awsbatch_launcher._local import LocalExecutor

        return LocalExecutor(self.params.max_parallel, Path(self.manifest.sweep_dir) / ".logs", cwd=os.getcwd(),
                             in_place=self.params.in_place, environment=dict(self.params.environment))


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
        from hydra_plugins.hydra_awsbatch_launcher import _batch, _storage

        try:
            super().check_settings()
            problems = []
        except LaunchError as error:
            problems = list(error.problems)
        p = self.params
        if not p.wait and "BasicSweeper" not in str(self.config.hydra.sweeper.get("_target_", "")):
            problems.append("hydra.launcher.wait=false hands no results to the sweeper; only the basic sweeper "
                            "can go on without them: use wait=true with this sweeper")
        problems += _batch.check_tags(dict(p.tags))
        session_problems = self.api.check_session()
        if session_problems:
            raise LaunchError(problems + session_problems)
        if p.stack_name:
            try:
                outputs = self.api.stack_outputs(p.stack_name)
            except _batch.BatchError as error:
                raise LaunchError([*problems, str(error)]) from None
            for setting, value in outputs.items():  # explicit settings win
                if p.get(setting) in (None, "", _batch.DEFAULT_LOG_GROUP if setting == "log_group" else None):
                    p[setting] = value
        queue_problems, compute_environments = self.api.check_queue(p.job_queue)
        definition_problems, _ = self.api.check_job_definition(p.job_definition)
        problems += queue_problems + definition_problems
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
            problem = _storage.check_writable(p.staging_uri, write=not self.dry_run)
            if problem:
                problems.append(f"hydra.launcher.staging_uri={p.staging_uri}: {problem}")
        if problems:
            raise LaunchError(problems)

    def manifest_settings(self) -> dict:
        return dict(super().manifest_settings(), region=self.api.session.region_name)

    @property
    def watching(self) -> bool:
        return bool(self.params.wait)

    def requests(self, payload_uri: str, first_num: int, size: int) -> list[tuple[int, int, dict]]:
        """The SubmitJob request(s) of one staged payload."""
        from hydra_plugins.hydra_awsbatch_launcher import _batch
        from hydra_plugins.hydra_awsbatch_launcher.worker import ENV_IN_PLACE

        p = self.params
        environment = dict(p.environment, **({ENV_IN_PLACE: "1"} if self.writes_in_place else {}))
        endpoint = _batch.loopback_endpoint()
        if endpoint:  # the local cloud: containers reach moto on this machine with dummy credentials
            environment.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION=self.api.session.region_name,
                               **_batch.DUMMY_CREDENTIALS)
        return _batch.submit_requests(
            job_name=_batch.sanitize_job_name(p.job_name), queue=p.job_queue, job_definition=p.job_definition,
            payload_uri=payload_uri, sweep_id=self.manifest.sweep_id, first=first_num, size=size,
            environment=environment, resources={"VCPU": p.vcpus, "MEMORY": p.memory_mib, "GPU": p.gpus},
            timeout_s=None if p.timeout_min is None else max(60, int(p.timeout_min * 60)), attempts=p.attempts,
            tags={**_batch.automatic_tags(self.manifest.sweep_id, p.job_name), **p.tags},
            share_identifier=p.share_identifier, scheduling_priority=p.scheduling_priority)

    def show_dry_run(self, payload_uri: str, first: int, size: int) -> None:
        import json

        for _, _, request in self.requests(payload_uri, first, size):
            print(f"SubmitJob request (dry run, nothing submitted):\n{json.dumps(request, indent=2)}")
        log.info("Dry run: nothing was uploaded or submitted")

    def executor(self):
        from hydra_plugins.hydra_awsbatch_launcher import _batch

        return _batch.BatchExecutor(self.api, self.params.poll_interval_s, request_for=self.requests)
