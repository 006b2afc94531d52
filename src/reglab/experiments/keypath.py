"""A place in a parsed experiment file, named by a list of keys and indexes (a ``[[sweep]]`` or
``[[search]]`` path): its results column (``column``), reading it (``get_at``: an error names
the file, the entry and what is there instead) and writing it (``set_at``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .sections import ConfigError, is_int

__all__ = ["column", "get_at", "set_at"]


def column(path: list) -> str:
    """A sweep path as a results column: its keys joined by "/"."""
    return "/".join(str(p) for p in path)


def get_at(raw: Any, path: list, file: str, where: str) -> Any:
    """The value at ``path`` in ``raw``; ``where`` names the entry that asks (``sweep[0].path``)."""
    node = raw
    for i, key in enumerate(path):
        here = column(path[:i + 1])
        if isinstance(node, str):
            raise ConfigError(f"{file}: {where}: {column(path[:i])!r} is the bare alias {node!r}; write it as a table "
                              f"(e.g. {{name = {node!r}, ...}}) to sweep one of its arguments")
        if isinstance(node, list):
            if not is_int(key) or not 0 <= key < len(node):
                raise ConfigError(f"{file}: {where}: {here!r}: expected an index below {len(node)}; got {key!r}")
        elif isinstance(node, Mapping):
            if key not in node:
                raise ConfigError(f"{file}: {where}: {here!r} is not in the file; the keys there are {sorted(node)}")
        else:
            raise ConfigError(f"{file}: {where}: {column(path[:i])!r} holds a value, not a table or list")
        node = node[key]
    return node


def set_at(raw: Any, path: list, value: Any) -> None:
    """Put ``value`` at ``path`` (which ``get_at`` found) in ``raw``."""
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
