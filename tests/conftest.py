"""Shared fixtures: the example app run as a user runs it, and a moto server on 127.0.0.1 over real HTTP."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hydra_plugins.hydra_awsbatch_launcher._batch import DUMMY_CREDENTIALS
from tests.moto_batch import create_batch_resources, start_moto_server

ROOT = Path(__file__).resolve().parent.parent
DUMMY_AWS = {**DUMMY_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}


def manifest(sweep_dir: Path) -> dict:
    """The sweep's manifest.json, as a user would read it."""
    return json.loads((sweep_dir / "manifest.json").read_text())


def wait_for(condition, timeout: float = 120, every: float = 0.2):
    """`condition()`'s first true value within `timeout` seconds, else None."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return None


def cli(*args: str, env: dict, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`hydra-awsbatch ARGS`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def run_like_a_container(job: dict, env: dict) -> subprocess.CompletedProcess:
    """What a Batch container does with a (described) job: the worker, with the job's environment and id."""
    job_env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    job_env["AWS_BATCH_JOB_ID"] = job["jobId"]
    return subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.worker"],
                          env={**env, **job_env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """A HOME of the tests' own, so the app's default data cache lands there, prepared once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def app_env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return env


@pytest.fixture
def run_app(tmp_path, app_env):
    """Run `python train_model.py ARGS` in a fresh folder, as a user would; returns the finished process."""

    def run(*args: str, env: dict | None = None, check: bool = True, timeout: float = 300):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train_model.py"), *args],
            cwd=tmp_path, env=env or app_env, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"train_model.py {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return run


@pytest.fixture(scope="session")
def moto_server():
    """moto's server in a thread on a free port of 127.0.0.1; yields its endpoint URL."""
    server, endpoint = start_moto_server()
    yield endpoint
    server.stop()


@pytest.fixture
def aws_env(moto_server, app_env, monkeypatch) -> dict:
    """Environment that points boto3 (here and in subprocesses) at the moto server with dummy credentials."""
    env = dict(app_env, AWS_ENDPOINT_URL=moto_server, **DUMMY_AWS)
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def bucket(aws_env, request) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"test-{name}-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name



@pytest.fixture
def inprocess_launcher(tmp_path, monkeypatch):
    """A launcher set up as Hydra sets it up for a --multirun from tmp_path (config and overrides as given),
    with a task function from a module of its own in tmp_path/app (shipped in the code package)."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    def make(overrides: list[str], task_source: str):
        import importlib

        app = tmp_path / "app"
        app.mkdir(exist_ok=True)
        (app / "inprocess_task.py").write_text(task_source)
        monkeypatch.syspath_prepend(str(app))
        monkeypatch.chdir(tmp_path)
        sys.modules.pop("inprocess_task", None)
        task = importlib.import_module("inprocess_task").task
        loader = ConfigLoaderImpl(config_search_path=create_config_search_path(None))
        master = loader.load_configuration(None, overrides=overrides, run_mode=RunMode.MULTIRUN)
        HydraConfig.instance().set_config(master)
        return Plugins.instance().instantiate_launcher(hydra_context=HydraContext(loader, Callbacks(master)),
                                                       task_function=task, config=master)

    return make


SLEEP_TASK = """
import time


def task(cfg):
    time.sleep(cfg.seconds)
    return cfg.seconds
"""


def keep_busy(launcher, seconds: list[float], workers: int) -> list:
    """Drive `launcher.launch_async` as an asynchronous sweeper does: `workers` jobs at first, then a new one
    each time one ends; the JobReturns in job order."""
    import concurrent.futures

    futures = launcher.launch_async([[f"+seconds={s}"] for s in seconds[:workers]], 0)
    in_flight = set(futures)
    while len(futures) < len(seconds):
        done, in_flight = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
        for _ in done:
            if len(futures) < len(seconds):
                new = launcher.launch_async([[f"+seconds={seconds[len(futures)]}"]], len(futures))
                futures += new
                in_flight |= set(new)
    return [f.result(timeout=600) for f in futures]


def refill_gaps(jobs: list[dict], workers: int) -> list[float]:
    """How long each freed worker stayed empty: the k-th job to end against the (k + workers)-th to start,
    its replacement (the sweep starts `workers` jobs, then one per job that ends)."""
    ends, starts = sorted(j["stopped"] for j in jobs), sorted(j["started"] for j in jobs)
    return [start - end for end, start in zip(ends, starts[workers:])]


@pytest.fixture(scope="session")
def batch_resources(moto_server) -> dict:
    """Batch as a user's account would have it, on the moto server in its no-container mode."""
    return create_batch_resources(moto_server)


def _docker_problem() -> str | None:
    from hydra_plugins.hydra_awsbatch_launcher._local_cloud import docker_answers

    return docker_answers()


def _e2e_skip_line(problem: str) -> str:
    from hydra_plugins.hydra_awsbatch_launcher._local_cloud import SAFE_DOCKERD

    first = problem.split(". ")[0].split(":")[0]
    return (f"e2e tier skipped: {first}. To run it, start Docker as the README's local cloud section shows "
            f"(sudo {SAFE_DOCKERD} &), then: python -m pytest -m e2e")


def pytest_report_header(config):
    """The e2e tier's fate, at the top of the run (pytest-xdist's workers collect the tests and print nothing)."""
    problem = _docker_problem()
    return None if problem is None else _e2e_skip_line(problem)


@pytest.fixture(autouse=True)
def _alone(request, tmp_path_factory):
    """Tests marked `alone` (they read how soon something happens) run with no test of another pytest-xdist
    process beside them; the others run side by side. A readers-writer lock between the processes: every test
    holds `room` shared, an `alone` test holds it exclusive; `door`, taken briefly on the way in, lets an
    `alone` test that waits for the room keep newcomers out, so it cannot starve."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each process's own
    alone = request.node.get_closest_marker("alone") is not None
    with open(shared / "door.lock", "a") as door, open(shared / "room.lock", "a") as room:
        fcntl.flock(door, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(door, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)


def pytest_collection_modifyitems(config, items):
    """Without a Docker engine the e2e tier is skipped (the header says why and how to run it); in CI it must
    run."""
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e:
        return
    problem = _docker_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"CI runs the e2e tier, but {problem}")
    skip = pytest.mark.skip(reason="no Docker engine (see the line at the top of the run)")
    for item in e2e:
        item.add_marker(skip)
