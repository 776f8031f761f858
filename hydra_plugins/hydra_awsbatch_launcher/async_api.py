"""The public contract of an asynchronous launcher: what a sweeper may rely on to keep every worker busy.

Hydra's `Launcher.launch()` blocks until a whole batch has ended. A launcher that also offers the six calls of
`AsyncLauncher` takes jobs one (or a few) at a time while others run, and hands each back as a
`concurrent.futures.Future[JobReturn]`. Both launchers of this package implement it; so may any other, and
`hydra/sweeper=thompson` then keeps its workers busy on it (it checks `isinstance(launcher, AsyncLauncher)`
and imports nothing else of this package but `finished`, `wait` and `LiveText`).

Only protocols, a helper and re-exports here, importing nothing heavy: Hydra's plugin scan runs this module
(a second time) at every start.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from hydra_plugins.hydra_awsbatch_launcher._progress import LiveText

__all__ = ["AsyncLauncher", "LiveText", "finished", "wait"]
WAKE_S = 0.5  # how often a waiting main thread wakes to take a signal


@runtime_checkable
class AsyncLauncher(Protocol):
    """A Hydra launcher that submits jobs while others run."""

    def launch_async(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Future]:
        """Compose and start these jobs (numbered from `initial_job_idx`, as `launch` numbers them) without
        waiting: one `Future[JobReturn]` each, resolved when the job has ended and its result is home."""

    def resume_async(self, nums: Sequence[int]) -> dict[int, Future]:
        """Take up the sweep of `hydra.sweep.dir` after the process that launched it died: futures for the jobs
        `nums` that still run or ended with a result. Those left out must run again; new jobs join the sweep."""

    def job_times(self, num: int) -> tuple[float | None, float | None] | None:
        """When job `num` started and stopped running (epoch seconds, None where not yet); None for a job the
        launcher does not know. A trial's duration is its job's, not the time it waited for a worker."""

    def stop(self, nums: Sequence[int], reason: str, grace_s: float = 0.0) -> None:
        """Stop jobs `nums` that still run (as Batch's TerminateJob does: SIGTERM, then SIGKILL); their futures
        resolve, FAILED with `reason`, before this returns. With `grace_s`, ask first: the job's report() returns
        True, the task may save and return (its future resolves with what it returned), and a job still running
        after `grace_s` is terminated; this returns at once. Jobs stopped on purpose are not logged one by one."""

    def metrics(self, num: int, since: int = 0) -> list[dict]:
        """What job `num` reported with `report(step, **metrics)` from its record `since` on, oldest first:
        {"step", "time", metric: value...} a record. `since` is a cursor, the records the caller has taken: a
        sweeper keeps the one copy of a curve, and a check of a running job costs its new records only (a
        launcher may forget what a caller has taken). Read while the job runs, every `metrics_interval_s` or
        so; complete once it ended."""

    # Optional, beside the six: capacity() -> int | None, how many of its jobs run at once (warm workers, a cap
    # on parallel jobs); None where it runs every job it is given. A sweeper that keeps more in flight than that
    # has them wait in the launcher's queue, from which a freed worker takes the next at once.
    #
    # Optional: job_latency(num) -> dict[str, float], where job `num`'s time went in seconds
    # ({"waiting", "starting", "task", "ending"}: queued, starting up, its task, its result coming home), {} where
    # unknown. The thompson sweeper writes it into trials.csv where a launcher has it.

    def mirror(self, name: str, data: bytes) -> None:
        """Keep a copy of a sweeper's file (its state) with the sweep's own records, where a sweeper on another
        machine finds it; a no-op where the launcher has no such place (yet)."""


def finished(value) -> Future:
    """A future that is done already, holding `value`: what a launcher hands back for a job it need not wait
    on (a dry run), and what a sweeper makes of a blocking launcher's results."""
    future: Future = Future()
    future.set_result(value)
    return future


def wait(futures, timeout: float | None = None, return_when: str = concurrent.futures.ALL_COMPLETED):
    """`concurrent.futures.wait` (ALL_COMPLETED or FIRST_COMPLETED) that Ctrl-C, SIGTERM and SIGHUP always reach:
    the main thread wakes every WAKE_S seconds to run Python's signal handlers. A wait without a timeout can
    sleep through a signal that arrived just before it blocked, or that another thread received, and never end."""
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        done, not_done = concurrent.futures.wait(futures, timeout=max(0.0, min(WAKE_S, left)),
                                                 return_when=return_when)
        if not not_done or left <= WAKE_S or (done and return_when == concurrent.futures.FIRST_COMPLETED):
            return done, not_done
