"""Which finished runs under a results folder belong to the experiment files as last run there.

A run's id hashes its experiment's digest (the validated file, its builder's source, its data
files), so an edited file trains new runs; the earlier version's runs stay under ``runs/`` (never
deleted: nothing finished is lost) but must never be mixed with the new ones -- a table with both
would pair old-code runs with a new baseline. ``execute`` (so ``reglab run`` and ``reglab study``)
records, before anything trains, the digests of every experiment it is given (``mark_current``) in
``<out>/current.json``::

    {"experiments": {"<name>": {"digests": ["<digest>", ...], "baselines": ["<baseline name>", ...]}},
     "only": false}

Each experiment it is given gets its entry replaced (give it every grid point of a file, as
``plan_units`` does); the other entries are kept (a folder may hold the runs of several
commands), unless ``replace`` (``reglab study``: the folder is the study's, and an experiment
it no longer lists is no longer current): then the record holds its experiments alone and says
``"only": true``, which later merges keep.

A non-baseline run is *current* (``split_current``) when its digest is in its experiment's entry,
or its experiment has no entry and the record is not ``only`` (a folder written before the record
existed, or by code that does not record). A baseline run is current when, besides that, some
entry lists it among its baselines or some current run names it as its baseline: an edited model
gives its experiment a new baseline, and the old one is then no experiment's. Reverting an edit
makes the first version current again, and its runs are reused. Only names and digests are read from the record, never a path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock

from .files import own_file, write_json

__all__ = ["mark_current", "split_current", "named", "CurrentRecordError", "RECORD"]

RECORD = "current.json"


class CurrentRecordError(ValueError):
    """``<out>/current.json`` cannot be read as the record it should be."""


def _read(out: Path) -> tuple[dict[str, dict[str, Any]], bool] | None:
    p = Path(out) / RECORD
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CurrentRecordError(f"{p}: cannot be read ({e})") from None
    try:
        doc = json.loads(text)
        entries, only = doc["experiments"], doc.get("only", False)
        ok = isinstance(only, bool) and isinstance(entries, dict) and all(
            isinstance(e, dict) and all(isinstance(e.get(k), list) and all(isinstance(d, str) for d in e[k])
                                        for k in ("digests", "baselines")) for e in entries.values())
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CurrentRecordError(f"{p}: damaged (expected {{\"experiments\": {{name: {{\"digests\": [...], "
                                 f"\"baselines\": [...]}}}}, \"only\": true|false}}); delete it: then "
                                 f"every finished run under {p.parent} counts, of every version, until each experiment "
                                 "file is run there again")
    return entries, only


def mark_current(out: str | Path, units: Iterable[Any], replace: bool = False,
                 baselines: dict[str, list[str]] | None = None) -> None:
    """Record the planned ``units``' experiments as the current ones (see the module): each
    experiment named by a unit gets the digests of its planned units; other entries are kept
    (``replace``: dropped). ``baselines``: more baselines (by name) an experiment is compared
    with besides its own (``reglab tune``'s tuned baseline). Under a lock, so concurrent runs on
    one folder each add their own."""
    out = Path(out)
    planned: dict[str, dict[str, Any]] = {}
    for u in units:
        s = u.spec
        e = planned.setdefault(s.name, {"digests": [], "baselines": []})
        if s.digest() not in e["digests"]:
            e["digests"].append(s.digest())
            if not s.is_baseline and s.baseline().name not in e["baselines"]:
                e["baselines"].append(s.baseline().name)
    for name, more in (baselines or {}).items():
        if name not in planned or isinstance(more, str):
            raise ValueError(f"baselines: {name!r}: expected an experiment among the units and a list of baseline "
                             f"names; got {more!r}")
        planned[name]["baselines"].extend(b for b in more if b not in planned[name]["baselines"])
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(own_file(out / f".{RECORD}.lock"))):
        entries, only = ({}, True) if replace else (_read(out) or ({}, False))
        entries.update(planned)
        write_json(out / RECORD, {"experiments": entries, "only": only})


def split_current(out: str | Path, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(current, earlier)``: the finished runs ``rows`` (``load_runs``') of the experiment files
    as recorded, and those of earlier versions (see the module)."""
    got = _read(Path(out))
    if got is None:
        return list(rows), []
    entries, only = got

    def recorded(r: dict) -> bool:
        e = entries.get(r["experiment"])
        return not only if e is None else r.get("digest") in e["digests"]

    kept = [r for r in rows if not r.get("is_baseline") and recorded(r)]
    named = {b for e in entries.values() for b in e["baselines"]} | {r.get("baseline") for r in kept}
    current, earlier = [], []
    for r in rows:
        keep = recorded(r) and (not r.get("is_baseline") or r["experiment"] in named)
        (current if keep else earlier).append(r)
    return current, earlier


def named(earlier: list[dict]) -> str:
    """The experiments of ``earlier`` runs for a message: their names, sorted, the first six."""
    names = sorted({r["experiment"] for r in earlier})
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
