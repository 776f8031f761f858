"""The sweep engine: watch, collect and JobReturns against executors whose every move the test scripts, then
non-blocking launches on aws_batch_local (a new job starts as soon as one ends)."""

from __future__ import annotations

import concurrent.futures
import pickle
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.hydra_awsbatch_launcher import _errors, _manifest, _storage, _sweep, _wire
from hydra_plugins.hydra_awsbatch_launcher._compose import ComposedBatch, Recipe
from hydra_plugins.hydra_awsbatch_launcher._executor import JobInfo
from hydra_plugins.hydra_awsbatch_launcher._manifest import FINAL, BatchState
from hydra_plugins.hydra_awsbatch_launcher._stage import StagedBatch
from tests.conftest import SLEEP_TASK, keep_busy, refill_gaps


class ScriptedExecutor:
    """An executor whose jobs move one state per poll along a script; a job that succeeds has its result
    written first, as the worker writes it, unless the script says it leaves none."""

    poll_interval_s = 0.01

    def __init__(self, staging: _manifest.Staging, scripts: dict[int, list[str]], no_result=(), corrupt=()):
        self.staging, self.scripts = staging, scripts
        self.no_result, self.corrupt = set(no_result), set(corrupt)
        self.jobs: dict[int, JobInfo] = {}
        self.polls = 0
        self.terminated: list[tuple[str, bool]] = []

    def submit(self, payload_uri: str, first: int, size: int) -> list[_manifest.Array]:
        for num in range(first, first + size):
            self.jobs[num] = JobInfo(num, state=BatchState.SUBMITTED, job_id=f"fake-{num}")
        return [_manifest.Array(f"fake-{first}", first, size)]

    def poll(self) -> list[JobInfo]:
        self.polls += 1
        for num, info in self.jobs.items():
            script = self.scripts[num]
            if info.state in FINAL or not script:
                continue
            info.state = script.pop(0)
            if info.state == BatchState.RUNNING:
                info.started = time.time()
            if info.state in FINAL:
                info.stopped, info.exit_code = time.time(), 0 if info.state == BatchState.SUCCEEDED else 137
                self.write_result(num)
        return list(self.jobs.values())

    def write_result(self, num: int) -> None:
        if num in self.no_result:
            return
        if num in self.corrupt:
            _storage.write_bytes(self.staging.result(num), b"\x80\x04not a pickle")
            return
        ret = JobReturn(status=JobStatus.COMPLETED, _return_value=num * 10, overrides=[f"x={num}"],
                        hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": "remote"}}}))
        pickled, _ = _wire.pickle_job_return(ret)
        _storage.write_bytes(self.staging.result(num), _wire.dump_result(_wire.Outcome.SUCCEEDED, pickled, num=num,
                                                                          exit_code=0))

    def terminate(self, reason: str, force: bool = False, nums=None) -> int:
        self.terminated.append((reason, force))
        unfinished = [s for s in self.jobs.values() if s.state not in FINAL and (nums is None or s.num in nums)]
        for info in unfinished:
            info.state, info.reason = BatchState.FAILED, reason
        return len(unfinished)

    def stuck(self) -> dict[str, int]:
        return {}

    def failure_details(self, nums: list[int], log_group: str) -> dict[int, str]:
        return {num: f"exit code {self.jobs[num].exit_code}; the log's last line" for num in nums}

    def forced_stop_note(self, sweep: str) -> str:
        return "forced"

    def adopt(self, arrays) -> bool:
        return False


BASE = {"x": 0, "hydra": {"job": {"name": "app", "config": {"override_dirname": {
    "kv_sep": "=", "item_sep": ",", "exclude_keys": []}}}, "overrides": {"task": []}, "sweep": {"dir": "sweep"}}}


def staged(first: int, size: int = 1) -> StagedBatch:
    """A batch as the stage step returns it: one base config (as much of one as the engine reads) and a recipe
    per job."""
    recipes = [Recipe(0, num, (f"x={num}",), (f"x={num}",)) for num in range(first, first + size)]
    jobs = ComposedBatch(first, "sweep", [pickle.dumps(OmegaConf.create(BASE))], recipes,
                         [str(num) for num in range(first, first + size)])
    return StagedBatch(f"payload-{first}", "code", jobs)


@pytest.fixture
def make_sweep(tmp_path):
    def make(scripts: dict[int, list[str]], **kwargs) -> tuple[_sweep.Sweep, ScriptedExecutor]:
        manifest = _manifest.Manifest("s1", str(tmp_path / "staging"), str(tmp_path / "sweep"), "Fake",
                                      settings={"log_group": "g"})
        executor = ScriptedExecutor(manifest.staging, scripts, **kwargs)
        return _sweep.Sweep(manifest, executor, live=False), executor

    return make


pytestmark = pytest.mark.unit
RUN = [BatchState.RUNNABLE, BatchState.RUNNING]


def test_each_future_resolves_when_its_job_ends(make_sweep):
    sweep, executor = make_sweep({0: [*RUN, *[BatchState.RUNNING] * 30, BatchState.SUCCEEDED],
                                  1: [*RUN, BatchState.SUCCEEDED]})
    futures = sweep.submit(staged(0, 2))
    done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {futures[1]} and not futures[0].done()  # the short job first, the long one still running
    assert futures[1].result().return_value == 10
    assert [r.return_value for r in sweep.wait(futures)] == [0, 10]
    jobs = sweep.manifest.jobs
    assert [(j.state, j.exit_code, j.result, j.job_id) for j in jobs] == [
        ("SUCCEEDED", 0, "0", "fake-0"), ("SUCCEEDED", 0, "10", "fake-1")]
    assert all(j.submitted <= j.started <= j.stopped for j in jobs)
    assert sweep.manifest.batches[0].batch_job_ids == ["fake-0"]
    saved = _manifest.Manifest.from_json((Path(sweep.manifest.sweep_dir) / "manifest.json").read_text())
    assert [j.state for j in saved.jobs] == ["SUCCEEDED", "SUCCEEDED"]


def test_a_job_without_a_result_comes_back_failed_with_the_executors_details(make_sweep):
    sweep, _ = make_sweep({0: [*RUN, BatchState.FAILED], 1: [*RUN, BatchState.SUCCEEDED]}, no_result=[0])
    first, second = sweep.wait(sweep.submit(staged(0, 2)))
    assert first.status == JobStatus.FAILED and second.status == JobStatus.COMPLETED
    assert isinstance(first._return_value, _errors.RemoteJobError)
    assert "job #0 ended without a result. exit code 137; the log's last line" in str(first._return_value)
    job = sweep.manifest.job(0)
    assert (job.state, job.exit_code) == ("FAILED", 137)
    assert job.result.startswith("RemoteJobError: job #0 ended without a result")


def test_a_corrupt_result_fails_its_job_alone(make_sweep):
    sweep, _ = make_sweep({0: [*RUN, BatchState.SUCCEEDED], 1: [*RUN, BatchState.SUCCEEDED]}, corrupt=[0])
    first, second = sweep.wait(sweep.submit(staged(0, 2)))
    assert first.status == JobStatus.FAILED and "result object is unreadable" in str(first._return_value)
    assert second.return_value == 10
    assert [j.state for j in sweep.manifest.jobs] == ["FAILED", "SUCCEEDED"]  # it ran; what it made did not return


def test_stop_terminates_and_fails_what_is_pending(make_sweep):
    sweep, executor = make_sweep({0: [*RUN] + [BatchState.RUNNING] * 10_000, 1: [*RUN, BatchState.SUCCEEDED]})
    futures = sweep.submit(staged(0, 2))
    futures[1].result(timeout=10)
    assert sweep.stop(_sweep.INTERRUPTED_REASON) == 1
    assert executor.terminated == [(_sweep.INTERRUPTED_REASON, False)]
    ret = futures[0].result(timeout=10)
    assert ret.status == JobStatus.FAILED
    assert (sweep.manifest.job(0).state, sweep.manifest.job(0).reason) == ("FAILED", _sweep.INTERRUPTED_REASON)


def test_stopping_thousands_of_jobs_writes_the_manifest_once(make_sweep, monkeypatch):
    """Ctrl-C on a sweep of 5,000 jobs, most never started: one save of the manifest for all of them, not one each
    (a save of a 10,000-job manifest takes tens of milliseconds), and nothing read for jobs that never ran."""
    jobs = 5000
    sweep, executor = make_sweep({n: [*RUN, *[BatchState.RUNNING] * 10_000] if n < 2 else [BatchState.RUNNABLE] * 10_000
                                  for n in range(jobs)})
    futures = sweep.submit(staged(0, jobs))
    saves, reads = [], []
    monkeypatch.setattr(_manifest.Manifest, "save", lambda self: saves.append(1))
    real_read = _storage.read_bytes
    monkeypatch.setattr(_storage, "read_bytes", lambda uri: reads.append(uri) or real_read(uri))
    with sweep.lock:  # between two watch rounds
        assert sweep.stop(_sweep.INTERRUPTED_REASON) == jobs
    assert all(f.result(timeout=10).status == JobStatus.FAILED for f in futures)
    # a watch round's refresh, stop's own and the collection's: a few saves, not one a job; results read: the two
    # that ran (the sweep page's writer may read the manifest meanwhile)
    assert len(saves) <= 3 and len([uri for uri in reads if uri.endswith("result.pkl")]) <= 2, reads
    assert "stopped before it started" in str(futures[-1].result()._return_value)
    assert {job.reason for job in sweep.manifest.jobs} == {_sweep.INTERRUPTED_REASON}


def test_a_manifest_that_cannot_be_saved_fails_the_jobs_it_was_saved_for(make_sweep, monkeypatch):
    sweep, executor = make_sweep({0: [*RUN, BatchState.SUCCEEDED]})
    monkeypatch.setattr(_sweep.Sweep, "save", lambda self: (_ for _ in ()).throw(OSError("No space left on device")))
    futures = sweep.submit(staged(0))
    with pytest.raises(OSError, match="No space left"):  # not a wait for ever
        futures[0].result(timeout=10)


def test_an_executor_error_reaches_every_waiting_caller(make_sweep):
    sweep, executor = make_sweep({0: [*RUN, *[BatchState.RUNNING] * 5]})

    def broken():
        raise RuntimeError("Batch is unreachable")

    futures = sweep.submit(staged(0))
    executor.poll = broken
    with pytest.raises(RuntimeError, match="Batch is unreachable"):
        futures[0].result(timeout=10)


def test_jobs_added_while_others_run_join_the_same_watch(make_sweep):
    scripts = {n: [*RUN, *[BatchState.RUNNING] * (3 * n), BatchState.SUCCEEDED] for n in range(6)}
    sweep, executor = make_sweep(scripts)
    futures = sweep.submit(staged(0, 2))
    watchers = {sweep.watcher}
    for num in range(2, 6):  # one at a time, as a worker frees up (the job before it is still running)
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
        futures += sweep.submit(staged(num))
        watchers.add(sweep.watcher)
    assert [r.return_value for r in sweep.wait(futures)] == [0, 10, 20, 30, 40, 50]
    assert len(watchers) == 1  # one watcher thread served every job
    sweep.watcher.join(timeout=5)
    assert not sweep.watcher.is_alive() and not sweep.pending  # and it ended with the last one
    assert [b.first for b in sweep.manifest.batches] == [0, 2, 3, 4, 5]
    assert [j.num for j in sweep.manifest.jobs] == list(range(6))


# ------------------------------------------------------------------------------ launch_async, for real
@pytest.mark.integration
@pytest.mark.alone
def test_launch_async_keeps_every_worker_busy(inprocess_launcher, tmp_path):
    launcher = inprocess_launcher(["hydra/launcher=aws_batch_local", "hydra.sweep.dir=sweep",
                                   "hydra.launcher.max_parallel=4", "hydra.job.name=sleepy"], SLEEP_TASK)
    seconds = [round(0.1 + (n * 7 % 20) / 10, 1) for n in range(20)]  # 0.1 s to 2.0 s
    returns = keep_busy(launcher, seconds, workers=4)
    assert [r.return_value for r in returns] == seconds
    record = _manifest.Manifest.from_json((tmp_path / "sweep/manifest.json").read_text())
    assert len({b.payload_uri for b in record.batches}) == 17  # one payload per launch_async call
    assert len(list((tmp_path / "sweep/.staging/code").iterdir())) == 1  # one code package for them all
    jobs = [vars(j) for j in record.jobs]
    assert [j["num"] for j in jobs] == list(range(20)) and {j["state"] for j in jobs} == {"SUCCEEDED"}
    running = [sum(j["started"] <= t < j["stopped"] for j in jobs) for t in
               [min(j["started"] for j in jobs) + k * 0.05 for k in range(int(60 / 0.05))]]
    assert max(running) <= 4  # max_parallel
    gaps = sorted(refill_gaps(jobs, 4))
    # A freed worker is refilled within a poll (0.05 s) and one launch_async (compose, stage, submit: about
    # 0.2 s on a 2-core machine); the margin is for the CPU that starting Python processes take from the launcher.
    assert len(gaps) == 16 and gaps[8] < 0.6 and gaps[-1] < 1.5, gaps


# ------------------------------------------------------------------------------------------- the house
PACKAGE = Path(_sweep.__file__).parent
SWEEPER = PACKAGE.parent / "hydra_thompson_sweeper"
LAUNCHER_PACKAGE = "hydra_plugins.hydra_awsbatch_launcher"


def imports_of(path: Path, package: str = LAUNCHER_PACKAGE) -> set[str]:
    """Which modules of `package` the file imports (at the top or inside a function)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:
                names |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()}
            elif node.module.startswith(package + "."):
                names.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith(package + ".")}
    return names


def plugin_imports() -> dict[str, set[str]]:
    """Which of the plugin's modules each one imports."""
    return {path.stem: imports_of(path) - {path.stem} for path in PACKAGE.glob("*.py")}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for name in graph.get(todo.pop(), ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_the_import_graph_has_no_cycles_and_each_concern_one_owner():
    graph = plugin_imports()
    steps = {"_compose", "_package", "_wire", "_manifest", "_stage", "_executor", "_sweep", "_collect", "_batch",
             "_local", "cli", "awsbatch_launcher", "async_api", "worker"}
    assert steps <= set(graph)
    cycles = [name for name in graph if name in reachable(graph, name)]
    assert not cycles, {name: graph[name] for name in cycles}
    assert "awsbatch_launcher" not in reachable(graph, "cli")  # the CLI opens sweeps through the engine
    assert "_local" not in reachable(graph, "_batch") and "_batch" not in reachable(graph, "_local")
    assert not {"_sweep", "_stage", "awsbatch_launcher"} & (reachable(graph, "_batch") | reachable(graph, "_local"))
    assert not {"_sweep", "_stage", "_collect", "awsbatch_launcher", "_batch"} & reachable(graph, "worker")
    boto = [path.stem for path in PACKAGE.glob("*.py") if "batch.meta" not in path.read_text()
            and ("client(\"batch\"" in path.read_text() or "client('batch'" in path.read_text())]
    assert boto in ([], ["_batch"])  # Batch is called from _batch.py alone


def class_sizes() -> dict[str, int]:
    """Every class of the plugin packages: its lines."""
    import ast

    sizes = {}
    for path in [*PACKAGE.glob("*.py"), *SWEEPER.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                sizes[f"{path.stem}.{node.name}"] = node.end_lineno - node.lineno + 1
    return sizes


def test_no_class_outgrows_the_house_and_the_hydra_faces_stay_thin():
    sizes = class_sizes()
    assert not {name: n for name, n in sizes.items() if n > 250}, "classes over 250 lines"
    assert sizes["thompson_sweeper.ThompsonSweeper"] <= 250  # Hydra's face of the Study
    assert sizes["awsbatch_launcher.BaseAwsBatchLauncher"] <= 150  # Hydra's adapter: the story of a launch


def test_what_a_job_is_told_is_named_in_one_place():
    """Every HYDRA_AWSBATCH_ variable between the launching process and its jobs is named in _job.py (the local
    cloud's own folder setting aside): a new option that reaches the job is a field there."""
    import re

    named = {path.stem: set(re.findall(r'"(HYDRA_AWSBATCH_[A-Z_]+)', path.read_text()))
             for path in PACKAGE.glob("*.py")}
    assert {stem: names for stem, names in named.items() if names and stem != "_job"} == {
        "_local_cloud": {"HYDRA_AWSBATCH_LOCAL_CLOUD_DIR"}}


def test_the_benchmarks_drive_the_shipped_study_and_copy_none_of_its_decisions():
    bench = PACKAGE.parent.parent / "bench"
    for name in ("pruning.py", "async_bo.py"):
        text = (bench / name).read_text()
        assert "from hydra_plugins.hydra_thompson_sweeper import Study" in text
        assert "_pruners" not in text and ".observe(" not in text and "levels_reached" not in text, name


def test_the_thompson_sweeper_reaches_launchers_through_the_public_contract_only():
    private = {path.name: sorted(m for m in imports_of(path) if m.startswith("_")) for path in SWEEPER.glob("*.py")}
    assert not any(private.values()), private
    assert {path.name: imports_of(path) for path in SWEEPER.glob("*.py")}["thompson_sweeper.py"] == {"async_api"}
    assert not [path.name for path in SWEEPER.glob("*.py") if "manifest" in path.read_text()]


def test_only_the_engine_writes_the_manifest():
    """No module but the engine (and the manifest's own) assigns a field of a manifest or its records, makes
    one, extends, saves or locks it."""
    import ast

    writers = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            if any(isinstance(t, (ast.Attribute, ast.Subscript)) and "manifest" in ast.unparse(t.value).lower()
                   for t in targets):
                writers.add(path.stem)
            if isinstance(node, ast.Call):
                call = ast.unparse(node.func)
                if call.endswith(("Manifest", "_manifest.lock", ".add_batch")) or (
                        call.endswith(".save") and "manifest" in call):
                    writers.add(path.stem)
    assert writers - {"_manifest"} == {"_sweep"}, writers


def requests_for(batch_resources: dict, job_name: str):
    """A BatchExecutor's request_for: plain SubmitJob requests into the moto queue, named `job_name`."""
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    def request_for(payload_uri, first, size, offset=0):
        return _batch.SubmitSpec(job_name, batch_resources["queue"], batch_resources["job_definition"]).requests(
            payload_uri, "s1", first, size, offset)

    return request_for


@pytest.mark.integration
def test_one_describe_call_per_100_jobs_in_flight(batch_resources, aws_env):
    """150 plain jobs (one launch_async call each would make one): a poll round describes them in two calls,
    and once they have ended, in none."""
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    api = _batch.BatchApi()
    executor = _batch.BatchExecutor(api, poll_interval_s=0.01, request_for=requests_for(batch_resources, "inflight"))
    for num in range(150):
        executor.submit(f"s3://b/sweeps/s/payload-{num}.pkl", num, 1)
    calls = []
    api.batch.meta.events.register("before-call.batch.*", lambda model, **kw: calls.append(model.name))
    executor.poll()
    assert calls == ["DescribeJobs", "DescribeJobs"]  # ceil(150 / 100), and no ListJobs for plain jobs
    assert {s.state for s in executor.jobs.values()} == {BatchState.SUCCEEDED}
    calls.clear()
    executor.poll()
    assert calls == []


@pytest.mark.integration
def test_a_resume_follows_jobs_whose_submission_the_dead_process_never_recorded(batch_resources, aws_env, tmp_path):
    """The sweeper died after recording two batches but before recording their SubmitJob answers: one never
    went out, one did (its answer lost). A resume submits the first now and finds the second in Batch, so both
    futures resolve (they used to wait forever) and no job runs twice."""
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    api = _batch.BatchApi()
    request_for = requests_for(batch_resources, "resumed")
    manifest = _manifest.Manifest("s1", str(tmp_path / "staging"), str(tmp_path / "sweep"), "AwsBatchLauncher",
                                  settings={"log_group": "g"})
    manifest.add_batch(staged(0))
    manifest.add_batch(staged(1))
    manifest.save()
    lost = api.submit([request for _, _, request in request_for("payload-1", 1, 1)])  # went out, answer lost
    sweep = _sweep.reopen(tmp_path / "sweep", lambda staging: _batch.BatchExecutor(api, 0.05, request_for))
    futures = sweep.resume([0, 1])
    done, waiting = concurrent.futures.wait(futures.values(), timeout=60)
    assert not waiting
    batches = _manifest.read(str(tmp_path / "sweep" / _manifest.MANIFEST)).batches
    assert batches[1].batch_job_ids == lost and len(batches[0].batch_job_ids) == 1
    jobs = api.batch.list_jobs(jobQueue=batch_resources["queue"], filters=[
        {"name": "JOB_NAME", "values": ["resumed"]}])["jobSummaryList"]
    assert sorted(j["jobId"] for j in jobs) == sorted(batches[0].batch_job_ids + lost)  # two jobs, not three
