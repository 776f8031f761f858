"""The sweep page (report.html) and the cost estimate: one self-contained file made from what a sweep dir holds
(the manifest, the thompson sweeper's state where there is one, each job's metrics), whatever the sweeper;
rewritten while the sweep runs (LivePage, at most every 30 s, off the watcher's path) and at its end."""

from __future__ import annotations

import atexit
import html
import importlib
import json
import logging
import math
import os
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")

PAGE = "report.html"
STATE = "thompson_state.json"  # the thompson sweeper's state, read as JSON (its modules are not imported)
EVERY_S = 30.0
MIN_IMPORTANCE = 20  # ended trials before parameter importance is shown
CURVE_POINTS = 200  # a curve is thinned to this many points on the page
COLOURS = {"completed": "#2a9d8f", "pruned": "#e9a23b", "failed": "#d1495b", "running": "#3a86ff",
           "waiting": "#adb5bd", "stopped": "#6c757d"}
WAITING = {"STAGED", "SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "waiting", "queued", "asked", "submitted"}


# ------------------------------------------------------------------------------------------------ the data
@dataclass
class Param:
    name: str
    kind: str  # float, int or choice
    log: bool = False


@dataclass
class Trial:
    number: int
    job: int | None
    params: dict
    status: str  # completed, pruned, failed, running, waiting, stopped
    value: float | None = None
    error: str = ""
    stop_reason: str = ""
    curve: list = field(default_factory=list)  # report() records: {"step", "time", metric: value...}
    marks: dict = field(default_factory=dict)  # submitted, started, task_started, task_ended, home, stopped (epoch s)
    overrides: list = field(default_factory=list)
    log_path: str = ""
    resources: dict = field(default_factory=dict)  # what its config asked (vcpus, gpus, job_queue...)


@dataclass
class SweepData:
    sweep_id: str
    sweep_dir: str
    launcher: str
    sweeper: str
    command: str
    direction: str
    objective: str  # the name the page gives the value
    metric: str | None  # the curves' metric
    params: list
    trials: list
    running: bool
    settings: dict
    config: dict  # multirun.yaml's hydra node ({} where absent)
    pruner: dict  # pruner, min_resource, max_resource, reduction_factor ({} for none)
    created: str = ""
    best: int | None = None  # the best trial's number, as the thompson sweeper's study judges it (a config's mean)


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def sig(value, digits: int = 6) -> str:
    """A number to `digits` significant digits ("0.00123457"); integers and anything else as they are."""
    number = _number(value)
    if number is None or isinstance(value, int) or isinstance(value, str) and value.lstrip("-").isdigit():
        return str(value)
    return f"{number:.{digits}g}"


def _hydra_config(sweep_dir: str, first_job: str | None = None) -> dict:
    """multirun.yaml's hydra node: the command's overrides, the sweeper's and launcher's settings. A sweeper that
    writes no multirun.yaml (Optuna's): the first job's .hydra/hydra.yaml, whose task overrides are that job's
    values, not the command's (marked "from_job")."""
    import yaml

    for path, from_job in ((Path(sweep_dir) / "multirun.yaml", False),
                           (Path(sweep_dir) / (first_job or "0") / ".hydra" / "hydra.yaml", True)):
        try:
            with open(path) as file:
                found = (yaml.safe_load(file) or {}).get("hydra") or {}
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            continue
        return dict(found, from_job=True) if from_job else found
    return {}


def _typed(config: dict, settings: dict) -> list | None:
    """The command's task overrides as typed: the manifest's, else multirun.yaml's; None where only a job's
    values are known (a sweeper that writes no multirun.yaml, in a manifest older than its `overrides`)."""
    if settings.get("overrides") is not None:
        return list(settings["overrides"])
    return None if config.get("from_job") else list((config.get("overrides") or {}).get("task", []))


def _command(config: dict, settings: dict, searched=()) -> str:
    overrides = config.get("overrides") or {}
    typed = _typed(config, settings)
    task = typed if typed is not None else [  # a job's values: the searched ones were the sweeper's to choose
        o for o in overrides.get("task", []) if o.partition("=")[0] not in set(searched)]
    words = [o for o in overrides.get("hydra", []) if o != "hydra.mode=MULTIRUN"] + task
    script = settings.get("script") or f"{(config.get('job') or {}).get('name') or 'app'}.py"
    cwd = (config.get("runtime") or {}).get("cwd") or settings.get("code_root")
    line = " ".join(["python", shlex.quote(script), "--multirun", *map(shlex.quote, words)])
    if typed is None and searched:
        line += f"  # and the search space of {', '.join(searched)} (this sweeper keeps no record of it)"
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


def _read_text(uri: str) -> str | None:
    from hydra_plugins.hydra_awsbatch_launcher import _storage

    try:
        return _storage.read_bytes(uri).decode()
    except Exception:  # missing, or unreachable: the page shows what it has
        return None


def read(where: str, running: bool | None = None) -> SweepData:
    """What the page shows of the sweep at `where` (a sweep dir or a manifest's URI, as the CLI takes them);
    `running`: whether the sweep still runs (None: a process holds its sweep dir, or, in S3, a job is unfinished).
    FileNotFoundError or ValueError where no manifest is there."""
    from hydra_plugins.hydra_awsbatch_launcher import _manifest, _storage

    manifest = _manifest.read(_manifest.location(where))
    local = not _storage.is_s3(_manifest.location(where))
    sweep_dir = manifest.sweep_dir
    config = _hydra_config(sweep_dir, manifest.jobs[0].subdir if manifest.jobs else None) if local else {}
    state_text = _read_text(str(Path(sweep_dir) / STATE)) if local else None
    if state_text is None:
        state_text = _read_text(_storage.join(manifest.staging.sweep, STATE))
    try:
        state = json.loads(state_text) if state_text else None
    except ValueError:
        state = None  # being written: the manifest alone this time
    choices = (config.get("runtime") or {}).get("choices") or {}
    sweeper_conf = config.get("sweeper") or {}
    sweeper = choices.get("hydra/sweeper") or ("thompson" if state else "basic")
    launcher = choices.get("hydra/launcher") or ("aws_batch" if manifest.launcher == "AwsBatchLauncher"
                                                 else "aws_batch_local")
    direction = sweeper_conf.get("direction", "minimize")
    direction = (direction[0] if isinstance(direction, list) and direction else direction) or "minimize"
    jobs = manifest.jobs_by_num()
    if state and isinstance(state.get("trials"), list):
        sign = state.get("signature") or {}
        direction = sign.get("direction", direction)
        trials = [_trial_of_state(t, jobs.get(t.get("job")), manifest, local) for t in state["trials"]]
        params = _params_of_space(sign.get("space") or {}, trials)
        objective = sign.get("objective") or "objective"
        metric = sign.get("metric") or sign.get("objective")
        pruner = {k: sign.get(k) for k in ("pruner", "min_resource", "max_resource", "reduction_factor")} \
            if sign.get("pruner") not in (None, "none") else {}
        state_running = any(t.status in ("running", "waiting") for t in trials)
        best = state.get("best")
    else:
        objective_key = sweeper_conf.get("objective")
        trials = [_trial_of_job(job, manifest, local, objective_key) for job in manifest.jobs]
        specs = dict(o.partition("=")[::2] for o in _typed(config, manifest.settings) or [])
        specs.update((str(k), str(v)) for k, v in (sweeper_conf.get("params") or {}).items())
        params = _params_of_overrides(trials, swept=_swept(specs))
        for p in params:  # a log scale the command asked for: tag(log, ...), Optuna's and Nevergrad's too
            spec = specs.get(p.name) or specs.get(p.name.lstrip("+~")) or ""
            p.log = p.log or (p.kind != "choice" and "log" in spec)
        objective, metric, pruner, state_running, best = objective_key or "objective", objective_key, {}, False, None
    if metric is None or not any(metric in r for t in trials for r in t.curve):
        metric = _first_metric(trials)
    if objective == "objective":
        objective = _name_of_value(trials, metric)
    if running is None:
        running = state_running or (bool(_manifest.held_by(Path(sweep_dir))) if local else any(
            j.state not in _manifest.FINAL for j in manifest.jobs))
    command = _command(config, manifest.settings, [p.name for p in params])
    return SweepData(manifest.sweep_id, sweep_dir, launcher, sweeper, command, direction,
                     objective, metric, params, trials, running, manifest.settings, config, pruner,
                     manifest.created, best)


def _name_of_value(trials, metric: str | None) -> str:
    """The name of what the task returns: the metric, where each completed trial returned its last report of it."""
    ended = [t for t in trials if t.status == "completed" and t.value is not None and t.curve]
    same = metric and ended and all(math.isclose(_number(t.curve[-1].get(metric)) or math.nan, t.value, rel_tol=1e-9)
                                    for t in ended)
    return metric if same else "value returned"


def _first_metric(trials) -> str | None:
    for trial in trials:
        for record in trial.curve:
            for key, value in record.items():
                if key not in ("step", "time") and _number(value) is not None:
                    return key
    return None


def _job_status(job) -> str:
    state = str(job.state)
    if state == "SUCCEEDED":
        return "pruned" if job.stop_request and "interrupted" not in job.stop_request else "completed"
    if state == "FAILED":
        return "stopped" if job.reason and "interrupted" in job.reason else "failed"
    return "running" if state == "RUNNING" else "waiting"


def outcome(job, state_trial: dict | None = None) -> str:
    """A job's outcome in the sweep's words: the thompson sweeper's status of its trial where there is one
    (pruned is its word: a stop asked and heeded), else the job's state."""
    if state_trial and state_trial.get("status"):
        status = state_trial["status"]
        return "waiting" if status in WAITING else status
    return _job_status(job)


def _marks(job) -> dict:
    if job is None:
        return {}
    names = ("submitted", "started", "task_started", "task_ended", "home", "stopped")
    return {name: getattr(job, name) for name in names if getattr(job, name, None) is not None}


def _log_path(job, manifest, local: bool) -> str:
    if job is None:
        return ""
    if manifest.launcher != "AwsBatchLauncher":
        return str(Path(manifest.sweep_dir) / ".logs" / f"{job.num}.log")
    return f"hydra-awsbatch logs {shlex.quote(manifest.sweep_dir if local else manifest.staging.manifest)} {job.num}"


def _curve(job, manifest, local: bool) -> list:
    from hydra_plugins.hydra_awsbatch_launcher import _metrics

    if job is None:
        return []
    if local:
        path = Path(manifest.sweep_dir) / job.subdir / _metrics.FILE
        try:
            return _metrics.parse(path.read_text())
        except OSError:
            pass
    else:  # a sweep read from staging: what the job wrote there (one listing and a read a part)
        from hydra_plugins.hydra_awsbatch_launcher import _storage

        folder = manifest.staging.metrics(job.num)
        try:
            parts = sorted(rel for rel, _ in _storage.list_files(folder) if rel.startswith("part-"))
            records = [record for rel in parts
                       for record in _metrics.parse(_storage.read_bytes(_storage.join(folder, rel)).decode())]
        except Exception:  # unreachable, or nothing there: the last report the manifest keeps
            records = []
        if records:
            return records
    return [job.last_report] if job.last_report else []


def _trial_of_state(t: dict, job, manifest, local: bool) -> Trial:
    marks = _marks(job) or {k: t[k] for k in ("submitted", "started") if t.get(k)}
    if not job and t.get("ended"):
        marks["stopped"] = t["ended"]
    return Trial(int(t.get("number", 0)), t.get("job"), dict(t.get("params") or {}), outcome(job, t),
                 _number(t.get("value")), str(t.get("error") or ""), str(t.get("stop_reason") or ""),
                 list(t.get("curve") or []) or _curve(job, manifest, local), marks,
                 list(job.overrides) if job else [f"{k}={v}" for k, v in (t.get("params") or {}).items()],
                 _log_path(job, manifest, local), dict(job.resources) if job else {})


def _value_of(result: str, key: str | None) -> float | None:
    value = _number(result)
    if value is not None or not result:
        return value
    import ast

    try:
        returned = ast.literal_eval(result)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(returned, dict):
        return _number(returned.get(key)) if key else next(
            (v for v in map(_number, returned.values()) if v is not None), None)
    return None


def _trial_of_job(job, manifest, local: bool, key: str | None) -> Trial:
    status = _job_status(job)
    params = {}
    for text in job.overrides:
        name, sep, value = text.partition("=")
        if sep and not name.startswith("hydra."):
            params[name] = value
    value = _value_of(job.result, key) if status in ("completed", "pruned") else None
    return Trial(job.num, job.num, params, status, value, job.result if status == "failed" else "",
                 job.stop_request, _curve(job, manifest, local), _marks(job), list(job.overrides),
                 _log_path(job, manifest, local), dict(job.resources))


def _params_of_space(space: dict, trials) -> list:
    params = []
    for name, text in space.items():
        text = str(text)
        if "choice(" in text:
            params.append(Param(name, "choice"))
        elif "float" in text:
            params.append(Param(name, "float", "log" in text))
        else:
            params.append(Param(name, "int", "log" in text))
    known = {p.name for p in params}
    extra = sorted({k for t in trials for k in t.params} - known)
    return params + _params_of_overrides(trials, extra)


def _swept(specs: dict) -> set:
    """The names (without `+` or `~`) a sweep's overrides or its sweeper's params sweep (`choice(...)`, `a,b`,
    `interval(...)`), read by Hydra's override grammar: such a parameter is shown even where every trial drew one
    value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, swept = OverridesParser.create(), set()
    for name, spec in specs.items():
        try:
            if parser.parse_override(f"{name}={spec}").is_sweep_override():
                swept.add(name.lstrip("+~"))
        except OverrideParseException:  # not an override Hydra reads: not a sweep the page can name
            continue
    return swept


def _params_of_overrides(trials, names=None, swept=frozenset()) -> list:
    """Parameters that differ between jobs, or that the sweep swept (`swept`), typed from their values: numbers
    (log where positive and spanning two decades or more) or categories."""
    names = names if names is not None else list(dict.fromkeys(k for t in trials for k in t.params))
    params = []
    for name in names:
        values = [t.params.get(name) for t in trials]
        if len({str(v) for v in values}) < 2 and name.lstrip("+~") not in swept:
            continue
        numbers = [_number(v) for v in values if v is not None]
        if numbers and all(n is not None for n in numbers):
            for trial in trials:
                if name in trial.params:
                    trial.params[name] = _number(trial.params[name])
            positive = [n for n in numbers if n > 0]
            wide = len(positive) == len(numbers) and max(positive) / min(positive) >= 100
            kind = "int" if all(float(n).is_integer() for n in numbers) else "float"
            params.append(Param(name, kind, wide))
        else:
            params.append(Param(name, "choice"))
    return params


# -------------------------------------------------------------------------------------------------- views
def _best(data: SweepData):
    """The sweeper's best trial where it says which (a config run twice: the best mean), else the best value."""
    done = [t for t in data.trials if t.status == "completed" and t.value is not None]
    if not done:
        return None
    judged = [t for t in done if t.number == data.best]
    if judged:
        return judged[0]
    return (min if data.direction == "minimize" else max)(done, key=lambda t: t.value)


def _end(trial: Trial) -> float | None:
    marks = trial.marks
    return marks.get("home") or marks.get("stopped") or marks.get("task_ended")


def _spearman(xs: list, ys: list) -> float | None:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def rungs(data: SweepData) -> list[dict]:
    """For a pruned sweep: at each level (min_resource * reduction_factor**k below max_resource), how the values
    there of the trials that ran to the end rank against their final values (Spearman's rho; DeepCAVE's budget
    correlation), and how many trials stopped by that level."""
    lo, hi = _number(data.pruner.get("min_resource")), _number(data.pruner.get("max_resource"))
    factor = _number(data.pruner.get("reduction_factor")) or 3
    if not data.pruner or lo is None or hi is None or lo <= 0 or factor <= 1 or not data.metric:
        return []
    levels, level = [], lo
    while level < hi and len(levels) < 30:
        levels.append(level)
        level *= factor
    out = []
    for level in levels:
        xs, ys = [], []
        for trial in data.trials:
            if trial.status != "completed" or trial.value is None:
                continue
            at = next((_number(r.get(data.metric)) for r in trial.curve
                       if (_number(r.get("step")) or -math.inf) >= level and _number(r.get(data.metric)) is not None),
                      None)
            if at is not None:
                xs.append(at)
                ys.append(trial.value)
        stopped = sum(1 for t in data.trials if t.status == "pruned" and t.curve
                      and (_number(t.curve[-1].get("step")) or 0) <= level * factor)
        rho = _spearman(xs, ys)
        out.append({"level": level, "n": len(xs), "rho": None if rho is None else round(rho, 4), "stopped": stopped})
    return out


def importance(data: SweepData) -> tuple[list, str]:
    """Each parameter's permutation importance for a random forest fitted to the completed trials (scikit-learn),
    once MIN_IMPORTANCE trials ended; and a note where there is none."""
    done = [t for t in data.trials if t.status == "completed" and t.value is not None]
    if len(done) < MIN_IMPORTANCE or not data.params:
        return [], f"shown once {MIN_IMPORTANCE} trials completed ({len(done)} so far)"
    try:
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.inspection import permutation_importance
    except ImportError:
        return [], "needs scikit-learn (pip install scikit-learn)"
    columns = []
    for p in data.params:
        values = [t.params.get(p.name) for t in done]
        if p.kind == "choice":
            codes = {v: i for i, v in enumerate(sorted({str(v) for v in values}))}
            columns.append([float(codes[str(v)]) for v in values])
        else:
            numbers = [_number(v) if _number(v) is not None else 0.0 for v in values]
            columns.append([math.log10(n) if p.log and n > 0 else n for n in numbers])
    rows = [list(r) for r in zip(*columns)]
    y = [t.value for t in done]
    forest = RandomForestRegressor(n_estimators=48, min_samples_leaf=2, random_state=0).fit(rows, y)
    found = permutation_importance(forest, rows, y, n_repeats=3, random_state=0)
    total = sum(max(0.0, m) for m in found.importances_mean) or 1.0
    ranked = sorted(((p.name, max(0.0, m) / total) for p, m in zip(data.params, found.importances_mean)),
                    key=lambda pair: -pair[1])
    return [{"name": name, "value": round(v, 4)} for name, v in ranked], (
        f"permutation importance of a random forest (scikit-learn) over the {len(done)} completed trials")


def lanes(trials) -> dict[int, int]:
    """Each trial's row on the timeline: the first row free when it was submitted (rows are the workers kept busy)."""
    free_at: list[float] = []
    rows = {}
    for trial in sorted(trials, key=lambda t: t.marks.get("submitted") or t.marks.get("started") or math.inf):
        start = trial.marks.get("submitted") or trial.marks.get("started")
        if start is None:
            continue
        end = _end(trial) or time.time()
        row = next((i for i, at in enumerate(free_at) if at <= start), len(free_at))
        if row == len(free_at):
            free_at.append(end)
        else:
            free_at[row] = end
        rows[trial.number] = row
    return rows


# --------------------------------------------------------------------------------------------------- cost
def price_table(path: str | None = None) -> dict:
    import yaml

    source = Path(path).expanduser() if path else Path(__file__).with_name("prices.yaml")
    with open(source) as file:
        table = yaml.safe_load(file)
    table["file"] = str(source)
    return table


def dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 0.01 else "under $0.01"


@dataclass
class Cost:
    on_demand: float
    spot: float
    worker_s: float
    resources: str
    date: str
    region: str
    source: str
    local: bool

    def line(self) -> str:
        where = "had it run on Batch, " if self.local else ""
        return (f"estimated cost: {where}about {dollars(self.on_demand)} at On-Demand prices of {self.date} "
                f"({self.region}), {dollars(self.spot)} on Spot, for {self.worker_s / 3600:,.2f} job-hours of "
                f"{self.resources}")


def worker_seconds(data: SweepData) -> float:
    """The time the jobs ran (started to stopped; still running: to now), in all."""
    return sum(_ran(trial) for trial in data.trials)


def _ran(trial: Trial) -> float:
    start, end = trial.marks.get("started"), trial.marks.get("stopped") or trial.marks.get("home")
    return max(0.0, (end or time.time()) - start) if start is not None else 0.0


def cost(data: SweepData, table: dict | None = None) -> Cost | None:
    """The sweep's cost at the table's prices: each job's vCPUs, memory and GPUs (what its config asked, else the
    launcher's, else the table's job definition) times the time it ran."""
    try:
        table = table or price_table((data.config.get("launcher") or {}).get("price_table"))
    except (OSError, ValueError) as error:
        log.warning(f"hydra-awsbatch: no price table ({error}); no cost estimate")
        return None
    launcher, default = data.config.get("launcher") or {}, table.get("job_definition") or {}
    spent: dict[str, list[float]] = {}  # shape -> [seconds, on-demand, spot]
    for trial in data.trials or [Trial(0, None, {}, "waiting")]:
        def asked(key: str, fallback: float, resources=trial.resources) -> float:
            return next((v for v in map(_number, (resources.get(key), launcher.get(key), default.get(key)))
                         if v is not None), fallback)

        vcpus, memory, gpus, nodes = (asked("vcpus", 1.0), asked("memory_mib", 2048) / 1024, asked("gpus", 0.0),
                                      asked("nodes", 1.0))
        kind = table["gpu_family"] if gpus else table["cpu_family"]
        shape = f"{sig(vcpus)} vCPU, {sig(memory)} GiB" + (f", {sig(gpus)} GPU" if gpus else "") + (
            f" x {sig(nodes)} nodes" if nodes > 1 else "") + f" ({kind})"
        seconds, rates = _ran(trial) * nodes, table["families"][kind]
        hourly = {k: vcpus * rates[k]["vcpu_hour"] + memory * rates[k]["gib_hour"] + gpus * rates[k]["gpu_hour"]
                  for k in ("on_demand", "spot")}
        total = spent.setdefault(shape, [0.0, 0.0, 0.0])
        total[0] += seconds
        total[1] += hourly["on_demand"] * seconds / 3600
        total[2] += hourly["spot"] * seconds / 3600
    shapes = (" and ".join(f"{shape} ({t[0] / 3600:,.2f} h)" for shape, t in spent.items()) if len(spent) > 1
              else next(iter(spent)))
    return Cost(sum(t[1] for t in spent.values()), sum(t[2] for t in spent.values()),
                sum(t[0] for t in spent.values()), shapes, str(table.get("date", "?")),
                str(table.get("region", "?")), str(table.get("source", "")).strip(), data.launcher != "aws_batch")


# --------------------------------------------------------------------------------------------------- page
def _thin(curve: list, metric: str) -> tuple[list, list]:
    points = [(_number(r.get("step")), _number(r.get(metric))) for r in curve]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    if len(points) > CURVE_POINTS:
        stride = len(points) / CURVE_POINTS
        points = [points[int(i * stride)] for i in range(CURVE_POINTS - 1)] + [points[-1]]
    return [float(f"{x:.6g}") for x, _ in points], [float(f"{y:.6g}") for _, y in points]


def _compact(value):
    number = _number(value)
    return float(f"{number:.6g}") if number is not None and not isinstance(value, int) else value


def page_data(data: SweepData) -> dict:
    """The JSON the page's script draws from."""
    t0 = min((t.marks.get("submitted") or t.marks.get("started") or math.inf for t in data.trials), default=math.inf)
    t0 = t0 if math.isfinite(t0) else time.time()
    rows = lanes(data.trials)
    best = _best(data)
    trials = []
    for t in data.trials:
        rel = {k: round(v - t0, 3) for k, v in t.marks.items() if _number(v) is not None}
        if t.status in ("running", "waiting"):
            rel["now"] = round(time.time() - t0, 3)
        xs, ys = _thin(t.curve, data.metric) if data.metric else ([], [])
        trials.append({"n": t.number, "job": t.job, "s": t.status, "v": _compact(t.value),
                       "p": [_compact(t.params.get(p.name)) for p in data.params], "m": rel,
                       "row": rows.get(t.number), "cx": xs, "cy": ys, "why": t.stop_reason[:200],
                       "best": best is not None and t is best})
    levels = rungs(data)
    ranked, note = importance(data)
    return {"objective": data.objective, "direction": data.direction, "metric": data.metric,
            "params": [{"name": p.name, "kind": p.kind, "log": p.log} for p in data.params],
            "trials": trials, "rungs": levels, "importance": ranked, "importance_note": note,
            "colours": COLOURS, "t0": t0}


def _header(data: SweepData, spent: Cost | None) -> str:
    e = html.escape
    counts: dict[str, int] = {}
    for t in data.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    best = _best(data)
    t0 = min((t.marks.get("submitted") or math.inf for t in data.trials), default=math.inf)
    ends = [_end(t) for t in data.trials if _end(t)]
    wall = ((time.time() if data.running else max(ends, default=t0)) - t0) if math.isfinite(t0) else 0.0
    busy = worker_seconds(data)
    state = "running (this page is rewritten every 30 s while it runs: reload)" if data.running else "ended"
    rows = [("sweep", f"<code>{e(data.sweep_id)}</code>, {e(state)}, written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}"),
            ("run it again", f"<pre class=cmd>{e(data.command)}</pre>"),
            ("launcher / sweeper", f"{e(data.launcher)} / {e(data.sweeper)}" + (
                f", pruner {e(str(data.pruner.get('pruner')))}" if data.pruner else "")),
            ("trials", ", ".join(f"<span class='dot' style='background:{COLOURS.get(s, '#888')}'></span>{n} {e(s)}"
                                 for s, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none yet")]
    if best is not None:
        cmd = " ".join(["python", shlex.quote(data.settings.get("script") or "app.py"),
                        *map(shlex.quote, best.overrides)])
        rows.append((f"best {e(data.objective)}", f"<b>{e(sig(best.value))}</b> ({e(data.direction)}), trial "
                     f"{best.number} (job #{best.job})<pre class=cmd>{e(cmd)}</pre>"))
    from hydra_plugins.hydra_awsbatch_launcher import _resources

    sets = _resources.sets([_resources.Resources.of(t.resources) for t in data.trials],
                           [t.job if t.job is not None else t.number for t in data.trials])
    if any(asked.values for asked in sets):  # what each resource set's jobs asked
        rows.append(("resources", "<br>".join(f"{len(nums)} trial(s), jobs #{e(_resources.numbers(nums))}: "
                                              f"<code>{e(asked.describe())}</code>" for asked, nums in sets.items())))
    rows.append(("time", f"wall {wall / 60:,.1f} min, {busy / 3600:,.2f} worker-hours ({busy:,.0f} worker-s), "
                 f"mean workers busy {busy / wall if wall > 0 else 0:.2f}"))
    if spent:
        rows.append(("estimated cost", f"{e(spent.line())}<br><small>An estimate, not a bill: {e(spent.source)} "
                     f"Table: <code>{e(spent.region)}</code>, {e(spent.date)}.</small>"))
    return "<table class=head>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _failures(data: SweepData) -> str:
    e = html.escape
    failed = [t for t in data.trials if t.status == "failed"]
    if not failed:
        return "<p>No trial failed.</p>"
    rows = "".join(f"<tr><td>{t.number}</td><td>{t.job}</td><td><code>{e(' '.join(t.overrides))}</code></td>"
                   f"<td>{e((t.error.strip().splitlines() or [''])[-1][:300])}</td>"
                   f"<td><code>{e(t.log_path)}</code></td></tr>"
                   for t in failed[:500])
    more = f"<p>... and {len(failed) - 500} more.</p>" if len(failed) > 500 else ""
    return ("<table class=grid><tr><th>trial</th><th>job</th><th>overrides</th><th>last line of its error</th>"
            f"<th>log</th></tr>{rows}</table>{more}")


SECTIONS = [("best", "Best so far"), ("params", "Objective against each parameter"),
            ("parallel", "Parallel coordinates"), ("curves", "Learning curves"), ("timeline", "Timeline"),
            ("rungs", "Was stopping safe? Rank correlation at each rung"), ("importance", "Parameter importance")]


def render(data: SweepData, spent: Cost | None = None) -> str:
    """The page: the header and tables in HTML, the plots drawn by Plotly (inlined) from the data."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ImportError("the sweep page draws with Plotly, which is not installed: pip install plotly") from None

    blob = json.dumps(page_data(data), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    sections = "".join(f"<section id='{key}'><h2>{title}</h2><div class=views id='v-{key}'></div></section>"
                       for key, title in SECTIONS)
    refresh = "<meta http-equiv='refresh' content='30'>" if data.running else ""
    title = html.escape(f"sweep {data.sweep_id}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>{refresh}<title>{title}</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body><h1>{title}</h1>"
            f"{_header(data, spent)}{sections}<section id='failed'><h2>Failed trials</h2>{_failures(data)}</section>"
            f"<script type='application/json' id='data'>{blob}</script><script>{SCRIPT}</script></body></html>")


def write(where: str, out: str | Path | None = None, price_file: str | None = None,
          running: bool | None = None) -> tuple[Path, SweepData]:
    """Write the page of the sweep at `where` to `out` (default: SWEEP_DIR/report.html) atomically; the path, and
    what it showed."""
    data = read(where, running)
    table = price_table(price_file) if price_file else None
    spent = cost(data, table)
    text = render(data, spent)
    target = Path(out) if out else Path(data.sweep_dir) / PAGE
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    scratch.write_text(text)
    os.replace(scratch, target)
    return target, data


def _import_now() -> None:
    """What a page imports, imported early: at the program's end a first import of scikit-learn fails (it
    registers exit hooks of its own)."""
    for name in ("plotly.offline", "sklearn.ensemble", "sklearn.inspection"):
        try:
            importlib.import_module(name)
        except ImportError:  # said where it is needed
            pass


class LivePage:
    """The page of a sweep the engine runs: rewritten at most every `every_s` from a thread of its own (the watcher
    only looks at the clock), once when the sweep's jobs are all in, and at the program's end where the sweep dir
    changed since (the sweeper writes its last state after its last job)."""

    def __init__(self, sweep_dir: str, every_s: float = EVERY_S):
        self.sweep_dir, self.every_s = sweep_dir, every_s
        self.last = -math.inf
        self.thread: threading.Thread | None = None
        self.failed = False
        self.seen: tuple = ()  # the sweep dir's files as the last page saw them
        self.ran = False  # whether the last page said the sweep runs
        self.said = False  # whether the end's line (where the page is, what it cost) was logged
        self._at_exit = False

    def _stamp(self) -> tuple:
        stamps = []
        for name in ("manifest.json", STATE):
            try:
                stamps.append(os.stat(Path(self.sweep_dir) / name).st_mtime_ns)
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _write(self, running: bool | None = True) -> Cost | None:
        stamp = self._stamp()
        try:
            _, data = write(self.sweep_dir, running=running)
            self.seen, self.ran = stamp, data.running
            return cost(data)
        except Exception as error:  # the page never stops a sweep
            if not self.failed:
                self.failed = True
                log.warning(f"Writing {PAGE} failed ({type(error).__name__}: {error}); the sweep goes on")
            return None

    def tick(self) -> None:
        """Called every watch round: start a write in the background when one is due."""
        now = time.monotonic()
        if now - self.last < self.every_s or (self.thread is not None and self.thread.is_alive()):
            return
        self.last = now
        self.register()
        thread = threading.Thread(target=self._warm_then_write, name="report-page", daemon=True)
        thread.start()
        self.thread = thread  # published started: final() and at_exit() may join it from another thread

    def _warm_then_write(self) -> None:
        _import_now()
        self._write()

    def final(self) -> str:
        """Write it now (the jobs are in); the line that says where it is and what the sweep cost."""
        if self.thread is not None:
            self.thread.join()
        self.last = time.monotonic()
        self.register()
        spent = self._write(running=None if self._unfinished() else False)
        where, self.said = Path(self.sweep_dir) / PAGE, True
        return f"The sweep's page: {where}" + (f"; {spent.line()}" if spent else "")

    def register(self) -> None:
        """The last page written at exit (once). What a write imports that cannot be imported once the interpreter
        shuts down (joblib, under scikit-learn, imports concurrent.futures.process) is imported now."""
        if not self._at_exit:
            import concurrent.futures.process  # noqa: F401

            self._at_exit = True
            atexit.register(self.at_exit)

    def at_exit(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if Path(self.sweep_dir).is_dir() and (self._stamp() != self.seen or self.ran):
            spent = self._write(running=False)
            if not self.said and _can_log():  # a sweeper that never waited on a whole batch (thompson): said once
                log.info(f"The sweep's page: {Path(self.sweep_dir) / PAGE}" + (f"; {spent.line()}" if spent else ""))

    def _unfinished(self) -> bool:
        from hydra_plugins.hydra_awsbatch_launcher import _manifest

        try:
            return any(j.state not in _manifest.FINAL for j in _manifest.read(
                str(Path(self.sweep_dir) / _manifest.MANIFEST)).jobs)
        except (OSError, ValueError):
            return False


def _can_log() -> bool:
    """Whether the package's log still has somewhere to go at exit (a test runner may have closed its streams)."""
    logger = log
    while logger is not None:
        for handler in logger.handlers:
            if getattr(getattr(handler, "stream", None), "closed", False):
                return False
        logger = logger.parent if logger.propagate else None
    return True


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table.head{border-collapse:collapse}table.head th{text-align:left;vertical-align:top;padding:.3em 1em .3em 0;
white-space:nowrap;color:#555}table.head td{padding:.3em 0}
pre.cmd{background:#f4f4f4;padding:.4em .6em;margin:.2em 0;white-space:pre-wrap;word-break:break-all;
user-select:all}
.dot{display:inline-block;width:.7em;height:.7em;border-radius:50%;margin:0 .3em 0 .6em}
.views{display:flex;flex-wrap:wrap;gap:.5em}.plot{flex:0 0 calc(50% - .25em);min-height:360px}
.plot.wide{flex:0 0 100%}.note{color:#666}
table.grid{border-collapse:collapse;font-size:13px}table.grid td,table.grid th{border:1px solid #ddd;
padding:.25em .5em;text-align:left;vertical-align:top}
"""

SCRIPT = r"""
(function(){
const D = JSON.parse(document.getElementById('data').textContent);
const C = D.colours, T = D.trials, P = D.params, MIN = D.direction === 'minimize';
const CFG = {displaylogo: false, responsive: true};
const fmt = v => (typeof v === 'number') ?
  (Number.isInteger(v) ? String(v) : Number(v.toPrecision(6)).toString()) : String(v);
const label = t => 'trial ' + t.n + (t.job !== null && t.job !== undefined ? ' (job #' + t.job + ')' : '') +
  ', ' + t.s +
  (t.v !== null && t.v !== undefined ? ', ' + D.objective + ' ' + fmt(t.v) : '') + '<br>' +
  P.map((p, i) => p.name + '=' + fmt(t.p[i])).join('<br>');
const WIDE = ['parallel', 'curves', 'timeline', 'rungs', 'importance'];
function view(section, id) {
  const div = document.createElement('div'); div.className = WIDE.includes(section) ? 'plot wide' : 'plot';
  if (id) div.id = id;
  document.getElementById('v-' + section).appendChild(div); return div;
}
function note(section, text) {
  const p = document.createElement('p'); p.className = 'note'; p.textContent = text;
  document.getElementById('v-' + section).appendChild(p);
}
function plot(section, traces, layout, id) {
  const div = view(section, id);
  if (layout.title) layout.title = Object.assign({x: 0.01, xanchor: 'left'}, layout.title);  // clear of the tools
  Plotly.newPlot(div, traces, Object.assign({margin: {t: 40, r: 20, b: 50, l: 60}, hovermode: 'closest',
    legend: {orientation: 'h', y: -0.2}}, layout), CFG);
  return div;
}
const done = T.filter(t => t.s === 'completed' && t.v !== null);
const yType = vals => { const pos = vals.filter(v => v > 0); return pos.length === vals.length && pos.length > 1 &&
  Math.max(...pos) / Math.min(...pos) >= 100 ? 'log' : 'linear'; };
const vType = yType(done.map(t => t.v));
// best so far, against wall time and against trials
(function(){
  if (!done.length) { note('best', 'No trial has completed yet.'); return; }
  const end = t => (t.m.home !== undefined ? t.m.home : (t.m.stopped !== undefined ? t.m.stopped : t.m.task_ended));
  const order = done.slice().sort((a, b) => (end(a) || 0) - (end(b) || 0));
  let b = null; const best = order.map(t => (b = (b === null || (MIN ? t.v < b : t.v > b)) ? t.v : b));
  const mins = order.map(t => (end(t) || 0) / 60), idx = order.map((t, i) => i + 1);
  const pts = (x) => ({x: x, y: order.map(t => t.v), mode: 'markers', name: 'each trial', text: order.map(label),
    hoverinfo: 'text', marker: {color: C.completed, size: 6, opacity: 0.6}});
  const line = (x) => ({x: x, y: best, mode: 'lines', line: {shape: 'hv', width: 2.5, color: '#264653'},
      name: 'best so far'});
  plot('best', [pts(mins), line(mins)], {title: {text: 'best ' + D.objective + ' against wall time'},
      xaxis: {title: {text: 'minutes since the first job'}},
    yaxis: {title: {text: D.objective}, type: vType}});
  plot('best', [pts(idx), line(idx)], {title: {text: 'best ' + D.objective + ' against trials'},
      xaxis: {title: {text: 'trials completed'}},
    yaxis: {title: {text: D.objective}, type: vType}});
})();
// objective against each parameter
(function(){
  if (!done.length || !P.length) { note('params',
      done.length ? 'No parameter varies between trials.' : 'No trial has completed yet.'); return; }
  P.forEach((p, i) => {
    const xs = done.map(t => p.kind === 'choice' ? String(t.p[i]) : t.p[i]);
    plot('params', [{x: xs, y: done.map(t => t.v), mode: 'markers', text: done.map(label), hoverinfo: 'text',
      marker: {color: done.map(t => t.n), colorscale: 'Viridis', size: 7, colorbar: {title: {text: 'trial'},
          thickness: 10}}}],
      {title: {text: D.objective + ' against ' + p.name}, showlegend: false,
       xaxis: {title: {text: p.name + (p.log ? ' (log)' : '')},
           type: p.kind === 'choice' ? 'category' : (p.log ? 'log' : 'linear')},
       yaxis: {title: {text: D.objective}, type: vType}});
  });
})();
// parallel coordinates
(function(){
  if (done.length < 2 || !P.length) { note('parallel', 'Shown once two trials have completed.'); return; }
  const dims = P.map((p, i) => {
    if (p.kind === 'choice') {
      const cats = Array.from(new Set(done.map(t => String(t.p[i])))).sort();
      return {label: p.name, values: done.map(t => cats.indexOf(String(t.p[i]))), tickvals: cats.map((c, k) => k),
          ticktext: cats};
    }
    const vals = done.map(t => (typeof t.p[i] === 'number') ? t.p[i] : NaN);
    return p.log ? {label: 'log10 ' + p.name, values: vals.map(v => Math.log10(v))} : {label: p.name, values: vals};
  });
  dims.push({label: D.objective, values: done.map(t => t.v)});
  plot('parallel', [{type: 'parcoords', dimensions: dims, line: {color: done.map(t => t.v), colorscale: 'Viridis',
    reversescale: MIN, showscale: true}}], {title: {text: 'each completed trial a line, coloured by ' + D.objective},
    margin: {t: 80, r: 40, b: 30, l: 60}});
})();
// learning curves
(function(){
  const withCurve = T.filter(t => t.cx.length);
  if (!withCurve.length) { note('curves', 'No trial has reported (report(step, metric=value)) yet.'); return; }
  const groups = [['completed', C.completed, 0.35], ['pruned', C.pruned, 0.5], ['running', C.running, 0.8],
                  ['failed', C.failed, 0.6], ['stopped', C.stopped, 0.5], ['waiting', C.waiting, 0.5]];
  const traces = [];
  const line = (list, name, colour, opacity, width) => {
    const x = [], y = [], text = [];
    list.forEach(t => { const l = label(t); t.cx.forEach((v, k) => { x.push(v); y.push(t.cy[k]); text.push(l); });
      x.push(null); y.push(null); text.push(''); });
    return {x: x, y: y, text: text, hoverinfo: 'text', mode: 'lines', name: name, connectgaps: false,
            line: {color: colour, width: width}, opacity: opacity};
  };
  groups.forEach(([s, colour, op]) => { const list = withCurve.filter(t => t.s === s && !t.best);
    if (list.length) traces.push(line(list, s + ' (' + list.length + ')', colour, op, 1.2)); });
  const best = withCurve.filter(t => t.best);
  if (best.length) traces.push(line(best, 'best: trial ' + best[0].n, '#264653', 1, 3.5));
  const stopped = withCurve.filter(t => t.s === 'pruned');
  if (stopped.length) traces.push({x: stopped.map(t => t.cx[t.cx.length - 1]),
      y: stopped.map(t => t.cy[t.cy.length - 1]),
    mode: 'markers', name: 'stopped here', marker: {symbol: 'x', size: 8, color: C.pruned},
    text: stopped.map(t => label(t) + (t.why ? '<br>' + t.why : '')), hoverinfo: 'text'});
  const ys = withCurve.flatMap(t => t.cy), type = yType(ys);
  plot('curves', traces, {title: {text: D.metric + ' against step (hover a line for its trial)'}, height: 520,
    xaxis: {title: {text: 'step'}}, yaxis: {title: {text: D.metric}, type: type},
    updatemenus: [{type: 'buttons', direction: 'right', x: 0, y: 1.12, xanchor: 'left', showactive: true,
      active: type === 'log' ? 0 : 1,
      buttons: [{label: 'log y', method: 'relayout', args: [{'yaxis.type': 'log'}]},
                {label: 'linear y', method: 'relayout', args: [{'yaxis.type': 'linear'}]}]}]}, 'curves-plot');
})();
// timeline: a row per worker kept busy, each trial waiting, starting, its task, ending
(function(){
  const on = T.filter(t => t.row !== null && t.row !== undefined);
  if (!on.length) { note('timeline', 'No job has been submitted yet.'); return; }
  const phases = [['waiting', 'submitted', 'started', '#dee2e6'], ['starting', 'started', 'task_started', '#a8dadc'],
                  ['task', 'task_started', 'task_ended', null], ['ending', 'task_ended', 'home', '#6c757d']];
  const traces = phases.map(([name, a, b, colour]) => {
    const list = on.filter(t => t.m[a] !== undefined &&
      (t.m[b] !== undefined || (name !== 'ending' && t.m.now !== undefined)));
    const end = t => t.m[b] !== undefined ? t.m[b] : t.m.now;
    return {type: 'bar', orientation: 'h', name: name === 'task' ? 'task (coloured by outcome)' : name,
      y: list.map(t => t.row), base: list.map(t => t.m[a] / 60), x: list.map(t => Math.max(0, end(t) - t.m[a]) / 60),
      marker: {color: colour || list.map(t => C[t.s] || '#888')}, hoverinfo: 'text',
      text: list.map(t => label(t) + '<br>' + name + ' ' + fmt(Math.max(0, end(t) - t.m[a])) + ' s'),
          textposition: 'none'};
  });
  // jobs whose task marks are not known yet (running, or a result without them): started to their end
  const plain = on.filter(t => t.m.started !== undefined && t.m.task_started === undefined);
  traces.push({type: 'bar', orientation: 'h', name: 'running (no task marks yet)', y: plain.map(t => t.row),
    base: plain.map(t => t.m.started / 60),
    x: plain.map(t => Math.max(0,
        (t.m.stopped !== undefined ? t.m.stopped : (t.m.now !== undefined ? t.m.now : t.m.started)) -
        t.m.started) / 60),
    marker: {color: plain.map(t => C[t.s] || '#888'), opacity: 0.7}, hoverinfo: 'text', text: plain.map(label),
        textposition: 'none'});
  const rows = Math.max(...on.map(t => t.row)) + 1;
  plot('timeline', traces, {title: {text: 'jobs over time, a row per worker kept busy'}, barmode: 'overlay',
      bargap: 0.15,
    height: Math.min(1600, 160 + rows * 22), xaxis: {title: {text: 'minutes since the first job'}},
    yaxis: {title: {text: 'worker'}, autorange: 'reversed', dtick: rows > 40 ? undefined : 1}});
})();
// rank correlation at each rung
(function(){
  if (!D.rungs.length) { note('rungs', 'Shown for sweeps with a pruner (hydra.sweeper.pruner).'); return; }
  const r = D.rungs.filter(x => x.rho !== null);
  if (!r.length) { note('rungs', 'Shown once three trials have run to the end.'); return; }
  plot('rungs', [{x: r.map(x => 'step ' + fmt(x.level)), y: r.map(x => x.rho), type: 'bar',
      marker: {color: '#457b9d'},
    text: r.map(x => 'rho ' + x.rho.toFixed(2) + ' over ' + x.n + ' trials that ran to the end; ' + x.stopped +
      ' stopped by here'),
    hoverinfo: 'text', name: 'Spearman rho'}],
    {title: {text: 'Spearman rank correlation of each rung\'s values with the final values ' +
      '(1: stopping there was safe)'},
     yaxis: {range: [-1, 1], title: {text: 'rho'}}, showlegend: false});
})();
// parameter importance
(function(){
  if (!D.importance.length) { note('importance', 'Parameter importance: ' + D.importance_note + '.'); return; }
  const r = D.importance.slice().reverse();
  plot('importance', [{type: 'bar', orientation: 'h', y: r.map(x => x.name), x: r.map(x => x.value),
      marker: {color: '#2a9d8f'}}],
    {title: {text: 'share of importance'}, xaxis: {range: [0, 1]}, showlegend: false, height: 160 + r.length * 30,
     margin: {l: 140, t: 40, r: 20, b: 40}});
  note('importance', D.importance_note + '.');
})();
})();
"""
