"""The job's side: `python -m hydra_plugins.hydra_awsbatch_launcher.worker`, in a Batch container or as a
local process of `aws_batch_local`. Reads the payload named by HYDRA_AWSBATCH_PAYLOAD_URI, runs its job
(number = the payload's first + the array index) through Hydra's own run_job, then uploads the job's
output dir and, last, its result object. Every ending but SIGKILL leaves a result object.

Exit codes: 0 the task returned, 1 it failed (the result says why), 2 no payload URI,
75 interrupted by SIGTERM (Batch retries this code).

A trial of several processes (hydra.launcher.procs_per_node > 1) or nodes (a Batch multi-node parallel job) runs
this worker on every node; it starts the node's ranks with PyTorch's elastic launcher (_nodes.py). The main node
writes the result (rank 0's, unless another rank failed); a child node writes none, uploads its ranks' files, and
exits with the code its ranks ended with.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from hydra_plugins.hydra_awsbatch_launcher._job import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_PAYLOAD,
    IN_PLACE,
    INDEX_OFFSET,
    METRICS_URI,
    ORPHAN_KILL,
    PARENT_PID,
    PAYLOAD_URI,
    STOP_URI,
    JobSettings,
)

MODULE = "hydra_plugins.hydra_awsbatch_launcher.worker"  # run as `python -m MODULE`


class Interrupted(BaseException):
    """SIGTERM arrived while the task had no handler of its own (a BaseException: run_job lets it pass)."""


class VersionMismatch(Exception):
    pass


def array_index(env=os.environ) -> int:
    """AWS_BATCH_JOB_ARRAY_INDEX (real Batch), else the :N of AWS_BATCH_JOB_ID (moto), else 0 (one job)."""
    if env.get("AWS_BATCH_JOB_ARRAY_INDEX", "") != "":
        return int(env["AWS_BATCH_JOB_ARRAY_INDEX"])
    job_id = env.get("AWS_BATCH_JOB_ID", "")
    if ":" in job_id and job_id.rsplit(":", 1)[1].isdigit():
        return int(job_id.rsplit(":", 1)[1])
    return 0


def on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the upload that follows must finish
    raise Interrupted("SIGTERM")


def scratch_prefix(num: int, pid: int) -> str:
    """The name of job `num`'s scratch folder (under the temporary dir) while process `pid` runs it: the folder
    is removed at the end, or by aws_batch_local's parent where the worker died too hard to do it."""
    return f"hydra-awsbatch-{num}-{pid}-"


def adopt_orphans() -> None:
    """Linux: this process becomes the reaper of its descendants' orphans (a task's child that started a session
    of its own, a daemon), so that end_children finds them when the job ends."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")  # multiprocessing's own: they end
# when the process that started them does, after cleaning up what the task left in them (shared memory)


def _processes():
    """(pid, parent, session, is multiprocessing's helper) of every process, from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        yield int(stat.parent.name), int(fields[1]), int(fields[3]), any(h in command for h in HELPERS)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (zombies included), but multiprocessing's helpers."""
    return [p for p, parent, _, helper in _processes() if parent == pid and not helper]


def let_helpers_finish(session: int, timeout: float = 2.0) -> None:
    """Give multiprocessing's helpers in a trial's session (its resource tracker) `timeout` to clean up and end
    now that the trial has (before its session is killed), reaping those this process adopted."""
    deadline = time.monotonic() + timeout
    while True:
        left = [(p, parent) for p, parent, sid, helper in _processes() if helper and sid == session]
        for pid, parent in left:
            if parent == os.getpid():
                _reaped(pid)
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.05)


END_GRACE_S = 3.0  # what a job left running gets to end on SIGTERM before it is killed


def end_children(keep: set[int] | frozenset[int] = frozenset()) -> None:
    """End what a job left running: this process's children but `keep` (its own helpers) and multiprocessing's,
    the orphans adopt_orphans made its own among them: SIGTERM, END_GRACE_S to end, then SIGKILL; until none is
    left (an ended one's children come next), each reaped."""
    for _ in range(20):
        left = [pid for pid in children(os.getpid()) if pid not in keep]
        if not left:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + (END_GRACE_S if sig == signal.SIGTERM else 5.0)
            while left and time.monotonic() < deadline:
                left = [pid for pid in left if not _reaped(pid)]
                if left:
                    time.sleep(0.05)
            if not left:
                break


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not ours (any more), or reaped
        return True


def _place_remotely(config, header: dict, scratch: Path, code_dir: Path) -> None:
    """Away from the parent's disk: job dirs under scratch, and the parent's working directory mapped into
    the unpacked code when it lay inside code_root (so relative paths resolve as they did there)."""
    from omegaconf import open_dict, read_write

    cwd, code_root = Path(config.hydra.runtime.cwd), Path(header["code_root"])
    here = code_dir / cwd.relative_to(code_root) if cwd.is_relative_to(code_root) else scratch
    here.mkdir(parents=True, exist_ok=True)
    for node, key, value in ((config.hydra.sweep, "dir", scratch / "sweep"), (config.hydra.runtime, "cwd", here)):
        with read_write(node), open_dict(node):
            node[key] = str(value)
    os.chdir(here)


class Job(NamedTuple):
    """What prepare() makes of the payload: everything run_job needs."""

    num: int
    hydra_context: Any
    task_function: Any
    config: Any
    job_dir: Path
    in_place: bool


class Ending:
    """What upload() writes as the job's result object, whatever happened: a job that never started still gets
    one. (No dataclass: Hydra's plugin scan imports this module in a way dataclasses cannot see.)"""

    def __init__(self, num: int):
        from hydra_plugins.hydra_awsbatch_launcher._wire import Outcome

        self.num, self.started = num, time.time()
        self.status, self.exit_code = Outcome.FAILED, EXIT_FAILED
        self.job_return: bytes | None = None
        self.error: dict | None = None
        self.sync = True
        self.task_started: float | None = None  # run_job's call and return: the task's own time
        self.task_ended: float | None = None

    def fields(self) -> dict:
        """Everything it holds, plain (what a rank of a multi-node trial hands to its node, _nodes.py)."""
        return dict(vars(self))

    def take(self, fields: dict) -> None:
        """Become the ending that `fields()` gave (rank 0's, on the main node)."""
        vars(self).update(fields)

    def failed(self, exc: BaseException, status=None, exit_code: int = EXIT_FAILED) -> None:
        from hydra_plugins.hydra_awsbatch_launcher import _wire

        self.status, self.error, self.exit_code = status or _wire.Outcome.FAILED, _wire.error_info(exc), exit_code


def prepare(payload_uri: str, index: int, scratch: Path, ending: Ending, unpacked: bool = False) -> Job:
    """Payload, versions, code package, task function and the job's config, placed where the job runs.
    `unpacked`: the code package is in `scratch` already (a rank of a trial of several processes)."""
    from hydra_plugins.hydra_awsbatch_launcher import _compose, _package, _storage, _wire
    from hydra_plugins.hydra_awsbatch_launcher._errors import MissingModule

    payload, shared, bases = _WARM.get(payload_uri) or (None, None, {})  # a warm worker's: unpickled before the fork
    if payload is None:
        payload = _wire.load_payload(_storage.read_bytes(payload_uri))
    header = payload.header
    ending.sync = header["sync_outputs"]
    problem = _wire.version_mismatch(header["versions"])
    if problem:
        raise VersionMismatch(problem)
    code_dir = scratch / "code"
    if not unpacked:
        _package.unpack_code(_storage.read_bytes(header["code_uri"]), code_dir)
    sys.path.insert(0, str(code_dir))

    from hydra.core.utils import setup_globals

    recipe = _compose.Recipe(*payload.recipes[index])
    try:
        shared = shared or _wire.PayloadBody(*_wire.loads(payload.body))
        task_function = shared.task_function
        if isinstance(task_function, _wire.ScriptFunction):
            task_function = task_function.load(code_dir)
        # its own config alone (in a trial forked from a warm worker, its copy of what the worker unpickled)
        config = bases[recipe.base] if recipe.base in bases else _wire.loads(payload.bases[recipe.base])
    except ModuleNotFoundError as exc:
        raise MissingModule.of(exc) from exc
    _compose.build(config, recipe, header["sweep_dir"])
    _set_hydra_state(shared.singleton_state)
    setup_globals()
    in_place = bool(os.environ.get(IN_PLACE))
    if not in_place:
        _place_remotely(config, header, scratch, code_dir)
    elif Path(config.hydra.runtime.cwd).is_dir():  # a shared file system: where the sweep was launched
        os.chdir(config.hydra.runtime.cwd)
    job_dir = Path(config.hydra.sweep.dir) / _compose.job_subdir(config)
    return Job(config.hydra.job.num, shared.hydra_context, task_function, config, job_dir, in_place)


def _set_hydra_state(state: dict) -> None:
    """Hydra's singletons as the launching process had them. Hydra's own set_state scans every plugin module
    anew (a tenth of a second or more); a trial forked from a warm worker keeps the worker's scan (warm_up)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.hydra_awsbatch_launcher._hooks import hook

    set_state = hook("hydra.core.singleton.Singleton.set_state")
    set_state({**state, "instances": {**state["instances"], Plugins: Plugins.instance()}})


def execute(job: Job, ending: Ending) -> None:
    """Hydra's own run_job, as Hydra's launchers call it."""
    from hydra.core.utils import JobStatus, run_job

    from hydra_plugins.hydra_awsbatch_launcher import _wire
    from hydra_plugins.hydra_awsbatch_launcher._errors import MissingModule

    ending.task_started = time.time()
    try:
        job_return = run_job(hydra_context=job.hydra_context, task_function=job.task_function, config=job.config,
                             job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    finally:
        ending.task_ended = time.time()
    exc = job_return._return_value if job_return.status != JobStatus.COMPLETED else None
    if isinstance(exc, ModuleNotFoundError) and not isinstance(exc, MissingModule):  # say what to do
        job_return._return_value = MissingModule.of(exc)
    ending.job_return, problem = _wire.pickle_job_return(job_return)
    if problem:
        ending.error = problem
    elif exc is None:
        ending.status, ending.exit_code = _wire.Outcome.SUCCEEDED, 0
    else:
        ending.error = _wire.error_info(job_return._return_value)


def upload(job: Job | None, ending: Ending, staging, result: bool = True) -> None:
    """What the task reported and had not written yet, the job's outputs (unless they were written in place),
    then, last, its result object (`result=False`: a child node of a multi-node trial, whose main node writes
    it)."""
    from hydra_plugins.hydra_awsbatch_launcher import _metrics, _storage, _wire

    _metrics.finish()

    if ending.error:
        sys.stderr.write(ending.error["traceback"] or ending.error["message"] + "\n")
    try:
        if ending.sync and job is not None and not job.in_place and job.job_dir.is_dir():
            _storage.upload_dir(job.job_dir, staging.output(ending.num))
    except Exception as exc:  # the result must still be written, and say what was lost
        sys.stderr.write(f"uploading the job's outputs failed: {exc}\n")
        ending.failed(exc)
        ending.job_return = None  # its value stands, but not what it wrote: the job failed
        ending.error["message"] = f"uploading the job's outputs to {staging.output(ending.num)} failed: {exc}"
    if not result:
        return
    _storage.write_bytes(staging.result(ending.num), _wire.dump_result(
        ending.status, ending.job_return, ending.error, num=ending.num, exit_code=ending.exit_code,
        started=ending.started, stopped=time.time(), task_started=ending.task_started,
        task_ended=ending.task_ended, attempt=os.environ.get("AWS_BATCH_JOB_ATTEMPT"),
        batch_job_id=os.environ.get("AWS_BATCH_JOB_ID")))


def settle(ending: Ending, steps) -> None:
    """Run `steps()` (prepare and execute a job), and make of every way it can end the job's `ending`."""
    from hydra_plugins.hydra_awsbatch_launcher._wire import Outcome

    try:
        steps()
    except Interrupted as exc:
        ending.failed(exc, Outcome.INTERRUPTED, EXIT_INTERRUPTED)
        if _parent_died:
            ending.error["message"] = "the launching process died; the job was stopped with it"
    except SystemExit as exc:  # the task called sys.exit(): 0 or None is a normal end, as in Python
        code = exc.code if isinstance(exc.code, int) or exc.code is None else EXIT_FAILED
        if not code:
            ending.status, ending.exit_code = Outcome.SUCCEEDED, 0
        else:
            ending.failed(exc, Outcome.INTERRUPTED if code == EXIT_INTERRUPTED else Outcome.FAILED, code)
            ending.error["message"] = (f"the task exited with code {code}" if isinstance(exc.code, int)
                                        else f"the task exited: {exc.code}")
    except BaseException as exc:  # anything else, unpickling included, still becomes a result
        ending.failed(exc)


def run(payload_uri: str, index: int) -> int:
    from hydra_plugins.hydra_awsbatch_launcher import _nodes
    from hydra_plugins.hydra_awsbatch_launcher._manifest import Staging

    staging, first = Staging.of_payload(payload_uri)
    ending = Ending(first + index)
    os.environ[METRICS_URI] = staging.metrics(ending.num)  # where report() writes, for the parent to read
    os.environ[STOP_URI] = staging.stop(ending.num)  # where report() looks whether the sweep asks it to stop
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix(ending.num, os.getpid())))
    _scratch.append(scratch)  # for _watch_parent to remove if it must kill this job
    signal.signal(signal.SIGTERM, on_sigterm)
    job = None
    node = None  # a trial of one process; else this node's place in its trial (_nodes.py)

    def steps() -> None:
        nonlocal job, node
        node = _nodes.layout()
        job = prepare(payload_uri, index, scratch, ending)
        if node is None:
            execute(job, ending)
        else:
            _nodes.execute(node, job, ending, rank_main, Interrupted, payload_uri, index, str(scratch))

    try:
        settle(ending, steps)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        upload(job, ending, staging, result=node is None or node.main)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ending.exit_code


_WARM: dict[str, tuple] = {}  # a warm worker's payloads, unpickled once: URI -> (Payload, PayloadBody, {i: base})
WARM_PAYLOADS = 4  # the newest ones kept (a thompson sweep stages a payload per refill)


def warm_up(payload_uri: str, scratch: Path) -> str | None:
    """What each trial of a warm worker would do anew (_workers.py): import Hydra, the task's script (its
    module-level imports: torch, say) and its own modules, and read and unpickle the payload (what its jobs share,
    and its base configs), once here, in a copy of the code package, so that every trial forked from this process
    starts with them. A payload warmed up already is not read again. Why it failed, or None: the trials then do
    it themselves, each saying what goes wrong for it."""
    if payload_uri in _WARM:
        return None
    from hydra.core import utils  # noqa: F401  (run_job, and Hydra's imports with it)

    from hydra_plugins.hydra_awsbatch_launcher import _compose, _package, _storage, _wire

    _compose.parse_overrides([])  # Hydra's override parser, made once
    try:
        payload = _wire.load_payload(_storage.read_bytes(payload_uri))
        header = payload.header
        problem = _wire.version_mismatch(header["versions"])
        if problem:
            return problem
        code_dir = scratch / "code" / header["code_uri"].rsplit("/", 1)[-1]
        if not code_dir.is_dir():
            _package.unpack_code(_storage.read_bytes(header["code_uri"]), code_dir)
        sys.path.insert(0, str(code_dir))
        try:
            shared = _wire.PayloadBody(*_wire.loads(payload.body))
            bases = {i: _wire.loads(base) for i, base in enumerate(payload.bases)}
            from hydra.core.plugins import Plugins

            Plugins.instance()  # Hydra's plugin scan, once, with the task's code on the path
            if isinstance(shared.task_function, _wire.ScriptFunction):  # the script, imported once (idle main)
                shared.task_function.load(code_dir)
        finally:
            sys.path.remove(str(code_dir))
        _WARM[payload_uri] = (payload, shared, bases)
        for older in list(_WARM)[:-WARM_PAYLOADS]:
            del _WARM[older]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_forked(payload_uri: str, index: int, parent: int) -> None:
    """In a process forked from a warm worker: this trial, in a session of its own, then exit."""
    code = EXIT_FAILED
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the warm worker's handler is not this process's
        os.setsid()
        os.environ.pop(PARENT_PID, None)
        threading.Thread(target=_watch_parent, args=(parent, signal.SIGKILL), daemon=True).start()
        code = run(payload_uri, index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ------------------------------------------------------------------------- a rank of a trial of several
def rank_main(payload_uri: str, index: int, scratch: str) -> dict:
    """One rank (a process the elastic launcher started): the Hydra task, its ending as a plain dict. Rank 0 runs
    the job as the plain path does; the others write no `.hydra` files, log to their own file, report nothing."""
    import logging

    from hydra_plugins.hydra_awsbatch_launcher import _metrics, _nodes, _wire
    from hydra_plugins.hydra_awsbatch_launcher._manifest import Staging

    rank = int(os.environ["RANK"])
    os.environ["NODE_RANK"] = os.environ.get("GROUP_RANK", "0")  # torchrun's name for it is GROUP_RANK
    if rank:
        os.environ.pop(METRICS_URI, None)  # rank 0 reports for the job
    signal.signal(signal.SIGTERM, on_sigterm)
    ending = Ending(Staging.of_payload(payload_uri)[1] + index)

    def steps() -> None:
        job = prepare(payload_uri, index, Path(scratch), ending, unpacked=True)
        if rank:
            _helper_rank(job.config, rank)
        execute(job, ending)

    settle(ending, steps)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the agent passes on the SIGTERM the node got: once is enough
    _metrics.finish()  # what rank 0 reported, written before the job's result
    if ending.status == _wire.Outcome.INTERRUPTED:  # the agent is stopping the ranks and reads no return value:
        logging.shutdown()  # leave now (its checkpoint saved) rather than wait for one to be read
        os._exit(EXIT_INTERRUPTED)
    if ending.status == _wire.Outcome.FAILED:  # its exception, for the node (_nodes.py), and an exit the agent sees
        _nodes.rank_failed(scratch, rank, ending.fields())  # at once: it stops the other ranks (rather than let
        logging.shutdown()  # them wait in a collective, or run on, for a trial that has failed)
        os._exit(ending.exit_code or EXIT_FAILED)
    return ending.fields()


def _helper_rank(config, rank: int) -> None:
    """Rank `rank` (not 0) of the job of `config`: no `.hydra` files (rank 0 writes them), its own log file."""
    from omegaconf import OmegaConf, open_dict, read_write

    hydra = config.hydra
    with read_write(hydra), open_dict(hydra):
        hydra.output_subdir = None
        handler = OmegaConf.select(hydra, "job_logging.handlers.file", default=None)
        if handler is not None and "filename" in handler:
            handler.filename = f"${{hydra.runtime.output_dir}}/${{hydra.job.name}}.rank{rank}.log"


_parent_died = False
_scratch: list[Path] = []  # this process's job's scratch folder, once made


def _watch_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """aws_batch_local: when the launching process dies (even by SIGKILL), stop this job's whole process
    group as Ctrl-C would, so no job runs on unseen. (A warm worker's trial: SIGKILL, since its trial runs
    again elsewhere and must write nothing more.)"""
    global _parent_died
    while os.getppid() == parent:
        time.sleep(0.5)
    _parent_died = True
    if sig == signal.SIGKILL:  # nothing of this job will remove its scratch folder: this thread does
        for scratch in _scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    os.killpg(os.getpgid(0), sig)


def main() -> int:
    if sys.path and sys.path[0] in ("", os.getcwd()):  # `python -m` puts the working directory first: the
        sys.path.pop(0)  # job must import only what the code package and the image hold, as on Batch
    payload_uri = os.environ.get(PAYLOAD_URI)
    if not payload_uri:
        sys.stderr.write(f"hydra-awsbatch worker: {PAYLOAD_URI} is not set. This image runs jobs that "
                         "the hydra/launcher=aws_batch launcher submits; it is not meant to be run alone.\n")
        return EXIT_NO_PAYLOAD
    if os.environ.get(PARENT_PID, "").isdigit():
        orphan = signal.SIGKILL if os.environ.get(ORPHAN_KILL) else signal.SIGTERM
        threading.Thread(target=_watch_parent, args=(int(os.environ[PARENT_PID]), orphan), daemon=True).start()
    adopt_orphans()
    atexit.register(end_children)  # the last to run at exit: what the job left running ends with it, as its
    index = int(os.environ.get(INDEX_OFFSET) or 0) + array_index()  # container would on Batch
    from hydra_plugins.hydra_awsbatch_launcher import _workers

    if _workers.is_pool(payload_uri):  # a warm worker: trial after trial, each the plain worker in a process
        pool, first = _workers.parse(payload_uri)
        from hydra_plugins.hydra_awsbatch_launcher import worker  # this module proper, even run as __main__

        return _workers.serve(worker, pool, first + index, JobSettings.read().idle_timeout_s)
    return run(payload_uri, index)


if __name__ == "__main__":  # run as the module proper, so its exceptions are the ones _nodes.py raises
    from hydra_plugins.hydra_awsbatch_launcher import worker

    sys.exit(worker.main())
