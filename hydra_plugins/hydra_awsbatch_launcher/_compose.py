"""Compose: each job's config of a batch, composed once (the sweeper's check is the launcher's config), with
its number, id and the sweep dir set as Hydra's own launchers set them; and the job's dir under the sweep dir."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import filter_overrides
from omegaconf import DictConfig, open_dict

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")


class ComposeOnce:
    """Hydra's sweepers compose every config of a batch to check it, then hand the launcher the overrides
    alone, which it must compose again: each config twice, about 50 ms each. Installed on the sweep's config
    loader, this keeps what the sweeper composed so that the launcher takes it instead: the very objects that
    `load_sweep_config` returned, composed once. While composing takes long, it says how far it got."""

    KEEP = 100_000  # configs composed and not yet launched (a sweeper that checks more than it launches)
    EVERY_S = 5.0

    def __init__(self, config_loader) -> None:
        self.compose = config_loader.load_sweep_config  # Hydra's own, bound
        self.kept: dict[tuple, DictConfig] = {}
        self.burst_start = self.last_call = self.last_note = 0.0
        self.burst = 0

    @classmethod
    def install(cls, config_loader) -> ComposeOnce:
        """On this config loader (once): the sweeper's calls go through it from now on."""
        current = config_loader.load_sweep_config
        if isinstance(current, cls):
            return current
        cache = cls(config_loader)
        config_loader.load_sweep_config = cache  # this instance only; Hydra's class is untouched
        return cache

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = self.compose(master_config, sweep_overrides)
        if len(self.kept) >= self.KEEP:
            self.kept.pop(next(iter(self.kept)))
        self.kept[(id(master_config), tuple(sweep_overrides))] = config
        self.note()
        return config

    def take(self, master_config: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """The config the sweeper composed for these overrides, or a fresh one."""
        config = self.kept.pop((id(master_config), tuple(overrides)), None)
        if config is None:
            config = self.compose(master_config, list(overrides))
            self.note()
        return config

    def note(self) -> None:
        now = time.monotonic()
        if now - self.last_call > 1.0:  # a new burst of composing
            self.burst_start, self.burst, self.last_note = now, 0, now
        self.burst += 1
        self.last_call = now
        if now - self.last_note >= self.EVERY_S:
            self.last_note = now
            log.info(f"Composing configs: {self.burst} so far ({self.burst / (now - self.burst_start):.0f}/s)")


def compose_batch(composer: ComposeOnce, master_config: DictConfig, job_overrides: Sequence[Sequence[str]],
                  first_num: int, sweep_dir: Path) -> list[DictConfig]:
    """Job first_num + i of the batch gets job_overrides[i], as Hydra's basic launcher numbers them."""
    configs = []
    for i, overrides in enumerate(job_overrides):
        num = first_num + i
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        config = composer.take(master_config, overrides)
        with open_dict(config):
            config.hydra.job.id = f"{num}"
            config.hydra.job.num = num
            config.hydra.sweep.dir = str(sweep_dir)  # resolved once, here: ${now:} must not move
        configs.append(config)
    return configs


def job_subdir(config) -> str:
    """The job's dir under hydra.sweep.dir, evaluated as run_job evaluates it (with the job's HydraConfig)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        return str(OmegaConf.select(config, "hydra.sweep.subdir"))
    finally:
        HydraConfig.instance().cfg = saved
