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


def parse_space(spec: dict):
    """The Space of {name: sweep}, each sweep written in Hydra's override grammar as on a command line
    (`tag(log, interval(1e-5, 1e-1))`, `range(1, 9)`, `choice(relu, gelu)`, `a,b,c`), read without Hydra: the
    forms search_space reads with Hydra's own parser (tests/test_study.py holds the two to the same spaces)."""
    from hydra_plugins.hydra_thompson_sweeper._optimizer import Space

    dimensions, problems = [], []
    for name, text in flat(spec):
        try:
            dimensions.append(_dimension(name, str(text).strip(), log=False))
        except ValueError as error:
            problems.append(f"{name}={text}: {error}" if not str(error).startswith(name) else str(error))
    if problems:
        raise SweepError(problems)
    return Space(dimensions)


def _dimension(name: str, text: str, log: bool):
    from hydra_plugins.hydra_thompson_sweeper._optimizer import Dimension

    function, args = _call(text)
    if function == "tag":
        return _dimension(name, args[-1], log=log or "log" in args[:-1])
    if function == "interval":
        low, high = (_scalar(a) for a in _two(args, 2))
        return Dimension.interval(name, low, high, log=log)
    if function == "range":
        numbers = [_scalar(a) for a in _two(args, 3)]
        start, stop, step = (numbers + [1])[:3]
        values = list(_range(start, stop, step))
        if not values:
            raise ValueError("it holds no value")
        return (Dimension.integers(name, min(values), max(values), abs(step), log=log) if len(values) > 1
                else Dimension.choice(name, values))
    choices = args if function == "choice" else _split(text)
    if function is None and len(choices) < 2:
        raise ValueError("a single value is no search: interval(a, b), range(a, b), choice(a, b) or a,b")
    return Dimension.choice(name, [_scalar(c) for c in choices])


def _call(text: str) -> tuple[str | None, list[str]]:
    """("interval", ["0", "1"]) of "interval(0, 1)"; (None, []) of anything else."""
    for function in ("tag", "interval", "range", "choice"):
        if text.startswith(function) and text[len(function):].lstrip().startswith("(") and text.endswith(")"):
            inner = text[len(function):].lstrip()[1:-1]
            return function, _split(inner)
    return None, []


def _split(text: str) -> list[str]:
    """Comma-separated items at the top level (not inside parentheses or quotes)."""
    items, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += char
    return [*items, current.strip()] if current.strip() or items else []


def _two(args: list[str], most: int) -> list[str]:
    if not 2 <= len(args) <= most:
        raise ValueError(f"takes 2{' or 3' if most == 3 else ''} numbers")
    return args


def _range(start, stop, step):
    if step == 0:
        raise ValueError("the step must not be 0")
    value, count = start, 0
    while (value < stop if step > 0 else value > stop) and count < 100_000:
        yield value
        count += 1
        value = start + count * step


def _scalar(text: str):
    """A value as Hydra's grammar reads it: a number, true/false/null, a quoted or a plain string."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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
