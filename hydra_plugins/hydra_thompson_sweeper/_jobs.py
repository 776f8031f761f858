"""The study's trials as the launcher's jobs, for the thompson sweeper: each trial the study asks for submitted
(launch_async, or Hydra's blocking launch), what running jobs report handed to the study (new records only: the
launcher's cursor is the trial's curve), a trial the pruner finds hopeless asked to stop (then terminated after
stop_grace_s), each job's ending told to the study, and the jobs of an earlier sweeper re-attached."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable

from hydra_plugins.hydra_awsbatch_launcher.async_api import AsyncLauncher, finished
from hydra_plugins.hydra_thompson_sweeper import _check
from hydra_plugins.hydra_thompson_sweeper._space import SweepError, override
from hydra_plugins.hydra_thompson_sweeper._trials import Trial, TrialStatus

log = logging.getLogger("hydra_plugins.hydra_thompson_sweeper")


class TrialJobs:
    def __init__(self, launcher, study, conf, files, fixed: list[str], validate: Callable[[list], None]):
        self.launcher, self.study, self.conf, self.files = launcher, study, conf, files
        self.fixed, self.validate = fixed, validate  # overrides every trial gets; Hydra's check of a batch
        self.asynchronous = isinstance(launcher, AsyncLauncher)  # it submits while others run
        self.warned_steps = False  # a trial returned before max_resource (said once)

    def prune(self, in_flight: dict) -> bool:
        """What the trials in flight reported since the last look goes to the study; those its pruner finds
        hopeless are asked to stop (report() says so; their jobs end after stop_grace_s at the latest)."""
        if not self.study.prunes:
            return False
        stopping = False
        for future, trial in in_flight.items():
            if future.done():  # it ended: record() takes what it reported, and it stops no more
                continue
            records = self.launcher.metrics(trial.job, since=len(trial.curve))
            if future.done() or not records:  # it ended while its reports were read: the same
                continue
            reason = next((r for r in [self.study.take(trial, record) for record in records] if r), None)
            if reason and not trial.stop_reason:
                trial.stop_reason = reason
                log.info(f"Trial {trial.number} (job #{trial.job}) asked to stop: {reason}")
                self.ask_to_stop(trial)
                stopping = True
        return stopping

    def ask_to_stop(self, trial: Trial) -> None:
        """Its job is asked to stop (report() says so), and terminated after stop_grace_s if it runs on."""
        trial.stop_asked = time.time()
        self.launcher.stop([trial.job], f"stopped early by the thompson sweeper: {trial.stop_reason}",
                           self.conf.stop_grace_s)

    def submit(self, new: list[Trial]) -> dict[concurrent.futures.Future, Trial]:
        """One launch for these trials, with job numbers in a row never used before: a future each."""
        first = max(t.job for t in self.study.trials) + 1  # a requeued trial's old number counts: it may be taken
        for i, trial in enumerate(new):
            self.study.rerun(trial)  # a trial run again reports anew
            trial.job, trial.status, trial.submitted = first + i, TrialStatus.SUBMITTING, time.time()
        self.files.save()  # before submitting: a resume knows these job numbers were (maybe) used
        batch = [[*self.fixed, *(override(k, v) for k, v in t.params.items())] for t in new]
        self.validate(batch)
        if self.asynchronous:
            futures = self.launcher.launch_async(batch, initial_job_idx=new[0].job)
        else:
            futures = [finished(ret) for ret in self.launcher.launch(batch, initial_job_idx=new[0].job)]
        for trial in new:
            trial.status = TrialStatus.RUNNING
        self.files.save()
        return dict(zip(futures, new))

    def record(self, trial: Trial, future: concurrent.futures.Future) -> bool:
        """How the trial ended, told to the study: completed with its objective, pruned where it ended because
        it was asked to stop, failed (with its error) where it raised or returned no number. False for a trial
        that the earlier sweeper stopped (a Ctrl-C, or its error), which is to run again."""
        c, study = self.conf, self.study
        interrupted = trial.status in (TrialStatus.INTERRUPTED, TrialStatus.STOPPED)
        self.take_times(trial)
        if self.asynchronous:  # all it reported, now that it ended
            for record in self.launcher.metrics(trial.job, since=len(trial.curve)):
                study.take(trial, record)
        if study.prunes:
            done = trial.curve and trial.last_step >= c.max_resource
            if trial.stop_reason and not done and self.ended_by_the_stop(trial, future):
                study.tell(trial, state="pruned")
                return True
            if trial.stop_reason:
                log.info(f"Trial {trial.number} (job #{trial.job}) ran to its end before it heard the request")
            trial.stop_reason = ""  # its value is a final one; or it failed on its own (its error is kept)
            if future.result().status.name == "COMPLETED":
                problem = _check.unreported(trial, study.metric, c)
                if problem:
                    study.tell(trial, state="failed", error=problem)
                    raise SweepError([problem])
                note = None if self.warned_steps else _check.short(trial, c)
                if note:
                    self.warned_steps = True
                    log.warning(note)
        try:
            value = _check.objective(future.result().return_value, c.objective)  # a failed job's raises its error
        except SweepError as error:
            study.tell(trial, state="failed", error=error.problems[0])
            raise
        except Exception as error:
            if interrupted:
                log.info(f"Trial {trial.number} (job #{trial.job}) was stopped with the earlier sweep: it runs again")
                return False
            first_line = str(error).splitlines()[0] if str(error) else ""
            study.tell(trial, state="failed", error=f"{type(error).__name__}: {first_line}")
            log.warning(f"Trial {trial.number} (job #{trial.job}) failed: {trial.error}")
            return True
        study.tell(trial, value)
        return True

    def ended_by_the_stop(self, trial: Trial, future: concurrent.futures.Future) -> bool:
        """Whether a trial asked to stop ended because of it: it returned (it heard the request), or its failure
        came no sooner than the grace period after the request, when its launcher terminates it (both times this
        machine's). One that failed sooner failed on its own. A trial asked by an earlier sweeper and in flight
        when it ended (its job ended with that sweeper, before the grace period was up) ended by the stop too."""
        earlier = trial.stop_asked is None or trial.status in (TrialStatus.INTERRUPTED, TrialStatus.STOPPED)
        if future.result().status.name == "COMPLETED" or earlier:
            return True
        return time.time() >= trial.stop_asked + self.conf.stop_grace_s

    def take_times(self, trial: Trial) -> None:
        """When the trial's job started and ended, where the launcher says (else: submitted, now)."""
        trial.ended = time.time()
        times = self.launcher.job_times(trial.job) if self.asynchronous else None
        if times is not None:
            trial.started, trial.ended = times[0] or trial.submitted, times[1] or trial.ended
        latency = getattr(self.launcher, "job_latency", None) if self.asynchronous else None
        trial.latency = latency(trial.job) if latency is not None else {}

    def time_is_up(self, in_flight: dict, requeue: list[Trial]) -> None:
        """max_minutes is up: no new trials; those that never ran (to run again, or waiting for a worker) end as
        failed, not silently dropped; those running end as they will."""
        log.info(f"hydra.sweeper.max_minutes={self.conf.max_minutes} is up: no new trials")
        not_run = "not run: hydra.sweeper.max_minutes was up"
        waiting = {future: trial for future, trial in in_flight.items()
                   if not future.done() and (self.launcher.job_times(trial.job) or (0,))[0] is None}
        if waiting:
            self.launcher.stop(sorted(trial.job for trial in waiting.values()), not_run)
        for future in waiting:
            in_flight.pop(future)
        for trial in [*requeue, *waiting.values()]:
            self.study.tell(trial, state="failed", error=not_run)
        requeue.clear()

    def stop(self, in_flight: dict) -> None:
        """The sweep stops on an error: the trials still running are stopped, their jobs too, and recorded as
        stopped (a resume runs them again); those that ended meanwhile are recorded as they ended."""
        running = {trial.job for future, trial in in_flight.items() if not future.done()}
        if running and self.asynchronous:
            log.info(f"Stopping the {len(running)} trials in flight")
            self.launcher.stop(sorted(running), "stopped by the thompson sweeper, which stopped on an error")
        for future, trial in sorted(in_flight.items(), key=lambda item: item[1].number):
            if trial.job in running:
                trial.status, trial.error = TrialStatus.STOPPED, "stopped: the sweep stopped on an error"
                self.take_times(trial)
                continue
            try:
                self.record(trial, future)
            except SweepError:
                pass  # recorded as failed, with the error that stops the sweep
        in_flight.clear()

    def reattach(self, unfinished: list[Trial]) -> tuple[dict, list[Trial]]:
        """The earlier sweeper's trials in flight re-attached where the launcher can (Batch jobs run on), or
        queued to run again (they died with the sweeper); those it had asked to stop are asked again, or pruned."""
        futures = self.launcher.resume_async([t.job for t in unfinished]) if self.asynchronous else {}
        in_flight = {futures[t.job]: t for t in unfinished if t.job in futures}
        for future, trial in in_flight.items():  # asked to stop by the earlier sweeper, whose grace period went
            if trial.stop_reason and not future.done():  # with it: asked again, or it would run to its end
                self.ask_to_stop(trial)
        requeue = [t for t in unfinished if t.job not in futures and not t.stop_reason]
        stopped = [t for t in unfinished if t.job not in futures and t.stop_reason]
        for trial in stopped:  # judged hopeless already, and died with the sweeper: its curve is all it gives
            trial.ended = trial.curve[-1]["time"] if trial.curve else trial.ended
            self.study.tell(trial, state="pruned")
        log.info(f"Resumed: {len(in_flight)} trials in flight re-attached"
                 + (f", {len(requeue)} that died with the earlier sweeper run again" if requeue else "")
                 + (f", {len(stopped)} that it had asked to stop are stopped early" if stopped else ""))
        return in_flight, requeue
