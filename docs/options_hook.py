"""MkDocs hook: the option tables of docs/options.md, written from the config dataclasses and their comments.

A line `<!-- options: module:Class -->` in a page becomes a table of that dataclass's fields (name, default, the
comment above the field), so the reference cannot miss an option nor drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re

MARKER = re.compile(r"^<!-- options: ([\w.]+):(\w+) -->$", re.MULTILINE)


def comments(cls: type) -> dict[str, str]:
    """Each field's comment (its own class's or an inherited one): the `#` lines right above it; a field with
    none shares the one above it."""
    found: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            found.update(own_comments(base))
    return found


def own_comments(cls: type) -> dict[str, str]:
    lines, _ = inspect.getsourcelines(cls)
    found: dict[str, str] = {}
    last = ""
    for node in ast.parse(inspect.getsource(cls)).body[0].body:
        if not isinstance(node, ast.AnnAssign):
            continue
        above = []
        number = node.lineno - 2  # the line above the field, 0-based
        while number >= 0 and lines[number].strip().startswith("#"):
            above.insert(0, lines[number].strip().lstrip("#").strip())
            number -= 1
        last = " ".join(above) if above else last
        found[node.target.id] = last
    return found


def default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def options(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    said = comments(cls)
    return [(f.name, default(f), said.get(f.name, "")) for f in dataclasses.fields(cls)
            if not f.name.startswith("_") and f.name not in skip]


def table(cls: type) -> str:
    parents = [base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)]
    inherited = tuple(f.name for base in parents for f in dataclasses.fields(base))
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for name, value, meaning in options(cls, skip=inherited):
        cell = meaning.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
        rows.append(f"| `{name}` | `{value}` | {cell} |" if value else f"| `{name}` | | {cell} |")
    if parents:
        rows.append("")
        rows.append(f"Plus every option of `{parents[0].__name__}` above.")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_) -> str:
    def replace(match: re.Match) -> str:
        return table(getattr(importlib.import_module(match[1]), match[2]))

    return MARKER.sub(replace, markdown)
