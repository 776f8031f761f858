"""Trials of several processes and nodes (`hydra.launcher.nodes`, `procs_per_node`) on aws_batch_local: the
ranks started by PyTorch's elastic launcher, gloo on CPU, the example app under DistributedDataParallel; a node
that dies, Ctrl-C; and what aws_batch refuses before anything is staged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hydra_plugins.hydra_awsbatch_launcher import _batch, _job, _nodes
from tests.conftest import ROOT, manifest, wait_for

pytestmark = pytest.mark.integration
LOCAL = "hydra/launcher=aws_batch_local"
TOLERANCE = 1e-5  # relative: the same examples per step, summed in another order
ENV_APP = """
    import json, logging, os
    import hydra

    log = logging.getLogger(__name__)
    NAMES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        seen = {name: os.environ.get(name) for name in NAMES}
        log.info("env " + json.dumps(seen))
        return seen

    if __name__ == "__main__":
        main()
"""


def job_processes(parent: int) -> list[int]:
    """The pids of processes started for the jobs of launching process `parent` (they carry its pid)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"HYDRA_AWSBATCH_PARENT_PID={parent}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            pass
    return found


def node_worker(parent: int, node: int) -> int | None:
    """The worker process of node `node` (not one of its ranks) of the jobs of `parent`."""
    for pid in job_processes(parent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"AWS_BATCH_JOB_NODE_INDEX={node}".encode() in environ and b"hydra_awsbatch_launcher.worker" in cmdline:
            return pid
    return None


def test_two_nodes_of_two_train_as_one_node_of_four_and_as_one_process(tmp_path):
    """bench/multinode.py at its smallest (one run of each variant, 3 epochs), so that it cannot rot, its sweeps
    kept: every variant ends at the same validation loss, and the multi-process ones keep every rank's log."""
    proc = subprocess.run([sys.executable, "bench/multinode.py", "--epochs", "3", "--repeats", "1",
                           "--out", str(tmp_path / "multinode"), "--keep", str(tmp_path / "runs")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "multinode.json").read_text())
    assert set(summary["runs"]) == {"1 process", "1 node x 4", "2 nodes x 2"}
    assert (tmp_path / "multinode.png").stat().st_size > 10_000
    sweeps = {name: tmp_path / "runs" / runs[0]["dir"] for name, runs in summary["runs"].items()}
    losses = {}
    for name, sweep in sweeps.items():
        job = manifest(sweep)["jobs"][0]
        assert job["state"] == "SUCCEEDED", job
        losses[name] = float(job["result"])  # rank 0's return value
        assert len((sweep / "0/metrics.jsonl").read_text().splitlines()) == 3  # rank 0 reports, once an epoch
        assert [p.name for p in (sweep / "0/checkpoints").iterdir()]  # rank 0's
    last = json.loads((sweeps["1 process"] / "0/metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_loss"] == pytest.approx(losses["1 process"], abs=1e-4)  # reported as returned
    for name in ("1 node x 4", "2 nodes x 2"):
        logs = {p.name: p.read_text() for p in (sweeps[name] / "0").glob("train_model*.log")}
        assert sorted(logs) == ["train_model.log", "train_model.rank1.log", "train_model.rank2.log",
                                "train_model.rank3.log"]  # every rank's log is kept
        assert "rank 0 of 4" in logs["train_model.log"] and "rank 3 of 4" in logs["train_model.rank3.log"]
    print("validation losses:", json.dumps(losses))
    assert losses["2 nodes x 2"] == pytest.approx(losses["1 node x 4"], rel=TOLERANCE)
    assert losses["2 nodes x 2"] == pytest.approx(losses["1 process"], rel=TOLERANCE)
    assert (sweeps["2 nodes x 2"] / ".logs/0.node1.log").is_file()


def test_every_rank_gets_torchruns_environment_and_rank_0_returns(tmp_path, app_env):
    (tmp_path / "my_app.py").write_text(textwrap.dedent(ENV_APP))
    # in_place=false, as on Batch: each node runs in its own scratch folder; the job dir comes back through staging,
    # the child node's rank logs included
    proc = subprocess.run([sys.executable, "my_app.py", "-m", LOCAL, "hydra.launcher.nodes=2",
                           "hydra.launcher.procs_per_node=2", "hydra.launcher.in_place=false", "hydra.sweep.dir=sweep"],
                          cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = manifest(tmp_path / "sweep")["jobs"][0]
    seen = [json.loads(line.split(" env ", 1)[1]) for log in sorted((tmp_path / "sweep/0").glob("my_app*.log"))
            for line in log.read_text().splitlines() if " env " in line]
    assert sorted(int(s["RANK"]) for s in seen) == [0, 1, 2, 3]
    for s in seen:
        assert s["WORLD_SIZE"] == "4" and s["MASTER_ADDR"] == "127.0.0.1"
        assert s["MASTER_PORT"] == seen[0]["MASTER_PORT"]
        assert int(s["NODE_RANK"]) == int(s["RANK"]) // 2 and int(s["LOCAL_RANK"]) == int(s["RANK"]) % 2
    assert "'RANK': '0'" in job["result"]  # the job's value is rank 0's
    assert not (tmp_path / "sweep/0/.hydra/config.yaml").read_text().count("rank")


def start_long_trial(tmp_path: Path, env: dict, *args: str, epochs: int = 100000) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train_model.py"), "-m", f"epochs={epochs}", LOCAL,
                             "hydra.launcher.nodes=2", "hydra.sweep.dir=sweep", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def training(tmp_path: Path) -> bool:
    logs = [tmp_path / "sweep/0/train_model.log", tmp_path / "sweep/0/train_model.rank1.log"]
    return all(log.is_file() and "epoch 1/" in log.read_text() for log in logs)


def test_a_killed_child_node_fails_the_trial_naming_it(tmp_path, app_env):
    parent = start_long_trial(tmp_path, app_env)
    try:
        assert wait_for(lambda: training(tmp_path), timeout=120), "the trial did not start training"
        child = node_worker(parent.pid, 1)
        os.kill(child, signal.SIGKILL)  # the node is lost
        killed = time.monotonic()
        out, _ = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert time.monotonic() - killed < 60
    assert parent.returncode != 0
    job = manifest(tmp_path / "sweep")["jobs"][0]
    assert job["state"] == "FAILED"
    assert job["reason"].startswith("node 1 of 2 (") and "killed by signal SIGKILL" in job["reason"], job
    assert "the other nodes were stopped" in job["reason"]
    assert "node 1 of 2" in out, out[-3000:]
    assert wait_for(lambda: not job_processes(parent.pid), timeout=10), "processes of the trial were left running"


def test_ctrl_c_stops_every_node(tmp_path, app_env):
    parent = start_long_trial(tmp_path, app_env)
    try:
        assert wait_for(lambda: training(tmp_path), timeout=120), "the trial did not start training"
        parent.send_signal(signal.SIGINT)
        out, _ = parent.communicate(timeout=90)
    finally:
        parent.kill()
    assert parent.returncode != 0
    job = manifest(tmp_path / "sweep")["jobs"][0]
    assert job["state"] == "FAILED" and job["reason"] == "interrupted by the user", job
    assert wait_for(lambda: not job_processes(parent.pid), timeout=10), "processes of the trial were left running"
    assert list((tmp_path / "sweep/0/checkpoints").iterdir())  # rank 0 saved on SIGTERM


@pytest.mark.parametrize("args, named", [
    (["hydra.launcher.nodes=0"], "hydra.launcher.nodes=0: a whole number, at least 1"),
    (["hydra.launcher.procs_per_node=-2"], "hydra.launcher.procs_per_node=-2: a whole number, at least 1"),
])
def test_bad_node_settings_are_refused_before_anything_is_staged(run_app, tmp_path, args, named):
    proc = run_app("-m", LOCAL, "hydra.sweep.dir=sweep", *args, check=False)
    assert proc.returncode == 1 and named in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "sweep/manifest.json").exists()


FARGATE = [{"computeResources": {"type": "FARGATE"}}]
SPOT = [{"computeResources": {"type": "SPOT"}}]
EC2 = [{"computeResources": {"type": "EC2"}}]
MULTINODE = {"jobDefinitionName": "mnp", "revision": 3, "type": "multinode", "nodeProperties": {"numNodes": 4}}
CONTAINER = {"jobDefinitionName": "single", "revision": 1, "type": "container"}


@pytest.mark.parametrize("nodes, envs, definition, named", [
    (2, FARGATE, MULTINODE, "job queue 'q' runs on Fargate, which runs no multi-node parallel jobs"),
    (2, SPOT, MULTINODE, "job queue 'q' has Spot compute only, which runs no multi-node parallel jobs"),
    (2, EC2, CONTAINER, "job definition 'single:1' is of type 'container', not 'multinode'"),
    (8, EC2, MULTINODE, "job definition 'mnp:3' has 4 nodes: ask for at most that many"),
])
def test_batch_refuses_what_cannot_run_a_multi_node_trial(nodes, envs, definition, named):
    problems = _batch.check_multinode(nodes, "q", envs, definition)
    assert len(problems) == 1 and named in problems[0] and problems[0].startswith(f"hydra.launcher.nodes={nodes}")
    assert _batch.check_multinode(nodes, "q", EC2 + SPOT, dict(MULTINODE, nodeProperties={"numNodes": 8})) == []
    assert _batch.check_multinode(1, "q", FARGATE, CONTAINER) == []  # one node: today's path
    assert _batch.check_multinode(nodes, "q", EC2, {"type": "multinode"}) == []  # no count known: not refused


def test_node_layout_follows_batchs_variables():
    assert _nodes.layout({}) is None  # one process: the plain path
    assert _nodes.layout(_job.JobSettings(procs_per_node=1).environment()) is None
    child = _nodes.layout({"AWS_BATCH_JOB_NUM_NODES": "3", "AWS_BATCH_JOB_NODE_INDEX": "2",
                           "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0", **_job.JobSettings(procs_per_node=2).environment(),
                           "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.0.5", "AWS_BATCH_JOB_ID": "ab#2"})
    assert child == _nodes.Layout(3, 2, 2, "10.0.0.5", _nodes.DEFAULT_PORT, _nodes.DEFAULT_PORT + 1, "ab#2")
    assert not child.main
    main = _nodes.layout({"AWS_BATCH_JOB_NUM_NODES": "2", "AWS_BATCH_JOB_NODE_INDEX": "0",
                          "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0", _job.MASTER_PORT: "1234",
                          _job.WATCH_PORT: "1300"})
    assert main.main and main.main_address == _nodes.own_address() and main.port == 1234 and main.procs >= 1
    assert main.watch_port == 1300
    with pytest.raises(RuntimeError, match="AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"):
        _nodes.layout({"AWS_BATCH_JOB_NUM_NODES": "2", "AWS_BATCH_JOB_NODE_INDEX": "1"})


def test_a_trial_stopped_by_sigterm_on_every_node_resumes_from_rank_0s_checkpoint(run_app, tmp_path, app_env):
    """As a Spot reclaim: Batch sends SIGTERM to each node's worker, which passes it to its ranks; they stop at
    the same step, rank 0 saves, the job exits with the retry code; the next attempt resumes there."""
    checkpoints = tmp_path / "ckpt"
    run_app("-m", "epochs=30", LOCAL, "hydra.launcher.nodes=2", "hydra.sweep.dir=whole")  # never stopped
    parent = start_long_trial(tmp_path, app_env, f"checkpoint.uri={checkpoints}", epochs=30)
    try:
        assert wait_for(lambda: training(tmp_path), timeout=120), "the trial did not start training"
        for node in (0, 1):
            os.kill(node_worker(parent.pid, node), signal.SIGTERM)
        out, _ = parent.communicate(timeout=90)
    finally:
        parent.kill()
    job = manifest(tmp_path / "sweep")["jobs"][0]
    assert job["state"] == "FAILED" and job["exit_code"] == 75, job
    assert "job #0 interrupted" in job["result"], job
    saved = sorted(p.name for p in checkpoints.iterdir())
    assert saved and saved[-1] != "ckpt-e00030-s0000000.pt"  # stopped before the end
    resumed = run_app("-m", "epochs=30", LOCAL, "hydra.launcher.nodes=2", "hydra.sweep.dir=again",
                      f"checkpoint.uri={checkpoints}")
    log = (tmp_path / "again/0/train_model.log").read_text()
    assert f"Resumed from {checkpoints}/{saved[-1]}" in log, resumed.stdout[-2000:]
    assert "Resumed from" in (tmp_path / "again/0/train_model.rank1.log").read_text()  # every rank resumes
    expected = float(manifest(tmp_path / "whole")["jobs"][0]["result"])
    assert float(manifest(tmp_path / "again")["jobs"][0]["result"]) == expected  # as if never stopped


RANK_FAILS_APP = """
    import os
    import hydra

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        if os.environ["RANK"] == "1":
            raise ValueError("boom in rank 1")
        return 7

    if __name__ == "__main__":
        main()
"""


def test_a_rank_that_fails_fails_the_trial_naming_it(tmp_path, app_env):
    (tmp_path / "my_app.py").write_text(textwrap.dedent(RANK_FAILS_APP))
    proc = subprocess.run([sys.executable, "my_app.py", "-m", LOCAL, "hydra.launcher.procs_per_node=2",
                           "hydra.sweep.dir=sweep"], cwd=tmp_path, env=app_env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    job = manifest(tmp_path / "sweep")["jobs"][0]
    assert job["state"] == "FAILED" and job["result"].endswith("rank 1 (node 0 of 1): boom in rank 1"), job
    assert "ValueError: boom in rank 1" in (tmp_path / "sweep/0/my_app.rank1.log").read_text() + proc.stderr


NODE_FAILS_APP = """
    import os, time
    import hydra

    def load_data(rank):
        if rank == "1":
            raise ValueError("boom on node 1")

    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        load_data(os.environ["RANK"])
        time.sleep(600)  # rank 0 trains on, in no collective that would notice
        return 7

    if __name__ == "__main__":
        main()
"""


def test_a_rank_that_fails_on_a_child_node_fails_the_trial_at_once_with_its_traceback(tmp_path, app_env):
    """nodes=2: rank 1 (node 1) raises while rank 0 goes on alone. The trial fails within seconds, its error that
    rank's exception and traceback (not node 1's closed connection); `logs SWEEP 0 --node 1` shows node 1's log."""
    (tmp_path / "my_app.py").write_text(textwrap.dedent(NODE_FAILS_APP))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "my_app.py", "-m", LOCAL, "hydra.launcher.nodes=2",
                           "hydra.sweep.dir=sweep"], cwd=tmp_path, env=app_env, capture_output=True, text=True,
                          timeout=300)
    assert time.monotonic() - started < 120, "the trial ran on after its rank failed"
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = manifest(tmp_path / "sweep")["jobs"][0]
    assert job["state"] == "FAILED" and job["result"].endswith("rank 1 (node 1 of 2): boom on node 1"), job
    assert "in load_data" in proc.stderr and 'raise ValueError("boom on node 1")' in proc.stderr, proc.stderr[-3000:]
    logs = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.cli", "logs", "sweep", "0",
                           "--node", "1", "-n", "200"], cwd=tmp_path, env=app_env, capture_output=True, text=True,
                          timeout=60)
    assert logs.returncode == 0 and "node 1 of 2" in logs.stdout, logs.stdout + logs.stderr
    wrong = subprocess.run([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher.cli", "logs", "sweep", "0",
                            "--node", "2"], cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "--node 2: job #0 of sweep" in wrong.stderr and "0 to 1" in wrong.stderr


@pytest.fixture
def multinode_definition(batch_resources, aws_env) -> str:
    """A multinode job definition of 2 nodes, as template.yaml's MultiNodeJobDefinition (moto keeps its type, not its
    nodeProperties: the node count is checked in test_batch_refuses_what_cannot_run_a_multi_node_trial)."""
    import boto3

    container = {"image": "hydra-awsbatch:latest", "command": ["python", "-m", "hydra_plugins.hydra_awsbatch_launcher"
                                                                               ".worker"],
                 "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}]}
    boto3.client("batch").register_job_definition(
        jobDefinitionName="test-mnp", type="multinode",
        nodeProperties={"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:", "container":
                                                                               container}]})
    return "test-mnp"


@pytest.mark.parametrize("overrides, named", [
    (["hydra.launcher.job_queue=test-fargate-queue", "hydra.launcher.job_definition=test-mnp"],
     "job queue 'test-fargate-queue' runs on Fargate, which runs no multi-node parallel jobs"),
    (["hydra.launcher.job_definition=test-job"], "job definition 'test-job:1' is of type 'container', not "
                                                 "'multinode'"),
])
def test_aws_batch_refuses_a_multi_node_trial_before_anything_is_staged(tmp_path, aws_env, batch_resources,
                                                                         multinode_definition, overrides, named):
    import boto3

    def staged() -> list:
        return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=batch_resources["bucket"]).get("Contents",
                                                                                                        [])]

    (tmp_path / "my_app.py").write_text(textwrap.dedent(ENV_APP))
    before = staged()  # the moto server serves the whole session
    proc = subprocess.run([sys.executable, "my_app.py", "-m", "hydra/launcher=aws_batch", "hydra.launcher.nodes=2",
                           f"hydra.launcher.job_queue={batch_resources['queue']}",
                           f"hydra.launcher.staging_uri={batch_resources['staging']}", "hydra.sweep.dir=sweep",
                           *overrides], cwd=tmp_path, env=aws_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and named in proc.stderr, proc.stderr[-3000:]
    assert staged() == before


def test_aws_batch_submits_one_multi_node_job_per_trial(tmp_path, aws_env, batch_resources, multinode_definition):
    """What `hydra.launcher.nodes=2` asks of Batch (a dry run prints the requests): one SubmitJob per config, no
    array, the node count and the worker's command and environment on every node, each naming its config."""
    (tmp_path / "my_app.py").write_text(textwrap.dedent(ENV_APP))
    proc = subprocess.run([sys.executable, "my_app.py", "-m", "+x=1,2,3", "hydra/launcher=aws_batch",
                           "hydra.launcher.nodes=2", "hydra.launcher.gpus=1", "hydra.launcher.dry_run=true",
                           f"hydra.launcher.job_queue={batch_resources['gpu_queue']}",  # GPU instances
                           "hydra.launcher.job_definition=test-mnp",
                           f"hydra.launcher.staging_uri={batch_resources['staging']}", "hydra.sweep.dir=sweep"],
                          cwd=tmp_path, env=aws_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    decoder, text, requests = json.JSONDecoder(), proc.stdout, []
    while "SubmitJob request" in text:
        text = text.split("SubmitJob request (dry run, nothing submitted):\n", 1)[1]
        request, end = decoder.raw_decode(text)
        requests.append(request)
        text = text[end:]
    assert len(requests) == 3 and not any("arrayProperties" in r or "containerOverrides" in r for r in requests)
    offsets = []
    for request in requests:
        overrides = request["nodeOverrides"]
        assert overrides["numNodes"] == 2 and len(overrides["nodePropertyOverrides"]) == 1
        (node_range,) = overrides["nodePropertyOverrides"]
        assert node_range["targetNodes"] == "0:"  # every node
        container = node_range["containerOverrides"]
        assert container["command"] == _batch.WORKER_COMMAND
        assert {"type": "GPU", "value": "1"} in container["resourceRequirements"]
        env = {e["name"]: e["value"] for e in container["environment"]}
        offsets.append(env["HYDRA_AWSBATCH_INDEX_OFFSET"])
    assert offsets == ["0", "1", "2"]


NODE_WATCH_CHILD = """
import sys, time
from hydra_plugins.hydra_awsbatch_launcher import _nodes
_nodes.HEARTBEAT_S = 0.2
watch = _nodes.NodeWatch(_nodes.Layout(2, 1, 1, "127.0.0.1", 0, int(sys.argv[1]), "job-7#1")).start()
time.sleep(float(sys.argv[2]))
watch.close(sys.argv[3])
"""


@pytest.mark.parametrize("end, named", [
    ("killed", "node 1 of 2 (job-7#1) stopped before the trial ended (its connection closed)"),
    ("frozen", "node 1 of 2 (job-7#1) stopped before the trial ended (it sent nothing for 2 s)"),
    ("interrupted", "node 1 of 2 (job-7#1) stopped before the trial ended (it was stopped by a SIGTERM, and this "
                    "node was not)"),
    ("done", None),
])
def test_the_main_node_sees_a_child_node_die_and_names_it(monkeypatch, end, named):
    """On Batch nothing stops the other nodes when a child node dies: the main node's worker sees it (its
    connection closes, or, when the instance vanishes, its heartbeat stops) and stops its own ranks. A child that
    ends well says so first; one stopped by a SIGTERM is not blamed unless the main node goes on."""
    monkeypatch.setattr(_nodes, "SILENCE_S", 2.0)
    port = _nodes.free_port()
    stopped = []
    main = _nodes.NodeWatch(_nodes.Layout(2, 0, 1, "127.0.0.1", 0, port, "job-7#0"),
                            on_dead=lambda: stopped.append(time.time())).start()
    child = subprocess.Popen([sys.executable, "-c", NODE_WATCH_CHILD, str(port),
                              "1" if end in ("done", "interrupted") else "600", end], cwd=ROOT)
    try:
        time.sleep(3.0)  # it started, connected and said hello
        ended = time.time()
        if end == "killed":
            child.kill()
        elif end == "frozen":  # alive, connection open, nothing sent: a vanished instance looks like this
            child.send_signal(signal.SIGSTOP)
        else:  # it ended, and said how
            assert child.wait(timeout=30) == 0
        if named is None:
            time.sleep(3.0)
            assert stopped == [] and main.dead is None
        else:
            assert wait_for(lambda: stopped, timeout=20)
            assert main.dead == named and main.verdict(timeout=0) == named
            assert stopped[0] - ended < 2.0 + 5.0  # SILENCE_S (patched), plus this machine's slack
    finally:
        child.kill()
        child.send_signal(signal.SIGCONT)
        child.wait()
        main.close()
