"""What runs a sweep's jobs: the Executor protocol that the local processes of `aws_batch_local` (_local.py)
and AWS Batch (_batch.py) implement, and what an executor knows of one job. The engine (_sweep.py) drives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hydra_plugins.hydra_awsbatch_launcher._manifest import Array, BatchState


@dataclass
class JobInfo:
    """What the executor knows of one job."""

    num: int
    state: BatchState = BatchState.RUNNABLE
    job_id: str = ""
    exit_code: int | None = None
    reason: str = ""
    started: float | None = None  # epoch seconds
    stopped: float | None = None
    log_path: str = ""
    created: float | None = None  # when Batch took the job, on Batch's clock (None: a local job's)


class Executor(Protocol):
    """Runs the jobs of one sweep. Called under the sweep's lock: never from two threads at once."""

    poll_interval_s: float

    def submit(self, payload_uri: str, first: int, size: int) -> list[Array]:
        """Start jobs first..first+size-1 of the payload, as one or more arrays (Batch job ids, or local ones)."""

    def poll(self) -> list[JobInfo]:
        """What is known of every job submitted so far."""

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        """Stop every unfinished job (`nums`: those of them) at once with `force`, and count it FAILED with
        `reason`; how many."""

    def stuck(self) -> dict[str, int]:
        """Why jobs wait in RUNNABLE: reason -> count."""

    def failure_details(self, nums: list[int], log_group: str) -> dict[int, str]:
        """For jobs that ended without a result: what the executor knows of why."""

    def forced_stop_note(self, sweep: str) -> str:
        """What a second Ctrl-C leaves behind."""

    def adopt(self, arrays: list[Array]) -> bool:
        """Follow the jobs an earlier process of this sweep submitted; False where they ended with it."""

    def recover(self, payload_uri: str, first: int, size: int, since: float) -> list[Array]:
        """Where `adopt` is True: a batch that an earlier process recorded at `since` and died submitting (or before
        it heard the answer). The jobs of it that went out are followed, the others submitted now; its arrays."""
