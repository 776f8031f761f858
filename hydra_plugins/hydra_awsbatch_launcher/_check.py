"""The check step: what every launcher refuses before anything is staged or submitted, one line per problem,
each naming the setting to change; for aws_batch, Batch's settings resolved from the stack first (`resolve`),
then checked (`batch`). (The checks that ask AWS live in _batch.py.)"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _storage

RESERVED_ENV_PREFIXES = ("AWS_BATCH_", "HYDRA_AWSBATCH_")


def options(params, conf_class: type, code_root: Path) -> list[str]:
    """Misspelt options (`+hydra.launcher.max_paralel=2` is otherwise silently ignored), reserved environment
    names, and a code_root that is not a folder."""
    known = [f.name for f in dataclasses.fields(conf_class)]
    problems = []
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            problems.append(f"hydra.launcher.{name}: not an option of this launcher"
                            + (f"; did you mean hydra.launcher.{close[0]}?" if close else
                               f"; the options are: {', '.join(k for k in known if k != '_target_')}"))
    problems += [f"hydra.launcher.environment.{name}: names starting with {prefix} are reserved for the "
                 "launcher; rename it" for name in params.get("environment", {})
                 for prefix in RESERVED_ENV_PREFIXES if str(name).startswith(prefix)]
    if float(params.get("metrics_interval_s", 1)) <= 0:
        problems.append(f"hydra.launcher.metrics_interval_s={params.get('metrics_interval_s')}: seconds, above 0")
    problems += processes(params)
    if not code_root.is_dir():
        problems.append(f"hydra.launcher.code_root={params.get('code_root')}: no such folder ({code_root}); point "
                        "it at the folder of your code")
    workers = params.get("workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        problems.append(f"hydra.launcher.workers={workers}: a whole number of warm workers, at least 0 (0: a job per "
                        "trial)")
    elif workers and int(params.get("nodes") or 1) > 1:
        problems.append(f"hydra.launcher.workers={workers} with nodes={params.get('nodes')}: warm workers run trials "
                        "of one node; set workers=0 for multi-node trials")
    if float(params.get("idle_timeout_s", 1)) <= 0:
        problems.append(f"hydra.launcher.idle_timeout_s={params.get('idle_timeout_s')}: seconds, above 0")
    return problems


def staging(root: str, setting, dry_run: bool) -> list[str]:
    """Whether staging at `root` (hydra.launcher.staging_uri=`setting`) can be written; a dry run only looks."""
    problem = _storage.check_writable(root, write=not dry_run)
    return [f"hydra.launcher.staging_uri={setting}: {problem}"] if problem else []


DEFAULTS = {"nodes": "1", "procs_per_node": "null: the GPUs of a node, or 1"}


def processes(params) -> list[str]:
    """hydra.launcher.nodes and procs_per_node: whole numbers, at least 1."""
    problems = []
    for name, default in DEFAULTS.items():
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.append(f"hydra.launcher.{name}={value}: a whole number, at least 1 (default {default})")
    return problems


def resolve(params, api) -> dict[str, str]:
    """Batch's settings that the stack of hydra.launcher.stack_name gives (queue, job definition, staging, log
    group, ...), set in `params` where the user left them unset (explicit settings win), and a queue or job
    definition that names one of its outputs (GpuJobQueue) made that output's value: before anything is
    checked. Returns the stack's outputs ({} without a stack). Raises _batch.BatchError where the stack cannot
    be read."""
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    if not params.stack_name:
        return {}
    outputs = api.outputs_of(params.stack_name)
    for setting in ("job_queue", "job_definition"):
        params[setting] = outputs.get(params.get(setting), params.get(setting))
    for setting, value in api.stack_outputs(params.stack_name, multinode=int(params.get("nodes", 1)) > 1).items():
        if params.get(setting) in (None, "", _batch.DEFAULT_LOG_GROUP if setting == "log_group" else None):
            params[setting] = value
    return outputs


def on_stack(values: dict, asked, params, outputs: dict[str, str]) -> dict:
    """A resource set's settings (`values`: its own, else the launcher's) with the stack's outputs: a queue or
    job definition naming an output is its value; one the set left to the stack is the stack's multi-node one
    where the set's jobs have several nodes and the launcher's do not."""
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    values = dict(values)
    several = int(values.get("nodes") or 1) > 1 and int(params.get("nodes") or 1) <= 1
    for setting in ("job_queue", "job_definition"):
        if values.get(setting) is None:  # left to the stack: its multi-node one for a set of several nodes
            output = (_batch.MULTINODE_OUTPUTS if int(values.get("nodes") or 1) > 1 else _batch.STACK_OUTPUTS)[setting]
            values[setting] = outputs.get(output)
        if values.get(setting) in outputs:
            values[setting] = outputs[values[setting]]
        elif asked.get(setting) is None and several and values.get(setting) == outputs.get(
                _batch.STACK_OUTPUTS[setting]):
            values[setting] = outputs.get(_batch.MULTINODE_OUTPUTS[setting], values[setting])
    return values


def local_sets(sets: dict, effective, name) -> list[str]:
    """What aws_batch_local refuses of the jobs' resource sets (`sets`: Resources -> job numbers, `effective`:
    a set's settings, `name(asked, nums)`: who asked): more GPUs than this machine has, nodes or processes that are not
    whole numbers."""
    from hydra_plugins.hydra_awsbatch_launcher import _resources

    problems, have = [], None
    for asked, nums in sets.items():
        values = effective(asked)
        problems += [f"{name(asked, nums)}: {_resources.explain(asked, line)}" for line in processes(values)]
        if values.get("gpus") and int(values["gpus"]) > 0:
            have = _resources.local_gpus() if have is None else have
            if int(values["gpus"]) > have:
                problems.append(f"{name(asked, nums)}: {asked.setting('gpus')}: this machine has {have} GPU(s) "
                                "(CUDA_VISIBLE_DEVICES, nvidia-smi -L); run these jobs on aws_batch, or ask for at "
                                f"most {have} in the job's config")
    return problems


def batch_sets(sets: dict, effective, api, name, default: dict) -> list[str]:
    """What Batch would refuse of each resource set of the jobs (`default`: the launcher's own settings, checked
    already by `batch`): its queue, job definition and resources, and GPUs asked of a queue without GPU
    instances; each problem names the jobs that asked."""
    from hydra_plugins.hydra_awsbatch_launcher import _batch, _resources

    queues, problems = {}, []
    for asked, nums in sets.items():
        v = effective(asked)
        queue = v.get("job_queue")
        if queue not in queues:
            queues[queue] = api.check_queue(queue)
        (queue_problems, environments) = queues[queue]
        definition_problems, found = api.check_job_definition(v.get("job_definition"))  # described once a name
        mine = _batch.check_gpus(v.get("gpus"), queue, environments) if not queue_problems else []
        if v != default:
            mine += queue_problems + definition_problems + _batch.check_resources(
                v.get("vcpus"), v.get("memory_mib"), v.get("gpus"), v.get("timeout_min"), 1, environments)
            mine += processes(v)
            if not queue_problems and not definition_problems:
                mine += _batch.check_multinode(int(v.get("nodes") or 1), queue, environments, found)
        problems += [f"{name(asked, nums)}: {_resources.explain(asked, line)}" for line in dict.fromkeys(mine)]
    return problems


def batch(p, api, sweeper: str, dry_run: bool) -> list[str]:
    """Everything Batch would refuse of these (resolved) settings, and staging, before anything is uploaded.
    `sweeper`: the sweeper's _target_ (only the basic one goes on without results)."""
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    problems = []
    if not p.wait and p.get("workers"):
        problems.append(f"hydra.launcher.workers={p.workers} with wait=false: warm workers run only while the "
                        "launcher feeds them; use wait=true, or workers=0")
    elif not p.wait and "BasicSweeper" not in sweeper:
        problems.append("hydra.launcher.wait=false hands no results to the sweeper; only the basic sweeper "
                        "can go on without them: use wait=true with this sweeper")
    problems += _batch.check_tags(dict(p.tags))
    nodes = int(p.get("nodes", 1))
    queue_problems, compute_environments = api.check_queue(p.job_queue)
    definition_problems, definition = api.check_job_definition(p.job_definition)
    problems += queue_problems + definition_problems
    if not queue_problems and not definition_problems and nodes > 1:
        problems += _batch.check_multinode(nodes, p.job_queue, compute_environments, definition)
    problems += _batch.check_resources(p.vcpus, p.memory_mib, p.gpus, p.timeout_min, p.attempts,
                                       compute_environments)
    if not _batch.JOB_NAME.match(_batch.sanitize_job_name(p.job_name)):
        problems.append(f"hydra.launcher.job_name='{p.job_name}' has no letter or digit to start a Batch job "
                        "name: set hydra.launcher.job_name")
    if not p.staging_uri or not _storage.is_s3(p.staging_uri):
        problems.append(f"hydra.launcher.staging_uri={p.staging_uri}: Batch jobs need an s3://bucket/prefix "
                        "(or set hydra.launcher.stack_name)")
    elif not problems:  # last: it writes (and deletes) one object; a dry run only looks
        problems = staging(p.staging_uri, p.staging_uri, dry_run)
    return problems
