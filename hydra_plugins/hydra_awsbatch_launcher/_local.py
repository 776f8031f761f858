"""The local executor of aws_batch_local: each job of an array runs the very worker a Batch container runs,
as a local process with the environment Batch would give it, at most `max_parallel` at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher._executor import JobInfo
from hydra_plugins.hydra_awsbatch_launcher._manifest import FINAL, Array, BatchState
from hydra_plugins.hydra_awsbatch_launcher.worker import (
    ENV_IN_PLACE,
    ENV_PARENT_PID,
    ENV_PAYLOAD_URI,
    MODULE,
    scratch_prefix,
)


@dataclass
class _Process:
    info: JobInfo
    env: dict
    popen: subprocess.Popen | None = None
    log: object = field(default=None, repr=False)


class LocalExecutor:
    """Runs jobs as local processes, at most `max_parallel` at once, in the order they were submitted."""

    def __init__(self, max_parallel: int | None, log_dir: Path, cwd: str, in_place: bool = True,
                 environment: dict | None = None):
        self.max_parallel = max(1, max_parallel or os.cpu_count() or 1)
        self.log_dir = Path(log_dir)
        self.cwd, self.in_place = cwd, in_place
        self.environment = dict(environment or {})
        self._jobs: list[_Process] = []

    def submit(self, payload_uri: str, first_num: int, size: int) -> list[Array]:
        """Queue one array of `size` jobs."""
        array_id = f"local-{os.getpid()}-{first_num}"
        # Each job gets its share of the CPUs, as a Batch job gets its vCPUs: parallel jobs whose math
        # libraries each start a thread per CPU spin against each other and run many times slower.
        threads = str(max(1, (os.cpu_count() or 1) // min(self.max_parallel, len(self._jobs) + size)))
        for index in range(size):
            job_id = f"{array_id}:{index}" if size > 1 else array_id
            # As in a container: no PYTHONPATH of the launching shell; the job imports what the code package
            # and the installed packages hold, so a sweep that will fail on Batch fails here too.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env.update(self.environment)
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env.setdefault(name, threads)
            env.pop(ENV_IN_PLACE, None)
            env[ENV_PARENT_PID] = str(os.getpid())  # the job stops with this process, even after a SIGKILL
            if self.in_place:
                env[ENV_IN_PLACE] = "1"
            env.update({ENV_PAYLOAD_URI: payload_uri, "AWS_BATCH_JOB_ID": job_id,
                        "AWS_BATCH_JOB_ATTEMPT": "1", "PYTHONUNBUFFERED": "1"})
            if size > 1:
                env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
            log_path = self.log_dir / f"{first_num + index}.log"
            self._jobs.append(_Process(JobInfo(first_num + index, job_id=job_id, log_path=str(log_path)), env))
        return [Array(array_id, first_num, size)]

    poll_interval_s = 0.05  # a look at a few local processes costs next to nothing

    def stuck(self) -> dict[str, int]:
        return {}

    def failure_details(self, nums: list[int], log_group: str = "", lines: int = 50) -> dict[int, str]:
        """Exit code and the tail of the job's log file, for jobs that ended without a result."""
        details = {}
        for num in nums:  # a job of an earlier process of the sweep (a resume) has its log file alone
            info = next((job.info for job in self._jobs if job.info.num == num), None)
            info = info or JobInfo(num, BatchState.FAILED, reason="it ran under an earlier process of this sweep",
                                   log_path=str(self.log_dir / f"{num}.log"))
            try:
                tail = Path(info.log_path).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = []
            details[num] = "\n".join([f"{info.reason or info.state}; exit code: {info.exit_code}",
                                      f"Last {len(tail)} lines of {info.log_path}:", *tail])
        return details

    def poll(self) -> list[JobInfo]:
        """Reap finished processes, start queued ones in free slots, and report every job's state."""
        for job in self._jobs:
            if job.popen is not None and job.info.state == BatchState.RUNNING and job.popen.poll() is not None:
                self._finish(job)
        running = sum(job.info.state == BatchState.RUNNING for job in self._jobs)
        for job in self._jobs:
            if running >= self.max_parallel:
                break
            if job.info.state == BatchState.RUNNABLE:
                self._start(job)
                running += 1
        return [job.info for job in self._jobs]

    def _start(self, job: _Process) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        job.log = open(job.info.log_path, "wb")
        job.popen = subprocess.Popen(
            [sys.executable, "-m", MODULE],
            cwd=self.cwd, env=job.env, stdin=subprocess.DEVNULL, stdout=job.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the parent only, which stops the jobs
        )
        job.info.state, job.info.started = BatchState.RUNNING, time.time()

    def _finish(self, job: _Process) -> None:
        code = job.popen.returncode
        job.log.close()
        if code != 0:  # os._exit or SIGKILL: the worker left its scratch folder (the unpacked code) behind
            temp = Path(job.env.get("TMPDIR") or tempfile.gettempdir())
            for left in temp.glob(scratch_prefix(job.info.num, job.popen.pid) + "*"):
                shutil.rmtree(left, ignore_errors=True)
        job.info.exit_code, job.info.stopped = code, time.time()
        job.info.state = BatchState.SUCCEEDED if code == 0 else BatchState.FAILED
        if code != 0:
            job.info.reason = (f"Essential container in task exited (exit code {code})" if code > 0
                                else f"killed by signal {signal.Signals(-code).name}")

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        """SIGTERM every unfinished job's process group (the task's own children too), as Batch stops a
        container, wait for them, and return how many there were. `force` (a second Ctrl-C): SIGKILL now.
        `nums`: these jobs only."""
        unfinished = [job for job in self._jobs if job.info.state not in FINAL
                      and (nums is None or job.info.num in nums)]
        for job in unfinished:
            self._signal(job, signal.SIGKILL if force else signal.SIGTERM)
        deadline = time.time() + 30
        for job in unfinished:
            if job.popen is None:
                job.info.state, job.info.reason = BatchState.FAILED, reason
                continue
            try:
                job.popen.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self._signal(job, signal.SIGKILL)
                job.popen.wait()
            self._signal(job, signal.SIGKILL)  # what the task started and left behind
            self._finish(job)
            job.info.reason = reason
        return len(unfinished)

    @staticmethod
    def _signal(job: _Process, sig: int) -> None:
        if job.popen is None:
            return
        try:
            os.killpg(job.popen.pid, sig)  # the worker leads its own process group (start_new_session)
        except ProcessLookupError:
            pass

    @staticmethod
    def adopt(arrays) -> bool:
        return False  # a job process stops when the process that started it dies (ENV_PARENT_PID)

    @staticmethod
    def forced_stop_note(sweep: str) -> str:
        return "killed every job at once (SIGKILL): they saved no checkpoint and wrote no result"


class Remains:
    """The jobs of an aws_batch_local sweep whose launching process is gone: they stopped with it (each noticed
    within half a second), so each counts as ended, as the result object it wrote says, or failed without one.
    What `hydra-awsbatch status` shows of such a sweep, and what `attach` collects."""

    poll_interval_s = 0.05

    def __init__(self, manifest):
        from hydra_plugins.hydra_awsbatch_launcher import _storage, _wire

        self.jobs = {}
        for job in manifest.jobs:
            info = JobInfo(job.num, job.state, job.job_id, job.exit_code, job.reason, job.started, job.stopped)
            if info.state not in FINAL:
                try:
                    outcome = _wire.outcome_of(_storage.read_bytes(manifest.staging.result(job.num)))
                except FileNotFoundError:
                    outcome = None
                info.state = BatchState.SUCCEEDED if outcome == _wire.Outcome.SUCCEEDED else BatchState.FAILED
                info.reason = "ended with its launching process: " + (
                    f"its result says {outcome}" if outcome else "it wrote no result")
            self.jobs[job.num] = info

    def poll(self) -> list[JobInfo]:
        return list(self.jobs.values())

    def failure_details(self, nums: list[int], log_group: str = "") -> dict[int, str]:
        return {num: self.jobs[num].reason for num in nums}

    @staticmethod
    def terminate(reason: str, force: bool = False, nums=None) -> int:
        return 0  # nothing runs any more

    @staticmethod
    def stuck() -> dict[str, int]:
        return {}

    @staticmethod
    def adopt(arrays) -> bool:
        return False

    @staticmethod
    def forced_stop_note(sweep: str) -> str:
        return ""
