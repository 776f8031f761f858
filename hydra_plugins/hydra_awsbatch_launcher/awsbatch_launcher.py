"""The launchers. launch() reads as the story of a sweep: compose, stage, submit, watch, collect.

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
    """A setting to fix before anything is staged or submitted."""


class BaseAwsBatchLauncher(Launcher):
    where = "abstract"  # in the "Launching N jobs ..." line

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
        self.check_settings()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs {self.where}")

        configs = self.compose(job_overrides, initial_job_idx, sweep_dir)
        payload_uri = self.stage(configs, initial_job_idx, sweep_dir)
        executor = self.submit(payload_uri, initial_job_idx, len(configs))
        states = self.watch(executor, initial_job_idx, len(configs))
        return self.collect(configs, initial_job_idx, states, sweep_dir)

    # ------------------------------------------------------------------------------------------ compose
    def compose(self, job_overrides, initial_job_idx: int, sweep_dir: Path) -> list[DictConfig]:
        from hydra.core.hydra_config import HydraConfig

        configs = []
        saved = HydraConfig.instance().cfg
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{num}"
                sweep_config.hydra.job.num = num
                sweep_config.hydra.sweep.dir = str(sweep_dir)  # resolved once, here: ${now:} must not move
            HydraConfig.instance().set_config(sweep_config)
            configs.append(sweep_config)
        HydraConfig.instance().cfg = saved
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

    def stage(self, configs: list[DictConfig], first_num: int, sweep_dir: Path) -> str:
        from hydra.core.singleton import Singleton

        from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage

        if self.manifest is None:
            sweep_id = _stage.new_sweep_id()
            self.manifest = _stage.Manifest(sweep_id, self.staging_root(sweep_dir), str(sweep_dir),
                                            launcher=type(self).__name__)
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
        uploaded = not _storage.exists(code_uri)
        if uploaded:
            _storage.write_bytes(code_uri, package.data)
        log.info(f"Code package of {root}: {len(package.files)} files, {len(package.data) / 1024:.1f} KiB, "
                 f"{'uploaded' if uploaded else 'already staged'} as {code_uri}")

        header = {"code_uri": code_uri, "code_root": str(root), "sync_outputs": self.params.sync_outputs}
        task = _stage.ScriptFunction.of(self.task_function, root) or self.task_function
        body = (self.hydra_context, task, Singleton.get_state(), configs)
        payload_uri = staging.payload(first_num)
        _storage.write_bytes(payload_uri, _stage.dump_payload(header, body))

        self.manifest.code_uri = code_uri
        self.manifest.batches.append({"first": first_num, "size": len(configs), "payload_uri": payload_uri,
                                      "batch_job_ids": []})
        for config in configs:
            self.manifest.jobs.append({"num": config.hydra.job.num, "overrides": list(config.hydra.overrides.task),
                                       "subdir": _stage.job_subdir(config), "state": "STAGED"})
        self.manifest.save()
        return payload_uri

    # ----------------------------------------------------------------------------------- submit & watch
    def check_settings(self) -> None:
        problems = [f"hydra.launcher.environment.{name}: names starting with {prefix} are reserved for the "
                    "launcher; rename it" for name in self.params.environment
                    for prefix in RESERVED_ENV_PREFIXES if str(name).startswith(prefix)]
        if problems:
            raise LaunchError("; ".join(problems))

    def submit(self, payload_uri: str, first_num: int, size: int):
        raise NotImplementedError

    poll_interval_s = 0.2

    def watch(self, executor, first_num: int, size: int) -> dict:
        """Poll until every job of the batch is final; Ctrl-C or SIGTERM stops them all."""
        from hydra_plugins.hydra_awsbatch_launcher._local import FINAL
        from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

        def to_interrupt(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, to_interrupt)
        progress = Progress(self.manifest.sweep_id, size)
        try:
            while True:
                states = executor.poll()
                progress.update([s.state for s in states])
                if all(s.state in FINAL for s in states):
                    return {s.num: s for s in states}
                time.sleep(self.poll_interval_s)
        except KeyboardInterrupt:
            progress.close()
            log.warning("Interrupted: stopping the unfinished jobs of sweep %s", self.manifest.sweep_id)
            stopped = executor.terminate("interrupted by the user")
            self._record_states({s.num: s for s in executor.poll()})
            log.warning("Stopped %d unfinished jobs; the manifest is at %s", stopped, self.manifest.sweep_dir)
            raise
        finally:
            progress.close()
            signal.signal(signal.SIGTERM, previous)

    def _record_states(self, states: dict) -> None:
        for num, state in states.items():
            job = self.manifest.job(num)
            job.update(state=state.state, job_id=state.job_id, exit_code=state.exit_code, reason=state.reason,
                       started=state.started, stopped=state.stopped)
        self.manifest.save()

    # ------------------------------------------------------------------------------------------ collect
    def collect(self, configs, first_num: int, states: dict, sweep_dir: Path) -> list[JobReturn]:
        from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage
        from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

        self._record_states(states)
        staging = _stage.Staging(self.manifest.staging_uri, self.manifest.sweep_id)
        returns, rows = [], []
        for config in configs:
            num = config.hydra.job.num
            job, state = self.manifest.job(num), states[num]
            job_dir = sweep_dir / job["subdir"]
            try:
                result = _stage.load_result(_storage.read_bytes(staging.result(num)))
            except FileNotFoundError:
                result = None
            if result is not None and self.params.sync_outputs and not self.writes_in_place:
                left = _storage.download_dir(staging.output(num), job_dir, self.params.sync_exclude)
                if left:
                    log.info(f"\t#{num}: left in staging: " + ", ".join(_storage.join(staging.output(num), r)
                                                                         for r in left))
            ret = self.job_return(config, job_dir, result, state)
            returns.append(ret)
            value = ret._return_value
            rows.append({"num": num, "overrides": " ".join(filter_overrides(job["overrides"])),
                         "state": state.state,
                         "duration": f"{state.stopped - state.started:.1f}s" if state.started and state.stopped
                         else "-",
                         "result": (repr(value) if ret.status == JobStatus.COMPLETED
                                    else f"{type(value).__name__}: {value}")[:60],
                         "job_dir": str(job_dir)})
            job["result"] = rows[-1]["result"]
        self.manifest.save()
        Progress.summary(rows)
        return returns

    writes_in_place = False

    def job_return(self, config: DictConfig, job_dir: Path, result: dict | None, state) -> JobReturn:
        """Hydra's JobReturn for one job: the worker's own when it came back, else one that says why not."""
        from hydra_plugins.hydra_awsbatch_launcher import _stage

        num = config.hydra.job.num
        ret = result.get("job_return") if result else None
        if ret is not None:
            ret.working_dir = str(job_dir)
            runtime = ret.hydra_cfg.hydra.runtime
            with read_write(runtime), open_dict(runtime):
                runtime.output_dir = str(job_dir)
            if ret.status == JobStatus.FAILED:
                self._explain(num, ret._return_value, result["error"])
            return ret
        ret = JobReturn()
        ret.overrides = list(config.hydra.overrides.task)
        ret.cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        ret.hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(config.hydra)})
        ret.working_dir, ret.task_name, ret.status = str(job_dir), config.hydra.job.name, JobStatus.FAILED
        error = (result or {}).get("error")
        if error:
            message = f"job #{num} {result['status']}: {error['type']}: {error['message']}"
            ret.return_value = _stage.RemoteJobError(message, error["type"], error["traceback"])
        else:
            message = (f"job #{num} ended without a result: {state.reason or state.state}"
                       f"{self.log_tail(state)}")
            ret.return_value = _stage.RemoteJobError(message)
        self._explain(num, ret._return_value, error)
        return ret

    @staticmethod
    def _explain(num: int, exc: BaseException, error: dict | None) -> None:
        """Show the remote traceback in the log and on the exception Hydra will raise."""
        remote = (error or {}).get("traceback", "")
        log.error(f"\t#{num} failed: {type(exc).__name__}: {exc}"
                  + (f"\nRemote traceback:\n{remote}" if remote else ""))
        if remote and hasattr(exc, "add_note") and not getattr(exc, "_remote_noted", False):
            exc.add_note(f"Remote traceback of job #{num}:\n{remote}")
            exc._remote_noted = True

    def log_tail(self, state, lines: int = 50) -> str:
        return ""


class AwsBatchLocalLauncher(BaseAwsBatchLauncher):
    """Each job runs the Batch worker as a local process."""

    @property
    def where(self) -> str:
        return "as local processes (aws_batch_local)"

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

    def log_tail(self, state, lines: int = 50) -> str:
        try:
            tail = Path(state.log_path).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f". Last lines of {state.log_path}:\n" + "\n".join(tail)
