"""Which finished runs under a results folder belong to the experiment files as they are now.

A run's id hashes its experiment's digest (the validated file, its builder's source, its data
files), so an edited file trains new runs; the earlier version's runs stay under ``runs/`` (never
deleted: nothing finished is lost) but must never be mixed with the new ones -- a table with both
would pair old-code runs with a new baseline. ``reglab run`` and ``reglab study`` record, before
anything trains, the digests of every experiment they plan (``mark_current``) in
``<out>/current.json``::

    {"experiments": {"<name>": {"digests": ["<digest>", ...], "baselines": ["<baseline name>", ...]}}}

replacing the entries of the experiments they plan and keeping the others (a folder may hold the
runs of several commands). A run is *current* (``split_current``) when its experiment has no
entry (a folder written without one), or its digest is in its experiment's entry and, for a
baseline, some entry names it among its baselines (one per grid point; an edited model gives
its experiment a new baseline: the old one is then no experiment's). Reverting an edit makes the first version current
again, and its runs are reused. Only names and digests are read from the record, never a path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock

from .files import write_json

__all__ = ["mark_current", "split_current", "CurrentRecordError", "RECORD"]

RECORD = "current.json"


class CurrentRecordError(ValueError):
    """``<out>/current.json`` cannot be read as the record it should be."""


def _read(out: Path) -> dict[str, dict[str, Any]] | None:
    p = Path(out) / RECORD
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CurrentRecordError(f"{p}: cannot be read ({e})") from None
    try:
        doc = json.loads(text)
        entries = doc["experiments"]
        ok = isinstance(entries, dict) and all(
            isinstance(e, dict) and all(isinstance(e.get(k), list) and all(isinstance(d, str) for d in e[k])
                                        for k in ("digests", "baselines")) for e in entries.values())
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CurrentRecordError(f"{p}: damaged (expected {{\"experiments\": {{name: {{\"digests\": [...], "
                                 f"\"baselines\": [...]}}}}}}); delete it to count every finished run under {p.parent} "
                                 f"as current, or run the experiment files again to rewrite it")
    return entries


def mark_current(out: str | Path, units: Iterable[Any]) -> None:
    """Record the planned ``units``' experiments as the current ones (see the module): each
    experiment named by a unit gets the digests of its planned units; other entries are kept.
    Under a lock, so concurrent runs on one folder each add their own."""
    out = Path(out)
    planned: dict[str, dict[str, Any]] = {}
    for u in units:
        s = u.spec
        e = planned.setdefault(s.name, {"digests": [], "baselines": []})
        if s.digest() not in e["digests"]:
            e["digests"].append(s.digest())
            if not s.is_baseline and s.baseline().name not in e["baselines"]:
                e["baselines"].append(s.baseline().name)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / f".{RECORD}.lock")):
        entries = _read(out) or {}
        entries.update(planned)
        write_json(out / RECORD, {"experiments": entries})


def split_current(out: str | Path, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(current, earlier)``: the finished runs ``rows`` (``load_runs``') of the experiment files
    as recorded, and those of earlier versions (see the module)."""
    entries = _read(Path(out))
    if entries is None:
        return list(rows), []
    named = {b for e in entries.values() for b in e["baselines"]}
    current, earlier = [], []
    for r in rows:
        e = entries.get(r["experiment"])
        keep = e is None or (r.get("digest") in e["digests"] and (not r.get("is_baseline") or r["experiment"] in named))
        (current if keep else earlier).append(r)
    return current, earlier
