"""Warm workers (`hydra.launcher.workers=M`): M long-lived worker jobs that run trial after trial, so that a trial
pays no Batch scheduling, container start or image pull of its own.

The protocol lives in the sweep's staging area (S3 or the local staging folder), under `pool/`, with one writer
per object, so no trial can run twice at once and none is lost:

- `pool/parent` (the launcher's): a heartbeat counter, and `stop` once the sweep ends;
- `pool/w<W>/assign` (the launcher's): worker W's current assignment: a sequence number, the trial's job number,
  payload and index, and `stop` when the sweep wants that trial stopped;
- `pool/w<W>/state` (worker W's): the assignment it runs or ran (`running`, `ended` with the trial's exit code),
  or `exited` and why.

The launcher's side is `WarmPool`, an executor of trials (_executor.py) on top of the executor of the worker jobs
(_local.py's processes or _batch.py's array): it queues trials, hands each to an idle worker, follows the workers'
states, and gives a dead worker's trial to another worker (a replacement is started). The worker's side is
`serve`: each trial runs the plain worker in a process and session of its own, so a trial's globals, working
directory, environment and child processes never reach the next: a process forked from the warm worker, which
imported Hydra and the task's modules once (worker.warm_up), or with `fresh_interpreter`, a new
`python -m ...worker` that imports everything anew. A worker exits
when the sweep ends, after `idle_timeout_s` without work, or when the launcher's heartbeat stops for
PARENT_SILENCE_S (an orphaned sweep must not keep instances billing).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _storage
from hydra_plugins.hydra_awsbatch_launcher._executor import JobInfo
from hydra_plugins.hydra_awsbatch_launcher._manifest import FINAL, Array, BatchState

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")

ENV_IDLE_TIMEOUT = "HYDRA_AWSBATCH_IDLE_TIMEOUT_S"
ENV_FRESH = "HYDRA_AWSBATCH_FRESH_INTERPRETER"  # "1": a new Python per trial, not a fork of the warm worker
PARENT_BEAT_S = 5.0  # the launcher's heartbeat
PARENT_SILENCE_S = 60.0  # a worker whose launcher was silent this long exits (after stopping its trial)
STOP_WAIT_S = 60.0  # how long stopping a trial waits for its worker to say it ended
MAX_LOSSES = 3  # a trial whose worker died this many times fails


def is_pool(uri: str) -> bool:
    """Whether a worker job's payload URI names a pool (`launch_uri`): a warm worker."""
    return "/pool/from-" in uri


def launch_uri(pool: str, first: int) -> str:
    """What the worker jobs numbered from `first` get as their payload URI: the pool, and that number (a job's
    number is `first` + its index in the array)."""
    return _storage.join(pool, f"from-{first}")


def parse(uri: str) -> tuple[str, int]:
    """The pool and first worker number of a `launch_uri`."""
    pool, _, first = uri.rpartition("/from-")
    return pool, int(first)


def _read(uri: str) -> dict | None:
    try:
        return json.loads(_storage.read_bytes(uri))
    except (FileNotFoundError, ValueError):
        return None


def _write(uri: str, record: dict) -> None:
    _storage.write_bytes(uri, json.dumps(record).encode())


def _interval(uri: str) -> float:
    """How often a side looks at the other's objects: a local folder costs nothing; S3, one GET."""
    return 0.5 if _storage.is_s3(uri) else 0.05


# --------------------------------------------------------------------------------------------- the worker
class _Forked:
    """A trial forked from the warm worker, as subprocess.Popen has it: pid, poll(), returncode."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _signal(trial, sig: int) -> None:
    """The trial's session (its own children too); the trial alone if it has no session yet."""
    try:
        os.killpg(trial.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(trial.pid, sig)
        except ProcessLookupError:
            pass


def _start(assign: dict, fresh: bool, scratch: Path):
    """The trial of `assign`: forked from this process (warmed up the first time), or a new Python."""
    from hydra_plugins.hydra_awsbatch_launcher import worker as plain

    env = {plain.ENV_PAYLOAD_URI: assign["payload_uri"], plain.ENV_INDEX_OFFSET: str(assign["index"]),
           "AWS_BATCH_JOB_ARRAY_INDEX": "0"}
    if fresh:
        return subprocess.Popen([sys.executable, "-m", plain.MODULE], start_new_session=True,
                                env=dict(os.environ, **env, **{plain.ENV_PARENT_PID: str(os.getpid())}))
    if assign["payload_uri"] not in plain._WARM:
        plain.warm_up(assign["payload_uri"], scratch)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.environ.update(env)
        plain.run_forked(assign["payload_uri"], assign["index"], parent)  # never returns
    return _Forked(pid)


def serve(pool: str, worker: int, idle_timeout_s: float) -> int:
    """Worker `worker` of the pool at `pool`: run trial after trial until told to stop, idle too long or
    orphaned."""
    scratch = Path(tempfile.mkdtemp(prefix="hydra-awsbatch-warm-"))
    try:
        return _serve(pool, worker, idle_timeout_s, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _serve(pool: str, worker: int, idle_timeout_s: float, scratch: Path) -> int:
    from hydra_plugins.hydra_awsbatch_launcher import worker as plain

    mine = _storage.join(pool, f"w{worker}")
    every = _interval(pool)
    last = _read(_storage.join(mine, "state")) or {}  # an earlier attempt of this worker job (Batch retried it)
    done_seq = last.get("seq", 0) - (last.get("state") == "running")  # a trial it did not finish runs again
    idle_since = time.monotonic()
    beat, beat_seen = None, time.monotonic()
    fresh = os.environ.get(ENV_FRESH) == "1" or not hasattr(os, "fork")
    trial = None
    stopping = []

    def on_sigterm(signum, frame):  # Batch stopping this job (Ctrl-C, cancel, Spot): so is the trial
        stopping.append(signum)
        if trial is not None and trial.returncode is None:
            _signal(trial, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"hydra-awsbatch: warm worker {worker} of pool {pool}", flush=True)

    def exited(why: str, code: int = 0) -> int:
        _write(_storage.join(mine, "state"), {"state": "exited", "seq": done_seq, "why": why})
        print(f"hydra-awsbatch: warm worker {worker} exits: {why}", flush=True)
        return code

    while True:
        parent = _read(_storage.join(pool, "parent")) or {}
        if parent.get("beat") != beat:
            beat, beat_seen = parent.get("beat"), time.monotonic()
        if parent.get("stop"):
            return exited("the sweep ended")
        if stopping:
            return exited("stopped by SIGTERM", plain.EXIT_INTERRUPTED)
        if time.monotonic() - beat_seen > PARENT_SILENCE_S:
            return exited(f"the launcher was silent for {PARENT_SILENCE_S:.0f} s")
        assign = _read(_storage.join(mine, "assign")) or {}
        if assign.get("seq", 0) > done_seq and not assign.get("stop"):
            print(f"hydra-awsbatch: warm worker {worker}: trial {assign['num']} starts", flush=True)
            trial = _start(assign, fresh, scratch)
            started = time.time()
            _write(_storage.join(mine, "state"), {"state": "running", "seq": assign["seq"], "num": assign["num"],
                                                  "started": started})
            code = _follow(trial, mine, assign["seq"], every)
            try:  # what the trial left running in its session goes with it
                os.killpg(trial.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            trial = None
            done_seq, idle_since = assign["seq"], time.monotonic()
            _write(_storage.join(mine, "state"), {"state": "ended", "seq": done_seq, "num": assign["num"],
                                                  "exit_code": code, "started": started, "stopped": time.time()})
            print(f"hydra-awsbatch: warm worker {worker}: trial {assign['num']} ended (exit code {code})", flush=True)
            continue
        if time.monotonic() - idle_since > idle_timeout_s:
            return exited(f"no work for {idle_timeout_s:.0f} s")
        time.sleep(every)


def _follow(trial, mine: str, seq: int, every: float) -> int:
    """Wait for the trial's process; SIGTERM its session when the launcher asks this trial to stop."""
    asked, looked = False, time.monotonic()
    while trial.poll() is None:
        time.sleep(0.01)
        if not asked and time.monotonic() - looked >= max(every, 0.2):
            looked = time.monotonic()
            if (_read(_storage.join(mine, "assign")) or {}).get("stop") == seq:
                _signal(trial, signal.SIGTERM)
                asked = True
    return trial.returncode


# ------------------------------------------------------------------------------------------- the launcher
class WarmPool:
    """An executor of trials on `size` warm workers, which `workers` (the executor of the worker jobs) runs."""

    def __init__(self, workers, pool: str, size: int):
        self.workers, self.size, self.pool = workers, size, pool
        self.poll_interval_s = _interval(self.pool)
        self.trials: dict[int, JobInfo] = {}
        self.queue: list[int] = []  # trial numbers waiting for a worker, in order
        self.where: dict[int, tuple[str, int]] = {}  # trial number -> (payload URI, index)
        self.losses: dict[int, int] = {}  # trial number -> how many of its workers died under it
        self.assigned: dict[int, tuple[int, int]] = {}  # worker -> (seq, trial number) it was last given
        self.ran_on: dict[int, int] = {}  # trial number -> the worker it was last given to
        self.live: dict[int, JobInfo] = {}  # worker -> its job, while it runs
        self.started = 0  # worker jobs started so far (worker numbers 0, 1, ...)
        self.seq = 0
        self.beat, self.beat_at = 0, 0.0
        self.workers_polled, self._seen = 0.0, []
        atexit.register(self.close)  # the launcher's end is the sweep's: the workers go

    # the pool ---------------------------------------------------------------------------------------------
    def _start(self, count: int) -> None:
        first, self.started = self.started, self.started + count
        for array in self.workers.submit(launch_uri(self.pool, first), first, count):
            log.info(f"Started {array.size} warm worker(s): {array.job_id}")
        for info in self._poll_workers(force=True):
            if first <= info.num < first + count:
                self.live[info.num] = info

    def _poll_workers(self, force: bool = False) -> list[JobInfo]:
        """The worker jobs' states, polled at the worker executor's own pace (Batch: DescribeJobs)."""
        if force or time.monotonic() - self.workers_polled >= self.workers.poll_interval_s:
            self.workers_polled = time.monotonic()
            self._seen = self.workers.poll()
        return self._seen

    def _heartbeat(self, stop: bool = False) -> None:
        if stop or time.monotonic() - self.beat_at >= PARENT_BEAT_S:
            self.beat, self.beat_at = self.beat + 1, time.monotonic()
            _write(_storage.join(self.pool, "parent"), {"beat": self.beat, "stop": stop})

    # Executor ---------------------------------------------------------------------------------------------
    def submit(self, payload_uri: str, first: int, size: int) -> list[Array]:
        for index in range(size):
            self.trials[first + index] = JobInfo(first + index, BatchState.RUNNABLE)
            self.where[first + index] = (payload_uri, index)
            self.queue.append(first + index)
        self._heartbeat()
        self._staff()
        self._assign()
        return [Array(f"warm-pool:{first}", first, size)]

    def poll(self) -> list[JobInfo]:
        self._heartbeat()
        for info in self._poll_workers():
            if info.num in self.live:
                self.live[info.num] = info
        for worker in list(self.live):
            self._follow(worker)
        self._staff()
        self._assign()
        return list(self.trials.values())

    def _staff(self) -> None:
        """Workers for the trials waiting: at the start, in place of one that died, after idle ones left."""
        if self.queue and len(self.live) < self.size:
            self._start(min(self.size - len(self.live), len(self.queue)))

    def _follow(self, worker: int) -> None:
        job = self.live[worker]
        seq, num = self.assigned.get(worker, (0, None))
        trial = self.trials.get(num)
        busy = trial is not None and trial.state not in FINAL
        state = (_read(_storage.join(self.pool, f"w{worker}", "state")) or {}) if busy else {}
        if busy and state.get("seq") == seq:
            trial.started = state.get("started") or trial.started  # the worker's clock, as Batch's times are
            if state.get("state") == "running":
                trial.state = BatchState.RUNNING
            elif state.get("state") == "ended":
                code = state.get("exit_code")
                trial.exit_code, trial.stopped = code, state.get("stopped") or time.time()
                trial.state = BatchState.SUCCEEDED if code == 0 else BatchState.FAILED
                if code:
                    trial.reason = f"Essential container in task exited (exit code {code})"
        if job.state not in FINAL:
            return
        del self.live[worker]  # the worker job ended: idle, told to stop, or dead
        if trial is not None and trial.state not in FINAL:  # its trial goes to another worker
            self.losses[num] = self.losses.get(num, 0) + 1
            why = f"its warm worker {job.job_id} ended ({job.reason or job.state})"
            if self.losses[num] >= MAX_LOSSES:
                trial.state, trial.reason, trial.stopped = BatchState.FAILED, why, time.time()
            else:
                log.warning(f"Trial {num}: {why}; it runs again on another worker")
                trial.state, trial.job_id, trial.started = BatchState.RUNNABLE, "", None
                self.queue.insert(0, num)

    def _assign(self) -> None:
        for worker, job in sorted(self.live.items()):
            if not self.queue:
                return
            seq, num = self.assigned.get(worker, (0, None))
            if num is not None and self.trials[num].state not in FINAL:
                continue  # busy
            state = _read(_storage.join(self.pool, f"w{worker}", "state")) or {}
            if state.get("state") == "exited":
                continue
            num = self.queue.pop(0)
            self.seq += 1
            payload_uri, index = self.where[num]
            _write(_storage.join(self.pool, f"w{worker}", "assign"),
                   {"seq": self.seq, "num": num, "payload_uri": payload_uri, "index": index})
            self.assigned[worker] = (self.seq, num)
            self.ran_on[num] = worker
            trial = self.trials[num]
            trial.state, trial.job_id, trial.log_path = BatchState.STARTING, job.job_id, job.log_path

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        unfinished = [t for t in self.trials.values() if t.state not in FINAL and (nums is None or t.num in nums)]
        if nums is None:  # the whole sweep: the workers go, and their trials with them
            self._heartbeat(stop=True)
            self.queue.clear()
            self.workers.terminate(reason, force)
            self.poll()
        else:
            self.queue = [num for num in self.queue if num not in nums]
            running = {num: worker for worker, (seq, num) in self.assigned.items() if num in nums}
            for num, worker in running.items():
                seq = self.assigned[worker][0]
                payload_uri, index = self.where[num]
                _write(_storage.join(self.pool, f"w{worker}", "assign"),
                       {"seq": seq, "num": num, "payload_uri": payload_uri, "index": index, "stop": seq})
            deadline = time.monotonic() + (0 if force else STOP_WAIT_S)
            while not force and time.monotonic() < deadline and any(
                    self.trials[num].state not in FINAL for num in running):
                time.sleep(self.poll_interval_s)
                self.poll()
        for trial in unfinished:  # stopped for `reason`, whatever its exit code (as Batch's statusReason says)
            if trial.state not in FINAL:
                trial.state, trial.stopped = BatchState.FAILED, time.time()
            trial.reason = reason
        return len(unfinished)

    def close(self) -> None:
        """The sweep has ended (the launcher exits): the workers exit."""
        if self.started:
            try:
                self._heartbeat(stop=True)
            except Exception as error:  # at exit: the workers still go, when the heartbeat stops
                log.warning(f"could not tell the warm workers to stop ({error}); they stop within "
                            f"{PARENT_SILENCE_S:.0f} s")

    def stuck(self) -> dict[str, int]:
        return self.workers.stuck()

    def failure_details(self, nums: list[int], log_group: str = "") -> dict[int, str]:
        """What the worker that ran each trial knows (its log holds every trial it ran)."""
        found = self.workers.failure_details(sorted({self.ran_on[n] for n in nums if n in self.ran_on}), log_group)
        return {num: f"{self.trials[num].reason or self.trials[num].state}; on warm worker "
                     f"{self.trials[num].job_id or '-'}\n{found.get(self.ran_on.get(num), '')}" for num in nums}

    def forced_stop_note(self, sweep: str) -> str:
        return self.workers.forced_stop_note(sweep)

    def adopt(self, arrays: list[Array]) -> bool:
        return False  # the workers stop with the launcher that fed them: unfinished trials run again
