"""The sweep engine: the one owner of a sweep's manifest (it creates, reopens, extends, saves and locks it) and
of every job once it is staged. Jobs are added a batch at a time (an array) or one at a time while others run,
and each comes back as a `concurrent.futures.Future[JobReturn]`; one watcher thread polls the executor for all
of them, collects each job the moment it ends and resolves its future. `launch()` is "submit, then wait for
all"; the CLI opens a sweep here from its manifest."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _collect, _manifest, _metrics, _report
from hydra_plugins.hydra_awsbatch_launcher._executor import Executor, JobInfo
from hydra_plugins.hydra_awsbatch_launcher._manifest import FINAL, BatchState, Manifest
from hydra_plugins.hydra_awsbatch_launcher._progress import Progress
from hydra_plugins.hydra_awsbatch_launcher.async_api import finished, wait

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")
INTERRUPTED_REASON = "interrupted by the user"


class Sweep:
    """One sweep's jobs after staging: its manifest, its executor, a future per job, one watcher thread."""

    def __init__(self, manifest: Manifest, executor: Executor, *, writes_in_place: bool = False,
                 terminate_on_interrupt: bool = True, live: bool | None = None, held=None,
                 metrics_interval_s: float = 10.0):
        self.manifest, self.executor = manifest, executor
        self.writes_in_place, self.terminate_on_interrupt = writes_in_place, terminate_on_interrupt
        self.composed: dict[int, object] = {}  # job number -> its batch as composed (none when opened from a manifest)
        self.pending: dict[int, concurrent.futures.Future] = {}  # job number -> its future, until collected
        self.num_of: dict[int, int] = {}  # id(future) -> job number
        self.lock = threading.RLock()  # the executor and the manifest: one thread at a time
        self.watcher: threading.Thread | None = None
        self.progress = Progress(manifest.sweep_id, list(BatchState), live)
        self.page = _report.LivePage(manifest.sweep_dir)  # report.html, rewritten while it runs and at its end
        self.rounds = 0
        self.stopped: dict[int, str] = {}  # jobs stopped on purpose (Ctrl-C, a sweeper's stop), and why
        self.channel = _metrics.Channel(manifest.staging, metrics_interval_s)  # reports in, stop requests out
        self._held, self._exit_hook = held, False  # the sweep dir's lock file; atexit registered
        self.leaving = False  # told to leave at once (a third Ctrl-C): nothing more is stopped or collected

    # ------------------------------------------------------------------------------------------- submit
    def submit(self, staged, watch: bool = True) -> list[concurrent.futures.Future]:
        """Record and start the jobs of one staged batch (_stage.StagedBatch); a future per job, resolved when it
        ends and is collected. `watch=False`: submit only, and say how to follow the sweep (the futures hold
        unfinished returns)."""
        nums = staged.nums
        with self.lock:
            batch = self.manifest.add_batch(staged)
            self.manifest.save()
            arrays = self.executor.submit(staged.payload_uri, staged.first, len(nums))
            self.manifest.submitted(batch, arrays, time.time())
            self.manifest.save()  # at once: a process that dies now leaves jobs that a resume can follow
            self.composed.update((num, staged.jobs) for num in nums)
            self.refresh()
        log.info(f"Submitted {len(nums)} jobs as {len(arrays)} job(s): {', '.join(a.job_id for a in arrays)}")
        if not watch:
            return [finished(_collect.unfinished_return(recipe.task)) for recipe in staged.jobs.recipes]
        return self.follow(nums)

    def announce(self, count: int) -> None:
        """`count` more jobs are on their way, submitted a chunk at a time (saved with the first of them)."""
        with self.lock:
            self.manifest.announced = len(self.manifest.jobs) + count

    def follow(self, nums: list[int]) -> list[concurrent.futures.Future]:
        """Futures for jobs submitted earlier (a sweep opened from its manifest), collected as they end."""
        _stop_on_interrupts(self)
        with self.lock:
            futures = [self.pending.setdefault(num, concurrent.futures.Future()) for num in nums]
            self.num_of.update((id(future), num) for num, future in zip(nums, futures))
            if self.watcher is None or not self.watcher.is_alive():  # one watcher for every job in flight
                self.watcher = threading.Thread(target=self._watch, name=f"sweep-{self.manifest.sweep_id}",
                                                daemon=True)
                self.watcher.start()
        return futures

    def resume(self, nums: list[int]) -> dict[int, concurrent.futures.Future]:
        """Futures for jobs that an earlier process of this sweep submitted (it died): followed where they
        still run (Batch), collected where they ended. Jobs that died with that process (local ones), or
        that it never submitted, are left out: the caller runs them again."""
        with self.lock:
            jobs = [self.manifest.jobs_by_num()[num] for num in nums if num in self.manifest.jobs_by_num()]
            if self.executor.adopt([a for batch in self.manifest.batches for a in batch.arrays]):
                self._recover({job.num for job in jobs})
                return dict(zip([job.num for job in jobs], self.follow([job.num for job in jobs])))
        ended = {job.num: finished(self.collect(JobInfo(job.num, job.state, job.job_id, job.exit_code)))
                 for job in jobs if job.state in FINAL}  # those that ended before the sweeper died have results
        self.save()
        return ended

    def _recover(self, nums: set[int]) -> None:
        """Batches of jobs `nums` that the earlier process recorded but died submitting, or before it heard
        Batch's answer: what went out is followed, the rest goes out now (else their futures would wait forever)."""
        unsent = [b for b in self.manifest.batches
                  if not b.arrays and nums & set(range(b.first, b.first + b.size))]
        for batch in unsent:
            arrays = self.executor.recover(batch.payload_uri, batch.first, batch.size, batch.staged_at)
            self.manifest.submitted(batch, arrays, time.time())
        if unsent:
            self.manifest.save()

    # -------------------------------------------------------------------------------------------- watch
    def _watch(self) -> None:
        """Poll until no job is pending; collect each job as it ends and resolve its future."""
        try:
            while True:
                with self.lock:
                    if not self.pending:
                        self.progress.close()
                        return
                    seen = self.refresh()
                    ended = [s for s in seen if s.state in FINAL and s.num in self.pending]
                    self.rounds += 1
                    waiting = any(s.state == BatchState.RUNNABLE for s in seen)
                    stuck = self.executor.stuck() if waiting and self.rounds % 6 == 0 else None
                running = [s.num for s in seen if s.state == BatchState.RUNNING]
                for num, reason in self.channel.overdue(running).items():  # asked to stop, and did not
                    self.stop(f"{reason} (it went on past the grace period)", nums={num})
                self.take_reports(self.channel.poll(running))
                self.progress.update([s.state for s in seen], stuck,
                                     {num: self.manifest.job(num).last_report for num in running})
                self._resolve(ended)
                self.page.tick()
                time.sleep(self.executor.poll_interval_s)
        except BaseException as error:  # an AWS error, say: every waiting caller hears of it
            with self.lock:
                for future in self.pending.values():
                    if not future.done():
                        future.set_exception(error)
                self.pending.clear()
                self.progress.close()

    def metrics(self, num: int, since: int = 0) -> list[dict]:
        """What job `num` reported from its record `since` on (all of it once it ended and its job dir is home)."""
        job = self.manifest.jobs_by_num().get(num)
        return self.channel.records(num, Path(self.manifest.sweep_dir) / job.subdir if job else None, since)

    def take_reports(self, newest: dict[int, dict]) -> None:
        """Jobs' newest reports into their records (hydra-awsbatch status shows them)."""
        with self.lock:
            if self.manifest.reported(newest):
                self.manifest.save()

    def _resolve(self, ended: list[JobInfo]) -> None:
        """Collect these jobs (each claimed by one thread only: the watcher, or stop()), save the manifest once,
        then resolve their futures: a caller that sees its results finds them in the manifest."""
        with self.lock:
            claimed = [(info, self.pending.pop(info.num)) for info in ended if info.num in self.pending]
        outcomes = []
        for info, future in claimed:
            try:
                outcomes.append((future, self.collect(info), None))
            except BaseException as error:
                outcomes.append((future, None, error))
        try:
            if claimed:
                self.save()
        except BaseException as error:  # a full disk, say: every caller of these jobs hears of it
            outcomes = [(future, None, error) for future, _, _ in outcomes]
            raise
        finally:
            _settle(outcomes)

    def collect(self, info: JobInfo):
        """The job's JobReturn (_collect.py), and its manifest record closed (saved by the caller)."""
        from hydra.core.utils import JobStatus

        job, settings = self.manifest.job(info.num), self.manifest.settings
        job_dir = Path(self.manifest.sweep_dir) / job.subdir
        if job.started is None and job.reason and self.stopped.get(info.num) == job.reason:  # stopped before it
            # started (not failed on its own first, whose reason would be Batch's): nothing to bring home
            ret, ended = _collect.never_started(job, job_dir), {"exit_code": info.exit_code}
        else:
            ret, ended = _collect.collect(
                self.manifest.staging, job, job_dir, lambda: self.config(info.num),
                sync_outputs=settings.get("sync_outputs", True) and not self.writes_in_place,
                sync_exclude=settings.get("sync_exclude", []), script=self.manifest.script,
                details=lambda: self._details(info.num), quiet=info.num in self.stopped)
        reported = self.channel.records(info.num, job_dir)
        with self.lock:
            job.close(_collect.summary(ret), ret.status == JobStatus.COMPLETED,
                      info.exit_code if info.exit_code is not None else ended["exit_code"], ended)
            job.last_report = reported[-1] if reported else job.last_report
        return ret

    def config(self, num: int):
        """Job `num`'s config, made anew from its batch (None for a sweep opened from its manifest)."""
        batch = self.composed.get(num)
        return batch.config(num - batch.first) if batch is not None else None

    def save(self) -> None:
        with self.lock:
            self.manifest.save()

    def _details(self, num: int) -> str:
        with self.lock:
            return self.executor.failure_details([num], self.manifest.settings.get("log_group", "")).get(num, "")

    # --------------------------------------------------------------------------------------------- wait
    def wait(self, futures: list[concurrent.futures.Future]) -> list:
        """Every job's JobReturn, in order, once all ended; then the summary table. Ctrl-C, SIGTERM or SIGHUP
        stop every unfinished job of the sweep (terminate_on_interrupt); a second Ctrl-C stops them at once."""
        try:
            wait(futures)
        except KeyboardInterrupt:
            self.interrupted()
            raise
        returns = [future.result() for future in futures]
        Progress.summary([Progress.row(self.manifest.job(self.num_of[id(f)]), self.manifest.sweep_dir)
                          for f in futures])
        log.info(self.page.final())
        return returns

    def interrupted(self) -> None:
        """Ctrl-C, SIGTERM or SIGHUP while the sweep runs: stop every unfinished job (terminate_on_interrupt).
        Another one meanwhile stops them at once; a third leaves at once, saying what is left."""
        self.progress.close()
        where = shlex.quote(self.manifest.sweep_dir)
        if not self.terminate_on_interrupt:
            log.warning(f"Interrupted; the jobs go on. Follow them with: hydra-awsbatch attach {where}")
            return
        log.warning(f"Interrupted: stopping the unfinished jobs of sweep {self.manifest.sweep_id} "
                    "(Ctrl-C again to stop them at once)")
        try:
            try:
                stopped = self.stop(INTERRUPTED_REASON)
            except KeyboardInterrupt:
                stopped = self.stop(INTERRUPTED_REASON, force=True)
                log.warning(f"Second Ctrl-C: {self.executor.forced_stop_note(where)}")
        except KeyboardInterrupt:
            self.leaving = True
            batch = self.manifest.launcher == "AwsBatchLauncher"  # local jobs stop with this process
            cancel = f"; stop it with: hydra-awsbatch cancel {where}" if batch else ""
            log.warning(f"Third Ctrl-C: leaving now, with {len(self.pending)} jobs not collected. See what is left "
                        f"with: hydra-awsbatch status {where}{cancel}")
            return
        log.warning(f"Stopped {stopped} unfinished jobs; the manifest is in {self.manifest.sweep_dir}")

    def stop(self, reason: str, force: bool = False, nums=None, grace_s: float = 0.0) -> int:
        """Terminate every unfinished job (`nums`: those of them), record it, and fail their futures; what they
        left is collected without a traceback each: they were stopped, not broken. With `grace_s`, ask them to
        stop first (report() says so) and terminate those still running after it; returns at once."""
        with self.lock:
            if grace_s > 0:
                for num in nums:
                    self.channel.ask_to_stop(num, reason, grace_s)
                    self.manifest.job(num).stop_request = reason
                self.stopped.update(dict.fromkeys(nums, reason))
                self.manifest.save()
                return 0
            self.stopped.update(dict.fromkeys(self.pending if nums is None else nums, reason))
            stopped = self.executor.terminate(reason, force, nums)
            seen = self.refresh()  # every job asked for is final now: terminate() saw to it
            ended = [s for s in seen if s.num in self.pending and (nums is None or s.num in nums)]
        self._resolve(ended)
        return stopped

    def refresh(self) -> list[JobInfo]:
        """Poll once, record what changed (hydra-awsbatch status too), and return what the executor saw."""
        with self.lock:
            seen = self.executor.poll()
            if sum(self.manifest.job(info.num).update(info) for info in seen):
                self.manifest.save()
            return seen


# ------------------------------------------------------------------------------------- a sweep's life begins
def claim(sweep_dir: Path):
    """Lock `sweep_dir` for this process's sweep, where it exists already (a second sweep into a busy dir is
    refused before its sweeper writes anything there); the lock, for create() or reopen(), or None."""
    return _manifest.lock(sweep_dir) if sweep_dir.is_dir() else None


def create(staging_root: str, sweep_dir: Path, executor_for, *, launcher: str, settings: dict, held=None,
           **options) -> Sweep:
    """A new sweep into `sweep_dir`, locked while this process lives (`held`: the lock claim() took).
    `executor_for(staging)` makes its executor; the manifest is first saved with the first jobs."""
    held = held or _manifest.lock(sweep_dir)
    manifest = Manifest(_manifest.new_sweep_id(), staging_root, str(sweep_dir), launcher, settings=settings)
    log.info(f"Sweep {manifest.sweep_id}, staging at {manifest.staging_uri}")
    return Sweep(manifest, executor_for(manifest.staging), held=held, **options)


def reopen(sweep_dir: Path, executor_for, held=None, **options) -> Sweep | None:
    """The sweep of `sweep_dir`, to go on after the process that launched it died (new jobs join it); None
    where that process submitted nothing."""
    try:
        manifest = _manifest.read(str(sweep_dir / _manifest.MANIFEST))
    except FileNotFoundError:
        return None
    held = held or _manifest.lock(sweep_dir)
    manifest.sweep_dir = str(sweep_dir)
    log.info(f"Resuming sweep {manifest.sweep_id} ({len(manifest.jobs)} jobs so far), staging at "
             f"{manifest.staging_uri}")
    return Sweep(manifest, executor_for(manifest.staging), held=held, **options)


def _stop_on_interrupts(sweep: Sweep) -> None:
    """From the main thread, once a sweep: a kill or a closed terminal (SIGTERM, SIGHUP) raises KeyboardInterrupt
    as Ctrl-C does, where nobody handles them yet; and the program's end (Ctrl-C while it waited on futures of
    its own) stops what still runs."""
    if threading.current_thread() is not threading.main_thread() or sweep._exit_hook:
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _interrupt)

    def at_exit() -> None:
        if sweep.pending and sweep.terminate_on_interrupt and not sweep.leaving:
            log.warning(f"Exiting with {len(sweep.pending)} jobs in flight: stopping them")
            sweep.stop(INTERRUPTED_REASON)

    atexit.register(at_exit)
    sweep._exit_hook = True


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_kept():
    """Ctrl-C (or SIGTERM, SIGHUP: KeyboardInterrupt) that lands inside library code which, unwinding, raises an
    error of its own instead (OmegaConf restoring the flags of a half-made change raises AttributeError) comes
    out as the KeyboardInterrupt it is, so that the sweep stops its jobs as for any Ctrl-C. An interrupt that
    was being handled already when the block began is not this block's."""
    before = sys.exc_info()[1]
    try:
        yield
    except Exception as error:
        cause, seen = error.__context__, set()
        while cause is not None and cause is not before and id(cause) not in seen:
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt(f"(interrupted while {type(error).__name__}: {error})") from error
            seen.add(id(cause))
            cause = cause.__context__
        raise


def _settle(outcomes: list) -> None:
    """Resolve these futures with their JobReturns or errors."""
    for future, ret, error in outcomes:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(ret)
