"""hydra/sweeper=thompson: asynchronous parallel Bayesian optimisation (Kandasamy et al., AISTATS 2018), Hydra's
face of the Study (study.py), which decides everything: what to try, what to stop, what was learnt.

The sweeper reads the settings and the search space (Hydra's override grammar), submits each trial the study
asks for through the launcher, hands the study what running trials report and how they ended, and keeps the
sweep dir's files and the live line. With a launcher that can submit while others run (`launch_async`:
aws_batch, aws_batch_local) it keeps `n_workers` trials in flight; any other runs synchronous batches of
`n_workers`. Everything heavy (torch, BoTorch, matplotlib) is imported inside the methods: Hydra imports this
module at start-up.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.hydra_awsbatch_launcher.async_api import AsyncLauncher, LiveText, wait
from hydra_plugins.hydra_thompson_sweeper import _check
from hydra_plugins.hydra_thompson_sweeper._jobs import TrialJobs
from hydra_plugins.hydra_thompson_sweeper._pruners import MEASURED_TRIALS
from hydra_plugins.hydra_thompson_sweeper._replicates import values_of
from hydra_plugins.hydra_thompson_sweeper._space import SweepError, override, search_space
from hydra_plugins.hydra_thompson_sweeper._trials import STATE, SweepFiles, Trial, TrialStatus, find_state

log = logging.getLogger("hydra_plugins.hydra_thompson_sweeper")
QUIET_S = 0.5  # the plots are redrawn, and a fit due soon made, once no trial ended or started for this long


class ThompsonSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.params = conf.pop("params", None)
        self.conf = OmegaConf.create(conf)
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None
        self.asynchronous = False  # the launcher submits while others run (async_api.AsyncLauncher)
        self.study = None  # the Study: trials, optimiser, pruner
        self.files: SweepFiles | None = None
        self.jobs: TrialJobs | None = None  # the study's trials as the launcher's jobs

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # ------------------------------------------------------------------------------------------ the story
    def sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.hydra_thompson_sweeper.study import Study

        c = self.conf
        params = OmegaConf.to_container(self.params, resolve=True) if isinstance(self.params, DictConfig) \
            else self.params
        problems = _check.settings(c, self.launcher)
        try:
            space, fixed = search_space(params, arguments)
        except SweepError as error:
            problems = error.problems + problems
        if problems:
            raise SweepError(problems)
        self.study = Study(space, c.direction, seed=c.seed, algorithm=c.algorithm, n_initial=c.n_initial,
                           refit_every=c.refit_every, patience=c.patience, n_trials=c.n_trials, pruner=c.pruner,
                           metric=c.metric or c.objective or "value", min_resource=c.min_resource,
                           max_resource=c.max_resource, reduction_factor=c.reduction_factor, rungs=c.rungs,
                           brackets=c.brackets, confirm=c.confirm, context={"fixed": fixed, "objective": c.objective})
        self.asynchronous = isinstance(self.launcher, AsyncLauncher)
        found = self.open_files()
        self.jobs = TrialJobs(self.launcher, self.study, c, self.files, fixed, self.validate_batch_is_legal)
        OmegaConf.save(self.config, self.files.sweep_dir / "multirun.yaml")
        log.info(f"Thompson sweep in {self.files.sweep_dir}: {c.n_trials} trials, {c.n_workers} in flight, "
                 f"{c.algorithm}, {c.direction} {c.objective or 'the return value'}; searching "
                 + "; ".join(self.study.signature["space"].values()))
        if not self.asynchronous:
            log.info(f"{type(self.launcher).__name__} has no launch_async: running synchronous batches of "
                     f"{c.n_workers} (hydra/launcher=aws_batch or aws_batch_local keep every worker busy)")
        capacity, target = self.capacity(), self.in_flight_target()
        if capacity is not None and target > capacity and not self.study.optimizer.batched:
            log.info(f"The launcher runs {capacity} trials at once: {target - capacity} more wait for a worker, "
                     "which starts one the moment it frees (hydra.sweeper.n_queued)")
        if c.pruner == "asha" and c.rungs == "measured" and c.n_initial < MEASURED_TRIALS:
            log.warning(f"hydra.sweeper.rungs=measured with n_initial={c.n_initial}: the rungs are measured on the "
                        f"first {MEASURED_TRIALS} trials to end, some of them the GP's proposals (crowded where it "
                        f"believes the best is), which can keep uninformative rungs on: set n_initial to "
                        f"{MEASURED_TRIALS} or more")
        in_flight, requeue = self.resume(found) if found else ({}, [])
        try:
            self.run(in_flight, requeue)
        finally:
            self.files.save(final=True)
        best = self.study.best
        if best is None:
            ended = Counter(str(t.status) for t in self.study.trials)
            raise SweepError([f"no trial completed ({', '.join(f'{n} {status}' for status, n in ended.items())}): "
                              f"see trials.csv in {self.files.sweep_dir}"])
        runs = values_of(self.study.trials, best.params)
        mean = f"; its config's mean over {len(runs)} trials: {statistics.fmean(runs):.6g}" if len(runs) > 1 else ""
        log.info(f"Best {c.objective or 'value'}: {best.value:.6g} (trial {best.number}{mean}) with "
                 f"{' '.join(override(k, v) for k, v in best.params.items())}; results in "
                 f"{self.files.sweep_dir / 'optimization_results.yaml'}, trials.csv, convergence.png")

    def run(self, in_flight: dict, requeue: list[Trial]) -> None:
        """Keep n_workers trials in flight until n_trials have ended (or time is up): each result to the study
        the moment it comes, the study's next trial submitted at once."""
        c, study, files = self.conf, self.study, self.files
        deadline = time.time() + c.max_minutes * 60 if c.max_minutes is not None else math.inf
        batched = study.optimizer.batched or not self.asynchronous
        limit, target = c.n_trials, c.n_workers if batched else self.in_flight_target()
        one_by_one = not batched and self.capacity() is not None  # trials wait for a worker: each goes at once
        live = LiveText(logger=log)
        quiet_since, tidied = time.monotonic(), False  # since a trial last ended or started; plots drawn since
        watch_s = 0.25 if study.prunes else None  # how often what running trials reported is read
        try:
            while True:
                if time.time() > deadline:
                    limit, deadline = len(study.trials), math.inf
                    self.jobs.time_is_up(in_flight, requeue)
                free = target - len(in_flight) if not (batched and in_flight) else 0
                new: list[Trial] = []
                while free > len(new) and (requeue or len(study.trials) < limit):
                    new.append(requeue.pop(0) if requeue else study.ask())
                    if one_by_one:  # a freed worker may be waiting for this one
                        in_flight.update(self.jobs.submit(new))
                        free, new = free - 1, []
                        quiet_since, tidied = time.monotonic(), False
                if new:
                    in_flight.update(self.jobs.submit(new))
                    quiet_since, tidied = time.monotonic(), False
                if not in_flight:
                    return
                live.show(*files.line(len(in_flight), c.objective or "value"))
                # a quiet moment: no worker waits on the sweeper (a blocking launcher's trials have all ended)
                quiet = not self.asynchronous or time.monotonic() - quiet_since >= QUIET_S
                if not tidied and (quiet or files.plots_stale()):
                    if self.asynchronous:  # a fit the next proposal would make, made while every worker is busy
                        study.optimizer.prefit()
                    tidied = files.redraw()
                timeout = watch_s if tidied else min(watch_s or QUIET_S, QUIET_S)
                if deadline < math.inf:  # woken when time is up, to stop the trials still waiting for a worker
                    timeout = max(0.0, min(math.inf if timeout is None else timeout, deadline - time.time()))
                done, _ = wait(list(in_flight), timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
                stopping = self.jobs.prune(in_flight)
                if not done and not stopping:
                    continue  # a look at what the trials in flight reported, and nothing to record
                quiet_since, tidied = time.monotonic(), False
                for future in sorted(done, key=lambda f: in_flight[f].number):
                    trial = in_flight.pop(future)
                    if not self.jobs.record(trial, future):
                        requeue.append(trial)
                files.save()
                live.show(*files.line(len(in_flight), c.objective or "value"))
                if files.failed_in_a_row() >= c.max_failures:
                    last = max((t for t in study.trials if t.status == TrialStatus.FAILED), key=lambda t: t.ended or 0)
                    raise SweepError([f"{c.max_failures} trials failed in a row (hydra.sweeper.max_failures); the "
                                      f"last, trial {last.number}: {last.error}. Every trial is in "
                                      f"{files.sweep_dir / 'trials.csv'}"])
        except KeyboardInterrupt:  # wherever it lands (a wait, a proposal, a submission, a plot)
            self.interrupted()
            raise
        except SweepError:  # its message is the last thing said: the trials in flight are stopped first
            live.close()
            self.jobs.stop(in_flight)
            raise
        finally:
            live.close()

    def interrupted(self) -> None:
        """Ctrl-C: every trial asked and not told (in flight, being submitted, proposed, to run again) is recorded
        interrupted, so that a resume runs it again (or re-attaches it) instead of taking it for a failure."""
        unfinished = self.study.running()
        for trial in unfinished:
            trial.status = TrialStatus.INTERRUPTED
        log.warning(f"Interrupted with {len(unfinished)} trials unfinished; continue the sweep with "
                    "hydra.sweeper.resume=true (they run again, but those asked to stop early)")

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

    # -------------------------------------------------------------------------------- files and resume
    def open_files(self) -> Path | None:
        """The sweep dir's files for the study; with resume=true the earlier state of this sweep (else None)."""
        sweep_dir, found = Path(str(self.config.hydra.sweep.dir)).absolute(), None
        if self.conf.resume:
            found = find_state(sweep_dir, self.study.signature)
            sweep_dir = found.parent
        elif (sweep_dir / STATE).exists():
            raise SweepError([f"hydra.sweep.dir={sweep_dir} holds a thompson sweep already: continue it with "
                              "hydra.sweeper.resume=true, or give this one another hydra.sweep.dir"])
        with open_dict(self.config):  # resolved once (a ${now:} must not move), and the resumed one's
            self.config.hydra.sweep.dir = str(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.files = SweepFiles(sweep_dir, self.study, self.launcher.mirror if self.asynchronous else None)
        return found

    def resume(self, state: Path) -> tuple[dict, list[Trial]]:
        """The earlier run's study taken up, and its trials in flight re-attached or queued to run again."""
        self.study.resume(state)
        log.info(f"Resuming the thompson sweep in {self.files.sweep_dir}: {self.files.ended()} of "
                 f"{len(self.study.trials)} trials ended")
        unfinished = self.study.running()
        return self.jobs.reattach(unfinished) if unfinished else ({}, [])
