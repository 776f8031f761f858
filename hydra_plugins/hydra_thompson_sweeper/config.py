"""The thompson sweeper's config, stored in Hydra's ConfigStore as hydra/sweeper=thompson.

No torch here: Hydra imports this module at start-up for every app.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ThompsonSweeperConf:
    _target_: str = "hydra_plugins.hydra_thompson_sweeper.thompson_sweeper.ThompsonSweeper"
    # The search space, in Hydra's override grammar: name -> interval(a, b), tag(log, interval(a, b)),
    # range(a, b[, step]), choice(x, y, ...) or x,y,z; a plain value stays fixed for every trial
    params: Dict[str, Any] = field(default_factory=dict)
    # minimize or maximize the objective
    direction: str = "minimize"
    # The task's return value is the objective; or, when it returns a mapping, this key of it
    objective: Optional[str] = None
    # Trials in all (failed ones count)
    n_trials: int = 20
    # Trials in flight at once: Batch jobs kept running
    n_workers: int = 4
    # Trials proposed ahead, waiting for a worker, where the launcher runs at most n_workers at once (warm
    # workers, or max_parallel): a worker that frees starts one at once, not after the next proposal (which then
    # sees one result fewer); 0: propose only when a worker frees
    n_queued: int = 1
    # asy_ts (asynchronous Thompson sampling), syn_ts (in batches of n_workers), asy_random, syn_random
    algorithm: str = "asy_ts"
    # Space-filling (Sobol) trials before the Gaussian process proposes
    n_initial: int = 10
    # Observations between two fits of the Gaussian process's hyperparameters (sooner while they are few: once
    # they grew by a fifth since the last fit)
    refit_every: int = 25
    # Trials without improvement after which the search restarts from a fresh Sobol design and a GP of its
    # own (then, when that one stalls too, both are merged); null: 40, or 5 per searched parameter if more;
    # 0: never
    patience: Optional[int] = None
    # Seed of the proposals: the same seed and results give the same trials
    seed: int = 0
    # Stop submitting new trials after this many minutes (those in flight end); null: no limit
    max_minutes: Optional[float] = None
    # Failed trials in a row that stop the sweep
    max_failures: int = 5
    # Early stopping from what trials report(): none, median, asha (asynchronous successive halving) or
    # extrapolate (a trial whose curve, extrapolated, cannot end better than the best finished trial)
    pruner: str = "none"
    # The reported metric the pruner compares (as report(step, NAME=...) names it); null: the objective's key
    metric: Optional[str] = None
    # The first step (resource: epochs, say) at which a trial may be stopped, and the step at which it is done
    min_resource: float = 1.0
    max_resource: Optional[float] = None
    # ASHA keeps the top 1/reduction_factor of the trials at each rung (min_resource * reduction_factor**k)
    reduction_factor: int = 3
    # always: every rung stops trials from the start; measured: a rung stops trials only once 8 trials ran to
    # max_resource and at most 30% of their pairs are in the reverse order there of their final order (curves
    # that cross: early values that say little stop nothing)
    rungs: str = "always"
    # asha: 1 (ASHA), or up to the rungs + 1 brackets of asynchronous Hyperband: a trial in bracket b is first
    # judged at rung b (with rungs + 1 brackets the last stops nothing), so some trials train for longer
    brackets: int = 1
    # Run the best config a second time before it is believed, where a config can be tried twice (a space with
    # no float interval) and the objective is noisy: the best is the config with the best mean of its trials.
    # auto: on such a space with asy_ts or syn_ts, until three configs run twice gave the same value each time
    # (deterministic); always; never
    confirm: str = "auto"
    # Seconds a trial asked to stop has to save and return before its job is terminated
    stop_grace_s: float = 60.0
    # true: continue the sweep whose state is in hydra.sweep.dir (or the newest unfinished one beside it
    # with the same search space): finished trials are kept, jobs in flight re-attached
    resume: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="thompson", node=ThompsonSweeperConf,
                             provider="hydra-thompson-sweeper")
