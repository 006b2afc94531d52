"""An experiment file's ``[[search]]`` table: what ``reglab tune`` searches, checked once.

Each entry names a place in the file (``path``, the same keys and indexes as a ``[[sweep]]``
path, or ``paths``: several places that take one value, e.g. the L2 strength of every layer) and
its range::

    [[search]]
    path = ["regularize", "params", "@kernels", "l2"]
    # name = "l2"            # what results call it (default: the path joined by "/")
    # baseline = true        # (a [train] value only) the baseline's schedule is searched over it too
    low = 1e-6
    high = 1e-1
    log = true               # sample log(value) uniformly; needs low > 0
    # int = true             # integers from low to high (both integers)
    # choices = ["relu", "tanh"]   # instead of low/high: one of these values

An entry with ``baseline = true`` (a ``[train]`` value: the learning rate, the epochs) is also
searched, with the same budget, for the experiment's unregularized baseline, so that the chosen
setting is compared with a baseline tuned as hard. A ``run`` or ``study`` trains the file as written (its own values at those places) and ignores
the table; it is checked all the same, so a bad search is said before anything trains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .keypath import column, get_at
from .sections import ConfigError, expect, is_int, is_num, unknown
from .spec import PRESENTATION

__all__ = ["Dimension", "search_space", "MAX_DIMENSIONS"]

MAX_DIMENSIONS = 32
KEYS = {"path", "paths", "name", "low", "high", "log", "int", "choices", "baseline"}


@dataclass(frozen=True)
class Dimension:
    """One searched value: the places it is written (``paths``), and its range (``low``,
    ``high``, ``log``, ``integer``) or its ``choices``. ``column`` names it in results."""

    paths: tuple[tuple, ...]
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None
    name: str | None = None
    baseline: bool = False

    @property
    def column(self) -> str:
        """The entry's ``name``, else its (first) path joined by "/"."""
        return self.name or column(list(self.paths[0]))

    def suggest(self, trial: Any) -> Any:
        """This dimension's value for an Optuna ``trial`` (its ``suggest_*`` by the range's kind)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.column, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.column, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.column, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.column} in {list(self.choices)}"
        kind = "integers" if self.integer else "log-uniform" if self.log else "uniform"
        return f"{self.column} from {self.low:g} to {self.high:g} ({kind})"


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, str)) or is_num(v)


def _dimension(raw: Mapping, entry: Any, file: str, where: str, swept: set[str]) -> Dimension:
    expect(isinstance(entry, Mapping), file, where, "a table with path = [...] and low/high or choices", entry)
    unknown(entry, KEYS, file, where)
    if ("path" in entry) == ("paths" in entry):
        raise ConfigError(f"{file}: {where}: give path = [...] (one place) or paths = [[...], ...] (places that take "
                          "one value), one of the two")
    paths = [entry["path"]] if "path" in entry else entry["paths"]
    key = f"{where}.{'path' if 'path' in entry else 'paths'}"
    expect(isinstance(paths, list) and 0 < len(paths) <= 64, file, key, "one to 64 paths", paths)
    for p in paths:
        expect(isinstance(p, list) and p and p[0] not in ("sweep", "search"), file, key,
               "a non-empty list of keys and indexes", p)
        expect(p[0] not in PRESENTATION + ("name",), file, key,
               "a key that changes what is trained (not name, seeds, title, description or reference)", p)
        get_at(raw, p, file, key)
        if column(p) in swept:
            raise ConfigError(f"{file}: {key}: {column(p)!r} is swept too ([[sweep]]); a value is searched or "
                              "swept, not both")
    base = entry.get("baseline", False)
    expect(isinstance(base, bool), file, f"{where}.baseline", "true or false", base)
    if base and any(p[0] != "train" for p in paths):
        raise ConfigError(f"{file}: {where}.baseline: only a value of [train] (the schedule an experiment and its "
                          "baseline share) is searched for the baseline too; got a path into "
                          f"{[p[0] for p in paths if p[0] != 'train'][0]!r}")
    name = entry.get("name")
    if name is not None:
        expect(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.@/-]{1,80}", name) is not None, file,
               f"{where}.name", "a short name (letters, digits, _ . @ / -) for the searched value", name)
    if "choices" in entry:
        ch = entry["choices"]
        extra = sorted(set(entry) & {"low", "high", "log", "int"})
        if extra:
            raise ConfigError(f"{file}: {where}: choices = [...] or low/high, not both (got {extra} too)")
        expect(isinstance(ch, list) and 0 < len(ch) <= 1000 and all(_scalar(c) for c in ch), file,
               f"{where}.choices", "a non-empty list of numbers, strings or booleans", ch)
        if len({(type(c).__name__, c) for c in ch}) != len(ch):
            raise ConfigError(f"{file}: {where}.choices: each value once; got {ch!r}")
        return Dimension(tuple(tuple(p) for p in paths), choices=tuple(ch), name=name, baseline=base)
    for k in ("low", "high"):
        if k not in entry:
            raise ConfigError(f"{file}: {where}: {k}: missing; a range needs low and high (or give choices = [...])")
        expect(is_num(entry[k]), file, f"{where}.{k}", "a finite number", entry[k])
    low, high = entry["low"], entry["high"]
    log = entry.get("log", False)
    integer = entry.get("int", False)
    expect(isinstance(log, bool), file, f"{where}.log", "true or false", log)
    expect(isinstance(integer, bool), file, f"{where}.int", "true or false", integer)
    if not low < high:
        raise ConfigError(f"{file}: {where}: low must be below high; got low = {low!r}, high = {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{file}: {where}: log = true needs a positive low (log of {low!r} is undefined); got "
                          f"low = {low!r}")
    if integer and not (is_int(low) and is_int(high)):
        raise ConfigError(f"{file}: {where}: int = true needs integer bounds; got low = {low!r}, high = {high!r}")
    return Dimension(tuple(tuple(p) for p in paths), float(low) if not integer else low,
                     float(high) if not integer else high, log, integer, name=name, baseline=base)


def search_space(raw: Mapping, file: str, swept: set[str]) -> list[Dimension]:
    """The file's ``[[search]]`` entries, each checked (``swept``: the ``[[sweep]]`` columns);
    ``[]`` where it has none."""
    entries = raw.get("search", [])
    expect(isinstance(entries, list), file, "search", "an array of tables [[search]]", entries)
    if len(entries) > MAX_DIMENSIONS:
        raise ConfigError(f"{file}: search: {len(entries)} entries; at most {MAX_DIMENSIONS}")
    dims = [_dimension(raw, e, file, f"search[{i}]", swept) for i, e in enumerate(entries)]
    cols = [column(list(p)) for d in dims for p in d.paths]
    if len(set(cols)) != len(cols):
        twice = next(c for c in cols if cols.count(c) > 1)
        raise ConfigError(f"{file}: search: {twice!r} is searched twice; each place once")
    names = [d.column for d in dims]
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: search: two entries are named {next(n for n in names if names.count(n) > 1)!r}")
    return dims
