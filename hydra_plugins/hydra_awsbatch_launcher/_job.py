"""What a job is told, and how it answers: the HYDRA_AWSBATCH_* environment variables between the launching
process and the worker, and the worker's exit codes. `JobSettings` holds hydra.launcher's options that every job
of a sweep reads: made from the options in the launcher, carried in the environment, read back in the job, all
here. A new option that must reach the job is a field of it (and of config.py), read where the job uses it.

Light on purpose: the worker, report() and the launcher all import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

# Set per job by the executor that starts it (the launcher's Batch request, a local process, a warm worker)
PAYLOAD_URI = "HYDRA_AWSBATCH_PAYLOAD_URI"  # the sweep payload the job runs from
SWEEP_ID = "HYDRA_AWSBATCH_SWEEP_ID"
INDEX_OFFSET = "HYDRA_AWSBATCH_INDEX_OFFSET"  # the payload's job index of the array's child 0
IN_PLACE = "HYDRA_AWSBATCH_IN_PLACE"  # "1": the job writes its job dir into the sweep dir itself (a shared disk)
PARENT_PID = "HYDRA_AWSBATCH_PARENT_PID"  # a local job stops when this process dies (even after a SIGKILL)
ORPHAN_KILL = "HYDRA_AWSBATCH_ORPHAN_KILL"  # "1": ... with SIGKILL, not SIGTERM (a warm worker's trial)
MASTER_PORT = "HYDRA_AWSBATCH_MASTER_PORT"  # a multi-node job's rendezvous port on its main node
WATCH_PORT = "HYDRA_AWSBATCH_WATCH_PORT"  # ... and its node watch's port
# Set by the worker for the task it runs
METRICS_URI = "HYDRA_AWSBATCH_METRICS_URI"  # the job's metrics folder in staging, where report() writes
STOP_URI = "HYDRA_AWSBATCH_STOP_URI"  # where the sweep asks the job to stop

# A job's threads, set to its vCPUs (per process) unless the user's environment names them: in a container a math
# library sees every CPU of the machine and starts a thread for each, which jobs sharing it make spin on each other
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

EXIT_FAILED, EXIT_NO_PAYLOAD, EXIT_INTERRUPTED = 1, 2, 75  # 75: interrupted (Spot, timeout): Batch retries it


def _env(name: str) -> dict:
    return {"env": f"HYDRA_AWSBATCH_{name}"}


@dataclass(frozen=True)
class JobSettings:
    """hydra.launcher's options as every job of the sweep reads them (field: its variable, in its metadata)."""

    metrics_interval_s: float = field(default=10.0, metadata=_env("METRICS_INTERVAL_S"))  # report()'s writes
    procs_per_node: int | None = field(default=None, metadata=_env("PROCS_PER_NODE"))  # None: the GPUs, or 1
    idle_timeout_s: float = field(default=60.0, metadata=_env("IDLE_TIMEOUT_S"))  # a warm worker with no trial
    fresh_interpreter: bool = field(default=False, metadata=_env("FRESH_INTERPRETER"))  # a new Python per trial
    trial_timeout_s: int | None = field(default=None, metadata=_env("TRIAL_TIMEOUT_S"))  # a warm worker's trial's

    @classmethod
    def of(cls, params: Mapping) -> JobSettings:
        """From hydra.launcher's options (`params`)."""
        workers, timeout_min = params.get("workers"), params.get("timeout_min")
        return cls(metrics_interval_s=float(params.get("metrics_interval_s", 10.0)),
                   procs_per_node=params.get("procs_per_node") or None,
                   idle_timeout_s=float(params.get("idle_timeout_s", 60.0)),
                   fresh_interpreter=bool(params.get("fresh_interpreter", False)),
                   # a warm worker keeps each trial's timeout (the worker job lives on past it)
                   trial_timeout_s=max(60, int(timeout_min * 60)) if workers and timeout_min else None)

    def environment(self) -> dict[str, str]:
        """As the job's environment carries it (what is unset is left out)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata["env"]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> JobSettings:
        """As the job reads it from its environment (the defaults where a variable is unset)."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            text = environ.get(f.metadata["env"])
            if not text:
                continue
            kind = type(f.default) if f.default is not None else int
            values[f.name] = text == "1" if kind is bool else kind(float(text)) if kind is int else kind(text)
        return cls(**values)
