"""Metrics while a job runs: the task calls `report(step, **metrics)` (re-exported by the package), and the sweep
reads them while the job runs. No new service: the channel is the storage the sweep already has.

The job's side buffers and writes at most once per `HYDRA_AWSBATCH_METRICS_INTERVAL_S` (default 10 s), and once
at the end: to `metrics.jsonl` in the job's output dir (any Hydra run: a plain one, Hydra's basic launcher, ours),
and, in a job that our worker runs, a part of new lines each time to the job's staging folder, where the parent
reads them (`sweeps/<sweep_id>/<num>/metrics/part-<seq>.jsonl`). A storage error never reaches the training
loop: it is logged once. The parent side (`Channel`) reads only new parts, of a bounded number of running jobs
per round, and writes the requests to stop that the job's report() looks for.

One line a record: {"step": 3, "time": 1764651000.5, "val_loss": 0.31, ...}.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from array import array
from numbers import Real
from pathlib import Path

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")

FILE = "metrics.jsonl"
STOP_LOOK_S = 2.0  # report() looks whether the sweep asked the job to stop at most this often


# ---------------------------------------------------------------------------------------------- the job
def number(name: str, value) -> float:
    """A metric's value as a float (a 0-d tensor or numpy scalar too); TypeError naming it otherwise: a string
    ("0.5") or a bool is a mistake in the task, not a value to convert."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, (bool, str, bytes)) and str(getattr(value, "dtype", "")) not in ("bool", "torch.bool"):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"report(): {name}={value!r} is not a number")


def checked(step, metrics: dict, last_step: float | None) -> dict:
    """The record of `report(step, **metrics)` after `last_step`, checked: a finite number for a step that never
    goes back, a number for each metric; TypeError or ValueError saying what is wrong otherwise."""
    step = number("step", step)
    if not math.isfinite(step):
        raise ValueError(f"report(): step={step} is not a finite number; give the epoch or batch it is at")
    if "time" in metrics:
        raise TypeError("report(): time= is the name of the time each report is made at, which report() records; "
                        "name the metric otherwise")
    if last_step is not None and step < last_step:
        raise ValueError(f"report(): step {step:g} comes after step {last_step:g}; steps never go back")
    record = {"step": int(step) if step.is_integer() else step, "time": time.time()}
    record.update((name, number(name, value)) for name, value in metrics.items())
    return record


class Reporter:
    """One job's reports: validated, buffered, written now and then (`remote`: its metrics folder in staging)."""

    def __init__(self, local_file: Path | None, remote: str | None, interval_s: float, stop_uri: str | None = None):
        self.local_file, self.remote, self.interval_s, self.stop_uri = local_file, remote, interval_s, stop_uri
        self.stop_requested = False  # the sweep asked this job to stop (it looks at most every STOP_LOOK_S)
        self.looked = time.monotonic()
        self.buffer: list[dict] = []
        self.last_step: float | None = None
        self.written = time.monotonic()
        self.parts = 0
        self.writes = 0
        self.warned = False

    def report(self, step, metrics: dict) -> bool:
        record = checked(step, metrics, self.last_step)
        self.last_step = float(record["step"])
        self.buffer.append(record)
        if time.monotonic() - self.written >= self.interval_s:
            self.flush()
        elif self.stop_uri and time.monotonic() - self.looked >= STOP_LOOK_S:  # a request heard within seconds,
            self.look()  # whatever the metrics interval
        return self.stop_requested

    def look(self) -> None:
        """Whether the sweep asked this job to stop (one stat, or one HEAD request in S3)."""
        self.looked = time.monotonic()
        if self.stop_uri and not self.stop_requested:
            from hydra_plugins.hydra_awsbatch_launcher import _storage

            try:
                self.stop_requested = _storage.exists(self.stop_uri)
            except Exception:  # asked again at the next look
                pass
            if self.stop_requested:
                log.warning("report(): the sweep asks this job to stop; report() returns True from now on")

    def flush(self) -> None:
        """Write what is buffered (appended to the local file, a new part in staging), and look whether the sweep
        asked the job to stop."""
        self.written = time.monotonic()
        self.look()
        if not self.buffer:
            return
        text = "".join(json.dumps(record, allow_nan=True) + "\n" for record in self.buffer)
        try:
            if self.local_file is not None:
                self.local_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.local_file, "a") as stream:
                    stream.write(text)
            if self.remote:
                from hydra_plugins.hydra_awsbatch_launcher import _storage

                _storage.write_bytes(_storage.join(self.remote, f"part-{self.parts:06d}.jsonl"), text.encode())
                self.parts += 1
            self.buffer.clear()
            self.writes += 1
        except Exception as error:  # the training goes on; what was not written is tried again next time
            if not self.warned:
                self.warned = True
                log.warning(f"report(): writing metrics failed ({type(error).__name__}: {error}); the training goes "
                            "on, and the next write tries again")


_current: tuple | None = None  # (the Hydra config of the job this process runs now, its Reporter)
_exit_hook = False


def _at_exit() -> None:
    """What is buffered is written when the process ends (a plain run, Hydra's basic launcher)."""
    global _exit_hook
    import atexit

    atexit.register(finish)
    _exit_hook = True


def report(step, **metrics) -> bool:
    """Record the task's metrics at `step` (an epoch, a batch: any number that never goes back), e.g.
    `if report(epoch, val_loss=0.31, val_acc=0.9): ...`. True once the sweep asks the job to stop (a pruner
    found it hopeless): save what you need and return; a job that goes on is terminated after a grace period.
    Cheap: buffered, written at most every few seconds. Outside a Hydra run (the task function called
    directly: a unit test, a notebook) it records nothing and returns False, after the checks a job makes (a
    metric that is no number, a step that is not finite or goes back within the call raise as in a job).
    In a trial of several processes (torchrun's RANK), rank 0 reports for the trial and the other ranks' calls do
    nothing and return False: share rank 0's answer with them."""
    global _current
    from hydra.core.hydra_config import HydraConfig

    if os.environ.get("RANK", "0") not in ("", "0"):
        return False

    config = HydraConfig.instance().cfg  # the running job's (run_job sets it anew for each job); None outside one
    if _current is None or _current[0] is not config:
        from omegaconf import OmegaConf

        output_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None) if config else None
        if not output_dir:  # the task was called without a Hydra job (a test, a notebook): nothing to report to
            unrecorded(step, metrics, sys._getframe(1))
            return False
        finish()
        if not _exit_hook:
            _at_exit()
        local_file = Path(output_dir) / FILE
        from hydra_plugins.hydra_awsbatch_launcher._job import METRICS_URI, STOP_URI, JobSettings

        _current = (config, Reporter(local_file, os.environ.get(METRICS_URI) or None,
                                     JobSettings.read().metrics_interval_s, os.environ.get(STOP_URI) or None))
    return _current[1].report(step, metrics)


LAST_STEP = "__report_last_step__"  # where unrecorded() keeps a call's last step: in that call's frame


def unrecorded(step, metrics: dict, caller) -> None:
    """report() outside a Hydra job: the checks a job makes, and nothing recorded, so that a unit test of the task
    fails where its jobs would. Steps never go back within one call of the function that reports (`caller`, its
    frame): the last one is kept among that call's own locals, so the next call starts afresh and nothing here
    outlives a call or holds its locals. Code at a module's top level is checked but its steps are not followed."""
    function = bool(caller.f_code.co_flags & inspect.CO_OPTIMIZED)
    record = checked(step, metrics, caller.f_locals.get(LAST_STEP) if function else None)
    if function:
        caller.f_locals[LAST_STEP] = float(record["step"])


def finish() -> None:
    """Write what the running job reported and has not written yet (the worker calls this at the job's end;
    Hydra's basic launcher's jobs, when the next job reports or the process exits)."""
    global _current
    if _current is not None:
        _current[1].flush()
        _current = None


# ------------------------------------------------------------------------------------------- the parent
class Channel:
    """The parent's end (`staging`: the sweep's _manifest.Staging). What the jobs report, read while they run:
    only parts not read yet, per round at most `per_round` running jobs, each at most once per `interval_s`.
    And the other way, a request to stop, which the job's report() sees at its next write.

    Flat memory whatever the count of reports: what it read goes to a spool on disk (an unnamed temporary file,
    gone with the process however it ends); it keeps per job only where it is (parts read, the spool's index,
    a cursor into the job dir's metrics.jsonl). The newest record of each job is the manifest's."""

    def __init__(self, staging, interval_s: float = 10.0, per_round: int = 8):
        self.staging, self.interval_s, self.per_round = staging, interval_s, per_round
        self.spool = Spool()  # what was read from staging, for jobs whose metrics.jsonl is not home (yet)
        self.cursors: dict[int, tuple[int, int]] = {}  # job -> (records, bytes) of its metrics.jsonl read so far
        self.parts: dict[int, int] = {}
        self.read_at: dict[int, float] = {}
        self.deadlines: dict[int, tuple[float, str]] = {}  # jobs asked to stop: by when, and why
        self.warned = False

    def ask_to_stop(self, num: int, reason: str, grace_s: float) -> None:
        from hydra_plugins.hydra_awsbatch_launcher import _storage

        _storage.write_bytes(self.staging.stop(num), reason.encode())
        self.deadlines[num] = (time.monotonic() + grace_s, reason)

    def overdue(self, running: list[int]) -> dict[int, str]:
        """Running jobs asked to stop whose grace period is over, and why they were asked."""
        now = time.monotonic()
        return {n: self.deadlines[n][1] for n in running if n in self.deadlines and now > self.deadlines[n][0]}

    def poll(self, running: list[int], limit: int | None = None) -> dict[int, dict]:
        """The newest record of each running job due this round (at most `limit`, default per_round) that
        reported anything new. A storage error is logged once and never stops the sweep."""
        now = time.monotonic()
        due = sorted((n for n in running if now - self.read_at.get(n, -math.inf) >= self.interval_s),
                     key=lambda n: self.read_at.get(n, -math.inf))[:limit or self.per_round]
        newest = {}
        for num in due:
            self.read_at[num] = now
            try:
                new = self._read(num)
            except Exception as error:
                if not self.warned:
                    self.warned = True
                    log.warning(f"Reading job #{num}'s metrics failed ({type(error).__name__}: {error}); trying "
                                "again later")
                continue
            if new:
                newest[num] = new[-1]
        return newest

    def _read(self, num: int) -> list[dict]:
        """The newest record of each new part of job `num`: one listing of its metrics folder, and one read a new
        part, which goes to the spool as it is read (nothing of it is kept here)."""
        from hydra_plugins.hydra_awsbatch_launcher import _storage

        folder = self.staging.metrics(num)
        parts = [rel for rel, _ in _storage.list_files(folder) if rel.startswith("part-")]
        new = []
        for rel in parts[self.parts.get(num, 0):]:
            text = _storage.read_bytes(_storage.join(folder, rel)).decode()
            records = parse(text)
            self.spool.add(num, text[:text.rfind("\n") + 1], len(records))  # read again as parse() reads it
            new += records[-1:]
        self.parts[num] = len(parts)
        return new

    def records(self, num: int, job_dir: Path | None = None, since: int = 0) -> list[dict]:
        """What job `num` reported from its record `since` on (a cursor: the records a caller has): its job dir's
        metrics.jsonl once that is home (or where the job writes it in place), else what was read from staging,
        from the spool. Nothing of it stays in memory here but where the last call ended."""
        path = job_dir / FILE if job_dir is not None else None
        if path is not None and path.is_file():
            self.spool.forget(num)  # the file has all of it
            records, self.cursors[num] = read_records(path, since, self.cursors.get(num, (0, 0)))
            return records
        return self.spool.read(num, since)


class Spool:
    """Records read from staging, on disk: one unnamed temporary file for the sweep, appended to as parts are
    read, and per job the (offset, size, count) of each piece of it (a part's worth, not a record's)."""

    def __init__(self):
        self.file = None
        self.index: dict[int, array] = {}
        self.lock = threading.Lock()  # the watcher adds, a sweeper's thread reads

    def add(self, num: int, text: str, count: int) -> None:
        if not count:
            return
        data = text.encode()
        with self.lock:
            if self.file is None:
                self.file = tempfile.TemporaryFile(prefix="hydra-awsbatch-metrics-")
            offset = self.file.seek(0, os.SEEK_END)
            self.file.write(data)
            self.index.setdefault(num, array("q")).extend((offset, len(data), count))

    def read(self, num: int, since: int = 0) -> list[dict]:
        """Job `num`'s records from its record `since` on."""
        records: list[dict] = []
        with self.lock:
            pieces = self.index.get(num, array("q"))
            first = 0
            for i in range(0, len(pieces), 3):
                offset, size, count = pieces[i:i + 3]
                if first + count > since:
                    self.file.seek(offset)
                    records += parse(self.file.read(size).decode())[max(0, since - first):]
                first += count
        return records

    def forget(self, num: int) -> None:
        with self.lock:
            self.index.pop(num, None)


def read_records(path: Path, since: int = 0, cursor: tuple[int, int] = (0, 0)) -> tuple[list[dict], tuple[int, int]]:
    """The whole records of a metrics file from record `since` on, read line by line (as parse() reads them), and
    where the reading ended, (records, bytes): a later call given it starts there, not at the file's start."""
    count, offset = cursor if cursor[0] <= since and cursor[1] <= path.stat().st_size else (0, 0)
    records = []
    with open(path, "rb") as stream:
        stream.seek(offset)
        for line in stream:
            if not line.endswith(b"\n"):
                break  # being written: left for the next read
            offset += len(line)
            record = _record(line.decode(errors="replace"))
            if record is not None:
                if count >= since:
                    records.append(record)
                count += 1
    return records, (count, offset)


def parse(text: str) -> list[dict]:
    """The whole records of a metrics file. The job may be appending to it as it is read (`in_place`): a last line
    without its newline is being written and is left for the next read. Where a job killed mid-write left a cut
    record, the next run's first record follows it on the same line: that one is kept, the cut one skipped."""
    return [record for line in text[:text.rfind("\n") + 1].splitlines() if (record := _record(line)) is not None]


def _record(line: str) -> dict | None:
    """One line's record, or None (blank, or cut with nothing whole after it)."""
    try:
        record = json.loads(line) if line.strip() else None
    except ValueError:
        try:
            record = json.loads(line[line.rfind('{"step"'):])
        except ValueError:
            return None
    return record if isinstance(record, dict) else None


def summary(record: dict | None) -> str:
    """"step 5: val_loss=0.31 val_acc=0.9", the one line of a record."""
    if not record:
        return ""
    values = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("step", "time"))
    return f"step {record['step']:g}: {values}"
