"""Configs composed once: the launcher takes what Hydra's sweeper composed to check the batch, and the jobs get
exactly what `load_sweep_config` makes, whatever the overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict

from hydra_plugins.hydra_awsbatch_launcher._compose import compose_batch
from hydra_plugins.hydra_awsbatch_launcher.awsbatch_launcher import AwsBatchLocalLauncher

pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[1] / "conf"
# Value overrides, a group override, +key= appends, ~key deletions, and interpolations of ${now:} and ${hydra:}.
SWEEP = ["model=mlp,cnn", "lr=1e-3,1e-4", "+note=a,b", "~seed", "checkpoint.uri=ckpt/${hydra:job.num}",
         "+stamp=${now:%H-%M-%S}"]


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """A master config and the batch of overrides Hydra's basic sweeper makes of SWEEP, with a config loader
    that counts how often a config is really composed."""
    monkeypatch.chdir(tmp_path)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = loader.load_configuration("config", overrides=["hydra/launcher=aws_batch_local",
                                                             "hydra.sweep.dir=sweep"], run_mode=RunMode.MULTIRUN)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(SWEEP)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batch = BasicSweeper.split_arguments(parsed, None)[0]
    composed = []
    original = loader.load_sweep_config

    def counting(master_config, sweep_overrides):
        composed.append(tuple(sweep_overrides))
        return original(master_config, sweep_overrides)

    loader.load_sweep_config = counting
    return loader, master, batch, composed


def launcher_for(loader, master) -> AwsBatchLocalLauncher:
    Plugins.instance()
    params = {k: v for k, v in master.hydra.launcher.items() if k != "_target_"}
    launcher = AwsBatchLocalLauncher(**params)
    launcher.setup(hydra_context=HydraContext(config_loader=loader, callbacks=None), task_function=lambda c: None,
                   config=master)
    return launcher


def expected(loader, master, overrides, num: int, sweep_dir: Path):
    config = ConfigLoaderImpl.load_sweep_config(loader, master, list(overrides))  # Hydra's own, uncached
    with open_dict(config):
        config.hydra.job.id, config.hydra.job.num, config.hydra.sweep.dir = str(num), num, str(sweep_dir)
    return OmegaConf.to_yaml(config)


def test_the_launcher_takes_what_the_sweeper_composed(sweep, tmp_path):
    loader, master, batch, composed = sweep
    assert len(batch) == 8
    launcher = launcher_for(loader, master)
    for overrides in batch:  # what Hydra's sweeper does to check the batch (Sweeper.validate_batch_is_legal)
        loader.load_sweep_config(master_config=master, sweep_overrides=list(overrides))
    assert len(composed) == 8
    configs = compose_batch(launcher.composer, master, batch, 0, tmp_path / "sweep")
    assert len(composed) == 8  # not one more
    for num, (overrides, config) in enumerate(zip(batch, configs)):
        assert OmegaConf.to_yaml(config) == expected(loader, master, overrides, num, tmp_path / "sweep")
    cnn = configs[batch.index(next(o for o in batch if "model=cnn" in o))]
    assert "channels" in cnn.model and "seed" not in cnn and cnn.note in ("a", "b")
    raw = OmegaConf.to_container(cnn, resolve=False)
    assert (raw["checkpoint"]["uri"], raw["stamp"]) == ("ckpt/${hydra:job.num}", "${now:%H-%M-%S}")  # the job resolves


def test_without_a_checking_sweeper_the_launcher_composes_itself(sweep, tmp_path):
    loader, master, batch, composed = sweep
    launcher = launcher_for(loader, master)
    configs = compose_batch(launcher.composer, master, batch, 4, tmp_path / "sweep")
    assert len(composed) == 8
    assert OmegaConf.to_yaml(configs[3]) == expected(loader, master, batch[3], 7, tmp_path / "sweep")


def test_long_composing_shows_progress(sweep, tmp_path, caplog, monkeypatch):
    from hydra_plugins.hydra_awsbatch_launcher._compose import ComposeOnce

    loader, master, batch, _ = sweep
    monkeypatch.setattr(ComposeOnce, "EVERY_S", 0.05)  # a note every 0.05 s instead of every 5 s
    launcher = launcher_for(loader, master)
    with caplog.at_level("INFO"):
        compose_batch(launcher.composer, master, batch, 0, tmp_path / "sweep")
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Composing configs:")]
    assert notes and "so far" in notes[-1] and "/s)" in notes[-1]
