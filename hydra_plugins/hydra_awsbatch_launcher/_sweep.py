"""The sweep engine: it owns every job of a sweep once it is staged. Jobs are added a batch at a time (an
array) or one at a time, while others run, and each comes back as a `concurrent.futures.Future[JobReturn]`;
one watcher thread polls the executor for all of them, collects each job the moment it ends (result object,
job dir, Hydra's JobReturn) and resolves its future. `launch()` is "submit, then wait for all"; the CLI opens a
sweep here from its manifest.

An executor runs the jobs (the local processes of `aws_batch_local`, AWS Batch): it submits, polls, terminates
and explains failures, in Batch's words for job states.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import shlex
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")

# Job states, in AWS Batch's words; the local executor uses the same.
STAGED, SUBMITTED, PENDING, RUNNABLE = "STAGED", "SUBMITTED", "PENDING", "RUNNABLE"
STARTING, RUNNING, SUCCEEDED, FAILED = "STARTING", "RUNNING", "SUCCEEDED", "FAILED"
FINAL = (SUCCEEDED, FAILED)
STATES = (STAGED, SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED)  # a job's life, in order
INTERRUPTED_REASON = "interrupted by the user"


@dataclass
class JobState:
    """What the executor knows of one job."""

    num: int
    state: str = RUNNABLE
    job_id: str = ""
    exit_code: int | None = None
    reason: str = ""
    started: float | None = None
    stopped: float | None = None
    log_path: str = ""


class Executor(Protocol):
    """Runs the jobs of one sweep. Called under the sweep's lock: never from two threads at once."""

    poll_interval_s: float

    def submit(self, payload_uri: str, first: int, size: int) -> list[_stage.Array]:
        """Start jobs first..first+size-1 of the payload, as one or more arrays (Batch job ids, or local ones)."""

    def poll(self) -> list[JobState]:
        """The state of every job submitted so far."""

    def terminate(self, reason: str, force: bool = False) -> int:
        """Stop every unfinished job (at once with `force`) and count it FAILED with `reason`; how many."""

    def stuck(self) -> dict[str, int]:
        """Why jobs wait in RUNNABLE: reason -> count."""

    def failure_details(self, nums: list[int], log_group: str) -> dict[int, str]:
        """For jobs that ended without a result: what the executor knows of why."""

    def forced_stop_note(self, sweep: str) -> str:
        """What a second Ctrl-C leaves behind."""

    def adopt(self, arrays: list[_stage.Array]) -> bool:
        """Follow the jobs an earlier process of this sweep submitted; False where they ended with it."""


def finished(value) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(value)
    return future


class Sweep:
    """One sweep's jobs after staging: its manifest, its executor, a future per job, one watcher thread."""

    def __init__(self, manifest: _stage.Manifest, executor: Executor, *, writes_in_place: bool = False,
                 terminate_on_interrupt: bool = True, live: bool | None = None):
        self.manifest, self.executor = manifest, executor
        self.writes_in_place, self.terminate_on_interrupt = writes_in_place, terminate_on_interrupt
        self.staging = _stage.Staging(manifest.staging_uri, manifest.sweep_id)
        self.configs: dict[int, object] = {}  # job number -> its config (none when opened from a manifest)
        self.pending: dict[int, concurrent.futures.Future] = {}  # job number -> its future, until collected
        self.num_of: dict[int, int] = {}  # id(future) -> job number
        self.lock = threading.RLock()  # the executor and the manifest: one thread at a time
        self.watcher: threading.Thread | None = None
        self.live = live
        self.progress = None
        self.rounds = 0
        settings = manifest.settings
        self.script = Path(settings["code_root"]) / settings["script"] if settings.get("script") else None
        self._exit_hook = False

    @property
    def quoted_dir(self) -> str:
        return shlex.quote(self.manifest.sweep_dir)

    # ------------------------------------------------------------------------------------------- submit
    def submit(self, configs: list, payload_uri: str, first: int,
               watch: bool = True) -> list[concurrent.futures.Future]:
        """Start the jobs of one staged payload; a future per job, resolved when it ends and is collected.
        `watch=False`: submit only, and say how to follow the sweep (the futures hold unfinished returns)."""
        with self.lock:
            arrays = self.executor.submit(payload_uri, first, len(configs))
            now = time.time()
            batch = next(b for b in self.manifest.batches if b.first == first)
            batch.arrays += arrays
            batch.batch_job_ids += [a.job_id for a in arrays]
            for config in configs:
                self.configs[config.hydra.job.num] = config
                self.manifest.job(config.hydra.job.num).submitted = now
            self._record(self.executor.poll())
            self.manifest.save()
        log.info(f"Submitted {len(configs)} jobs as {len(arrays)} job(s): {', '.join(a.job_id for a in arrays)}")
        if not watch:
            log.info(f"Not waiting (wait=false). Follow the sweep with: hydra-awsbatch status {self.quoted_dir}; "
                     f"collect it with: hydra-awsbatch attach {self.quoted_dir}")
            return [finished(unfinished_return(config)) for config in configs]
        return self.follow([config.hydra.job.num for config in configs])

    def follow(self, nums: list[int]) -> list[concurrent.futures.Future]:
        """Futures for jobs submitted earlier (a sweep opened from its manifest), collected as they end."""
        with self.lock:
            futures = [self.pending.setdefault(num, concurrent.futures.Future()) for num in nums]
            for num, future in zip(nums, futures):
                self.num_of[id(future)] = num
        self._watch_in_background()
        return futures

    def resume(self, nums: list[int]) -> dict[int, concurrent.futures.Future]:
        """Futures for jobs that an earlier process of this sweep submitted (it died): followed where they
        still run (Batch), collected where they ended. Jobs that died with that process (local ones), or
        that it never submitted, are left out: the caller runs them again."""
        with self.lock:
            known = {job.num for job in self.manifest.jobs}
            nums = [num for num in nums if num in known]
            if self.executor.adopt([a for batch in self.manifest.batches for a in batch.arrays]):
                return dict(zip(nums, self.follow(nums)))
        ended = {}
        for num in nums:
            job = self.manifest.job(num)
            if job.state in FINAL:  # it ended before the sweeper died: its result is in staging
                state = JobState(num, job.state, job.job_id, job.exit_code, job.reason, job.started, job.stopped)
                ended[num] = finished(self.collect(state))
        return ended

    # -------------------------------------------------------------------------------------------- watch
    def _watch_in_background(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):  # a kill or a closed terminal stops the sweep like Ctrl-C
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, _interrupt)
            if not self._exit_hook:  # the caller dies of Ctrl-C while waiting on futures of its own
                atexit.register(self._at_exit)
                self._exit_hook = True
        with self.lock:
            if self.watcher is None or not self.watcher.is_alive():
                self.watcher = threading.Thread(target=self._watch, name=f"sweep-{self.manifest.sweep_id}",
                                                daemon=True)
                self.watcher.start()

    def _watch(self) -> None:
        """Poll until no job is pending; collect each job as it ends and resolve its future."""
        from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

        try:
            while True:
                with self.lock:
                    if not self.pending:
                        self._close_progress()
                        return
                    states = self.executor.poll()
                    self._record(states)
                    ended = [s for s in states if s.state in FINAL and s.num in self.pending]
                    self.rounds += 1
                    waiting = any(s.state == RUNNABLE for s in states)
                    stuck = self.executor.stuck() if waiting and self.rounds % 6 == 0 else None
                    if self.progress is None:
                        self.progress = Progress(self.manifest.sweep_id, STATES, self.live)
                    self.progress.update([s.state for s in states], stuck)
                for state in ended:
                    self._resolve(state)
                time.sleep(self.executor.poll_interval_s)
        except BaseException as error:  # an AWS error, say: every waiting caller hears of it
            with self.lock:
                for future in self.pending.values():
                    if not future.done():
                        future.set_exception(error)
                self.pending.clear()
                self._close_progress()

    def _close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def _record(self, states: list[JobState]) -> None:
        changed = False
        for state in states:
            job = self.manifest.job(state.num)
            new = (state.state, state.job_id, state.exit_code, state.reason, state.started, state.stopped)
            if new != (job.state, job.job_id, job.exit_code, job.reason, job.started, job.stopped):
                job.state, job.job_id, job.exit_code, job.reason, job.started, job.stopped = new
                changed = True
        if changed:
            self.manifest.save()

    def _resolve(self, state: JobState) -> None:
        with self.lock:  # claimed by one thread only: the watcher, or stop()
            future = self.pending.pop(state.num, None)
        if future is None:
            return
        try:
            ret = self.collect(state)
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(ret)

    # ------------------------------------------------------------------------------------------ collect
    def collect(self, state: JobState):
        """The job's result and job dir back from staging, as Hydra's JobReturn. A result or outputs that
        cannot be read fail this job alone, saying why."""
        settings = self.manifest.settings
        num = state.num
        try:
            result = _stage.load_result(_storage.read_bytes(self.staging.result(num)), self.script)
        except FileNotFoundError:
            result = None
        job = self.manifest.job(num)
        job_dir = Path(self.manifest.sweep_dir) / job.subdir
        if result is not None and state.exit_code is None:  # the worker's own exit code, where none was reported
            state.exit_code = result.get("exit_code")
        details = ""
        if result is None:
            with self.lock:
                details = self.executor.failure_details([num], settings.get("log_group", "")).get(num, "")
        elif settings.get("sync_outputs", True) and not self.writes_in_place:
            output = self.staging.output(num)
            try:
                left = _storage.download_dir(output, job_dir, settings.get("sync_exclude", []))
            except OSError as exc:  # a full disk, say: this job's outputs stay in staging
                result = dict(result, status=_stage.FAILED, job_return=None, error=_stage.collect_error(
                    exc, f"bringing its outputs from {output} to {job_dir} failed: {exc}"))
                left = []
            if left:
                log.info(f"\t#{num}: left in staging: " + ", ".join(_storage.join(output, rel) for rel in left))
        ret = job_return(self.configs.get(num), job, job_dir, result, details)
        from hydra.core.utils import JobStatus

        with self.lock:
            job.exit_code = state.exit_code
            value = ret._return_value
            job.result = (repr(value) if ret.status == JobStatus.COMPLETED
                          else f"{type(value).__name__}: {str(value).splitlines()[0] if str(value) else ''}")
            if ret.status != JobStatus.COMPLETED and job.state == SUCCEEDED:
                job.state = state.state = FAILED  # it ran, but what it made did not come back
            self.manifest.save()
        return ret

    # --------------------------------------------------------------------------------------------- wait
    def wait(self, futures: list[concurrent.futures.Future]) -> list:
        """Every job's JobReturn, in order, once all ended; then the summary table. Ctrl-C, SIGTERM or SIGHUP
        stop every unfinished job of the sweep (terminate_on_interrupt); a second Ctrl-C stops them at once."""
        from hydra_plugins.hydra_awsbatch_launcher._progress import Progress

        try:
            concurrent.futures.wait(futures)
        except KeyboardInterrupt:
            self._close_progress()
            if not self.terminate_on_interrupt:
                log.warning(f"Interrupted; the jobs go on. Follow them with: hydra-awsbatch attach {self.quoted_dir}")
                raise
            log.warning(f"Interrupted: stopping the unfinished jobs of sweep {self.manifest.sweep_id} "
                        "(Ctrl-C again to stop them at once)")
            try:
                stopped = self.stop(INTERRUPTED_REASON)
            except KeyboardInterrupt:
                stopped = self.stop(INTERRUPTED_REASON, force=True)
                log.warning(f"Second Ctrl-C: {self.executor.forced_stop_note(self.quoted_dir)}")
            log.warning(f"Stopped {stopped} unfinished jobs; the manifest is in {self.manifest.sweep_dir}")
            raise
        returns = [future.result() for future in futures]
        Progress.summary([self.row(self.num_of[id(future)]) for future in futures])
        return returns

    def row(self, num: int) -> dict:
        """One line of the summary table."""
        from hydra.core.utils import filter_overrides

        job = self.manifest.job(num)
        return {"num": num, "overrides": " ".join(filter_overrides(job.overrides)), "state": job.state,
                "result": job.result[:60], "job_dir": str(Path(self.manifest.sweep_dir) / job.subdir),
                "duration": f"{job.stopped - job.started:.1f}s" if job.started and job.stopped else "-"}

    def stop(self, reason: str, force: bool = False) -> int:
        """Terminate every unfinished job, record it, and fail the futures still pending."""
        with self.lock:
            stopped = self.executor.terminate(reason, force)
            states = self.executor.poll()  # every job final now: terminate() saw to it
            self._record(states)
            pending = [s for s in states if s.num in self.pending]
        for state in pending:
            self._resolve(state)
        return stopped

    def refresh(self) -> None:
        """Poll once and record what changed (hydra-awsbatch status)."""
        with self.lock:
            self._record(self.executor.poll())

    def _at_exit(self) -> None:
        """The launching program ends (Ctrl-C while it waited on futures itself): stop what still runs."""
        if self.pending and self.terminate_on_interrupt:
            log.warning(f"Exiting with {len(self.pending)} jobs in flight: stopping them")
            self.stop(INTERRUPTED_REASON)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------------ returns
def job_return(config, job: _stage.JobRecord, job_dir: Path, result: dict | None, missing: str):
    """Hydra's JobReturn: the worker's own when it came back, else one that says why not."""
    from hydra.core.utils import JobStatus
    from omegaconf import open_dict, read_write

    num = job.num
    ret = result.get("job_return") if result else None
    if ret is not None:
        ret.working_dir = str(job_dir)
        runtime = ret.hydra_cfg.hydra.runtime
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = str(job_dir)
        if ret.status == JobStatus.FAILED:
            explain(num, ret._return_value, result["error"])
        return ret
    ret = unfinished_return(config, job_dir, job)
    if result is not None and result["status"] == _stage.SUCCEEDED:  # sys.exit(0): a normal end, no value
        return ret
    ret.status = JobStatus.FAILED
    error = (result or {}).get("error")
    if error:
        message = f"job #{num} {result['status']}: {error['type']}: {error['message']}"
        ret.return_value = _stage.RemoteJobError(message, error["type"], error["traceback"])
    else:
        ret.return_value = _stage.RemoteJobError(f"job #{num} ended without a result. {missing}")
    explain(num, ret._return_value, error)
    return ret


def unfinished_return(config, job_dir: Path | None = None, job: _stage.JobRecord | None = None):
    """A JobReturn for a job whose result is not here (a dry run, wait=false, or none came back); from its
    manifest record alone when its config is not at hand (a sweep opened from its manifest)."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    if config is not None:  # the composed config itself, not copies: a dry run of 1,000 jobs makes 1,000 of these
        ret.overrides = list(config.hydra.overrides.task)
        ret.cfg = ret.hydra_cfg = config  # hydra_cfg.hydra, as in Hydra's own JobReturn
        ret.task_name = config.hydra.job.name
    else:
        ret.overrides = list(job.overrides)
    ret.working_dir = str(job_dir or "")
    ret.status, ret.return_value = JobStatus.COMPLETED, None
    return ret


def explain(num: int, exc: BaseException, error: dict | None) -> None:
    """Show the remote traceback in the log and on the exception Hydra will raise."""
    remote = (error or {}).get("traceback", "")
    log.error(f"\t#{num} failed: {type(exc).__name__}: {exc}" + (f"\nRemote traceback:\n{remote}" if remote else ""))
    if remote and hasattr(exc, "add_note") and not getattr(exc, "_remote_noted", False):
        exc.add_note(f"Remote traceback of job #{num}:\n{remote}")
        exc._remote_noted = True
