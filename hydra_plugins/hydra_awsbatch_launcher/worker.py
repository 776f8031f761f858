"""The job's side: `python -m hydra_plugins.hydra_awsbatch_launcher.worker`, in a Batch container or as a
local process of `aws_batch_local`. Reads the payload named by HYDRA_AWSBATCH_PAYLOAD_URI, runs its job
(number = the payload's first + the array index) through Hydra's own run_job, then uploads the job's
output dir and, last, its result object. Every ending but SIGKILL leaves a result object.

Exit codes: 0 the task returned, 1 it failed (the result says why), 2 no payload URI,
75 interrupted by SIGTERM (Batch retries this code).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ENV_PAYLOAD_URI = "HYDRA_AWSBATCH_PAYLOAD_URI"
ENV_SWEEP_ID = "HYDRA_AWSBATCH_SWEEP_ID"
# Added to the array index: a batch larger than Batch's 10,000-job arrays is split into several arrays.
ENV_INDEX_OFFSET = "HYDRA_AWSBATCH_INDEX_OFFSET"
# Set by aws_batch_local (and aws_batch with shared_sweep_dir): the job sees the parent's disk, so it runs
# in the parent's own paths.
ENV_IN_PLACE = "HYDRA_AWSBATCH_IN_PLACE"
EXIT_FAILED, EXIT_NO_PAYLOAD, EXIT_INTERRUPTED = 1, 2, 75
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


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the upload that follows must finish
    raise Interrupted("SIGTERM")


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


def run(payload_uri: str, index: int) -> int:
    from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage

    staging, first = _stage.Staging.of_payload(payload_uri)
    num = first + index
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix=f"hydra-awsbatch-{num}-"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    status, job_return, error, exit_code, sync = _stage.FAILED, None, None, EXIT_FAILED, True
    job_dir = None
    try:
        header, body = _stage.load_payload(_storage.read_bytes(payload_uri))
        sync = header["sync_outputs"]
        problem = _stage.version_mismatch(header["versions"])
        if problem:
            raise VersionMismatch(problem)
        code_dir = scratch / "code"
        _stage.unpack_code(_storage.read_bytes(header["code_uri"]), code_dir)
        sys.path.insert(0, str(code_dir))

        import cloudpickle
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobStatus, run_job, setup_globals

        hydra_context, task_function, singleton_state, configs = cloudpickle.loads(body)
        if isinstance(task_function, _stage.ScriptFunction):
            task_function = task_function.load(code_dir)
        config = configs[index]
        Singleton.set_state(singleton_state)
        setup_globals()
        if not os.environ.get(ENV_IN_PLACE):
            _place_remotely(config, header, scratch, code_dir)
        elif Path(config.hydra.runtime.cwd).is_dir():  # a shared file system: where the sweep was launched
            os.chdir(config.hydra.runtime.cwd)
        job_dir = Path(config.hydra.sweep.dir) / _stage.job_subdir(config)
        job_return = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                             job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        if job_return.status == JobStatus.COMPLETED:
            status, exit_code = _stage.SUCCEEDED, 0
        else:
            error = _stage.error_info(job_return._return_value)
    except Interrupted as exc:
        status, error, exit_code = _stage.INTERRUPTED, _stage.error_info(exc), EXIT_INTERRUPTED
    except SystemExit as exc:  # the task called sys.exit; EXIT_INTERRUPTED is the app's "stopped by SIGTERM"
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
        status = _stage.INTERRUPTED if code == EXIT_INTERRUPTED else _stage.FAILED
        error, exit_code = _stage.error_info(exc), code or EXIT_FAILED
        error["message"] = f"the task exited with code {code}"
    except BaseException as exc:  # anything else, unpickling included, still becomes a result
        error = _stage.error_info(exc)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if error:
        sys.stderr.write(error["traceback"])

    if sync and job_dir is not None and job_dir.is_dir():
        _storage.upload_dir(job_dir, staging.output(num))
    result = _stage.dump_result(
        status, job_return, error, num=num, exit_code=exit_code, started=started, stopped=time.time(),
        attempt=os.environ.get("AWS_BATCH_JOB_ATTEMPT"), batch_job_id=os.environ.get("AWS_BATCH_JOB_ID"))
    _storage.write_bytes(staging.result(num), result)
    shutil.rmtree(scratch, ignore_errors=True)
    return exit_code


def main() -> int:
    payload_uri = os.environ.get(ENV_PAYLOAD_URI)
    if not payload_uri:
        sys.stderr.write(f"hydra-awsbatch worker: {ENV_PAYLOAD_URI} is not set. This image runs jobs that "
                         "the hydra/launcher=aws_batch launcher submits; it is not meant to be run alone.\n")
        return EXIT_NO_PAYLOAD
    return run(payload_uri, int(os.environ.get(ENV_INDEX_OFFSET) or 0) + array_index())


if __name__ == "__main__":
    sys.exit(main())
