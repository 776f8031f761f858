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
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _job, _storage
from hydra_plugins.hydra_awsbatch_launcher._executor import JobInfo
from hydra_plugins.hydra_awsbatch_launcher._manifest import FINAL, Array, BatchState

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")

PARENT_BEAT_S = 5.0  # the launcher's heartbeat
PARENT_SILENCE_S = 60.0  # a worker whose launcher was silent this long exits (after stopping its trial)
STOP_WAIT_S = 60.0  # how long stopping a trial waits for its worker to say it ended
KILL_AFTER_S = 30.0  # a trial asked to stop (SIGTERM) is killed this long after, as Batch does
WORKER_LIFE_S = 14 * 24 * 3600  # a worker job's own Batch timeout: trials have theirs (JobSettings.trial_timeout_s)
MAX_LOSSES = 3  # a trial whose worker died this many times fails


def is_pool(uri: str) -> bool:
    """Whether a worker job's payload URI names a pool (`launch_uri`): a warm worker."""
    return "/pool/" in uri and uri.rsplit("/", 1)[-1].startswith("from-")


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


def _start(plain, assign: dict, fresh: bool):
    """The trial of `assign` (`plain`: the worker module): forked from this process (warmed up with its
    payload: _Worker.warm_up), or a new Python."""
    env = {_job.PAYLOAD_URI: assign["payload_uri"], _job.INDEX_OFFSET: str(assign["index"]),
           "AWS_BATCH_JOB_ARRAY_INDEX": "0"}
    if fresh:
        return subprocess.Popen([sys.executable, "-m", plain.MODULE], start_new_session=True,
                                env=dict(os.environ, **env, **{_job.PARENT_PID: str(os.getpid()),
                                                               _job.ORPHAN_KILL: "1"}))
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.environ.update(env)
        plain.run_forked(assign["payload_uri"], assign["index"], parent)  # never returns
    return _Forked(pid)


def serve(plain, pool: str, worker: int, idle_timeout_s: float) -> int:
    """Worker `worker` of the pool at `pool`: run trial after trial until told to stop, idle too long or
    orphaned. `plain`: the worker module, whose job each trial runs (handed in: this module imports no
    worker)."""
    scratch = Path(tempfile.mkdtemp(prefix=plain.scratch_prefix(worker, os.getpid())))  # aws_batch_local's
    # parent removes it where this process dies too hard to (kill -9)
    try:
        return _Worker(plain, pool, worker, idle_timeout_s, scratch).serve()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _Worker:
    """One warm worker's loop. Its state object always holds the last trial it ended (so that `exited` still
    says how that trial ended), and says `ready` when it starts."""

    def __init__(self, plain, pool: str, worker: int, idle_timeout_s: float, scratch: Path):
        self.plain, self.pool, self.worker = plain, pool, worker
        self.idle_timeout_s, self.scratch = idle_timeout_s, scratch
        self.mine = _storage.join(pool, f"w{worker}")
        self.every = _interval(pool)
        settings = _job.JobSettings.read()
        self.fresh = settings.fresh_interpreter or not hasattr(os, "fork")
        self.trial_timeout_s = float(settings.trial_timeout_s or 0)
        last = _read(_storage.join(self.mine, "state")) or {}  # an earlier attempt (Batch retried this job)
        if last.get("state") == "running":  # a trial it did not finish runs again
            last = {"seq": last["seq"] - 1}
        self.last = {k: v for k, v in last.items() if k not in ("state", "why")}
        self.beat, self.beat_seen = None, time.monotonic()
        self.trial = None
        self.stopping = False
        self.cold: dict[str, str] = {}  # payload URI -> why its warm-up failed (said once)
        self.cold_note = ""  # the last of them, in its state for the launcher to say

    def say(self, state: str, **fields) -> None:
        note = {"cold": self.cold_note} if self.cold_note else {}
        _write(_storage.join(self.mine, "state"), {**self.last, **note, **fields, "state": state})

    def on_sigterm(self, signum, frame) -> None:  # Batch stopping this job (Ctrl-C, cancel, Spot): and the trial
        self.stopping = True
        if self.trial is not None and self.trial.returncode is None:
            _signal(self.trial, signal.SIGTERM)

    def orphaned(self) -> str | None:
        """Why this worker must stop: the sweep ended, or its launcher went silent."""
        parent = _read(_storage.join(self.pool, "parent")) or {}
        if parent.get("beat") != self.beat:
            self.beat, self.beat_seen = parent.get("beat"), time.monotonic()
        if parent.get("stop"):
            return "the sweep ended"
        if time.monotonic() - self.beat_seen > PARENT_SILENCE_S:
            return f"the launcher was silent for {PARENT_SILENCE_S:.0f} s"
        return None

    def exited(self, why: str, code: int = 0) -> int:
        self.say("exited", exit_why=why)
        print(f"hydra-awsbatch: warm worker {self.worker} exits: {why}", flush=True)
        return code

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        print(f"hydra-awsbatch: warm worker {self.worker} of pool {self.pool}", flush=True)
        self.say("ready")
        idle_since = time.monotonic()
        while True:
            why = self.orphaned()
            if why:
                return self.exited(why)
            if self.stopping:
                return self.exited("stopped by SIGTERM", _job.EXIT_INTERRUPTED)
            assign = _read(_storage.join(self.mine, "assign")) or {}
            if assign.get("seq", 0) > self.last.get("seq", 0):
                if assign.get("stop"):  # taken back before it started
                    self.last = {"seq": assign["seq"], "num": assign["num"], "exit_code": None, "revoked": True}
                    self.say("ended")
                else:
                    self.run(assign)
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since > self.idle_timeout_s:
                return self.exited(f"no work for {self.idle_timeout_s:.0f} s")
            time.sleep(self.every)

    def run(self, assign: dict) -> None:
        print(f"hydra-awsbatch: warm worker {self.worker}: trial {assign['num']} starts", flush=True)
        started = time.time()
        if not self.fresh:
            self.warm_up(assign["payload_uri"])
        helpers = set(self.plain.children(os.getpid()))  # this worker's own (what the script started at import)
        self.trial = _start(self.plain, assign, self.fresh)
        self.say("running", seq=assign["seq"], num=assign["num"], started=started)
        code, why = self.follow(assign["seq"])
        self.plain.let_helpers_finish(self.trial.pid)  # its multiprocessing helpers clean up what it left
        try:  # what the trial left running in its session goes with it
            os.killpg(self.trial.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.plain.end_children(keep=helpers)  # and what it started in sessions of their own (adopted here)
        left = self.plain.scratch_prefix(assign["num"], self.trial.pid) + "*"  # a trial that ended too hard to
        for path in Path(tempfile.gettempdir()).glob(left):  # remove its scratch folder (a signal, an os._exit)
            shutil.rmtree(path, ignore_errors=True)
        self.trial = None
        self.last = {"seq": assign["seq"], "num": assign["num"], "exit_code": code, "started": started,
                     "stopped": time.time(), "interrupted": self.stopping, "why": why}
        self.say("ended")
        print(f"hydra-awsbatch: warm worker {self.worker}: trial {assign['num']} ended: {ended(code)}"
              + (f" ({why})" if why else ""), flush=True)

    def warm_up(self, payload_uri: str) -> None:
        """The payload's imports and unpickling once, before the trials are forked; where that fails, said once
        (here and, through this worker's state, in the launcher's log), and each trial does it for itself."""
        if payload_uri in self.cold:
            return
        why = self.plain.warm_up(payload_uri, self.scratch)
        if why:
            self.cold[payload_uri] = why
            self.cold_note = f"its warm-up failed ({why}): each trial imports the task itself"
            print(f"hydra-awsbatch: warm worker {self.worker}: {self.cold_note}", flush=True)

    def follow(self, seq: int) -> tuple[int, str]:
        """Wait for the trial's process. SIGTERM its session when the launcher asks this trial to stop, when the
        launcher is gone, or past the trial's timeout; SIGKILL it KILL_AFTER_S later."""
        trial, why, asked_at = self.trial, "", None
        started = looked = time.monotonic()
        while trial.poll() is None:
            time.sleep(0.01)
            if time.monotonic() - looked < max(self.every, 0.2):
                continue
            looked = time.monotonic()
            if asked_at is None:
                if (_read(_storage.join(self.mine, "assign")) or {}).get("stop") == seq:
                    why = "stopped by the sweep"
                elif self.trial_timeout_s and time.monotonic() - started > self.trial_timeout_s:
                    why = f"past its timeout of {self.trial_timeout_s:.0f} s"
                else:
                    why = self.orphaned() or ""
                if why:
                    _signal(trial, signal.SIGTERM)
                    asked_at = time.monotonic()
            elif time.monotonic() - asked_at > KILL_AFTER_S:
                _signal(trial, signal.SIGKILL)
        return trial.returncode, why


def ended(code: int | None) -> str:
    """How a trial's process ended, in its own words (not a container's)."""
    if code is None:
        return "its process ended, how is not known"
    if code < 0:
        try:
            return f"its process was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"its process was killed by signal {-code}"
    if code == 0:
        return "its process exited with code 0 (before it wrote its result: an os._exit?)"
    return f"its process exited with code {code}"


def details(trial: JobInfo, found: str) -> str:
    """How a trial's process ended, on which worker, and its own lines of `found` (what the worker executor says of
    the worker job: its state line, "Last N lines of LOG:", the lines)."""
    text = found.splitlines()[1:]  # not the worker job's own state line
    where = next((line for line in text[:1] if line.startswith("Last ")), "")
    lines = trial_lines(text[1:] if where else text, trial.num) or []
    return "\n".join([f"{trial.reason or ended(trial.exit_code)}; on warm worker {trial.job_id or '-'}",
                      *([f"Its lines of {where[5:].split(' of ', 1)[-1]}"] if lines and where else []), *lines])


def trial_lines(lines: list[str], num: int) -> list[str] | None:
    """Trial `num`'s lines in a warm worker's log: from its last start to its end (or the log's end); None where
    the log does not hold its start."""
    starts = [i for i, line in enumerate(lines) if line.endswith(f": trial {num} starts")]
    if not starts:
        return None
    mine = lines[starts[-1]:]
    end = next((i for i, line in enumerate(mine) if f": trial {num} ended" in line), None)
    return mine if end is None else mine[:end + 1]


# ------------------------------------------------------------------------------------------- the launcher
class WarmPool:
    """An executor of trials on `size` warm workers, which `workers` (the executor of the worker jobs) runs. Each
    pool has a folder of its own under the sweep's `pool/` (a resumed sweep's pool starts afresh). Storage
    errors and failed worker submissions are logged and tried again the next round: they do not end the sweep."""

    def __init__(self, workers, pool: str, size: int):
        self.workers, self.size = workers, size
        self.pool = _storage.join(pool, secrets.token_hex(4))
        self.poll_interval_s = _interval(self.pool)
        self.trials: dict[int, JobInfo] = {}
        self.queue: list[int] = []  # trial numbers waiting for a worker, in order
        self.where: dict[int, tuple[str, int]] = {}  # trial number -> (payload URI, index)
        self.losses: dict[int, int] = {}  # trial number -> how many of its workers died under it
        self.assigned: dict[int, tuple[int, int]] = {}  # worker -> (seq, trial number) it was last given
        self.ran_on: dict[int, int] = {}  # trial number -> the worker it was last given to
        self.live: dict[int, JobInfo] = {}  # worker -> its job, while it runs
        self.states: dict[int, dict] = {}  # worker -> its state object, as last read
        self.read_now: set[int] = set()  # workers whose state was read this round
        self.started = self.stillborn = self.seq = 0  # worker jobs started (numbered 0, 1...); those that failed
        # before they said they were ready; assignments made
        self.waited: dict[int, float] = {}  # trial -> when queued (the launcher's clock), then how long it waited
        self.closing = False  # the sweep is ending: nothing is handed out, started or run again
        self.workers_polled, self._seen = 0.0, []
        self.trouble = ""  # the last error of a round, logged once
        self.cold_said: set[str] = set()  # workers' warm-up failures, logged once each
        self._beating = False  # the heartbeat thread runs
        self._beat_lock = threading.Lock()  # the heartbeat and the stop: the stop is the last word
        atexit.register(self.close)  # the launcher's end is the sweep's: the workers go

    # the pool ---------------------------------------------------------------------------------------------
    def _start(self, count: int) -> None:
        first = self.started
        for array in self.workers.submit(launch_uri(self.pool, first), first, count):
            log.info(f"Started {array.size} warm worker(s): {array.job_id}")
        self.started += count
        for info in self._poll_workers(force=True):
            if first <= info.num < first + count:
                self.live[info.num] = info
        if not self._beating:
            self._beating = True
            threading.Thread(target=self._heartbeat, daemon=True, name="warm-pool-heartbeat").start()

    def _poll_workers(self, force: bool = False) -> list[JobInfo]:
        """The worker jobs' states, polled at the worker executor's own pace (Batch: DescribeJobs)."""
        if force or time.monotonic() - self.workers_polled >= self.workers.poll_interval_s:
            self.workers_polled, self._seen = time.monotonic(), self.workers.poll()
        return self._seen

    def _heartbeat(self) -> None:
        """The launcher's heartbeat, from a thread of its own (the watcher may be busy bringing outputs home)."""
        beat = 0
        while not self.closing:
            beat += 1
            with self._beat_lock:
                try:
                    if not self.closing:
                        _write(_storage.join(self.pool, "parent"), {"beat": beat, "stop": False})
                except Exception as error:  # the workers wait PARENT_SILENCE_S before they give up
                    log.warning(f"warm workers: the heartbeat could not be written ({error})")
            time.sleep(PARENT_BEAT_S)

    def _stop_workers(self) -> None:
        with self._beat_lock:
            self.closing = True
            _write(_storage.join(self.pool, "parent"), {"beat": -1, "stop": True})

    def _state(self, worker: int) -> dict:
        """Worker `worker`'s state object: read once a round (one GET on S3)."""
        if worker not in self.read_now:
            self.states[worker] = _read(_storage.join(self.pool, f"w{worker}", "state")) or {}
            self.read_now.add(worker)
        return self.states[worker]

    # Executor ---------------------------------------------------------------------------------------------
    def submit(self, payload_uri: str, first: int, size: int, offset: int = 0) -> list[Array]:
        for index in range(size):  # trial `first` at position `offset` of the payload
            self.trials[first + index] = JobInfo(first + index, BatchState.RUNNABLE)
            self.waited[first + index] = time.time()
            self.where[first + index] = (payload_uri, offset + index)
            self.queue.append(first + index)
        self._round()
        return [Array(f"warm-pool:{first}", first, size)]

    def poll(self) -> list[JobInfo]:
        self._round()
        return list(self.trials.values())

    def _round(self) -> None:
        self.read_now.clear()
        try:
            for info in self._poll_workers():
                if info.num in self.live:
                    self.live[info.num] = info
            for worker in list(self.live):
                self._follow(worker)
            if not self.closing:
                self._staff()
                self._assign()
            self.trouble = ""
        except Exception as error:  # storage or Batch: next round
            if str(error) != self.trouble:
                log.warning(f"warm workers: {error}; trying again")
            self.trouble = str(error)

    def _staff(self) -> None:
        """Workers for the trials waiting: at the start, in place of one that died, after idle ones left."""
        if self.queue and len(self.live) < self.size:
            self._start(min(self.size - len(self.live), len(self.queue)))

    def _follow(self, worker: int) -> None:
        job = self.live[worker]
        seq, num = self.assigned.get(worker, (0, None))
        trial = self.trials.get(num)
        busy = trial is not None and trial.state not in FINAL
        state = self._state(worker) if busy else self.states.get(worker, {})
        if state.get("cold") and state["cold"] not in self.cold_said:
            self.cold_said.add(state["cold"])
            log.warning(f"Warm worker {worker} ({job.job_id}): {state['cold']} (slower; its log says more)")
        if busy and state.get("seq") == seq:
            trial.started = state.get("started") or trial.started  # the worker's clock, as Batch's times are
            if trial.started and trial.created is None:  # waiting measured on one clock, the launcher's queue's:
                trial.created = trial.started - self.waited.get(num, 0.0)  # as if taken then, on the worker's
            if state.get("state") == "running":
                trial.state = BatchState.RUNNING
            elif "exit_code" in state and not state.get("revoked"):  # ended, or exited after it ended
                self._ended(trial, state, job)
        if job.state not in FINAL:
            return
        del self.live[worker]  # the worker job ended: idle, told to stop, or dead
        if "state" not in self._state(worker) and job.state == BatchState.FAILED:
            self._stillborn(job)
        if trial is not None and trial.state not in FINAL and not self.closing:  # its trial goes to another worker
            lost = state.get("seq", 0) >= seq  # it had started the trial (else it left before it saw it)
            self._again(trial, f"its warm worker {job.job_id} ended ({job.reason or job.state})", lost)

    def _stillborn(self, job: JobInfo) -> None:
        """A worker job that failed before it ran anything: after MAX_LOSSES of them, no more are started and the
        waiting trials fail, saying why (rather than workers started and failing forever)."""
        self.stillborn += 1
        if self.stillborn < MAX_LOSSES or self.closing:
            return
        why = (f"{self.stillborn} warm workers failed before they started (the last: {job.job_id}, "
               f"{job.reason or job.state}{'; its log: ' + job.log_path if job.log_path else ''})")
        log.error(f"{why}: the {len(self.queue)} trials waiting for one fail")
        for trial in map(self.trials.get, self.queue):
            trial.state, trial.reason, trial.stopped = BatchState.FAILED, why, time.time()
        self.queue.clear()

    def _ended(self, trial: JobInfo, state: dict, job: JobInfo) -> None:
        code = state.get("exit_code")
        if state.get("interrupted") and not self.closing:  # Batch stopped the worker (Spot): the trial runs again
            self._again(trial, f"its warm worker {job.job_id} was stopped (SIGTERM)", lost=True)
            return
        trial.exit_code, trial.stopped = code, state.get("stopped") or time.time()
        trial.state = BatchState.SUCCEEDED if code == 0 else BatchState.FAILED
        if code:
            trial.reason = ended(code) + (f" ({state['why']})" if state.get("why") else "")

    def _again(self, trial: JobInfo, why: str, lost: bool) -> None:
        """The trial runs again on another worker; a trial whose workers died under it MAX_LOSSES times fails."""
        self.losses[trial.num] = self.losses.get(trial.num, 0) + lost
        if self.losses[trial.num] >= MAX_LOSSES:
            trial.state, trial.reason, trial.stopped = BatchState.FAILED, why, time.time()
            return
        log.warning(f"Trial {trial.num}: {why}; it runs again on another worker")
        trial.state, trial.job_id, trial.started, trial.created = BatchState.RUNNABLE, "", None, None
        self.queue.insert(0, trial.num)
        self.waited[trial.num] = time.time()

    def _idle(self, worker: int) -> bool:
        """Whether a worker can take a trial: its job runs, and it said it ended the last one it was given."""
        if self.live[worker].state != BatchState.RUNNING:
            return False
        state, seq = self._state(worker), self.assigned.get(worker, (0, None))[0]
        return state.get("state") in ("ready", "ended") and state.get("seq", 0) >= seq

    def _assign(self) -> None:
        for worker, job in sorted(self.live.items()):
            if not self.queue:
                return
            if not self._idle(worker):
                continue
            num = self.queue.pop(0)
            self.seq += 1
            payload_uri, index = self.where[num]
            _write(_storage.join(self.pool, f"w{worker}", "assign"),
                   {"seq": self.seq, "num": num, "payload_uri": payload_uri, "index": index})
            self.assigned[worker] = (self.seq, num)
            self.ran_on[num], self.waited[num] = worker, time.time() - self.waited[num]
            trial = self.trials[num]
            trial.state, trial.job_id, trial.log_path = BatchState.STARTING, job.job_id, job.log_path

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        unfinished = [t for t in self.trials.values() if t.state not in FINAL and (nums is None or t.num in nums)]
        if nums is None:  # the whole sweep: the workers go, and their trials with them
            self.queue.clear()
            try:
                self._stop_workers()
            finally:
                self.workers.terminate(reason, force)
            self._round()
        else:
            self.queue = [num for num in self.queue if num not in nums]
            given = {num: worker for worker, (seq, num) in self.assigned.items() if num in nums}
            for num, worker in given.items():  # a running trial is stopped; one not yet started, taken back
                seq = self.assigned[worker][0]
                payload_uri, index = self.where[num]
                _write(_storage.join(self.pool, f"w{worker}", "assign"),
                       {"seq": seq, "num": num, "payload_uri": payload_uri, "index": index, "stop": seq})
            running = [num for num in given if self.trials[num].state == BatchState.RUNNING]
            deadline = time.monotonic() + (0 if force else STOP_WAIT_S)
            while time.monotonic() < deadline and any(self.trials[num].state not in FINAL for num in running):
                time.sleep(self.poll_interval_s)
                self._round()
        for trial in unfinished:  # stopped for `reason`, whatever its exit code (as Batch's statusReason says)
            if trial.state not in FINAL:
                trial.state, trial.stopped = BatchState.FAILED, time.time()
            trial.reason = reason
        return len(unfinished)

    def close(self) -> None:
        """The sweep has ended (the launcher exits): the workers exit."""
        if self.started and not self.closing:
            try:
                self._stop_workers()
            except Exception as error:  # at exit: the workers still go, when the heartbeat stops
                log.warning(f"could not tell the warm workers to stop ({error}); they stop within "
                            f"{PARENT_SILENCE_S:.0f} s")

    def stuck(self) -> dict[str, int]:
        return self.workers.stuck()

    def failure_details(self, nums: list[int], log_group: str = "") -> dict[int, str]:
        """How each trial's process ended, on which worker, and its own lines of that worker's log."""
        found = self.workers.failure_details(sorted({self.ran_on[n] for n in nums if n in self.ran_on}), log_group,
                                             lines=1000)
        return {num: details(self.trials[num], found.get(self.ran_on.get(num), "")) for num in nums}

    def forced_stop_note(self, sweep: str) -> str:
        return self.workers.forced_stop_note(sweep)

    def adopt(self, arrays: list[Array]) -> bool:
        return False  # the workers stop with the launcher that fed them: unfinished trials run again
