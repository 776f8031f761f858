"""The local executor of aws_batch_local: each job of an array runs the very worker a Batch container runs,
as a local process with the environment Batch would give it, at most `max_parallel` at once. A job of `nodes`
nodes (a multi-node parallel job on Batch) runs as that many worker processes on 127.0.0.1, each with the node
variables Batch gives; a node that fails stops the others, and fails the job naming it."""

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

from hydra_plugins.hydra_awsbatch_launcher import _nodes
from hydra_plugins.hydra_awsbatch_launcher._executor import JobInfo
from hydra_plugins.hydra_awsbatch_launcher._job import (
    IN_PLACE,
    INDEX_OFFSET,
    MASTER_PORT,
    PARENT_PID,
    PAYLOAD_URI,
    THREAD_VARIABLES,
    WATCH_PORT,
)
from hydra_plugins.hydra_awsbatch_launcher._manifest import FINAL, Array, BatchState
from hydra_plugins.hydra_awsbatch_launcher.worker import MODULE, scratch_prefix


@dataclass
class _Process:
    info: JobInfo
    env: dict
    popen: subprocess.Popen | None = None
    log: object = field(default=None, repr=False)
    children: list[_Process] = field(default_factory=list)  # a multi-node job's child nodes (node 1, 2, ...)
    failed_node: tuple[int, int] | None = None  # (node index, exit code) of the node whose end stopped the others

    def nodes(self) -> list[_Process]:
        """The job's processes: its main node, then its child nodes."""
        return [self, *self.children]


class LocalExecutor:
    """Runs jobs as local processes, at most `max_parallel` at once, in the order they were submitted."""

    def __init__(self, max_parallel: int | None, log_dir: Path, cwd: str, in_place: bool = True,
                 environment: dict | None = None, nodes: int = 1, procs_per_node: int | None = None,
                 threads: int | None = None, everyone: list | None = None):
        self.max_parallel = max(1, max_parallel or os.cpu_count() or 1)
        self.log_dir = Path(log_dir)
        self.cwd, self.in_place = cwd, in_place
        self.environment = dict(environment or {})
        self.nodes, self.procs_per_node = nodes, procs_per_node
        self.threads = threads  # a job's threads (its vcpus); None: its share of the CPUs
        self._jobs: list[_Process] = []
        # the jobs that max_parallel counts: these, and those of the executors of other resource sets
        self.everyone = everyone if everyone is not None else self._jobs

    def submit(self, payload_uri: str, first_num: int, size: int, offset: int = 0) -> list[Array]:
        """Queue one array of `size` jobs, job `first_num` at position `offset` of the payload (`size`
        multi-node jobs where a job has several nodes: Batch has no array of those)."""
        array_id = f"local-{os.getpid()}-{first_num}"
        # Each job gets its share of the CPUs, as a Batch job gets its vCPUs: parallel jobs whose math
        # libraries each start a thread per CPU spin against each other and run many times slower.
        cpus = os.cpu_count() or 1
        threads = min(self.threads or cpus, max(1, cpus // min(self.max_parallel, len(self.everyone) + size)))
        env = self._environment(payload_uri, str(max(1, threads // (self.nodes * (self.procs_per_node or 1)))))
        if self.nodes > 1:  # one multi-node job per config, each node with the variables Batch gives it
            for index in range(size):
                num, job_id = first_num + index, f"{array_id}-{index}"
                nodes = [_Process(JobInfo(num, job_id=job_id if not node else f"{job_id}#{node}",
                                          log_path=self._log(num, node)),
                                  dict(env, AWS_BATCH_JOB_ID=f"{job_id}#{node}", AWS_BATCH_JOB_NODE_INDEX=str(node),
                                       AWS_BATCH_JOB_NUM_NODES=str(self.nodes), AWS_BATCH_JOB_MAIN_NODE_INDEX="0",
                                       **{INDEX_OFFSET: str(offset + index)}))
                         for node in range(self.nodes)]
                for child in nodes[1:]:
                    child.env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
                nodes[0].children = nodes[1:]
                self._add(nodes[0])
            return [Array(f"{array_id}-{index}", first_num + index, 1) for index in range(size)]
        for index in range(size):
            job_id = f"{array_id}:{index}" if size > 1 else array_id
            job_env = dict(env, AWS_BATCH_JOB_ID=job_id, **{INDEX_OFFSET: str(offset)})
            if size > 1:
                job_env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
            self._add(_Process(JobInfo(first_num + index, job_id=job_id, log_path=self._log(first_num + index)),
                               job_env))
        return [Array(array_id, first_num, size)]

    def _add(self, job: _Process) -> None:
        self._jobs.append(job)
        if self.everyone is not self._jobs:
            self.everyone.append(job)

    def _environment(self, payload_uri: str, threads: str) -> dict:
        """What every job of an array (every node of a job) sees, as in a container: no PYTHONPATH of the
        launching shell; the job imports what the code package and the installed packages hold, so a sweep that
        will fail on Batch fails here too."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(self.environment)
        for name in THREAD_VARIABLES:
            env.setdefault(name, threads)
        env.pop(IN_PLACE, None)
        env[PARENT_PID] = str(os.getpid())  # the job stops with this process, even after a SIGKILL
        if self.in_place:
            env[IN_PLACE] = "1"
        env.update({PAYLOAD_URI: payload_uri, "AWS_BATCH_JOB_ATTEMPT": "1", "PYTHONUNBUFFERED": "1"})
        return env

    def _log(self, num: int, node: int = 0) -> str:
        return str(self.log_dir / (f"{num}.log" if not node else f"{num}.node{node}.log"))

    poll_interval_s = 0.05  # a look at a few local processes costs next to nothing

    def stuck(self) -> dict[str, int]:
        return {}

    def failure_details(self, nums: list[int], log_group: str = "", lines: int = 50) -> dict[int, str]:
        """Exit code and the tail of the job's log file, for jobs that ended without a result."""
        details = {}
        for num in nums:  # a job of an earlier process of the sweep (a resume) has its log file alone
            job = next((job for job in self._jobs if job.info.num == num), None)
            info = job.info if job is not None else None
            info = info or JobInfo(num, BatchState.FAILED, reason="it ran under an earlier process of this sweep",
                                   log_path=str(self.log_dir / f"{num}.log"))
            # a multi-node job that a node's end stopped: that node's log
            log_path = job.nodes()[job.failed_node[0]].info.log_path if job and job.failed_node else info.log_path
            try:
                tail = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = []
            details[num] = "\n".join([f"{info.reason or info.state}; exit code: {info.exit_code}",
                                      f"Last {len(tail)} lines of {log_path}:", *tail])
        return details

    def poll(self) -> list[JobInfo]:
        """Reap finished processes, start queued ones in free slots, and report every job's state."""
        for job in self._jobs:
            if job.popen is None or job.info.state != BatchState.RUNNING:
                continue
            codes = [node.popen.poll() for node in job.nodes()]
            if None not in codes:
                self._finish(job)
            elif job.failed_node is None and _failure(codes) is not None:  # the others cannot go on without it
                job.failed_node = _failure(codes)
                self._signal(job, signal.SIGKILL)
        running = sum(job.info.state == BatchState.RUNNING for job in self.everyone)
        for job in self._jobs:
            if running >= self.max_parallel:
                break
            if job.info.state == BatchState.RUNNABLE:
                self._start(job)
                running += 1
        return [job.info for job in self._jobs]

    def _start(self, job: _Process) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = {}
        if self.nodes > 1 or (self.procs_per_node or 1) > 1:
            ports[MASTER_PORT] = str(_nodes.free_port())
        if self.nodes > 1:
            ports[WATCH_PORT] = str(_nodes.free_port())
        for node in job.nodes():
            node.env.update(ports)  # the rendezvous of this job's processes and their watch, on the main node
            node.log = open(node.info.log_path, "wb")
            node.popen = subprocess.Popen(
                [sys.executable, "-m", MODULE],
                cwd=self.cwd, env=node.env, stdin=subprocess.DEVNULL, stdout=node.log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the parent only, which stops the jobs
            )
        job.info.state, job.info.started = BatchState.RUNNING, time.time()

    def _finish(self, job: _Process) -> None:
        codes = [node.popen.returncode for node in job.nodes()]
        for node, code in zip(job.nodes(), codes):
            node.log.close()
            if code != 0:  # os._exit or SIGKILL: the worker left its scratch folder (the unpacked code) behind
                temp = Path(node.env.get("TMPDIR") or tempfile.gettempdir())
                for left in temp.glob(scratch_prefix(node.info.num, node.popen.pid) + "*"):
                    shutil.rmtree(left, ignore_errors=True)
        failed = job.failed_node or _failure(codes)
        code = codes[0] if failed is None else failed[1]
        job.info.exit_code, job.info.stopped = code, time.time()
        job.info.state = BatchState.SUCCEEDED if failed is None else BatchState.FAILED
        if code != 0:
            job.info.reason = (f"Essential container in task exited (exit code {code})" if code > 0
                                else f"killed by signal {signal.Signals(-code).name}")
        if failed is not None and job.children:
            job.info.reason = (f"node {failed[0]} of {len(codes)} ({job.nodes()[failed[0]].info.job_id}): "
                               f"{job.info.reason}" + ("; the other nodes were stopped" if job.failed_node else ""))
            job.failed_node = failed

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        """SIGTERM every unfinished job's process group (the task's own children too; every node of a multi-node
        job), as Batch stops a container, wait for them, and return how many there were. `force` (a second
        Ctrl-C): SIGKILL now. `nums`: these jobs only."""
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
                for node in job.nodes():
                    node.popen.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self._signal(job, signal.SIGKILL)
                for node in job.nodes():
                    node.popen.wait()
            self._signal(job, signal.SIGKILL)  # what the task started and left behind
            job.failed_node = None  # stopped on purpose: no node is to blame
            self._finish(job)
            job.info.reason = reason
        return len(unfinished)

    @staticmethod
    def _signal(job: _Process, sig: int) -> None:
        for node in job.nodes():
            if node.popen is None:
                continue
            try:
                os.killpg(node.popen.pid, sig)  # the worker leads its own process group (start_new_session)
            except ProcessLookupError:
                pass

    @staticmethod
    def adopt(arrays) -> bool:
        return False  # a job process stops when the process that started it dies (PARENT_PID)

    @staticmethod
    def forced_stop_note(sweep: str) -> str:
        return "killed every job at once (SIGKILL): they saved no checkpoint and wrote no result"


def _failure(codes: list) -> tuple[int, int] | None:
    """(node, exit code) of the node to blame among a job's nodes' exit codes (None: running): one killed by a
    signal first (the others fail because it is gone), else the first that failed; None if none failed."""
    failed = [(node, code) for node, code in enumerate(codes) if code not in (None, 0)]
    return min(failed, key=lambda failure: (failure[1] >= 0, failure[0])) if failed else None


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
