"""One experiment grid point's units trained together: ``train_group`` trains the pending seeds
in one ``fit_many`` group, from the experiment's plan (``plan.py``: its engine's group rule is
how a unit's numbers depend on the group it trains in, which the scheduler, ``schedule.py``,
uses to give every unit the numbers it gets in any other run), and writes each finished unit to
the run store (``store.py``: the weights and arrays atomically, then the JSON that lists their
sha256)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from .. import devices as _grammar
from . import devices as _devices
from .code import file_sha256
from .evaluate import evaluate_run
from .files import atomic_write, own_folder, write_json
from .plan import Plan, plan_of
from .schema import ExperimentSpec
from .store import Unit

__all__ = ["train_group", "train_together", "train_group_task", "group_cost", "jsonable"]


def train_group(spec: ExperimentSpec, seeds: Sequence[int], out: Path, progress: bool = False,
                threads: int | None = None, write: Iterable[int] | None = None, plan: Plan | None = None) -> list[dict]:
    """Train the units (spec, seed) for ``seeds`` together in one ``fit_many`` group and write
    the results of those in ``write`` (default: all). An interrupted group writes nothing and
    raises ``KeyboardInterrupt``. ``threads``: as ``fit_many``'s (None: ``reglab.threads``' rule).
    ``plan``: the experiment's (default: ``plan_of(spec)``)."""
    return train_together([spec], seeds, out, progress, threads, write, plan)


def train_together(specs: Sequence[ExperimentSpec], seeds: Sequence[int], out: Path, progress: bool = False,
                   threads: int | None = None, write: Iterable[int] | None = None,
                   plan: Plan | None = None) -> list[dict]:
    """``train_group`` for several grid points at once: the units (spec, seed) for every spec and
    seed in one ``fit_many`` group (model ``i`` is ``product(seeds, specs)[i]``, as ``fit_many``'s
    grid orders them). The specs must differ only in what their builders build (their data,
    split and ``[train]`` are the first's, whose plan trains them): the grid points of one
    ``reglab tune`` batch."""
    write = set(seeds if write is None else write)
    t0 = time.perf_counter()
    spec = specs[0]
    plan = plan or plan_of(spec)
    apart = spec.split.resample and len(seeds) > 1  # each seed its own split
    order = [(s, j) for s in seeds for j in range(len(specs))]
    by_seed = {s: plan.splits(s) for s in (seeds if apart else seeds[:1])}
    data = [by_seed[s if apart else seeds[0]] for s, _ in order]
    if len(specs) == 1:
        build, grid = plan.builder(), None
    else:
        builders = [plan.builder(sp) for sp in specs]
        build, grid = (lambda j: builders[j]()), [{"j": j} for j in range(len(specs))]
    res = plan.fit(build, seeds, grid, data, shared=not apart, progress=progress, threads=threads)
    if res.interrupted:
        raise KeyboardInterrupt(f"{spec.name}: interrupted; its {len(order)} unfinished run(s) were not written")
    wall = time.perf_counter() - t0
    where = _grammar.record(_devices.of(spec))
    out_rows = []
    for i, (seed, j) in enumerate(order):
        if seed not in write:
            continue
        sp = specs[j]
        unit = Unit(sp, seed)
        base = None if sp.is_baseline else sp.baseline().name
        failed = res.failed.get(i)
        result, arrays = evaluate_run(sp, res.models[i], data[i], res.histories[i], arrays_for_report=seed == seeds[0])
        title = sp.title.replace("default loss", plan.loss_name)
        row = {"run_id": unit.run_id, "experiment": sp.name, "title": title, "seed": seed,
               "version": __version__, "config": sp.config, "digest": sp.digest(), "inputs": sp.inputs,
               "task": plan.task, "loss_name": plan.loss_name, "is_baseline": sp.is_baseline,
               "baseline": base, "sweep": sp.sweep_point, "validation_is_test": plan.validation_is_test,
               "history": res.histories[i].to_dict(), "failed": jsonable(failed), "group_wall_time": wall,
               "group_size": len(order), "engine": res.engine, "engine_reason": res.engine_reason,
               "threads": res.threads, **where, **({"classes": plan.classes} if plan.classes is not None else {}),
               **result}
        path = unit.path(out)
        own_folder(out, "runs", sp.name)
        files = {}
        if arrays:
            atomic_write(path.with_suffix(".npz"), lambda f: np.savez_compressed(f, **arrays))
            files[".npz"] = file_sha256(path.with_suffix(".npz"))
        state = {k: v.detach().cpu() for k, v in res.models[i].state_dict().items()}
        atomic_write(path.with_suffix(".pt"), lambda f: torch.save(state, f))
        files[".pt"] = file_sha256(path.with_suffix(".pt"))
        row["files"] = files
        write_json(path, row)  # last: a verified JSON marks the unit done
        out_rows.append(row)
    return out_rows


def jsonable(v: Any) -> Any:
    if v is None:
        return None
    return json.loads(json.dumps(v, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def group_cost(spec: ExperimentSpec, n: int) -> float:
    t = spec.train
    return t.epochs * (1.0 + 300 / t.batch_size) * (1 + n / 100)  # steps dominate; M adds little


def train_group_task(spec: ExperimentSpec, plan: Plan, seeds: list[int], out: str, write: list[int],
                     threads: int | None = None) -> int:
    """Helper-process and Ray entry point: the validated spec and its plan cross as they are
    (plain data, pickled), nothing is rebuilt from raw parts."""
    train_group(spec, seeds, Path(out), write=write, threads=threads, plan=plan)
    return len(write)
