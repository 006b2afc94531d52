"""Run experiments as independent, resumable units (experiment grid point x seed).

A *unit* is one model: a validated experiment (one point of its sweep) trained from one seed.
The seed sets the data draw and split (``[split] resample = true``), the initialization and the
shuffling. Its ``run_id`` hashes the experiment's digest (validated config and the hashes of its
builder's source and data files), the seed and the reglab version, so an edited file reruns and
an unchanged one is never recomputed. Each finished unit is written to
``<out>/runs/<experiment>/<run_id>.json`` (+ ``.pt`` weights, ``.npz`` arrays), every file
atomically; the JSON, written last, records each file's sha256, and a unit counts as done only
when they match (``store.py``). ``execute`` trains the pending units of one grid point in one
vectorized ``fit_many`` group (``group.py``) from its experiment's plan (``plan.py``, made once,
after the checks of ``prepare.py``), in the order and
the processes ``schedule.py`` gives; the metrics come from ``evaluate.py``. Training decisions (early stopping, best weights) see only the
validation split; the reported scores come from the test split (and a fresh sample where the
distribution is known).
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .build import splits_of
from .current import mark_current
from .evaluate import FRESH_SAMPLES, evaluate_run
from .files import own_folder, write_json
from .group import group_cost
from .notes import earlier_note, failure_notes
from .plan import Plan, forget_splits, group_key, prepare
from .results import write_results_csv
from .schedule import Scheduler, Task, compose
from .schema import ConfigError, ExperimentSpec
from .store import Unit, load_model, load_runs, verified

__all__ = ["Unit", "plan_units", "prepare", "execute", "run_unit", "load_runs", "load_model", "FRESH_SAMPLES",
           "write_json", "evaluate_run", "splits_of"]


def plan_units(specs: Sequence[ExperimentSpec], seeds: int | None = None, baselines: bool = True) -> list[Unit]:
    """Every experiment x seed, plus each experiment's unregularized baseline (experiments whose
    baselines are identical share one)."""
    all_specs: list[ExperimentSpec] = []
    seen: set[str] = set()
    if baselines:
        _check_baselines_differ(specs)
    for s in specs:
        if baselines and not s.is_baseline:
            b = s.baseline()
            if b.name not in seen:
                seen.add(b.name)
                all_specs.append(b)
        all_specs.append(s)
    units = []
    for s in all_specs:
        n = seeds if seeds is not None else s.seeds
        units.extend(Unit(s, seed) for seed in range(n))
    return units


def _check_baselines_differ(specs: Sequence[ExperimentSpec]) -> None:
    """An experiment file none of whose grid points differs from its baseline would be compared
    with itself (+0 by construction): a ``ConfigError`` naming the file and ``[baseline] args``.
    (One grid point that equals its baseline, a sweep's strength 0, is a point of the grid.)"""
    files: dict[tuple[str, str], list[ExperimentSpec]] = {}
    for s in specs:
        if not s.is_baseline:
            files.setdefault((s.path, s.name), []).append(s)
    for (path, name), points in files.items():
        if all(p.trains_as_baseline() for p in points):
            hint = ("its builder's own regularization (dropout, a weight decay argument) stays on unless "
                    "[baseline] args turns it off, e.g. [baseline] args = {dropout = 0.0}"
                    if points[0].model.builder is not None else
                    "it has no regularizer, constraint, dropout, early stopping or weight decay")
            raise ConfigError(f"{path}: baseline: the experiment {name!r} trains exactly what its unregularized "
                              f"baseline trains, so the comparison would be +0 by construction: {hint}; or run it "
                              "with --no-baselines")


def execute(units: Iterable[Unit], out: str | Path, progress: bool = True,
            on_group_done: Callable[[ExperimentSpec, list[int]], None] | None = None,
            workers: int = 1, side_tasks: Sequence[tuple[Callable[..., Any], tuple]] = (),
            threads: int | None = None, backend: str = "local", address: str | None = None,
            record: str | None = "merge", gpus_per_task: float = 0.0, results: bool = True,
            say: Callable[[str], None] | None = None, plans: Mapping[str, Plan] | None = None) -> dict[str, Any]:
    """Run the pending units, one ``fit_many`` group per experiment grid point, each from its
    experiment's plan (``plans``, as ``prepare`` returns them; those missing are made first, so
    every check runs before anything trains); finished units are skipped (resume).

    First the units' experiments are recorded as the current ones in ``out/current.json``
    (``current.py``; ``record="replace"``: they alone, ``None``: not recorded), so the tables
    never mix their runs with an earlier version's: give it every grid point of each experiment.

    ``workers`` processes train at once: this one and ``workers - 1`` helpers (``helpers.py``),
    each on its share of the cores when there is more than one (``reglab.threads.per_worker``:
    one each on this 2-core machine) -- a group of small models is bound by per-step overhead,
    not arithmetic, so two cores train two groups in the time of one. ``threads`` is passed to
    every group's ``fit_many`` (None: the thread rule, capped by that share). The
    tasks go costliest first (estimated: ``_group_cost``), to this process as to the helpers, so
    the last to finish are the cheapest and the processes end close together. A helper gets its
    next task the moment it finishes one, claimed and sent from the pool's thread while this
    process trains; nothing is handed to a helper before it is free, so at the end no task waits
    on a busy helper while this process idles. ``side_tasks``
    (picklable ``(function, args)``, e.g. a regularization path) are scheduled first; their
    results are returned in ``"side"``, in order.

    A unit gets the numbers it gets in any other run of the study, whatever else is pending
    (``Plan.group_rule``): where one model alone would train on other kernels it trains beside a twin
    (written only if pending itself); where only the same group gives the same numbers, a grid
    point with some units finished trains its whole planned group again and writes only the
    missing units.

    Each group is trained under its lock (``locks.py``): a group another process holds is left
    to it, waited for at the end, and only the units it left unfinished are trained. On Ctrl-C
    the helpers are interrupted too; finished groups stay written, interrupted ones write
    nothing, and ``KeyboardInterrupt`` is raised.

    ``backend="ray"`` sends every task to Ray instead (``ray_backend.py``; ``address``: a cluster
    to join, default a local instance for this run; ``workers`` is ignored): the same groups,
    locks, files and numbers; ``"where"`` in the result counts the tasks per node. Each task asks
    Ray for ``gpus_per_task`` GPUs (a fraction packs several tasks onto one GPU; the experiments'
    device is then ``"cuda"``: ``devices.place``).

    When training is done: ``"runs"`` in the result holds every finished run under ``out`` of the
    experiment files as they are now (``load_runs``, read once), ``"earlier"`` those of earlier
    versions, kept and left out; each line of ``notes.py`` (runs that diverged, earlier runs left
    out) goes to ``say`` (default: ``warnings.warn``); ``results=True`` writes ``out/results.csv``
    (``"results_csv"``), as ``reglab run`` does.
    """
    out = Path(out)
    units = list(units)
    try:
        info = _train(units, out, progress, on_group_done, workers, side_tasks, threads, backend, address, record,
                      gpus_per_task, dict(plans or {}))
    finally:
        forget_splits()  # the run is over: the splits kept would only hold memory
    info["earlier"] = []
    info["runs"] = load_runs(out, left_out=info["earlier"])
    say = say or (lambda line: warnings.warn(line, stacklevel=3))
    for line in failure_notes(units, info["runs"]) + [earlier_note(info["earlier"], out)]:
        if line is not None:
            say(line)
    if results:
        info["results_csv"] = write_results_csv(out, info["runs"])
    return info


def _train(units: list[Unit], out: Path, progress: bool, on_group_done: Any, workers: int,
           side_tasks: Sequence[tuple[Callable[..., Any], tuple]], threads: int | None, backend: str,
           address: str | None, record: str | None, gpus_per_task: float, plans: dict[str, Plan]) -> dict[str, Any]:
    """``execute``'s training: the checks and plans, the current record, the tasks and their
    scheduler."""
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray'; got {backend!r}")
    if record not in ("merge", "replace", None):
        raise ValueError(f"record must be 'merge', 'replace' or None; got {record!r}")
    for name in sorted({u.spec.name for u in units}):  # reglab's own folders, or an error naming what is there
        own_folder(out, "runs", name)
    own_folder(out, "locks")
    planned, pending, skipped = _pending(units, out)
    # each pending group's plan, in this thread (it builds a model), before anything is written
    plans.update(prepare(us[0].spec for key, us in pending.items() if key not in plans))
    if record is not None:
        mark_current(out, units, replace=record == "replace")  # before training: finished units are current
    group_tasks = [compose(us, planned[key], plans[key], out) for key, us in pending.items()]
    group_tasks.sort(key=lambda t: -group_cost(t.units[0].spec, len(t.units)))
    tasks = collections.deque([Task(side=(i, fn, args)) for i, (fn, args) in enumerate(side_tasks)] + group_tasks)
    return Scheduler(tasks, out, len(side_tasks), skipped, sum(len(t.written) for t in group_tasks), progress,
                     threads, workers, backend, address, gpus_per_task, on_group_done).run()


def _pending(units: list[Unit], out: Path) -> tuple[dict[str, list[Unit]], dict[str, list[Unit]], int]:
    """Per grid point (digest and name), its planned units and those not finished, and how many
    are finished."""
    pending: dict[str, list[Unit]] = {}
    planned: dict[str, list[Unit]] = {}
    skipped = 0
    for u in units:
        key = group_key(u.spec)
        planned.setdefault(key, []).append(u)
        if u.done(out):
            skipped += 1
        else:
            pending.setdefault(key, []).append(u)
    return planned, pending, skipped


def run_unit(unit: Unit, out: str | Path) -> dict:
    """Run one unit on its own (what a distributed executor would call per task): its JSON row,
    with the numbers ``execute`` gives it (``compose``: beside a twin where that matters)."""
    out = Path(out)
    if verified(unit.path(out)) is None:  # not recorded: the driver records the whole plan (``execute``)
        _train([unit], out, False, None, 1, (), None, "local", None, None, 0.0, {})
    return verified(unit.path(out))
