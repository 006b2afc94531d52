"""What a run says when its training is done, in one wording for the Python API and the CLI
(``runner.execute`` hands each line to its ``say``): the experiments with runs that diverged,
and the runs of earlier versions of the experiment files that are kept but left out."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .current import named
from .store import Unit

__all__ = ["failure_notes", "earlier_note"]


def failure_notes(units: Iterable[Unit], runs: list[dict]) -> list[str]:
    """One line per grid point with runs that diverged (kept, marked failed and left out of the
    statistics; ``runs``: ``load_runs``' rows)."""
    by_id = {(r["experiment"], Path(r["_path"]).stem): r for r in runs}  # where each unit's file lies
    failed: dict[str, list[int]] = {}
    total: dict[str, int] = {}
    for u in units:
        row = by_id.get((u.spec.name, u.run_id))
        point = ", ".join(f"{k} = {v}" for k, v in u.spec.sweep_point.items())
        name = u.spec.name + (f" [{point}]" if point else "")  # each grid point on its own
        total[name] = total.get(name, 0) + 1
        if row is not None and row.get("failed"):
            failed.setdefault(name, []).append(u.seed)
    return [f"diverged: {name}: {len(seeds)} of {total[name]} seed(s) ({', '.join(map(str, seeds[:10]))}"
            f"{', ...' if len(seeds) > 10 else ''}); kept as failed runs, left out of the statistics and "
            "counted in the report" for name, seeds in failed.items()]


def earlier_note(earlier: list[dict], out: Path) -> str | None:
    """How many runs of earlier versions of the experiment files lie under ``out`` and are left
    out (``reglab.experiments.current``); None where there are none."""
    if not earlier:
        return None
    return (f"note: {len(earlier)} run(s) of earlier versions of {named(earlier)} are kept under {out}/runs "
            "and left out of the results and the report (the experiment files, their builders or data "
            "changed since, or the study no longer lists them)")
