"""A study's results as a table: ``load_results(out)`` -> one pandas row per finished run.

Columns: ``experiment``, ``is_baseline``, ``baseline`` (the baseline this experiment is compared
with; empty for a baseline), ``seed``, ``task``, ``loss_name``, ``epochs_run``, ``failed``, one
column per sweep path (keys joined by "/"; a swept table or array as its JSON), and the metrics
``val_<m>``, ``test_<m>`` (plus ``fresh_<m>``, ``bayes_<m>``, ``excess_<m>`` where the
distribution is known), ``<m>`` in the task's metrics (``log_loss, accuracy, brier, ece`` or
``mse, mae, r2``). A figure that could not
be computed (a failed run, a metric that does not apply) is empty (NaN in the frame, an empty cell
in ``results.csv``), never a made-up number.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .files import write_text
from .store import load_runs

__all__ = ["load_results", "results_frame", "write_results_csv", "sweep_cell", "sweep_order", "METRIC_PREFIXES",
           "check_one_engine", "engine_of"]

METRIC_PREFIXES = ("val_", "test_", "fresh_", "bayes_", "excess_")
ID_COLUMNS = ["experiment", "is_baseline", "baseline", "seed", "task", "loss_name", "epochs_run", "failed"]


def _finite(v: Any) -> Any:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def sweep_cell(v: Any) -> Any:
    """A sweep point's value as a table cell: a number or string as it is, a swept table or
    array as its JSON (keys sorted), so that it can be compared, grouped and sorted."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def sweep_order(v: Any) -> tuple:
    """A sort key for ``sweep_cell`` values of one column, numbers (by value) before strings."""
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def engine_of(row: dict) -> str:
    """The engine that trained a run: the kernel and its version where the history records one
    (``"fused/2"``), else the run's engine kind (``"dense"``, ``"vmap"``, ``"loop"``)."""
    meta = (row.get("history") or {}).get("meta") or {}
    return str(meta.get("engine") or row.get("engine") or "")


def check_one_engine(rows: list[dict]) -> None:
    """Refuse a grid point of an experiment whose seeds were trained by two engines (say the
    eager and the fused Dense-stack engine: an earlier reglab, or a machine without a compiler,
    trained some): their numbers differ by float32 rounding, and a table or comparison over seeds
    must not mix them silently. Two grid points may train on two engines (a sweep over the
    activation: relu on the fused engine, tanh on the eager one)."""
    seen: dict[tuple[str, str], dict[str, list[int]]] = {}
    for r in rows:
        point = json.dumps(r.get("sweep") or {}, sort_keys=True, default=str)
        seen.setdefault((r["experiment"], point), {}).setdefault(engine_of(r), []).append(int(r["seed"]))
    for (name, point), engines in seen.items():
        if len(engines) > 1:
            which = "; ".join(f"{e or 'unrecorded'}: seeds {sorted(s)}" for e, s in sorted(engines.items()))
            at = f" at {point}" if point != "{}" else ""
            raise ValueError(f"experiment {name!r}{at}: its runs were trained by different engines ({which}), whose "
                             "numbers differ by float32 rounding; delete the runs of one engine from its runs/ folder "
                             "(they are trained again), or run the study into a fresh --out")


def results_frame(rows: list[dict]):
    """The table of ``load_runs`` rows (see the module docstring); the runs of one experiment
    must come from one engine (``check_one_engine``)."""
    import pandas as pd

    check_one_engine(rows)
    records = []
    sweep_cols: list[str] = []
    for r in rows:
        m = r.get("metrics", {})
        failed = bool(r.get("failed"))
        rec = {"experiment": r["experiment"], "is_baseline": bool(r.get("is_baseline")), "baseline": r.get("baseline"),
               "seed": int(r["seed"]), "task": r.get("task"), "loss_name": r.get("loss_name"),
               "epochs_run": int(m.get("epochs_run", 0)), "failed": failed}
        for k, v in (r.get("sweep") or {}).items():
            rec[k] = sweep_cell(v)
            if k not in sweep_cols:
                sweep_cols.append(k)
        for k, v in m.items():
            if k.startswith(METRIC_PREFIXES):
                rec[k] = math.nan if failed else _finite(v)
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    metric_cols = sorted({c for c in df.columns if c.startswith(METRIC_PREFIXES)},
                         key=lambda c: (METRIC_PREFIXES.index(c[:c.index("_") + 1]), c))
    df = df[ID_COLUMNS + sweep_cols + metric_cols]
    return df.sort_values(["is_baseline", "experiment", *sweep_cols, "seed"], kind="stable").reset_index(drop=True)


def load_results(out: str | Path):
    """Every finished run under ``out`` as a pandas ``DataFrame`` (see the module docstring)."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a results folder (a path); got {out!r} of type {type(out).__name__}")
    if not Path(out).is_dir():
        raise FileNotFoundError(f"{out}: no such results folder")
    return results_frame(load_runs(out))


def write_results_csv(out: str | Path, runs: list[dict] | None = None) -> Path:
    """``out/results.csv``: the table of ``load_results`` (empty cells where a figure is missing);
    ``runs``: ``load_runs(out)``, where the caller has just read them."""
    p = Path(out) / "results.csv"
    write_text(p, (load_results(out) if runs is None else results_frame(runs)).to_csv(index=False, na_rep=""))
    return p
