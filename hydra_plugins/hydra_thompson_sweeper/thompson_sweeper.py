"""hydra/sweeper=thompson: asynchronous parallel Bayesian optimisation (Kandasamy et al., AISTATS 2018).

The search space comes from Hydra's override grammar, as Hydra's Optuna sweeper reads it. With a launcher
that can submit while others run (`launch_async`: aws_batch, aws_batch_local), the sweeper keeps
`n_workers` trials in flight: when one ends it observes the result, proposes the next point and submits it
at once. Any other launcher runs synchronous batches of `n_workers`. Everything heavy (torch, BoTorch,
matplotlib) is imported inside the methods: Hydra imports this module at start-up.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import time
import warnings
from collections import Counter
from numbers import Real
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.hydra_awsbatch_launcher.async_api import AsyncLauncher, LiveText, finished, wait
from hydra_plugins.hydra_thompson_sweeper._pruners import MEASURED_TRIALS, Pruner
from hydra_plugins.hydra_thompson_sweeper._pruners import make as make_pruner
from hydra_plugins.hydra_thompson_sweeper._space import SweepError, override, search_space
from hydra_plugins.hydra_thompson_sweeper._trials import STATE, Trial, TrialLog, TrialStatus

log = logging.getLogger("hydra_plugins.hydra_thompson_sweeper")
QUIET_S = 0.5  # the plots are redrawn, and a fit due soon made, once no trial ended or started for this long


class ThompsonSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.params = conf.pop("params", None)
        self.conf = OmegaConf.create(conf)
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None
        self.fixed: list[str] = []  # overrides every trial gets
        self.asynchronous = False  # the launcher submits while others run (async_api.AsyncLauncher)
        self.pruner = Pruner()  # early stopping from what trials report (this one never stops a trial)
        self.metric = ""  # the reported metric the pruner compares
        self.warned_steps = False  # a trial returned before max_resource (said once)
        self.observed: dict[int, set[float]] = {}  # trial -> the fractions of its curve the GP has learnt

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # ------------------------------------------------------------------------------------------ the story
    def sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.hydra_thompson_sweeper._optimizer import Optimizer

        params = OmegaConf.to_container(self.params, resolve=True) if isinstance(self.params, DictConfig) \
            else self.params
        problems = self.check()
        try:
            space, fixed = search_space(params, arguments)
        except SweepError as error:
            problems = error.problems + problems
        if problems:
            raise SweepError(problems)
        c = self.conf
        floor = c.min_resource / c.max_resource if c.pruner != "none" else None  # the GP models the resource
        optimizer = Optimizer(space, c.direction, c.algorithm, c.n_initial, c.refit_every, c.seed,
                              resource_floor=floor, patience=c.patience, budget=c.n_trials)
        signature = {"space": {d.name: d.describe() for d in space.dimensions}, "fixed": fixed,
                     "direction": c.direction, "objective": c.objective, "algorithm": c.algorithm, "seed": c.seed,
                     "brackets": c.brackets,  # a trial's bracket comes from its number and their count
                     # the levels and fractions the pruner and the GP have taken the trials' curves at
                     "pruner": c.pruner, **({"metric": c.metric or c.objective, "min_resource": c.min_resource,
                                             "max_resource": c.max_resource, "reduction_factor": c.reduction_factor}
                                            if c.pruner != "none" else {})}
        trials = self.open_log(signature)
        sweep_dir = trials.sweep_dir
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(f"Thompson sweep in {sweep_dir}: {c.n_trials} trials, {c.n_workers} in flight, {c.algorithm}, "
                 f"{c.direction} {c.objective or 'the return value'}; searching "
                 + "; ".join(signature["space"].values()))
        self.asynchronous = isinstance(self.launcher, AsyncLauncher)
        if not self.asynchronous:
            log.info(f"{type(self.launcher).__name__} has no launch_async: running synchronous batches of "
                     f"{c.n_workers} (hydra/launcher=aws_batch or aws_batch_local keep every worker busy)")
        capacity, target = self.capacity(), self.in_flight_target()
        if capacity is not None and target > capacity and not optimizer.batched:
            log.info(f"The launcher runs {capacity} trials at once: {target - capacity} more wait for a worker, "
                     "which starts one the moment it frees (hydra.sweeper.n_queued)")
        self.fixed = fixed
        trials.mirror = self.launcher.mirror if self.asynchronous else None
        trials.metric = self.metric = c.metric or c.objective or ""
        self.pruner = make_pruner(c.pruner, c.min_resource, c.max_resource, c.reduction_factor, c.rungs,
                                  c.brackets)
        if c.pruner == "asha" and c.rungs == "measured" and c.n_initial < MEASURED_TRIALS:
            log.warning(f"hydra.sweeper.rungs=measured with n_initial={c.n_initial}: the rungs are measured on the "
                        f"first {MEASURED_TRIALS} trials to end, some of them the GP's proposals (crowded where it "
                        f"believes the best is), which can keep uninformative rungs on: set n_initial to "
                        f"{MEASURED_TRIALS} or more")
        in_flight, requeue = self.resume(trials, optimizer)
        try:
            self.run(trials, optimizer, in_flight, requeue)
        finally:
            self.keep_searches(trials, optimizer)
            trials.save(final=True)
        best = trials.best()
        if best is None:
            ended = Counter(str(t.status) for t in trials.trials)
            raise SweepError([f"no trial completed ({', '.join(f'{n} {status}' for status, n in ended.items())}): "
                              f"see trials.csv in {sweep_dir}"])
        log.info(f"Best {c.objective or 'value'}: {best.value:.6g} (trial {best.number}) with "
                 f"{' '.join(override(k, v) for k, v in best.params.items())}; results in "
                 f"{sweep_dir / 'optimization_results.yaml'}, trials.csv, convergence.png")

    def run(self, trials: TrialLog, optimizer, in_flight: dict, requeue: list[Trial]) -> None:
        """Keep n_workers trials in flight until n_trials have ended (or time is up): observe each result
        the moment it comes, propose, submit."""
        c = self.conf
        deadline = time.time() + c.max_minutes * 60 if c.max_minutes is not None else math.inf
        batched = optimizer.batched or not self.asynchronous
        limit, target = c.n_trials, c.n_workers if batched else self.in_flight_target()
        one_by_one = not batched and self.capacity() is not None  # trials wait for a worker: each goes at once
        live = LiveText(logger=log)
        quiet_since, tidied = time.monotonic(), False  # since a trial last ended or started; plots drawn since
        try:
            while True:
                if time.time() > deadline:
                    limit, deadline = len(trials.trials), math.inf
                    self.time_is_up(in_flight, requeue)
                free = target - len(in_flight) if not (batched and in_flight) else 0
                new: list[Trial] = []
                while free > len(new) and (requeue or len(trials.trials) < limit):
                    new.append(requeue.pop(0) if requeue else self.propose(trials, optimizer, in_flight, new))
                    if one_by_one:  # a freed worker may be waiting for this one
                        in_flight.update(self.submit(trials, new))
                        free, new = free - 1, []
                        quiet_since, tidied = time.monotonic(), False
                if new:
                    in_flight.update(self.submit(trials, new))
                    quiet_since, tidied = time.monotonic(), False
                if not in_flight:
                    return
                live.show(*trials.line(len(in_flight), c.objective or "value"))
                # a quiet moment: no worker waits on the sweeper (a blocking launcher's trials have all ended)
                quiet = not self.asynchronous or time.monotonic() - quiet_since >= QUIET_S
                if not tidied and (quiet or trials.plots_stale()):
                    if self.asynchronous:  # a fit the next proposal would make, made while every worker is busy
                        optimizer.prefit()
                    tidied = trials.redraw()
                timeout = self.watch_s if tidied else min(self.watch_s or QUIET_S, QUIET_S)
                if deadline < math.inf:  # woken when time is up, to stop the trials still waiting for a worker
                    timeout = max(0.0, min(math.inf if timeout is None else timeout, deadline - time.time()))
                try:
                    done, _ = wait(list(in_flight), timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
                    stopping = self.prune(in_flight, optimizer)
                except KeyboardInterrupt:
                    for trial in in_flight.values():
                        trial.status = TrialStatus.INTERRUPTED
                    log.warning(f"Interrupted with {len(in_flight)} trials in flight; continue the sweep with "
                                "hydra.sweeper.resume=true (they run again, but those asked to stop early)")
                    raise
                if not done and not stopping:
                    continue  # a look at what the trials in flight reported, and nothing to record
                quiet_since, tidied = time.monotonic(), False
                for future in sorted(done, key=lambda f: in_flight[f].number):
                    trial = in_flight.pop(future)
                    if not self.record(trial, future, optimizer):
                        requeue.append(trial)
                self.keep_searches(trials, optimizer)
                trials.save()
                live.show(*trials.line(len(in_flight), c.objective or "value"))
                if trials.failed_in_a_row() >= c.max_failures:
                    last = max((t for t in trials.trials if t.status == TrialStatus.FAILED), key=lambda t: t.ended or 0)
                    raise SweepError([f"{c.max_failures} trials failed in a row (hydra.sweeper.max_failures); the "
                                      f"last, trial {last.number}: {last.error}. Every trial is in "
                                      f"{trials.sweep_dir / 'trials.csv'}"])
        except SweepError:  # its message is the last thing said: the trials in flight are stopped first
            live.close()
            self.stop_in_flight(in_flight, optimizer)
            raise
        finally:
            live.close()

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
            trial.status, trial.error = TrialStatus.FAILED, not_run
        requeue.clear()

    def in_flight_target(self) -> int:
        """Trials kept in flight: n_workers, and n_queued more waiting for a worker where the launcher runs at
        most n_workers at once (as many as wait already where it runs fewer)."""
        c, capacity = self.conf, self.capacity()
        if capacity is None or capacity > c.n_workers:
            return c.n_workers
        return max(c.n_workers, capacity + c.n_queued)

    def capacity(self) -> int | None:
        """How many trials the launcher runs at once (async_api's optional capacity()); None: every one it is
        given, or a blocking launcher."""
        return getattr(self.launcher, "capacity", lambda: None)() if self.asynchronous else None

    def stop_in_flight(self, in_flight: dict, optimizer) -> None:
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
                self.record(trial, future, optimizer)
            except SweepError:
                pass  # recorded as failed, with the error that stops the sweep
        in_flight.clear()

    @property
    def watch_s(self) -> float | None:
        """How often the event loop looks at what running trials reported (None: only when one ends)."""
        return 0.25 if self.conf.pruner != "none" else None

    def prune(self, in_flight: dict, optimizer) -> bool:
        """What the trials in flight reported since the last look goes to the pruner, and their values at the
        levels they reached to the GP; those the pruner finds hopeless are asked to stop (report() says so;
        their jobs end after stop_grace_s at the latest). Whether any was."""
        if self.conf.pruner == "none":
            return False
        stopping = False
        for future, trial in in_flight.items():
            if future.done():  # it ended: record() takes what it reported, and it stops no more
                continue
            records = self.launcher.metrics(trial.job)
            if future.done():  # it ended while its reports were read: the same
                continue
            if len(records) <= len(trial.curve):
                continue  # nothing new since the last look: nothing to judge or learn
            reason = self.take_reports(trial, records)
            self.observe_points(trial, self.pruner.levels_reached(trial.number), optimizer)
            if reason and not trial.stop_reason:
                trial.stop_reason = reason
                log.info(f"Trial {trial.number} (job #{trial.job}) stops early: {reason}")
                self.ask_to_stop(trial)
                stopping = True
        return stopping

    def ask_to_stop(self, trial: Trial) -> None:
        """Its job is asked to stop (report() says so), and terminated after stop_grace_s if it runs on."""
        trial.stop_asked = time.time()
        self.launcher.stop([trial.job], f"stopped early by the thompson sweeper: {trial.stop_reason}",
                           self.conf.stop_grace_s)

    def take_reports(self, trial: Trial, records: list[dict]) -> str | None:
        """The trial's records so far; those the pruner has not seen go to it (it minimises). The first
        reason it gives to stop the trial, or None."""
        new, trial.curve = records[len(trial.curve):], records
        reasons = [self.pruner.observe(trial.number, r["step"], self.sign * r[self.metric])
                   for r in new if self.metric in r]
        return next((reason for reason in reasons if reason), None)

    def propose(self, trials: TrialLog, optimizer, in_flight: dict, new: list[Trial]) -> Trial:
        pending = [t.params for t in in_flight.values()] + [t.params for t in new]
        params = optimizer.propose(pending)
        trial = Trial(len(trials.trials), job=-1, params=params)  # its job number comes when it is submitted
        trials.trials.append(trial)
        return trial

    def submit(self, trials: TrialLog, new: list[Trial]) -> dict[concurrent.futures.Future, Trial]:
        """One launch for these trials, with job numbers in a row never used before: a future each."""
        first = max(t.job for t in trials.trials) + 1  # a requeued trial's old number counts: it may be taken
        for i, trial in enumerate(new):
            trial.job, trial.status, trial.submitted = first + i, TrialStatus.SUBMITTING, time.time()
            trial.started = trial.ended = None
            trial.curve, trial.stop_reason, trial.stop_asked = [], "", None  # a trial run again reports anew
            self.pruner.forget(trial.number)  # (what the GP learnt of its earlier run stays: real values)
        trials.save()  # before submitting: a resume knows these job numbers were (maybe) used
        batch = [[*self.fixed, *(override(k, v) for k, v in t.params.items())] for t in new]
        self.validate_batch_is_legal(batch)
        first_job = new[0].job
        if self.asynchronous:
            futures = self.launcher.launch_async(batch, initial_job_idx=first_job)
        else:
            futures = [finished(ret) for ret in self.launcher.launch(batch, initial_job_idx=first_job)]
        for trial in new:
            trial.status = TrialStatus.RUNNING
        trials.save()
        return dict(zip(futures, new))

    def record(self, trial: Trial, future: concurrent.futures.Future, optimizer) -> bool:
        """The trial's result: observed when it is a number, recorded as failed (and not observed) when not.
        False for a trial that the earlier sweeper stopped (a Ctrl-C, or its error), which is to run again."""
        interrupted = trial.status in (TrialStatus.INTERRUPTED, TrialStatus.STOPPED)
        self.take_times(trial)
        if self.asynchronous:  # all it reported, now that it ended
            self.take_reports(trial, self.launcher.metrics(trial.job) or trial.curve)
        if self.conf.pruner != "none":
            done = trial.curve and trial.last_step >= self.conf.max_resource
            if trial.stop_reason and not done and self.ended_by_the_stop(trial, future):
                return self.pruned(trial, optimizer)
            trial.stop_reason = ""  # it ran to the end before it heard the request (its value is a final one),
            # or it failed on its own (its error is kept)
            if future.result().status.name == "COMPLETED":
                self.check_reports(trial)
                self.check_steps(trial)
        try:
            value = self.objective(future.result().return_value)  # a failed job's return_value raises its error
        except SweepError as error:
            trial.status, trial.error = TrialStatus.FAILED, error.problems[0]
            raise
        except Exception as error:
            if interrupted:
                log.info(f"Trial {trial.number} (job #{trial.job}) was stopped with the earlier sweep: it runs again")
                return False
            first_line = str(error).splitlines()[0] if str(error) else ""
            trial.status, trial.error = TrialStatus.FAILED, f"{type(error).__name__}: {first_line}"
            log.warning(f"Trial {trial.number} (job #{trial.job}) failed: {trial.error}")
            return True
        trial.status, trial.value = TrialStatus.COMPLETED, value
        optimizer.observe(trial.params, value, number=trial.number)
        self.observe_curve(trial, optimizer)
        return True

    def ended_by_the_stop(self, trial: Trial, future: concurrent.futures.Future) -> bool:
        """Whether a trial asked to stop ended because of it: it returned (it heard the request), or its failure
        came no sooner than the grace period after the request, when its launcher terminates it. One that failed
        sooner failed on its own (an error in the task, reported before the sweeper looked): failed, with its
        error, and counted by max_failures. Both times are this machine's (the job's end by Batch's clock could
        be off), and the launcher's grace period starts after stop_asked. A trial asked by an earlier sweeper and
        in flight when it ended (its job ended with that sweeper, before the grace period was up) ended by the
        stop too."""
        earlier = trial.stop_asked is None or trial.status in (TrialStatus.INTERRUPTED, TrialStatus.STOPPED)
        if future.result().status.name == "COMPLETED" or earlier:
            return True
        return time.time() >= trial.stop_asked + self.conf.stop_grace_s

    def pruned(self, trial: Trial, optimizer) -> bool:
        """A trial stopped early: its value is its last report, which is no final value."""
        reported = [r[self.metric] for r in trial.curve if self.metric in r]
        trial.status, trial.value = TrialStatus.PRUNED, reported[-1] if reported else None
        self.observe_curve(trial, optimizer)
        return True

    def observe_curve(self, trial: Trial, optimizer) -> None:
        """The GP learns from every trial's curve, stopped or not, each value at its fraction of a full training:
        a stopped trial's values then say what they are, values after less training (as in MOBSTER)."""
        self.observe_points(trial, self.pruner.fidelities(trial.number), optimizer)
        self.observed.pop(trial.number, None)

    def observe_points(self, trial: Trial, points: list[tuple[float, float]], optimizer) -> None:
        """These (fraction, value) of the trial's curve to the GP, each once: a level's value is learnt while the
        trial runs, the moment it is reached, so that the proposals made meanwhile know where the trials in
        flight stand (MOBSTER's searcher learns at each rung)."""
        observed = self.observed.setdefault(trial.number, set())
        for fraction, value in points:
            if fraction not in observed:
                observed.add(fraction)
                optimizer.observe(trial.params, self.sign * value, fraction, number=trial.number)

    @staticmethod
    def keep_searches(trials: TrialLog, optimizer) -> None:
        """The optimiser's searches into the state (a resume goes on with them), and a line for each new one."""
        for search in optimizer.searches[len(trials.searches):]:
            if search.fresh:
                log.info(f"No trial improved on the best for {optimizer.patience} trials (hydra.sweeper.patience): "
                         f"the search restarts from trial {search.since} on, with a fresh Sobol design and a GP of "
                         f"its own, and proposes nothing in the {len(search.avoid)} basin(s) where the searches "
                         "before it settled")
            elif search.counting_from:  # not the first search
                log.info(f"The fresh search has not improved for {optimizer.patience} trials: it is merged with "
                         "the earlier ones, and the GP learns from every trial again")
        trials.searches = [search.state() for search in optimizer.searches]

    @property
    def sign(self) -> float:
        """The pruner minimises: a metric times this is what it compares (and the pruner's value times this
        is the metric again)."""
        return 1.0 if self.conf.direction == "minimize" else -1.0

    def check_reports(self, trial: Trial) -> None:
        """A pruner needs the metric reported: said when the first trial ends without it, not after the sweep."""
        if any(self.metric in r for r in trial.curve):
            return
        names = sorted({k for r in trial.curve for k in r} - {"step", "time"})
        setting = "metric" if self.conf.metric else "objective"  # the pruner's metric is the objective by default
        problem = (f"hydra.sweeper.{setting}={self.metric}: trial {trial.number} ended having reported "
                   + (f"only {', '.join(names)}" if names else "nothing (its task never called report())")
                   + f", so hydra.sweeper.pruner={self.conf.pruner} has nothing to compare: report it, or set "
                   "hydra.sweeper.metric to what the task reports")
        trial.status, trial.error = TrialStatus.FAILED, problem
        raise SweepError([problem])

    def check_steps(self, trial: Trial) -> None:
        """A trial that returned, unasked, before reaching max_resource: said once (max_resource is likely above
        the steps the task runs, and then no trial counts as finished for the pruner)."""
        if self.warned_steps or not trial.curve or trial.last_step >= self.conf.max_resource:
            return
        self.warned_steps = True
        log.warning(f"Trial {trial.number} returned at step {trial.last_step:g}, before hydra.sweeper.max_resource="
                    f"{self.conf.max_resource:g}: set max_resource to the step at which a trial is done (its last "
                    f"epoch, say). Until a trial reaches it, {self.conf.pruner} has no finished trial to compare with, "
                    "and the GP counts such a trial's value as a full training's")

    def take_times(self, trial: Trial) -> None:
        """When the trial's job started and ended, where the launcher says (else: submitted, now)."""
        trial.ended = time.time()
        times = self.launcher.job_times(trial.job) if self.asynchronous else None
        if times is not None:
            trial.started, trial.ended = times[0] or trial.submitted, times[1] or trial.ended
        latency = getattr(self.launcher, "job_latency", None) if self.asynchronous else None
        trial.latency = latency(trial.job) if latency is not None else {}

    def objective(self, returned) -> float:
        """The number to optimise out of the task's return value."""
        key = self.conf.objective
        if key is not None:
            if not hasattr(returned, "keys") or key not in returned:
                keys = list(returned.keys()) if hasattr(returned, "keys") else None
                raise SweepError([f"hydra.sweeper.objective={key}: the task returned "
                                  + (f"a mapping with keys {keys}" if keys is not None else f"{returned!r}")
                                  + ": set objective to one of its keys, or null for a plain number"])
            returned = returned[key]
        elif hasattr(returned, "keys"):
            raise SweepError([f"the task returned a mapping with keys {list(returned.keys())}: set "
                              "hydra.sweeper.objective to the one to optimise"])
        if isinstance(returned, bool) or not isinstance(returned, Real):
            try:
                returned = float(returned)  # a 0-d tensor or numpy scalar
            except (TypeError, ValueError):
                raise SweepError([f"the task returned {returned!r}: the thompson sweeper needs a number (or a "
                                  "mapping with hydra.sweeper.objective naming the number)"]) from None
        value = float(returned)
        if not math.isfinite(value):
            raise ValueError(f"the objective is {value}")
        return value

    # -------------------------------------------------------------------------------- check and resume
    def check(self) -> list[str]:
        """The settings' problems, before anything is submitted: one line each."""
        from hydra_plugins.hydra_thompson_sweeper._optimizer import settings_problems
        from hydra_plugins.hydra_thompson_sweeper._pruners import settings_problems as pruner_problems

        c = self.conf
        problems = [f"hydra.sweeper.{p}" for p in settings_problems(c.direction, c.algorithm, c.n_initial,
                                                                     c.refit_every, c.patience)]
        try:  # imported now, before anything is submitted: seconds of import are no worker's idle time later
            with warnings.catch_warnings():  # torch's own FutureWarning about torch.jit, which BoTorch uses
                warnings.simplefilter("ignore", FutureWarning)
                import botorch.fit
                import botorch.models
                import botorch.sampling.pathwise  # noqa: F401
                import matplotlib.pyplot  # noqa: F401
        except ImportError as error:
            problems.append(f"hydra/sweeper=thompson needs {error.name}: pip install "
                            "'hydra-awsbatch-launcher[bo]'")
        for name in ("n_trials", "n_workers", "max_failures"):
            if int(c[name]) < 1:
                problems.append(f"hydra.sweeper.{name}={c[name]}: at least 1")
        if int(c.n_queued) < 0:
            problems.append(f"hydra.sweeper.n_queued={c.n_queued}: 0 or more")
        if c.max_minutes is not None and c.max_minutes <= 0:
            problems.append(f"hydra.sweeper.max_minutes={c.max_minutes}: above 0, or null for no limit")
        if getattr(self.launcher, "dry_run", False):
            problems.append("hydra.launcher.dry_run=true returns no results, and the thompson sweeper proposes from "
                            "results: make the dry run with Hydra's basic sweeper (leave out hydra/sweeper=thompson)")
        problems += [f"hydra.sweeper.{p}" for p in pruner_problems(c.pruner, c.min_resource, c.max_resource,
                                                                    c.reduction_factor, c.rungs, c.brackets)]
        if c.pruner != "none" and not (c.metric or c.objective):
            problems.append(f"hydra.sweeper.pruner={c.pruner} compares a metric that your task gives report(): "
                            "set hydra.sweeper.metric to its name (e.g. val_loss)")
        if c.pruner != "none" and not isinstance(self.launcher, AsyncLauncher):
            problems.append(f"hydra.sweeper.pruner={c.pruner} reads trials while they run, which "
                            f"{type(self.launcher).__name__} cannot: use hydra/launcher=aws_batch or aws_batch_local")
        if c.stop_grace_s < 0:
            problems.append(f"hydra.sweeper.stop_grace_s={c.stop_grace_s}: seconds, 0 or more")
        return problems

    def open_log(self, signature: dict) -> TrialLog:
        """A new trial log in hydra.sweep.dir, or with resume=true the earlier one of this sweep."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        if self.conf.resume:
            found = find_state(sweep_dir, signature)
            trials = TrialLog.load(found)
            sweep_dir = trials.sweep_dir = found.parent
            log.info(f"Resuming the thompson sweep in {sweep_dir}: {trials.ended()} of {len(trials.trials)} "
                     "trials ended")
        else:
            if (sweep_dir / STATE).exists():
                raise SweepError([f"hydra.sweep.dir={sweep_dir} holds a thompson sweep already: continue it with "
                                  "hydra.sweeper.resume=true, or give this one another hydra.sweep.dir"])
            trials = TrialLog(sweep_dir, signature)
        with open_dict(self.config):  # resolved once (a ${now:} must not move), and the resumed one's
            self.config.hydra.sweep.dir = str(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return trials

    def resume(self, trials: TrialLog, optimizer) -> tuple[dict, list[Trial]]:
        """The earlier run's results back into the optimiser; its trials in flight re-attached where the
        launcher can (Batch jobs run on), or queued to run again (they died with the sweeper)."""
        from hydra_plugins.hydra_thompson_sweeper._optimizer import Search

        optimizer.proposed = len(trials.trials)
        # the searches as they were (the results came in another order); an older state's are found again
        with optimizer.replay([Search.from_state(search) for search in trials.searches]):
            for trial in sorted(trials.trials, key=lambda t: t.number):  # the pruner's rungs, as they were
                curve, trial.curve = trial.curve, []
                self.take_reports(trial, curve)
                if trial.status == TrialStatus.COMPLETED:
                    optimizer.observe(trial.params, trial.value, number=trial.number)
                if trial.status in (TrialStatus.COMPLETED, TrialStatus.PRUNED):
                    self.observe_curve(trial, optimizer)
        unfinished = [t for t in trials.trials if not t.done]
        if not unfinished:
            return {}, []
        futures = self.launcher.resume_async([t.job for t in unfinished]) if self.asynchronous else {}
        in_flight = {futures[t.job]: t for t in unfinished if t.job in futures}
        for future, trial in in_flight.items():  # asked to stop by the earlier sweeper, whose grace period went
            if trial.stop_reason and not future.done():  # with it: asked again, or it would run to its end
                self.ask_to_stop(trial)
        requeue, stopped = [], []
        for trial in unfinished:
            if trial.job not in futures:  # it died with the earlier sweeper: run again, unless it was stopping
                (stopped if trial.stop_reason else requeue).append(trial)
        for trial in stopped:  # judged hopeless already: its curve so far is all it gives
            trial.ended = trial.curve[-1]["time"] if trial.curve else trial.ended
            self.pruned(trial, optimizer)
        log.info(f"Resumed: {len(in_flight)} trials in flight re-attached"
                 + (f", {len(requeue)} that died with the earlier sweeper run again" if requeue else "")
                 + (f", {len(stopped)} that it had asked to stop are stopped early" if stopped else ""))
        return in_flight, requeue


def differences(earlier: dict, signature: dict) -> list[str]:
    """The settings of a sweep's signature that an earlier sweep had otherwise (one saved before a setting joined
    the signature is taken to have had it, beyond those of SIGNATURE_DEFAULTS)."""
    return [k for k in signature if earlier.get(k, signature[k]) != signature[k]]


def find_state(sweep_dir: Path, signature: dict) -> Path:
    """The state of the sweep to resume: in sweep_dir, or (a sweep dir made anew by ${now:}) the newest
    unfinished one beside it (multirun/DATE/TIME) with the same search space and settings."""
    here = sweep_dir / STATE
    if here.exists():
        earlier = TrialLog.load(here).signature
        changed = differences(earlier, signature)
        if changed:
            raise SweepError([f"hydra.sweeper.resume=true: the sweep in {sweep_dir} had another "
                              f"{', '.join(changed)}: {', '.join(f'{k}={earlier.get(k)}' for k in changed)}"
                              "; resume it with the same settings, or start a new sweep in another hydra.sweep.dir"])
        return here
    found = []
    for path in sweep_dir.parent.parent.glob("*/*/" + STATE):  # multirun/*/*: sweep_dir's siblings among them
        try:
            earlier = TrialLog.load(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not differences(earlier.signature, signature) and not all(t.done for t in earlier.trials):
            found.append(path)
    if not found:
        raise SweepError([f"hydra.sweeper.resume=true: no unfinished thompson sweep with this search space in "
                          f"{sweep_dir} or beside it: set hydra.sweep.dir to the sweep dir to resume"])
    return max(found, key=lambda p: p.stat().st_mtime)
