"""The search space from Hydra's override grammar (as Hydra's Optuna sweeper reads it), and a point of it
back to overrides. A module of its own, with the sweeper's error: Hydra's plugin scan runs the sweeper's
module again (its classes anew) but leaves modules whose names start with "_" alone."""

from __future__ import annotations

try:
    from hydra.errors import CompactHydraException
except ImportError:  # the ask/tell core (_optimizer.py), which imports this package, runs without Hydra too
    CompactHydraException = Exception


class SweepError(CompactHydraException):
    """Settings to fix before anything is submitted, or why the sweep stopped: one line per problem (Hydra prints
    it without a traceback)."""

    def __init__(self, problems: list[str]):
        super().__init__("thompson sweeper:\n  - " + "\n  - ".join(problems))
        self.problems = problems


def search_space(params: dict | None, arguments: list[str]):
    """The Space of `hydra.sweeper.params` and the command line's sweeps, and the overrides that stay fixed.
    interval(a, b) is a float; tag(log, ...) searches it on a log scale; range(a, b[, step]) is a grid of
    numbers from a up to b (excluded, as in Python and Hydra's basic sweeper); choice(...) or x,y,z one of
    the values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    from hydra_plugins.hydra_thompson_sweeper._optimizer import Dimension, Space

    lines = [f"{name}={value}" for name, value in flat(params or {})] + list(arguments)
    dimensions, fixed, problems = [], [], []
    for override in OverridesParser.create().parse_overrides(lines):
        name = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        sweep = override.value()
        log_scale = "log" in getattr(sweep, "tags", set())
        try:
            if isinstance(sweep, IntervalSweep):
                dimensions.append(Dimension.interval(name, sweep.start, sweep.end, log=log_scale))
            elif isinstance(sweep, RangeSweep):
                values = sorted(override.sweep_iterator())
                if not values:
                    raise ValueError(f"{override.input_line} holds no value")
                step = abs(sweep.step) if len(values) > 1 else 1
                dimensions.append(Dimension.integers(name, values[0], values[-1], step, log=log_scale)
                                  if len(values) > 1 else Dimension.choice(name, values))
            elif isinstance(sweep, ChoiceSweep):
                dimensions.append(Dimension.choice(name, list(override.sweep_iterator())))
            else:
                raise ValueError(f"{override.input_line}: only interval, range and choice sweeps are searched")
        except ValueError as error:  # each message names the parameter
            problems.append(str(error))
    if problems:
        raise SweepError(problems)
    if not dimensions:
        raise SweepError(["nothing to search: give hydra.sweeper.params (in a config file, or on the command line "
                          "as a quoted string: `'+hydra.sweeper.params.lr=\"tag(log, interval(1e-4, 1e-1))\"'`) "
                          "or a sweep override of your config (`lr='tag(log, interval(1e-4, 1e-1))'`)"])
    return Space(dimensions), fixed


def flat(params: dict, prefix: str = ""):
    """(dotted name, value): `hydra.sweeper.params.model.hidden=...` on a command line nests `model`."""
    for name, value in params.items():
        if isinstance(value, dict):
            yield from flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def override(name: str, value) -> str:
    """`name=value` as Hydra parses it back to `value`."""
    from hydra.core.override_parser.types import escape_special_characters

    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = escape_special_characters(value)
    else:
        text = str(value)
    return f"{name}={text}"
