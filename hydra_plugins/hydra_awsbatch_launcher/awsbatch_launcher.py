"""The launchers. launch() reads as the story of a sweep: check, compose, stage, submit, watch, collect.

`aws_batch_local` and `aws_batch` are one class with two executors; everything heavy is imported inside
the methods, since Hydra imports this module at start-up.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)
RESERVED_ENV_PREFIXES = ("AWS_BATCH_", "HYDRA_AWSBATCH_")


class LaunchError(Exception):
    """Settings to fix before anything is staged or submitted: one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("cannot launch the sweep:\n  - " + "\n  - ".join(problems))
        self.problems = problems


class BaseAwsBatchLauncher(Launcher):
    where = "abstract"  # in the "Launching N jobs ..." line
    writes_in_place = False  # True: job dirs are written straight into the sweep dir

    def __init__(self, **params: Any) -> None:
        self.params = OmegaConf.create(params)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.manifest = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    # ---------------------------------------------------------------------------------------- the story
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        for chatty in ("botocore", "boto3", "s3transfer", "urllib3"):  # "Found credentials in ..." at INFO
            logging.getLogger(chatty).setLevel(logging.WARNING)
        self.check_settings()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs {self.where}")

        configs = self.compose(job_overrides, initial_job_idx, sweep_dir)
        payload_uri = self.stage(configs, initial_job_idx, sweep_dir)
        executor = self.submit(payload_uri, initial_job_idx, len(configs))
        if executor is None:  # a dry run, or wait=false
            return [self.unfinished_return(config) for config in configs]
        states = self.watch(executor, len(configs))
        return self.collect(configs, states, executor)

    # ------------------------------------------------------------------------------------------- check
    def check_settings(self) -> None:
        problems = [f"hydra.launcher.environment.{name}: names starting with {prefix} are reserved for the "
                    "launcher; rename it" for name in self.params.environment
                    for prefix in RESERVED_ENV_PREFIXES if str(name).startswith(prefix)]
        if problems:
            raise LaunchError(problems)

    # ------------------------------------------------------------------------------------------ compose
    def compose(self, job_overrides, initial_job_idx: int, sweep_dir: Path) -> list[DictConfig]:
        configs = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{num}"
                sweep_config.hydra.job.num = num
                sweep_config.hydra.sweep.dir = str(sweep_dir)  # resolved once, here: ${now:} must not move
            configs.append(sweep_config)
        return configs

    # -------------------------------------------------------------------------------------------- stage
    def staging_root(self, sweep_dir: Path) -> str:
        return self.params.staging_uri or str(sweep_dir / ".staging")

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

        from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage

        if self.manifest is None:
            sweep_id = _stage.new_sweep_id()
            self.manifest = _stage.Manifest(sweep_id, self.staging_root(sweep_dir), str(sweep_dir),
                                            launcher=type(self).__name__, settings=self.manifest_settings())
            log.info(f"Sweep {sweep_id}, staging at {self.manifest.staging_uri}")
        staging = _stage.Staging(self.manifest.staging_uri, self.manifest.sweep_id)

        root = self.code_root()
        # Outputs of this very sweep must not ship, nor change the package's hash from one run to the next.
        own = [Path(p).resolve() for p in (sweep_dir, self.manifest.staging_uri) if not _storage.is_s3(str(p))]
        exclude = [*self.params.code_exclude, *(p.relative_to(root).as_posix() for p in own
                                                if p.is_relative_to(root) and p != root)]
        package = _stage.package_code(root, self.params.code_include, exclude, self.params.use_gitignore,
                                      self.params.code_max_mib)
        code_uri = staging.code(package.sha256)
        uploaded = not self.dry_run and not _storage.exists(code_uri)
        if uploaded:
            _storage.write_bytes(code_uri, package.data)
        log.info(f"Code package of {root}: {len(package.files)} files, {len(package.data) / 1024:.1f} KiB, "
                 f"{'uploaded' if uploaded else 'not uploaded (dry run)' if self.dry_run else 'already staged'}"
                 f" as {code_uri}")

        header = {"code_uri": code_uri, "code_root": str(root), "sync_outputs": self.params.sync_outputs}
        task = _stage.ScriptFunction.of(self.task_function, root) or self.task_function
        body = (self.hydra_context, task, Singleton.get_state(), configs)
        payload_uri = staging.payload(first_num)
        payload = _stage.dump_payload(header, body)  # pickled even in a dry run: what cannot pickle fails now
        if self.dry_run:
            return payload_uri
        _storage.write_bytes(payload_uri, payload)

        self.manifest.code_uri = code_uri
        self.manifest.batches.append({"first": first_num, "size": len(configs), "payload_uri": payload_uri,
                                      "batch_job_ids": []})
        for config in configs:
            self.manifest.jobs.append({"num": config.hydra.job.num, "overrides": list(config.hydra.overrides.task),
                                       "subdir": _stage.job_subdir(config), "state": "STAGED"})
        self.manifest.save()
        return payload_uri

    def manifest_settings(self) -> dict:
        """What `hydra-awsbatch` needs to find this sweep's jobs and outputs again."""
        params = OmegaConf.to_container(self.params)
        keep = ("sync_outputs", "sync_exclude", "region", "profile", "log_group", "shared_sweep_dir")
        return {k: params[k] for k in keep if k in params}

    # ------------------------------------------------------------------------------------------- submit
    def submit(self, payload_uri: str, first_num: int, size: int):
        """Start the batch's jobs; return the executor that watches them, or None when not watching."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------- watch
    def watch(self, executor, size: int) -> dict:
        """Poll until every job is final. Ctrl-C or SIGTERM stops them all (terminate_on_interrupt)."""
        from hydra_plugins.hydra_awsbatch_launcher._local import FINAL
        from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

        def to_interrupt(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, to_interrupt)
        progress = Progress(self.manifest.sweep_id, size)
        rounds = 0
        try:
            while True:
                states = executor.poll()
                rounds += 1
                waiting = any(s.state == "RUNNABLE" for s in states)
                progress.update([s.state for s in states], executor.stuck() if waiting and rounds % 6 == 0 else None)
                if all(s.state in FINAL for s in states):
                    return {s.num: s for s in states}
                time.sleep(executor.poll_interval_s)
        except KeyboardInterrupt:
            progress.close()
            if not self.params.get("terminate_on_interrupt", True):
                log.warning(f"Interrupted; the jobs go on. Follow them with: hydra-awsbatch attach "
                            f"{self.manifest.sweep_dir}")
                raise
            log.warning(f"Interrupted: stopping the unfinished jobs of sweep {self.manifest.sweep_id} "
                        "(Ctrl-C again to leave at once)")
            stopped = executor.terminate("interrupted by the user")
            self.record_states({s.num: s for s in executor.poll()})
            log.warning(f"Stopped {stopped} unfinished jobs; the manifest is in {self.manifest.sweep_dir}")
            raise
        finally:
            progress.close()
            signal.signal(signal.SIGTERM, previous)

    def record_states(self, states: dict) -> None:
        for num, state in states.items():
            self.manifest.job(num).update(state=state.state, job_id=state.job_id, exit_code=state.exit_code,
                                          reason=state.reason, started=state.started, stopped=state.stopped)
        self.manifest.save()

    # ------------------------------------------------------------------------------------------ collect
    def collect(self, configs, states: dict, executor) -> list[JobReturn]:
        """Results and job dirs back from staging, as Hydra JobReturns in order."""
        from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage
        from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

        staging = _stage.Staging(self.manifest.staging_uri, self.manifest.sweep_id)
        sweep_dir = Path(self.manifest.sweep_dir)
        sync, exclude = self.manifest.settings.get("sync_outputs", True), self.manifest.settings.get("sync_exclude", [])
        results = {}
        for config in configs:
            num = config.hydra.job.num
            try:
                results[num] = _stage.load_result(_storage.read_bytes(staging.result(num)))
            except FileNotFoundError:
                results[num] = None
        for num, result in results.items():  # the worker's own exit code, where Batch reported none
            if result is not None and states[num].exit_code is None:
                states[num].exit_code = result.get("exit_code")
        self.record_states(states)
        missing = [num for num, result in results.items() if result is None]
        details = executor.failure_details(missing, self.manifest.settings.get("log_group", "")) if missing else {}

        returns, rows = [], []
        for config in configs:
            num = config.hydra.job.num
            job, state, result = self.manifest.job(num), states[num], results[num]
            job_dir = sweep_dir / job["subdir"]
            if result is not None and sync and not self.writes_in_place:
                left = _storage.download_dir(staging.output(num), job_dir, exclude)
                if left:
                    log.info(f"\t#{num}: left in staging: "
                             + ", ".join(_storage.join(staging.output(num), rel) for rel in left))
            ret = self.job_return(config, job_dir, result, details.get(num, ""))
            returns.append(ret)
            value = ret._return_value
            job["result"] = (repr(value) if ret.status == JobStatus.COMPLETED
                             else f"{type(value).__name__}: {str(value).splitlines()[0] if str(value) else ''}")
            rows.append({"num": num, "overrides": " ".join(filter_overrides(job["overrides"])),
                         "state": state.state, "result": job["result"][:60], "job_dir": str(job_dir),
                         "duration": (f"{state.stopped - state.started:.1f}s" if state.started and state.stopped
                                      else "-")})
        self.manifest.save()
        Progress.summary(rows)
        return returns

    def job_return(self, config: DictConfig, job_dir: Path, result: dict | None, missing: str) -> JobReturn:
        """Hydra's JobReturn: the worker's own when it came back, else one that says why not."""
        from hydra_plugins.hydra_awsbatch_launcher import _stage

        num = config.hydra.job.num
        ret = result.get("job_return") if result else None
        if ret is not None:
            ret.working_dir = str(job_dir)
            runtime = ret.hydra_cfg.hydra.runtime
            with read_write(runtime), open_dict(runtime):
                runtime.output_dir = str(job_dir)
            if ret.status == JobStatus.FAILED:
                self.explain(num, ret._return_value, result["error"])
            return ret
        ret = self.unfinished_return(config, job_dir)
        ret.status = JobStatus.FAILED
        error = (result or {}).get("error")
        if error:
            message = f"job #{num} {result['status']}: {error['type']}: {error['message']}"
            ret.return_value = _stage.RemoteJobError(message, error["type"], error["traceback"])
        else:
            ret.return_value = _stage.RemoteJobError(f"job #{num} ended without a result. {missing}")
        self.explain(num, ret._return_value, error)
        return ret

    @staticmethod
    def unfinished_return(config: DictConfig, job_dir: Path | None = None) -> JobReturn:
        """A JobReturn for a job whose result is not here (a dry run, wait=false, or none came back)."""
        ret = JobReturn()
        ret.overrides = list(config.hydra.overrides.task)
        ret.cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        ret.hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(config.hydra)})
        ret.working_dir, ret.task_name = str(job_dir or ""), config.hydra.job.name
        ret.status, ret.return_value = JobStatus.COMPLETED, None
        return ret

    @staticmethod
    def explain(num: int, exc: BaseException, error: dict | None) -> None:
        """Show the remote traceback in the log and on the exception Hydra will raise."""
        remote = (error or {}).get("traceback", "")
        log.error(f"\t#{num} failed: {type(exc).__name__}: {exc}"
                  + (f"\nRemote traceback:\n{remote}" if remote else ""))
        if remote and hasattr(exc, "add_note") and not getattr(exc, "_remote_noted", False):
            exc.add_note(f"Remote traceback of job #{num}:\n{remote}")
            exc._remote_noted = True


class AwsBatchLocalLauncher(BaseAwsBatchLauncher):
    """Each job runs the Batch worker as a local process."""

    where = "as local processes (aws_batch_local)"

    @property
    def writes_in_place(self) -> bool:
        return bool(self.params.in_place)

    def submit(self, payload_uri: str, first_num: int, size: int):
        from hydra_plugins.hydra_awsbatch_launcher._local import LocalExecutor

        executor = LocalExecutor(self.params.max_parallel, Path(self.manifest.sweep_dir) / ".logs",
                                 cwd=os.getcwd(), in_place=self.params.in_place)
        array_id = executor.submit(payload_uri, first_num, size, dict(self.params.environment))
        self.manifest.batches[-1]["batch_job_ids"].append(array_id)
        self.manifest.save()
        return executor


class AwsBatchLauncher(BaseAwsBatchLauncher):
    """Each launched batch of jobs becomes one AWS Batch array job."""

    where = "on AWS Batch"

    @property
    def writes_in_place(self) -> bool:
        return bool(self.params.get("shared_sweep_dir", False))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._api = None

    @property
    def api(self):
        if self._api is None:
            from hydra_plugins.hydra_awsbatch_launcher._batch import BatchApi

            self._api = BatchApi(self.params.region, self.params.profile)
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
        session_problems = self.api.check_session()
        if session_problems:
            raise LaunchError(problems + session_problems)
        if p.stack_name:
            try:
                outputs = self.api.stack_outputs(p.stack_name)
            except _batch.BatchError as error:
                raise LaunchError([*problems, str(error)]) from None
            for setting, value in outputs.items():  # explicit settings win
                if p.get(setting) in (None, "", "/aws/batch/job" if setting == "log_group" else None):
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
        elif not problems and not self.dry_run:
            problem = _storage.check_writable(p.staging_uri)  # last: it writes (and deletes) one object
            if problem:
                problems.append(f"hydra.launcher.staging_uri={p.staging_uri}: {problem}")
        if problems:
            raise LaunchError(problems)

    def manifest_settings(self) -> dict:
        return dict(super().manifest_settings(), region=self.api.session.region_name)

    def submit(self, payload_uri: str, first_num: int, size: int):
        import json

        from hydra_plugins.hydra_awsbatch_launcher import _batch
        from hydra_plugins.hydra_awsbatch_launcher.worker import ENV_IN_PLACE

        p = self.params
        environment = dict(p.environment, **({ENV_IN_PLACE: "1"} if self.writes_in_place else {}))
        endpoint = _batch.loopback_endpoint()
        if endpoint:  # the local cloud: containers reach moto on this machine with dummy credentials
            environment.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION=self.api.session.region_name,
                               **_batch.DUMMY_CREDENTIALS)
        requests = _batch.submit_requests(
            job_name=_batch.sanitize_job_name(p.job_name), queue=p.job_queue, job_definition=p.job_definition,
            payload_uri=payload_uri, sweep_id=self.manifest.sweep_id, first=first_num, size=size,
            environment=environment, resources={"VCPU": p.vcpus, "MEMORY": p.memory_mib, "GPU": p.gpus},
            timeout_s=None if p.timeout_min is None else max(60, int(p.timeout_min * 60)), attempts=p.attempts,
            tags={**_batch.automatic_tags(self.manifest.sweep_id, p.job_name), **p.tags},
            share_identifier=p.share_identifier, scheduling_priority=p.scheduling_priority)
        if self.dry_run:
            for _, _, request in requests:
                print(f"SubmitJob request (dry run, nothing submitted):\n{json.dumps(request, indent=2)}")
            log.info("Dry run: nothing was uploaded or submitted")
            return None
        job_ids = self.api.submit([request for _, _, request in requests])
        arrays = [_batch.Array(job_id, first, n) for job_id, (first, n, _) in zip(job_ids, requests)]
        self.manifest.batches[-1]["batch_job_ids"] += job_ids
        self.manifest.batches[-1]["arrays"] = [{"job_id": a.job_id, "first": a.first, "size": a.size}
                                               for a in arrays]
        self.manifest.save()
        log.info(f"Submitted {size} jobs as {len(arrays)} Batch job(s): {', '.join(job_ids)}")
        executor = _batch.BatchExecutor(self.api, arrays, p.poll_interval_s)
        self.record_states({s.num: s for s in executor.states.values()})
        if not p.wait:
            log.info(f"Not waiting (wait=false). Follow the sweep with: hydra-awsbatch status "
                     f"{self.manifest.sweep_dir}; collect it with: hydra-awsbatch attach {self.manifest.sweep_dir}")
            return None
        return executor
