"""The sweep's record, and where its things live in staging. Written by the sweep engine alone (_sweep.py:
it creates, reopens, extends, saves and locks it); the launcher, the CLI and the sweeper read it.

Staging layout, under `staging_uri` (an s3:// prefix or a local folder):

    code/<sha256>.tar.gz                      the code package, content-addressed
    sweeps/<sweep_id>/manifest.json           the sweep's record (a copy sits in the local sweep dir)
    sweeps/<sweep_id>/payload-<first>.pkl     one per launched batch of jobs, first = its first job number
    sweeps/<sweep_id>/<num>/result.pkl        a job's result object, written last
    sweeps/<sweep_id>/<num>/output/...        a job's output dir
    sweeps/<sweep_id>/<num>/metrics/part-*    what the job reported while it ran (_metrics.py)
    sweeps/<sweep_id>/<num>/stop              the sweep asks the job to stop (report() returns True)
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _storage
from hydra_plugins.hydra_awsbatch_launcher._errors import LaunchError, StagingError

MANIFEST = "manifest.json"
LOCK = ".hydra-awsbatch.lock"


class BatchState(str, enum.Enum):
    """A job's state in AWS Batch's words (the local executor speaks them too), and STAGED before it is submitted.
    Strings on disk and in S3: the manifest keeps the words."""

    STAGED = "STAGED"
    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    RUNNABLE = "RUNNABLE"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    __str__ = str.__str__
    __format__ = str.__format__


FINAL = (BatchState.SUCCEEDED, BatchState.FAILED)


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Staging:
    """Every URI of a sweep in one place."""

    root: str
    sweep_id: str

    def code(self, sha256: str) -> str:
        return _storage.join(self.root, "code", f"{sha256}.tar.gz")

    @property
    def sweep(self) -> str:
        return _storage.join(self.root, "sweeps", self.sweep_id)

    @property
    def manifest(self) -> str:
        return _storage.join(self.sweep, MANIFEST)

    def payload(self, first_num: int) -> str:
        return _storage.join(self.sweep, f"payload-{first_num}.pkl")

    def result(self, num: int) -> str:
        return _storage.join(self.sweep, str(num), "result.pkl")

    def output(self, num: int) -> str:
        return _storage.join(self.sweep, str(num), "output")

    def metrics(self, num: int) -> str:
        return _storage.join(self.sweep, str(num), "metrics")

    def stop(self, num: int) -> str:
        return _storage.join(self.sweep, str(num), "stop")

    @property
    def pool(self) -> str:
        """The warm workers' folder (_workers.py)."""
        return _storage.join(self.sweep, "pool")

    @classmethod
    def of_payload(cls, payload_uri: str) -> tuple[Staging, int]:
        """The staging and the first job number that a payload URI belongs to."""
        root, sep, rest = payload_uri.rpartition("/sweeps/")
        sweep_id, _, name = rest.partition("/")
        if not sep or not name.startswith("payload-") or not name.endswith(".pkl"):
            raise StagingError(f"not a payload URI: {payload_uri}")
        return cls(root, sweep_id), int(name[len("payload-"):-len(".pkl")])


def staging_root(staging_uri: str | None, sweep_dir: Path) -> str:
    """Where a sweep stages: `staging_uri` (a relative folder made absolute: jobs run elsewhere), else
    SWEEP_DIR/.staging."""
    if not staging_uri:
        return str(sweep_dir / ".staging")
    return staging_uri if _storage.is_s3(staging_uri) else str(_storage.local_path(staging_uri).expanduser().absolute())


def new_sweep_id() -> str:
    """Unique and sortable by time: 20261128-153012-4f9a1c."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


# --------------------------------------------------------------------------------------------- records
@dataclass
class JobRecord:
    """One job of a sweep as the manifest keeps it."""

    num: int
    overrides: list
    subdir: str
    state: BatchState
    job_id: str = ""  # Batch's job id (PARENT:INDEX for an array child), or the local process's
    exit_code: int | None = None
    reason: str = ""
    submitted: float | None = None  # epoch seconds
    started: float | None = None
    stopped: float | None = None
    task_started: float | None = None  # from the job's result: when run_job was called, and when it returned
    task_ended: float | None = None
    home: float | None = None  # when its result (and job dir) came home
    created: float | None = None  # when Batch took it, on Batch's clock (None for a local job: all the launcher's)
    seen_ended: float | None = None  # when the launcher saw it end, on the launcher's clock
    result: str = ""  # the return value's repr, or "ErrorType: message"
    last_report: dict = field(default_factory=dict)  # the newest record the job reported (_metrics.py)
    stop_request: str = ""  # why the sweep asked the job to stop early, where it did
    resources: dict = field(default_factory=dict)  # what its config asked (vcpus, gpus, job_queue...: _resources.py)

    def latency(self) -> dict[str, float]:
        """Where the job's time went, in seconds: waiting to start (submitted to started), starting (to its
        task's start), its task, and ending (task's end to the result home). Each interval on one clock, so that a
        launcher whose clock is off skews none: on Batch, waiting is Batch's (created to started), and ending is
        the job's end on Batch (task's end to the container's stop) plus the launcher's part (from seeing the job
        end to its result home); a local job's marks are all the launcher's."""
        on_batch = self.created is not None
        spans = {"waiting": [(self.created if on_batch else self.submitted, self.started)],
                 "starting": [(self.started, self.task_started)], "task": [(self.task_started, self.task_ended)],
                 "ending": [(self.task_ended, self.stopped), (self.seen_ended, self.home)] if on_batch
                 else [(self.task_ended, self.home)]}
        return {name: round(sum(max(0.0, b - a) for a, b in pairs), 3) for name, pairs in spans.items()
                if all(a is not None and b is not None for a, b in pairs)}

    def update(self, seen) -> bool:
        """Take what the executor saw of the job (an _executor.JobInfo) until it ended; whether anything changed."""
        new = (seen.state, seen.job_id, seen.exit_code, seen.reason, seen.started, seen.stopped)
        old = (self.state, self.job_id, self.exit_code, self.reason, self.started, self.stopped)
        if self.state in FINAL or new == old:
            return False
        self.state, self.job_id, self.exit_code, self.reason, self.started, self.stopped = new
        self.created = seen.created if seen.created is not None else self.created
        if self.state in FINAL:
            self.seen_ended = time.time()
        return True

    def close(self, result: str, completed: bool, exit_code: int | None, times: dict | None = None) -> None:
        """The job was collected: `result` is its one line, `completed` whether its value came back; `times`:
        its result's task_started and task_ended."""
        self.result, self.exit_code = result, exit_code
        self.task_started, self.task_ended = (times or {}).get("task_started"), (times or {}).get("task_ended")
        self.home = time.time()
        if not completed and self.state == BatchState.SUCCEEDED:
            self.state = BatchState.FAILED  # it ran, but what it made did not come back
        elif completed and self.state == BatchState.FAILED:  # its whole result came back: that is what counts
            self.state, self.reason = BatchState.SUCCEEDED, f"Batch said FAILED ({self.reason or 'no reason'})"


@dataclass
class Array:
    """One SubmitJob: `size` jobs (a plain job when size is 1) for job numbers first..first+size-1."""

    job_id: str
    first: int
    size: int


@dataclass
class BatchRecord:
    """One payload and the jobs it serves: what one launch (or launch_async) call staged."""

    first: int
    size: int
    payload_uri: str
    batch_job_ids: list = field(default_factory=list)
    arrays: list = field(default_factory=list)  # Array, on Batch; none yet: not (known to be) submitted
    staged_at: float = 0.0  # epoch seconds, when it was recorded (0: a manifest older than this field)


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Manifest:
    """The one record of a sweep, from which it can be inspected, attached to, resumed or cancelled."""

    sweep_id: str
    staging_uri: str
    sweep_dir: str
    launcher: str
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    code_uri: str = ""  # the code package of the newest batch
    settings: dict = field(default_factory=dict)  # launcher settings that `hydra-awsbatch` needs later
    batches: list = field(default_factory=list)  # BatchRecord
    jobs: list = field(default_factory=list)  # JobRecord
    announced: int = 0  # jobs the launcher was asked for: more than `jobs` while (or where) it stopped submitting
    _by_num: dict = field(default_factory=dict, repr=False, compare=False)  # jobs by number, not saved

    @property
    def staging(self) -> Staging:
        return Staging(self.staging_uri, self.sweep_id)

    def job(self, num: int) -> JobRecord:
        return self.jobs_by_num()[num]

    def jobs_by_num(self) -> dict[int, JobRecord]:
        if len(self._by_num) != len(self.jobs):  # jobs are only ever appended
            self._by_num = {j.num: j for j in self.jobs}
        return self._by_num

    @property
    def script(self) -> Path | None:
        """The app's script, which a result holding one of its classes needs (attach imports it by file)."""
        return Path(self.settings["code_root"]) / self.settings["script"] if self.settings.get("script") else None

    def add_batch(self, staged) -> BatchRecord:
        """A batch the stage step wrote (_stage.StagedBatch), and its jobs; its record, for its arrays."""
        jobs = staged.jobs
        batch = BatchRecord(jobs.first, len(jobs.recipes), staged.payload_uri, staged_at=time.time())
        self.batches.append(batch)
        asked = [r.as_dict() for r in jobs.resources] or [{}] * len(jobs.recipes)
        self.jobs += [JobRecord(recipe.num, list(recipe.task), subdir, BatchState.STAGED, resources=resources)
                      for recipe, subdir, resources in zip(jobs.recipes, jobs.subdirs, asked)]
        self.code_uri = staged.code_uri
        return batch

    def unsubmitted(self) -> str:
        """What a sweep whose launcher stopped while it submitted its jobs lacks, in one line ("" for none)."""
        missing = self.announced - len(self.jobs)
        return (f"{missing:,} of the sweep's {self.announced:,} jobs were never submitted (its launcher stopped "
                "while it submitted them)") if missing > 0 else ""

    def submitted(self, batch: BatchRecord, arrays: list[Array], when: float) -> None:
        """The batch's jobs went out as these arrays (one SubmitJob each) at `when`."""
        batch.arrays += arrays
        batch.batch_job_ids += [a.job_id for a in arrays]
        for num in range(batch.first, batch.first + batch.size):
            self.job(num).submitted = when

    def reported(self, newest: dict[int, dict]) -> bool:
        """Jobs' newest reports (job number -> record) into their records; whether there were any."""
        for num, record in newest.items():
            self.job(num).last_report = record
        return bool(newest)

    def to_json(self) -> str:
        """Indented, with a line per job: readable, and quick to write for 10,000 jobs (it is written every watch
        round in which a job changed)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        jobs = data.pop("jobs")
        data["batches"] = [dict(vars(b), arrays=[vars(a) for a in b.arrays]) for b in self.batches]
        head = json.dumps(data, indent=2, sort_keys=True)
        rows = ",\n    ".join(json.dumps(vars(job), sort_keys=True) for job in jobs)
        return f'{head[:-2]},\n  "jobs": [\n    {rows}\n  ]\n}}'

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data = _known(cls, data)
        data["jobs"] = [JobRecord(**dict(_known(JobRecord, j), state=BatchState(j["state"])))
                        for j in data.get("jobs", [])]
        data["batches"] = [BatchRecord(**dict(_known(BatchRecord, b), arrays=[Array(**a) for a in b.get("arrays", [])]))
                           for b in data.get("batches", [])]
        return cls(**data)

    def save(self) -> None:
        """Write it to staging and to the local sweep dir."""
        text = self.to_json().encode()
        _storage.write_bytes(self.staging.manifest, text)
        _storage.write_bytes(str(Path(self.sweep_dir) / MANIFEST), text)


def settings_of(params: dict, code_root: Path, overrides=()) -> dict:
    """What `hydra-awsbatch` needs of a launcher's options (`params`) to find a sweep's jobs and outputs again, and
    the command's task `overrides` as typed (`+lr=interval(...)`: the sweep page names what was swept)."""
    from hydra_plugins.hydra_awsbatch_launcher._wire import script_relpath

    keep = ("sync_outputs", "sync_exclude", "region", "profile", "log_group", "shared_sweep_dir", "in_place",
            "workers", "nodes")
    settings = dict({k: params[k] for k in keep if k in params}, overrides=list(overrides))
    try:  # attach imports the script by file when a result holds one of its classes
        return dict(settings, code_root=str(code_root), script=script_relpath(code_root))
    except (AttributeError, KeyError, TypeError, ValueError):
        return dict(settings, code_root=str(code_root))


def location(sweep: str) -> str:
    """The manifest's URI of SWEEP: a local sweep dir, or a manifest's URI (with or without /manifest.json)."""
    if _storage.is_s3(sweep) or sweep.endswith(".json"):
        return sweep if sweep.endswith(".json") else _storage.join(sweep, MANIFEST)
    return str(Path(sweep) / MANIFEST)


def read(uri: str) -> Manifest:
    """The manifest at `uri`; one read from the local disk takes the folder it lies in as the sweep dir (the
    sweep dir may have moved since). FileNotFoundError, or ValueError for what is not a manifest."""
    text = _storage.read_bytes(uri).decode()
    try:
        manifest = Manifest.from_json(text)
    except (TypeError, KeyError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None
    if not _storage.is_s3(uri):
        manifest.sweep_dir = str(Path(uri).resolve().parent)
    return manifest


def held_by(sweep_dir: Path) -> str | None:
    """Who holds the sweep dir's lock ("pid N"), or None where no living process does."""
    import fcntl

    try:
        held = open(Path(sweep_dir) / LOCK)
    except OSError:
        return None
    with held:
        try:
            fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return held.read().strip() or "another process"
        return None


def lock(sweep_dir: Path):
    """One sweep at a time in a sweep dir (a second one would overwrite the first's manifest): the lock file,
    held open while the sweep lives."""
    import fcntl

    held = open(sweep_dir / LOCK, "a+")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.seek(0)
        holder = held.read().strip() or "another process"
        held.close()
        raise LaunchError([f"hydra.sweep.dir={sweep_dir}: another sweep ({holder}) is running into this folder; "
                           "wait for it to end, or give this one another hydra.sweep.dir"]) from None
    held.seek(0)
    held.truncate()
    held.write(f"pid {os.getpid()}")
    held.flush()
    return held
