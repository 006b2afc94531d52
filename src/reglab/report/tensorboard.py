"""A results folder as TensorBoard logs: ``export_tensorboard(out, logdir)``.

One TensorBoard *run* per trained model (``LOGDIR/<experiment>[/point-<digest>]/seed-<n>``), with

- its history as scalars, one step per epoch, tags ``epoch/<key>`` (``epoch/loss``,
  ``epoch/val_loss``, ``epoch/accuracy``, ...: what ``reglab.History`` logged);
- its final metrics as scalars at the last epoch, tags ``final/<metric>`` (``final/test_accuracy``,
  ``final/excess_log_loss``, ...: the columns of ``results.csv``);
- its settings as HParams: ``experiment``, ``baseline`` (the experiment it is compared with; ""
  for a baseline), ``is_baseline`` and each ``[[sweep]]`` path (a swept table as its JSON); the
  seed is not an HParam, and the HParams *trial* (session group) of every seed of one grid point is
  that grid point's name, so TensorBoard's HParams dashboard shows one trial per grid point with
  one session per seed and aggregates the seeds' final metrics (mean, median, min, max).

``LOGDIR/`` also gets the experiment's HParams configuration (every HParam with its values, every
``final/`` metric). Everything is written with the ``tensorboard`` package's own event writer and
protocol buffers (``pip install 'reglab[tensorboard]'``); TensorFlow is not needed.

``LOGDIR`` must be a new or empty folder, or one this function wrote before (it keeps a manifest,
``LOGDIR/reglab-tensorboard.json``, written before the logs): then the event files in the folders
it listed are replaced and nothing else in the folder is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..experiments.results import METRIC_PREFIXES, check_one_engine, sweep_cell
from ..experiments.store import load_runs

__all__ = ["export_tensorboard", "check_logdir", "trial_of", "TensorBoardError", "MANIFEST"]

MANIFEST = "reglab-tensorboard.json"


class TensorBoardError(ValueError):
    """A LOGDIR that cannot take the export (a file, a folder of other files), or no tensorboard."""


def _tensorboard():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise TensorBoardError("the TensorBoard export needs the tensorboard package: "
                               "pip install 'reglab[tensorboard]'") from None
    return event_pb2, summary_pb2, summary_v2, EventFileWriter


def check_logdir(logdir: str | Path) -> Path:
    """``logdir`` as a Path if the export may write there (see the module docstring); else a
    ``TensorBoardError`` saying why. Called before anything trains (``--tensorboard``)."""
    p = Path(logdir)
    _tensorboard()
    if p.exists() and not p.is_dir():
        raise TensorBoardError(f"{p}: the TensorBoard log folder is a file; give a new or empty folder")
    above = next((q for q in p.parents if q.exists()), None)
    if above is not None and not above.is_dir():
        raise TensorBoardError(f"{p}: {above} is a file, so the TensorBoard log folder cannot be made there")
    if p.is_dir() and any(p.iterdir()) and not (p / MANIFEST).is_file():
        raise TensorBoardError(f"{p}: the folder holds files that no reglab export wrote (no {MANIFEST}); give a "
                               "new or empty folder (TensorBoard would show the other logs as runs of this study)")
    return p


def _owned(p: Path) -> list[Path]:
    """The folders an earlier export into ``p`` listed in its manifest (each checked to lie under
    ``p``: a name read from a file never leads out of it)."""
    try:
        listed = json.loads((p / MANIFEST).read_text()).get("folders", [])
    except (OSError, ValueError, AttributeError):
        return []
    root, folders = p.resolve(), []
    for name in listed if isinstance(listed, list) else []:
        f = (p / str(name)).resolve()
        if f.is_relative_to(root) and f.is_dir():
            folders.append(f)
    return folders


def _clear(folders: list[Path]) -> None:
    """Remove the TensorBoard event files directly in ``folders`` (nothing else)."""
    for f in folders:
        for e in f.glob("events.out.tfevents.*"):
            if e.is_file() and not e.is_symlink():
                e.unlink()


def _hparam_value(v: Any) -> Any:
    """A sweep value as an HParam value (bool, number or string)."""
    v = sweep_cell(v)
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v)


def trial_of(row: dict) -> tuple[str, str]:
    """``(trial name, folder under LOGDIR)`` of the row's grid point."""
    sweep = row.get("sweep") or {}
    if not sweep:
        return row["experiment"], row["experiment"]
    at = ", ".join(f"{k}={_hparam_value(v)}" for k, v in sweep.items())
    point = hashlib.sha256(json.dumps(sweep, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{row['experiment']} [{at}]", f"{row['experiment']}/point-{point}"  # never a path read from the run


def _hparam(hp: Any, name: str, values: set) -> Any:
    """The HParam ``name`` with its values as its domain where they share a type (else none)."""
    try:
        return hp.HParam(name, hp.Discrete(sorted(values, key=lambda v: (str(type(v)), v))))
    except (TypeError, ValueError):
        return hp.HParam(name)


def export_tensorboard(out: str | Path, logdir: str | Path) -> dict[str, int]:
    """Write every finished run in the results folder ``out`` as TensorBoard logs in ``logdir``
    (see the module docstring). Returns ``{"runs": ..., "trials": ...}``."""
    event_pb2, summary_pb2, hp, EventFileWriter = _tensorboard()
    if not Path(out).is_dir():
        raise FileNotFoundError(f"{out}: no such results folder")
    p = check_logdir(logdir)
    rows = load_runs(out)
    if not rows:
        hint = (f"; a tune's runs are in {Path(out) / 'search'} (the search) and {Path(out) / 'final'} (the final "
                "comparison)" if (Path(out) / "tune.sqlite3").is_file() else "")
        raise TensorBoardError(f"{out}: no finished runs to export (none under {Path(out) / 'runs'}){hint}")
    check_one_engine(rows)
    from ..experiments.files import write_json

    old = _owned(p)
    p.mkdir(parents=True, exist_ok=True)
    new = sorted({f"{trial_of(r)[1]}/seed-{int(r['seed'])}" for r in rows}) + ["."]
    # the manifest first: an export cut short leaves a folder the next one may clear and rewrite
    manifest = {"written_by": "reglab export tensorboard", "results": str(Path(out).resolve())}
    write_json(p / MANIFEST, {**manifest, "folders": sorted({os.path.relpath(f, p.resolve()) for f in old} | set(new))})
    _clear(old + [p / f for f in new])
    now = time.time()

    def scalar(tag: str, value: float) -> Any:
        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])

    trials, metrics, values = set(), set(), {}
    for row in sorted(rows, key=lambda r: (r["experiment"], json.dumps(r.get("sweep") or {}, sort_keys=True,
                                                                        default=str), int(r["seed"]))):
        trial, folder = trial_of(row)
        trials.add(trial)
        hparams = {"experiment": row["experiment"], "baseline": row.get("baseline") or "",
                   "is_baseline": bool(row.get("is_baseline"))}
        hparams.update({f"sweep/{k}": _hparam_value(v) for k, v in (row.get("sweep") or {}).items()})
        for k, v in hparams.items():
            values.setdefault(k, set()).add(v)
        w = EventFileWriter(str(p / folder / f"seed-{int(row['seed'])}"))
        w.add_event(event_pb2.Event(wall_time=now, step=0, summary=hp.hparams_pb(hparams, trial_id=trial,
                                                                                 start_time_secs=now)))
        hist = (row.get("history") or {})
        epochs, logged = hist.get("epoch") or [], hist.get("history") or {}
        for key, series in logged.items():
            for e, v in zip(epochs, series):
                if isinstance(v, (int, float)) and math.isfinite(v):
                    w.add_event(event_pb2.Event(wall_time=now, step=int(e), summary=scalar(f"epoch/{key}", v)))
        last = int(epochs[-1]) if epochs else 0
        if not row.get("failed"):
            for key, v in sorted((row.get("metrics") or {}).items()):
                if key.startswith(METRIC_PREFIXES) and isinstance(v, (int, float)) and math.isfinite(v):
                    metrics.add(key)
                    w.add_event(event_pb2.Event(wall_time=now, step=last, summary=scalar(f"final/{key}", v)))
        w.close()
    config = hp.hparams_config_pb([_hparam(hp, k, v) for k, v in sorted(values.items())],
                                  [hp.Metric(f"final/{m}", display_name=m) for m in sorted(metrics)],
                                  time_created_secs=now)
    w = EventFileWriter(str(p))
    w.add_event(event_pb2.Event(wall_time=now, step=0, summary=config))
    w.close()
    write_json(p / MANIFEST, {**manifest, "folders": new})
    return {"runs": len(rows), "trials": len(trials)}
