"""The chosen setting against its unregularized baseline on fresh seeds: the search's one look at
the test split (``tune``'s step 2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..experiments.current import mark_current
from ..experiments.runner import execute
from ..experiments.store import Unit
from .objective import Searchable, describe_params

__all__ = ["final_comparison"]


def final_comparison(s: Searchable, params: Mapping[str, Any], seeds: list[int], out: Path,
                     tuned_baseline: Mapping[str, Any] | None = None, progress: bool = False,
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the setting ``params`` and its baseline on ``seeds`` into ``out`` (reusing finished
    runs) -- and the baseline at the schedule its own search chose (``tuned_baseline``), which
    the report's "best plain baseline" comparison then weighs against the own baseline on the
    validation split -- and write ``out``'s report (paired comparisons on the test split).
    Returns ``{"folder", "report", "comparisons": rows of comparisons.csv for the setting, "trained"}``."""
    from ..report.comparisons import load_comparisons
    from ..report.render import write_report

    spec = s.at(params)
    bases = [spec.baseline()]
    if tuned_baseline is not None and s.baseline_at(tuned_baseline, params).digest() != bases[0].digest():
        bases.append(s.baseline_at(tuned_baseline, params))
    units = [Unit(b, seed) for b in bases for seed in seeds] + [Unit(spec, seed) for seed in seeds]
    mark_current(out, units, replace=True, baselines={spec.name: [b.name for b in bases[1:]]})
    info = execute(units, out, progress=progress, record=None, say=say)
    shown = describe_params(params, "g")
    paths = write_report(out, title=f"{spec.name} tuned: {shown}, on {len(seeds)} fresh seeds",
                         intro=(f"The setting `reglab tune` chose on the validation split ({shown}) against its "
                                f"unregularized baseline, each trained on seeds {seeds[0]}-{seeds[-1]}, which the "
                                "search never used; scored on the test split."))
    comp = load_comparisons(out)
    rows = comp[comp.experiment == spec.name].to_dict("records")
    own_name = spec.baseline().name  # "best plain baseline" rows that repeat the own baseline's say nothing more
    rows = [c for c in rows if c.get("comparison", "own baseline") == "own baseline" or c["baseline"] != own_name]
    own = [c for c in rows if c.get("comparison", "own baseline") == "own baseline"]
    same = spec.trains_as_baseline() or bool(own) and all(  # L2(0), say: the same numbers, seed for seed
        float(c["estimate"]) == 0.0 and float(c["ci_low"]) == 0.0 == float(c["ci_high"]) for c in own)
    return {"same_as_baseline": same, "folder": out, "report": Path(paths["html"]), "markdown": Path(paths["markdown"]), "comparisons": rows,
            "trained": info["trained"]}
