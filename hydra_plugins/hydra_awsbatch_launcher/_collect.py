"""Collect: a job's result object and job dir back from staging, as Hydra's JobReturn. A job that came back
without a usable result gets a JobReturn that says why (its remote traceback, or what the executor knows)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _storage, _wire
from hydra_plugins.hydra_awsbatch_launcher._errors import RemoteJobError
from hydra_plugins.hydra_awsbatch_launcher._manifest import BatchState, JobRecord, Staging

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")


def collect(staging: Staging, job: JobRecord, job_dir: Path, config: Callable = lambda: None, *, sync_outputs: bool,
            sync_exclude=(), script: Path | None = None, details: Callable[[], str] = str, quiet: bool = False):
    """The JobReturn of a job that ended, and what its result object says of its end (exit_code, task_started,
    task_ended; empty without one). `config()`: the job's config, made when its JobReturn must be made here.
    Outputs are brought home when `sync_outputs`; a result or outputs that cannot be read fail this job alone,
    saying why. `details()`: what the executor knows of a job that left no result. `quiet`: a job stopped on
    purpose, whose failure is not logged (its exception still carries the remote traceback)."""
    try:
        result = _wire.load_result(_storage.read_bytes(staging.result(job.num)), script)
    except FileNotFoundError:
        result = None
    missing = details() if result is None else ""
    if result is not None and sync_outputs:
        output = staging.output(job.num)
        try:
            left = _storage.download_dir(output, job_dir, sync_exclude)
        except OSError as exc:  # a full disk, say: this job's outputs stay in staging
            result = dict(result, status=_wire.Outcome.FAILED, job_return=None, error=_wire.collect_error(
                exc, f"bringing its outputs from {output} to {job_dir} failed: {exc}"))
            left = []
        if left:
            log.info(f"\t#{job.num}: left in staging: " + ", ".join(_storage.join(output, rel) for rel in left))
    from hydra.core.utils import JobStatus

    ret = job_return(config, job, job_dir, result, missing, quiet)
    if ret.status == JobStatus.COMPLETED and job.state == BatchState.FAILED:
        log.warning(f"\t#{job.num}: Batch says FAILED ({job.reason or 'no reason'}), but the job's own result came "
                    "back whole: counted as succeeded")
    return ret, {key: (result or {}).get(key) for key in ("exit_code", "task_started", "task_ended")}


def job_return(config: Callable, job: JobRecord, job_dir: Path, result: dict | None, missing: str,
               quiet: bool = False):
    """Hydra's JobReturn: the worker's own when it came back, else one that says why not."""
    from hydra.core.utils import JobStatus
    from omegaconf import open_dict, read_write

    num = job.num
    ret = result.get("job_return") if result else None
    if ret is not None:
        ret.working_dir = str(job_dir)
        runtime = ret.hydra_cfg.hydra.runtime
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = str(job_dir)
        if ret.status == JobStatus.FAILED:
            explain(num, ret._return_value, result["error"], quiet)
        return ret
    ret = unfinished_return(job.overrides, job_dir, config())
    if result is not None and result["status"] == _wire.Outcome.SUCCEEDED:  # sys.exit(0): a normal end, no value
        return ret
    ret.status = JobStatus.FAILED
    error = (result or {}).get("error")
    if error:
        message = f"job #{num} {result['status']}: {error['type']}: {error['message']}"
        ret.return_value = RemoteJobError(message, error["type"], error["traceback"])
    else:
        ret.return_value = RemoteJobError(f"job #{num} ended without a result. {missing}")
    explain(num, ret._return_value, error, quiet)
    return ret


def never_started(job: JobRecord, job_dir: Path):
    """The JobReturn of a job stopped before it started (nothing of it to read or bring home)."""
    from hydra.core.utils import JobStatus

    ret = unfinished_return(job.overrides, job_dir)
    ret.status = JobStatus.FAILED
    ret.return_value = RemoteJobError(f"job #{job.num} was stopped before it started ({job.reason or 'stopped'})")
    return ret


def unfinished_return(overrides, job_dir: Path | None = None, config=None):
    """A JobReturn for a job whose result is not here (a dry run, wait=false, or none came back); without its
    config where none is at hand (a dry run or wait=false of 10,000 jobs would make 10,000 configs)."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    ret.overrides = list(overrides)
    if config is not None:
        ret.cfg = ret.hydra_cfg = config  # hydra_cfg.hydra, as in Hydra's own JobReturn
        ret.task_name = config.hydra.job.name
    ret.working_dir = str(job_dir or "")
    ret.status, ret.return_value = JobStatus.COMPLETED, None
    return ret


def summary(ret) -> str:
    """The manifest's one line of a JobReturn: the value's repr, or "ErrorType: first line"."""
    from hydra.core.utils import JobStatus

    value = ret._return_value
    if ret.status == JobStatus.COMPLETED:
        return repr(value)
    return f"{type(value).__name__}: {str(value).splitlines()[0] if str(value) else ''}"


def explain(num: int, exc: BaseException, error: dict | None, quiet: bool = False) -> None:
    """Show the remote traceback in the log (unless `quiet`) and on the exception Hydra will raise."""
    remote = (error or {}).get("traceback", "")
    if not quiet:
        log.error(f"\t#{num} failed: {type(exc).__name__}: {exc}"
                  + (f"\nRemote traceback:\n{remote}" if remote else ""))
    if remote and hasattr(exc, "add_note") and not getattr(exc, "_remote_noted", False):
        exc.add_note(f"Remote traceback of job #{num}:\n{remote}")
        exc._remote_noted = True
