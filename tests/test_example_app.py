"""The example app as a researcher uses it: train, sweep, swap configs, resume, survive SIGTERM, use S3."""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys

import boto3
import pytest
import yaml
from hydra import compose, initialize_config_dir

from example_app.checkpoints import CheckpointStore
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def compose_cfg(home, monkeypatch):
    """Compose the app's config in-process, as `python train_model.py OVERRIDES` would."""
    monkeypatch.setenv("HOME", str(home))

    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    return make


def train(cfg, caplog) -> tuple[float, list[str]]:
    """Run the app's task function on `cfg`; return its value and the epoch lines it logged."""
    from hydra.core.hydra_config import HydraConfig

    import train_model

    HydraConfig.instance().cfg = None  # called directly, as no Hydra job: not as the job an earlier test left set
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train_model"):
        value = train_model.main(cfg)
    return value, [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]


def test_default_run_trains_and_returns_validation_loss(compose_cfg, caplog, tmp_path):
    value, epochs = train(compose_cfg(f"checkpoint.uri={tmp_path}/ckpt"), caplog)
    assert isinstance(value, float) and math.isfinite(value)
    assert len(epochs) == 10
    assert f"val_loss={value:.4f}" in epochs[-1]
    accuracy = float(epochs[-1].rsplit("val_accuracy=", 1)[1])
    assert accuracy > 0.9, epochs[-1]


def test_readme_multirun_makes_two_job_dirs(run_app, tmp_path):
    proc = run_app("--multirun", "lr=1e-3,1e-4", "hydra.sweep.dir=sweep")
    assert proc.stdout.count("Finished: val_loss=") == 2, proc.stdout
    for num, lr in [("0", "lr=0.001"), ("1", "lr=0.0001")]:
        job_dir = tmp_path / "sweep" / num
        assert yaml.safe_load((job_dir / ".hydra/overrides.yaml").read_text()) == [lr]
        assert (job_dir / ".hydra/config.yaml").exists()
        assert "Finished: val_loss=" in (job_dir / "train_model.log").read_text()
        assert (job_dir / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "experiment, model, optimizer",
    [("cnn_digits", "example_app.models.CNN", "torch.optim.Adam"),
     ("mlp_sgd", "example_app.models.MLP", "torch.optim.SGD")],
)
def test_experiment_swaps_model_and_optimizer(compose_cfg, experiment, model, optimizer):
    default = compose_cfg()
    cfg = compose_cfg(f"experiment={experiment}")
    assert (cfg.model._target_, cfg.optimizer._target_) == (model, optimizer)
    assert cfg.lr != default.lr  # the experiment's own learning rate reaches the optimizer
    assert cfg.optimizer.lr == cfg.lr


def test_experiment_runs_the_cnn(run_app):
    proc = run_app("experiment=cnn_digits", "epochs=1")
    assert "Training CNN" in proc.stdout
    assert "epoch 1/1 " in proc.stdout


def test_resume_trains_only_the_missing_epochs(compose_cfg, caplog, tmp_path):
    ckpt = f"checkpoint.uri={tmp_path}/resumed"
    _, first = train(compose_cfg(ckpt, "epochs=2"), caplog)
    resumed, second = train(compose_cfg(ckpt, "epochs=4"), caplog)
    straight, full = train(compose_cfg(f"checkpoint.uri={tmp_path}/straight", "epochs=4"), caplog)

    assert [line.split()[1] for line in first] == ["1/2", "2/2"]
    assert [line.split()[1] for line in second] == ["3/4", "4/4"]
    assert [line.split()[1] for line in full] == ["1/4", "2/4", "3/4", "4/4"]
    assert resumed == pytest.approx(straight, rel=1e-5)
    assert second == full[2:]


def test_keeps_only_the_newest_checkpoints(compose_cfg, caplog, tmp_path):
    train(compose_cfg(f"checkpoint.uri={tmp_path}/ckpt", "checkpoint.keep=2", "epochs=5"), caplog)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "ckpt-e00004-s0000000.pt", "ckpt-e00005-s0000000.pt"]


def test_sigterm_saves_a_checkpoint_and_exits_with_the_retry_code(app_env, tmp_path):
    import train_model

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train_model.py"), "epochs=100000", f"checkpoint.uri={ckpt}"],
        cwd=tmp_path, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        for line in proc.stdout:  # wait until training is under way
            lines.append(line)
            if "epoch 3/100000" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == train_model.EXIT_PREEMPTED == 75, output
    assert "SIGTERM received" in output

    uri, state = CheckpointStore(str(ckpt)).load_latest()
    assert uri is not None, output
    assert state["epochs_done"] >= 3 and len(state["history"]) == state["epochs_done"]
    assert set(state["model"]) >= {"net.0.weight", "net.0.bias"}


def test_data_and_checkpoints_on_s3(run_app, aws_env, bucket):
    data = f"s3://{bucket}/data/digits.npz"
    prepare = subprocess.run([sys.executable, "-m", "example_app.data", data], cwd=ROOT, env=aws_env,
                             capture_output=True, text=True, timeout=120)
    assert prepare.returncode == 0, prepare.stderr

    ckpt = f"s3://{bucket}/checkpoints/run-1"
    first = run_app(f"data.uri={data}", f"checkpoint.uri={ckpt}", "epochs=2", env=aws_env)
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/")["Contents"]]
    assert keys == ["checkpoints/run-1/ckpt-e00001-s0000000.pt", "checkpoints/run-1/ckpt-e00002-s0000000.pt"]
    assert "epoch 2/2" in first.stdout

    second = run_app(f"data.uri={data}", f"checkpoint.uri={ckpt}", "epochs=3", env=aws_env)
    assert f"Resumed from {ckpt}/ckpt-e00002-s0000000.pt" in second.stdout
    assert "epoch 1/3" not in second.stdout and "epoch 3/3" in second.stdout


def test_missing_s3_data_names_the_setting(run_app, aws_env, bucket):
    proc = run_app(f"data.uri=s3://{bucket}/nope.npz", env=aws_env, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert f"data.uri=s3://{bucket}/nope.npz: no data set there" in output
    assert f"python -m example_app.data s3://{bucket}/nope.npz" in output  # and how to put it there
