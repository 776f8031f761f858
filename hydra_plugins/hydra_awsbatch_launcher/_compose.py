"""Compose: each job's config exactly as Hydra's `load_sweep_config` makes it, at a fraction of its cost, and
what a job needs to make it again where it runs.

Hydra composes a config from its defaults list (files read, merged) in 40-80 ms, and its sweepers compose every
config of a batch once to check it before the launcher gets the overrides. Most sweeps vary values only
(`lr=1e-3,1e-4`, `+x=range(10000)`): configs whose overrides differ only in the values of the same keys share a
*shape* (the same group choices, the same other overrides, the same keys set). Hydra composes one config per
shape, its base; every other config of the shape is that base with the job's value overrides applied again by
Hydra's own `_apply_overrides_to_config`, and `hydra.overrides.task` and `hydra.job.override_dirname` set as Hydra
sets them (`build`). A key that turns out to name a config group, or overrides that touch each other's keys, make
the config a shape of its own, composed by Hydra in full.

A job is then a `Recipe` (its base's index, its number, its value and task overrides: a few hundred bytes), which
the worker builds into its config (worker.py). So a job reads its own config and what all jobs share, whatever the
sweep's size, and the launcher keeps no config per job.
"""

from __future__ import annotations

import logging
import pickle
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from hydra.core.utils import filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.hydra_awsbatch_launcher._hooks import hook

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")


class Recipe(NamedTuple):
    """One job's config, made from its base by `build`."""

    base: int  # its base's index among its batch's bases
    num: int  # hydra.job.num
    values: tuple  # the value overrides applied to the base again
    task: tuple  # hydra.overrides.task: the job's overrides that are not Hydra's own, in order


_PARSER = None


def parse_overrides(overrides: Sequence[str]) -> list:
    """Hydra's parse of these overrides (its parser made once)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    global _PARSER
    if _PARSER is None:
        _PARSER = OverridesParser.create()
    return _PARSER.parse_overrides(list(overrides))


def build(config: DictConfig, recipe: Recipe, sweep_dir: str, parsed: tuple | None = None) -> DictConfig:
    """The job's config, made in place of its base: Hydra's composition of the job's overrides (`composed`), with
    its number, id and sweep dir set as Hydra's own launchers set them."""
    hydra = composed(config, recipe, parsed).hydra
    with read_write(hydra), open_dict(hydra):
        hydra.job.id = f"{recipe.num}"
        hydra.job.num = recipe.num
        hydra.sweep.dir = sweep_dir  # resolved once, in the launcher: ${now:} must not move
    return config


def composed(config: DictConfig, recipe: Recipe, parsed: tuple | None = None) -> DictConfig:
    """In place of the recipe's base: what Hydra's `load_sweep_config` makes of the job's overrides. `parsed`: the
    recipe's values and task overrides parsed already."""
    get_overrides_dirname = hook("hydra._internal.config_loader_impl.get_overrides_dirname")
    values, task = parsed or (parse_overrides(recipe.values), parse_overrides(recipe.task))
    apply_values(config, values)
    hydra = config.hydra
    with read_write(hydra), open_dict(hydra):  # as Hydra leaves it: read-only from the composing on
        hydra.overrides.task = list(recipe.task)
        naming = hydra.job.config.override_dirname
        hydra.job.override_dirname = get_overrides_dirname(overrides=task, kv_sep=naming.kv_sep,
                                                           item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
    return config


def apply_values(config: DictConfig, values: list) -> DictConfig:
    """These parsed value overrides applied to a config as Hydra applies them (`+key=` adds a key the base has
    already: applied again, it sets it)."""
    import dataclasses

    from hydra.core.override_parser.types import OverrideType

    if values:
        again = [dataclasses.replace(o, type=OverrideType.FORCE_ADD) if o.is_add() else o for o in values]
        hook("hydra._internal.config_loader_impl.ConfigLoaderImpl._apply_overrides_to_config")(again, config)
    return config


def as_job(config, read):
    """`read(config)` with the job's HydraConfig set, as run_job sets it (`${hydra:...}` reads the job's)."""
    from hydra.core.hydra_config import HydraConfig

    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        return read(config)
    finally:
        HydraConfig.instance().cfg = saved


def job_subdir(config) -> str:
    """The job's dir under hydra.sweep.dir, evaluated as run_job evaluates it (with the job's HydraConfig)."""
    return as_job(config, lambda c: str(OmegaConf.select(c, "hydra.sweep.subdir")))


class _Base:
    """A shape's config as Hydra composed it, pickled (fresh copies come from the bytes), and a scratch copy that
    checks and job dirs are worked out in."""

    def __init__(self, config: DictConfig):
        self.data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        self.cache = OmegaConf.get_cache(config)  # what a fresh copy has resolved already (Hydra's composing only)
        self.scratch: DictConfig | None = None

    def fresh(self) -> DictConfig:
        return pickle.loads(self.data)

    def reset_cache(self) -> None:
        """The scratch copy's resolved ${now:} and the like as a fresh copy has them (the master's, which Hydra
        copies into every config it composes), not as the last job resolved them."""
        OmegaConf.set_cache(self.scratch, self.cache)  # a copy of it


def _is_value(override, groups: set) -> bool:
    """An override that sets one plain value of the composed config (`lr=0.1`, `+x=3`, `++y=a`)."""
    from hydra.core.override_parser.types import OverrideType

    key = override.key_or_group
    return (override.type in (OverrideType.CHANGE, OverrideType.ADD, OverrideType.FORCE_ADD)
            and override.package is None and not override.is_sweep_override() and not override.is_hydra_override()
            and key != "hydra" and "/" not in key and key not in groups
            and not isinstance(override.value(), (dict, list)))


def _touch(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class ComposeOnce:
    """Installed on the sweep's config loader in place of its `load_sweep_config`: Hydra composes one config per
    shape, the rest are built from it (see the module's doc). The sweeper's checks (Hydra's
    `Sweeper.validate_batch_is_legal`, which throws the config away) are made on a scratch copy; anyone else gets
    a config of their own. While composing takes long, it says how far it got."""

    EVERY_S = 5.0
    BASES = 1000  # shapes kept (13 KB or so each): a sweep whose every config is a shape of its own stays bounded
    SCRATCHES = 8  # shapes whose scratch copy is kept (a sweep over a few group choices alternates them)

    def __init__(self, config_loader) -> None:
        self.compose = config_loader.load_sweep_config  # Hydra's own, bound
        self.bases: OrderedDict[tuple, _Base] = OrderedDict()  # the newest BASES shapes (a batch keeps its own)
        self.groups: set[str] = set()  # config groups, as the configs composed so far chose them
        self.scratched: OrderedDict[tuple, _Base] = OrderedDict()
        self.checked: set[tuple] = set()  # overrides the sweeper checked, until the launcher takes them
        self.lock = threading.RLock()
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

    def __deepcopy__(self, memo):  # a copy of the config loader (in Hydra's Singleton state) gets Hydra's own
        import copy

        return copy.deepcopy(self.compose, memo)

    def __reduce__(self):
        return self.compose.__reduce__()

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        caller = sys._getframe(1)
        checking = caller.f_code is _validate_code()  # Hydra's own check, which drops what it gets
        with self.lock:
            self.note(len(caller.f_locals.get("batch") or ()) if checking else 0)
            key, base, recipe, parsed = self.plan(master_config, sweep_overrides, num=0)
            if checking:  # what can fail: the values (the rest is Hydra's own composition of the base)
                config = self.scratch(key, base, recipe, parsed)
                self.checked.add(tuple(sweep_overrides))
                return config
            return composed(base.fresh(), recipe, parsed)

    def plan(self, master_config: DictConfig, overrides: Sequence[str], num: int) -> tuple[tuple, _Base, Recipe, tuple]:
        """The shape of these overrides, its base (composed by Hydra the first time), the job's recipe (its base
        index is left 0: the batch numbers its bases), and its values and task overrides parsed."""
        with self.lock:
            parsed = parse_overrides(overrides)
            key, values = self.shape(master_config, parsed)
            base = self.bases.get(key)
            if base is None:
                config = self.compose(master_config, list(overrides))  # raises what Hydra raises for bad input
                self.groups |= set(config.hydra.runtime.choices or {})  # `model=cnn` is no value: it picks a file
                key, values = self.shape(master_config, parsed)
                base = self.bases[key] = _Base(config)  # the job's own config: a base for its shape as seen now
                while len(self.bases) > self.BASES:
                    self.bases.popitem(last=False)
            task = [o for o in parsed if not o.is_hydra_override()]
            recipe = Recipe(0, num, tuple(o.input_line for o in values), tuple(o.input_line for o in task))
            return key, base, recipe, (values, task)

    def shape(self, master_config: DictConfig, parsed: list) -> tuple[tuple, list]:
        """The key of the shape of these overrides, and those of them that are its values."""
        from hydra.core.override_parser.types import OverrideType

        values = [o for o in parsed if _is_value(o, self.groups)]
        others = [o for o in parsed if not _is_value(o, self.groups)]
        keys = [o.key_or_group for o in values]
        edits = [o.key_or_group for o in others  # what edits the composed config (a group choice is made before)
                 if not o.is_hydra_override() and not (o.key_or_group in self.groups and o.type != OverrideType.DEL)]
        if (any(_touch(a, b) for i, a in enumerate(keys) for b in keys[i + 1:])
                or any(_touch(k, e) for k in keys for e in edits)):
            values, others = [], parsed  # overrides that touch each other: Hydra applies them in their order
        return (id(master_config), tuple(o.input_line for o in others),
                tuple((o.key_or_group, o.type) for o in values)), values

    def scratch(self, key: tuple, base: _Base, recipe: Recipe, parsed: tuple, sweep_dir: str | None = None):
        """The job's config built on its shape's scratch copy, which the next job of the shape overwrites; without
        `sweep_dir`, its values alone are applied (a check)."""
        with self.lock:
            if base.scratch is None:
                base.scratch = base.fresh()
            self.scratched[key] = base
            self.scratched.move_to_end(key)
            while len(self.scratched) > self.SCRATCHES:
                self.scratched.popitem(last=False)[1].scratch = None
            try:
                if sweep_dir is None:
                    return apply_values(base.scratch, parsed[0])
                return build(base.scratch, recipe, sweep_dir, parsed)
            except BaseException:
                base.scratch = None  # half-built
                raise

    def subdir(self, key: tuple, base: _Base, recipe: Recipe, parsed: tuple, sweep_dir: str) -> str:
        """The job's dir under the sweep dir, worked out on its shape's scratch copy."""
        with self.lock:
            config = self.scratch(key, base, recipe, parsed, sweep_dir)
            base.reset_cache()
            return job_subdir(config)

    def read_each(self, master_config: DictConfig, batch: Sequence[Sequence[str]], first_num: int, sweep_dir: str,
                  read, per_shape) -> list:
        """`read(config)` of each job's config (job first_num + i gets batch[i]), built on its shape's scratch copy
        as run_job sees it; once per shape where `per_shape(config)` says its jobs' values cannot change it."""
        with self.lock:
            answers, known = [], {}
            for i, overrides in enumerate(batch):
                key, base, recipe, parsed = self.plan(master_config, overrides, first_num + i)
                if key in known:
                    answers.append(known[key])
                    continue
                config = self.scratch(key, base, recipe, parsed, sweep_dir)
                answers.append(as_job(config, read))
                base.reset_cache()
                if per_shape(config):
                    known[key] = answers[-1]
            return answers

    def check(self, master_config: DictConfig, batch: Sequence[Sequence[str]]) -> None:
        """Every config of the batch can be made (Hydra's errors otherwise), before any of it is staged: those
        the sweeper checked already are not checked again."""
        with self.lock:
            for overrides in batch:
                if tuple(overrides) not in self.checked:
                    key, base, recipe, parsed = self.plan(master_config, overrides, num=0)
                    self.scratch(key, base, recipe, parsed)
            self.checked.clear()

    def note(self, of: int) -> None:
        now = time.monotonic()
        if now - self.last_call > 1.0:  # a new burst of composing
            self.burst_start, self.burst, self.last_note = now, 0, now
        self.burst += 1
        self.last_call = now
        if now - self.last_note >= self.EVERY_S:
            self.last_note = now
            log.info(f"Composing configs: {self.burst:,}{f' of {of:,}' if of else ' so far'} "
                     f"({self.burst / max(now - self.burst_start, 1e-3):,.0f}/s)")


def _validate_code():
    return hook("hydra.plugins.sweeper.Sweeper.validate_batch_is_legal")


class ComposedBatch(NamedTuple):
    """A batch of jobs as the launcher stages them: the bases of their shapes, a recipe and a job dir per job."""

    first: int
    sweep_dir: str
    bases: list  # pickled base configs (_Base.data)
    recipes: list  # Recipe, in job order
    subdirs: list  # each job's dir under the sweep dir
    resources: tuple | list = ()  # each job's _resources.Resources (none: the launcher's own, for all)

    def config(self, i: int) -> DictConfig:
        """Job first+i's config, made anew (the launcher keeps none)."""
        recipe = self.recipes[i]
        return build(pickle.loads(self.bases[recipe.base]), recipe, self.sweep_dir)

    def base_configs(self) -> list:
        return [pickle.loads(data) for data in self.bases]


FIRST_CHUNK = 16


def chunks(size: int, whole: bool = False) -> list[tuple[int, int]]:
    """A batch of `size` jobs in chunks staged and submitted one after the other, each twice the one before: the
    first jobs are queued at once, whatever the batch's size, in few arrays (one chunk: `whole`)."""
    bounds, start, step = [], 0, FIRST_CHUNK
    while start < size:
        stop = size if whole else min(size, start + step)
        bounds.append((start, stop))
        start, step = stop, step * 2
    return bounds


def compose_batch(composer: ComposeOnce, master_config: DictConfig, job_overrides: Sequence[Sequence[str]],
                  first_num: int, sweep_dir: Path, resources: Sequence = ()) -> ComposedBatch:
    """Job first_num + i of the batch gets job_overrides[i], as Hydra's basic launcher numbers them; `resources`:
    what each job asks (_resources.py)."""
    bases: dict[int, int] = {}  # id(_Base) -> its index in this batch
    data, recipes, subdirs = [], [], []
    for i, overrides in enumerate(job_overrides):
        num = first_num + i
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        key, base, recipe, parsed = composer.plan(master_config, overrides, num)
        if id(base) not in bases:
            bases[id(base)] = len(data)
            data.append(base.data)
        recipe = recipe._replace(base=bases[id(base)])
        recipes.append(recipe)
        subdirs.append(composer.subdir(key, base, recipe, parsed, str(sweep_dir)))
    return ComposedBatch(first_num, str(sweep_dir), data, recipes, subdirs, list(resources))
