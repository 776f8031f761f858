"""Resources per job: hydra.launcher's options that may read the job's own config (`gpus: ${model.gpus}`),
resolved per job after composition, the resource sets the jobs of a sweep fall into, and the executor that runs
each set's jobs on an executor of its own (its arrays, its warm workers).

A job's set is what its composed config says of KEYS (the launcher's fields among them): Hydra resolves each
interpolation against that config, with the job's HydraConfig set, as `run_job` would. Jobs of one set go out
together (one array on Batch where they are neighbours in the sweep's order); a sweep whose every job asks the
same has one set, and runs as it always did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hydra_plugins.hydra_awsbatch_launcher._errors import LaunchError
from hydra_plugins.hydra_awsbatch_launcher._executor import JobInfo
from hydra_plugins.hydra_awsbatch_launcher._manifest import Array

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")

# hydra.launcher's options that a job's config may set for that job alone (the launcher's fields among them)
KEYS = ("vcpus", "memory_mib", "gpus", "timeout_min", "nodes", "procs_per_node", "job_queue", "job_definition")
MAX_PROBLEMS = 10  # jobs named per problem list: a 10,000-job sweep with one bad key says so in a few lines


@dataclass(frozen=True)
class Resources:
    """What one job asks: (option, value) pairs in KEYS order (None: the launcher's default, the job definition's
    or the stack's). `origin`: the interpolations they came from, for messages (not part of the set)."""

    values: tuple = ()
    origin: tuple = field(default=(), compare=False, hash=False)

    def get(self, key: str, default=None):
        return dict(self.values).get(key, default)

    def as_dict(self) -> dict:
        """The options it sets (None left out): what the manifest keeps of the job."""
        return {k: v for k, v in self.values if v is not None}

    @classmethod
    def of(cls, asked: dict | None) -> Resources:
        """From the manifest's record of a job (`as_dict`)."""
        asked = asked or {}
        return cls(tuple((k, asked.get(k)) for k in KEYS if k in asked))

    def setting(self, key: str) -> str:
        """`hydra.launcher.KEY=VALUE`, and the interpolation it came from: how a message names it."""
        came = dict(self.origin).get(key)
        return f"hydra.launcher.{key}={self.get(key)}" + (f" (from {came})" if came else "")

    def describe(self) -> str:
        return " ".join(f"{k}={show(v)}" for k, v in self.as_dict().items()) or "the launcher's defaults"


def show(value) -> str:
    """4, not 4.0: a value as a message shows it."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def varying(records: Sequence[dict]) -> list[str]:
    """Each job's resources as `hydra-awsbatch status` shows them (`records`: the manifest's, in job order): the
    options whose values differ between the jobs, "" for all where every job asks the same."""
    keys = [k for k in KEYS if len({repr(r.get(k)) for r in records}) > 1]
    return [" ".join(f"{k}={show(r[k])}" for k in keys if r.get(k) is not None) for r in records]


def job_name(num: int, overrides: Sequence[str]) -> str:
    """`job #3 (model=resnet lr=0.001)`: how a message names the job whose config asked."""
    from hydra.core.utils import filter_overrides

    return f"job #{num} ({' '.join(filter_overrides(list(overrides))) or 'no overrides'})"


def askers(asked: Resources, nums: Sequence[int], overrides_of: Callable) -> str:
    """The jobs of a resource set, as a message names them: the first by its overrides, and how many more."""
    more = f" and {len(nums) - 1} more job(s) asking the same" if len(nums) > 1 else ""
    return job_name(nums[0], overrides_of(nums[0])) + more


def explain(asked: Resources, line: str) -> str:
    """A problem's line, its `hydra.launcher.KEY=VALUE` saying which interpolation of the job's config it came
    from."""
    key = line[len("hydra.launcher."):].split("=", 1)[0] if line.startswith("hydra.launcher.") else ""
    if key not in dict(asked.origin):
        return line
    return asked.setting(key) + line[len(f"hydra.launcher.{key}={asked.get(key)}"):]


def reader(keys: Sequence[str]) -> Callable:
    """What reads a job's Resources (or the problems of it, as a list of lines) from its composed config."""
    from omegaconf import OmegaConf

    def read(config):
        node, values, origin, problems = config.hydra.launcher, [], [], []
        for key in keys:
            if OmegaConf.is_interpolation(node, key):
                origin.append((key, OmegaConf.to_container(node, resolve=False)[key]))
            try:
                values.append((key, node[key]))
            except Exception as error:  # a key the config lacks, a value of the wrong type: Hydra's own words
                came = dict(origin).get(key, "")
                problems.append(f"hydra.launcher.{key}={came}: {type(error).__name__}: {str(error).splitlines()[0]}")
        return problems or Resources(tuple(values), tuple(origin))

    return read


def per_shape(keys: Sequence[str]) -> Callable:
    """Whether a job's config answers for every job of its shape (its options interpolate nothing)."""
    from omegaconf import OmegaConf

    return lambda config: not any(OmegaConf.is_interpolation(config.hydra.launcher, k) for k in keys)


def of_jobs(composer, master_config, job_overrides: Sequence[Sequence[str]], first_num: int, sweep_dir: str,
            keys: Sequence[str]) -> list[Resources]:
    """Every job's Resources, from its composed config; a LaunchError naming each job whose config cannot say
    (before anything is staged)."""
    keys = [k for k in KEYS if k in keys]
    if per_shape(keys)(master_config) and not any(_may_change(o, composer.groups) for job in job_overrides
                                                   for o in job):  # each job asks what the sweep's config says
        return [reader(keys)(master_config)] * len(job_overrides)
    answers = composer.read_each(master_config, job_overrides, first_num, sweep_dir, reader(keys), per_shape(keys))
    problems = [f"{job_name(first_num + i, job_overrides[i])}: {line}; set it in the job's config, or give a "
                "default (${oc.select:KEY,DEFAULT})" for i, answer in enumerate(answers)
                if isinstance(answer, list) for line in answer]
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise LaunchError(problems[:MAX_PROBLEMS] + ([f"... and {more} more like these"] if more > 0 else []))
    return answers


def _may_change(override: str, groups: set) -> bool:
    """Whether an override may change what hydra.launcher says: it picks a config (a group's option: composed
    configs teach `groups`, every shape of the batch composed by now), or sets Hydra's own config."""
    key = override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
    return key.startswith("hydra") or "/" in key or key in groups or "=" not in override


def sets(resources: Sequence[Resources], nums: Sequence[int]) -> dict[Resources, list[int]]:
    """The jobs of each resource set, in the order the sets first appear."""
    found: dict[Resources, list[int]] = {}
    for asked, num in zip(resources, nums):
        found.setdefault(asked, []).append(num)
    return found


def numbers(nums: Sequence[int]) -> str:
    """0-3,7,9-10: job numbers in ranges."""
    spans: list[list[int]] = []
    for num in nums:
        if spans and num == spans[-1][1] + 1:
            spans[-1][1] = num
        else:
            spans.append([num, num])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def runs(first: int, resources: Sequence[Resources]) -> list[tuple[int, int, Resources]]:
    """(first job number, size, set) of each run of neighbours that ask the same: one array each."""
    out: list[tuple[int, int, Resources]] = []
    for i, asked in enumerate(resources):
        if out and out[-1][2] == asked:
            out[-1] = (out[-1][0], out[-1][1] + 1, asked)
        else:
            out.append((first + i, 1, asked))
    return out


def local_gpus() -> int:
    """GPUs a local job can have: CUDA_VISIBLE_DEVICES's, else those `nvidia-smi -L` lists (none without it)."""
    import os
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


# ------------------------------------------------------------------------------------------ the executor
class Routed:
    """An executor (_executor.Executor) of a sweep's jobs over one executor per resource set, made on first use
    by `make(resources, index)`; `resources_of(num)` says a job's set (the manifest's record of it). A batch
    goes to each set's executor a run of neighbours at a time, with its position in the payload."""

    def __init__(self, make: Callable, resources_of: Callable[[int], Resources]):
        self.make, self.resources_of = make, resources_of
        self.executors: dict[Resources, object] = {}

    def executor(self, asked: Resources):
        if asked not in self.executors:
            self.executors[asked] = self.make(asked, len(self.executors))
        return self.executors[asked]

    @property
    def poll_interval_s(self) -> float:
        return min((e.poll_interval_s for e in self.executors.values()), default=0.05)

    def _runs(self, first: int, size: int) -> list[tuple[int, int, Resources]]:
        return runs(first, [self.resources_of(num) for num in range(first, first + size)])

    def submit(self, payload_uri: str, first: int, size: int) -> list[Array]:
        arrays = []
        for n_first, n, asked in self._runs(first, size):
            arrays += self.executor(asked).submit(payload_uri, n_first, n, offset=n_first - first)
        return arrays

    def recover(self, payload_uri: str, first: int, size: int, since: float) -> list[Array]:
        arrays = []
        for n_first, n, asked in self._runs(first, size):
            arrays += self.executor(asked).recover(payload_uri, n_first, n, since, offset=n_first - first)
        return arrays

    def adopt(self, arrays: list[Array]) -> bool:
        adopted = [self.executor(self.resources_of(a.first)).adopt([a]) for a in arrays]
        return all(adopted) if adopted else self.executor(Resources()).adopt([])

    def poll(self) -> list[JobInfo]:
        return [info for e in list(self.executors.values()) for info in e.poll()]

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        return sum(e.terminate(reason, force, nums) for e in list(self.executors.values()))

    def stuck(self) -> dict[str, int]:
        reasons: dict[str, int] = {}
        for e in self.executors.values():
            for reason, count in e.stuck().items():
                reasons[reason] = reasons.get(reason, 0) + count
        return reasons

    def failure_details(self, nums: list[int], log_group: str = "") -> dict[int, str]:
        details = {}
        for asked, e in self.executors.items():
            mine = [num for num in nums if self.resources_of(num) == asked]
            if mine:
                details.update(e.failure_details(mine, log_group))
        return details

    def forced_stop_note(self, sweep: str) -> str:
        notes = dict.fromkeys(e.forced_stop_note(sweep) for e in self.executors.values())
        return "; ".join(n for n in notes if n)
