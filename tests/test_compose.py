"""Configs composed once per shape: Hydra composes one config for overrides that differ only in values, the rest
are built from it, and every job gets exactly what Hydra's `load_sweep_config` makes, whatever the overrides."""

from __future__ import annotations

from dataclasses import dataclass
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


def basic_sweeper(loader, master):
    """Hydra's basic sweeper, set up to check batches (its class as Hydra's plugin scan left it)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    checker = BasicSweeper(max_batch_size=None)
    checker.hydra_context, checker.config = HydraContext(config_loader=loader, callbacks=None), master
    return checker


def expected(loader, master, overrides, num: int, sweep_dir: Path):
    config = ConfigLoaderImpl.load_sweep_config(loader, master, list(overrides))  # Hydra's own, uncached
    with open_dict(config):
        config.hydra.job.id, config.hydra.job.num, config.hydra.sweep.dir = str(num), num, str(sweep_dir)
    return OmegaConf.to_yaml(config)


def test_hydra_composes_one_config_per_shape_and_every_job_gets_hydras_config(sweep, tmp_path):
    loader, master, batch, composed = sweep
    assert len(batch) == 8
    launcher = launcher_for(loader, master)
    checker = basic_sweeper(loader, master)
    checker.validate_batch_is_legal(batch)  # what Hydra's sweepers do before they launch
    assert len(composed) == 2  # model=mlp and model=cnn: lr and note are values
    jobs = compose_batch(launcher.composer, master, batch, 0, tmp_path / "sweep")
    assert len(composed) == 2  # not one more
    assert len(jobs.bases) == 2 and jobs.subdirs == [str(num) for num in range(8)]
    for num, overrides in enumerate(batch):
        assert OmegaConf.to_yaml(jobs.config(num)) == expected(loader, master, overrides, num, tmp_path / "sweep")
    cnn = jobs.config(batch.index(next(o for o in batch if "model=cnn" in o)))
    assert "channels" in cnn.model and "seed" not in cnn and cnn.note in ("a", "b")
    raw = OmegaConf.to_container(cnn, resolve=False)
    assert (raw["checkpoint"]["uri"], raw["stamp"]) == ("ckpt/${hydra:job.num}", "${now:%H-%M-%S}")  # the job resolves


def test_without_a_checking_sweeper_the_launcher_composes_itself(sweep, tmp_path):
    loader, master, batch, composed = sweep
    launcher = launcher_for(loader, master)
    jobs = compose_batch(launcher.composer, master, batch, 4, tmp_path / "sweep")
    assert len(composed) == 2
    assert OmegaConf.to_yaml(jobs.config(3)) == expected(loader, master, batch[3], 7, tmp_path / "sweep")


@pytest.mark.parametrize("overrides", [
    ["lr=0.1", "epochs=2"],  # plain values
    ["+extra=1", "lr=0.2"],  # an added key
    ["++lr=0.3", "++fresh=x"],  # force-added
    ["optimizer=sgd", "optimizer.lr=0.5"],  # a group choice and a value under it
    ["model=cnn", "model.channels=4", "hydra.job.name=named"],  # a Hydra override is part of the shape
    ["~seed", "lr=0.01"],  # a deletion
    ["+note={a: 1}", "lr=0.02"],  # a dict value: Hydra composes it
    ["lr=0.1", "lr=0.2"],  # one key twice: Hydra applies them in order
    ["experiment=mlp_sgd", "lr=0.3"],  # an experiment: a group that sets values too
    ["checkpoint.uri=c/${hydra:job.num}", "data.val_fraction=0.25"],
    ["checkpoint.keep=2", "checkpoint=null"],  # a value under another value's key: Hydra applies them in order
])
def test_a_built_config_equals_hydras_own(sweep, tmp_path, overrides):
    """Each job of a shape that Hydra composed once is built from it: the same YAML, struct flags and override
    dir name as Hydra's own composition, for every kind of override."""
    loader, master, _, composed = sweep
    launcher = launcher_for(loader, master)
    first = [o.replace("0.", "0.9") if "=0." in o else o for o in overrides]  # the same keys, other values
    jobs = compose_batch(launcher.composer, master, [first, overrides, overrides], 0, tmp_path / "sweep")
    for num, job in enumerate([first, overrides, overrides]):
        config = jobs.config(num)
        assert OmegaConf.to_yaml(config) == expected(loader, master, job, num, tmp_path / "sweep")
        assert OmegaConf.is_struct(config) and not OmegaConf.is_readonly(config.hydra)
    dirname = OmegaConf.to_container(config.hydra.job, resolve=False)["override_dirname"]
    assert dirname == ",".join(sorted(o for o in overrides if not o.startswith("hydra.")))
    assert len(composed) <= 3


def test_each_job_resolves_its_own_job_dir(sweep, tmp_path):
    """A sweep subdir with ${now:} resolved per job, as Hydra's own launchers resolve it (not the first job's
    time for every job of its shape)."""
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's resolvers (now:), as a Hydra app has them
    loader, master, _, _ = sweep
    launcher = launcher_for(loader, master)
    subdir = "hydra.sweep.subdir=at-${now:%H-%M-%S-%f}"
    jobs = compose_batch(launcher.composer, master, [[f"lr=0.{i}", subdir] for i in range(1, 4)], 0,
                         tmp_path / "sweep")
    assert len(jobs.bases) == 1 and len(set(jobs.subdirs)) == 3 and all(s.startswith("at-") for s in jobs.subdirs)


@dataclass
class Typed:
    count: int = 1


def test_a_value_that_does_not_fit_is_refused_as_hydra_refuses_it(sweep, tmp_path):
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="typed", name="schema", node=Typed)
    try:
        check_refusals(sweep, tmp_path)
    finally:  # Hydra's ConfigStore is global: a later sweep in this process would ship this test's class
        del store.repo["typed"]


def check_refusals(sweep, tmp_path):
    from hydra.errors import ConfigCompositionException

    loader, master, _, composed = sweep
    launcher = launcher_for(loader, master)
    jobs = [["+typed=schema", "typed.count=2"], ["+typed=schema", "typed.count=many"]]
    with pytest.raises(ConfigCompositionException, match="typed.count=many"):
        ConfigLoaderImpl.load_sweep_config(loader, master, jobs[1])  # Hydra's own refusal
    composed.clear()
    with pytest.raises(ConfigCompositionException, match="typed.count=many"):
        compose_batch(launcher.composer, master, jobs, 0, tmp_path / "sweep")
    assert len(composed) == 1  # the second was built, and refused as it was built
    with pytest.raises(ConfigCompositionException, match="Could not override 'nope'"):
        compose_batch(launcher.composer, master, [["nope=1"]], 0, tmp_path / "sweep")
    # A sweeper that launches without checking (Optuna's): the launcher checks the whole batch before its first
    # chunk of 16 goes out, so job 40's bad value stops it before anything is staged.
    batch = [["+typed=schema", f"typed.count={n}"] for n in range(40)] + [jobs[1]]
    with pytest.raises(ConfigCompositionException, match="typed.count=many"):
        launcher.composer.check(master, batch)


def test_long_composing_shows_progress(sweep, tmp_path, caplog, monkeypatch):
    from hydra_plugins.hydra_awsbatch_launcher._compose import ComposeOnce

    loader, master, batch, _ = sweep
    monkeypatch.setattr(ComposeOnce, "EVERY_S", 0.0)  # a note at every config instead of every 5 s
    launcher_for(loader, master)
    with caplog.at_level("INFO"):
        basic_sweeper(loader, master).validate_batch_is_legal(batch)  # Hydra's check: it knows how many
        loader.load_sweep_config(master, list(batch[0]))  # anyone else: how many is not known
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Composing configs:")]
    assert notes[-2].startswith("Composing configs: 8 of 8 (") and notes[-2].endswith("/s)")
    assert "so far" in notes[-1]
