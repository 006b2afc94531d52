"""One experiment grid point's units trained together: ``train_group`` trains the pending seeds
in one ``fit_many`` group and writes each finished unit to the run store (``store.py``: the
weights and arrays atomically, then the JSON that lists their sha256); ``group_rule`` says how
a unit's numbers depend on the group it trains in (the engine ``choose_engine`` picks), so the
scheduler (``schedule.py``) can give every unit the numbers it gets in any other run."""

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
from ..training.sources import draws_random
from ..vectorized.fit_many import fit_many
from . import devices as _devices
from .build import builder, early_stopping, loss_name, loss_of, splits_of, training_data
from .code import file_sha256
from .evaluate import evaluate_run
from .files import atomic_write, own_folder, write_json
from .prepare import take_probe
from .schema import ExperimentSpec
from .store import Unit

__all__ = ["train_group", "train_together", "train_group_task", "group_cost", "engine_choice", "group_rule", "jsonable"]


def train_group(spec: ExperimentSpec, seeds: Sequence[int], out: Path, progress: bool = False,
                threads: int | None = None, write: Iterable[int] | None = None) -> list[dict]:
    """Train the units (spec, seed) for ``seeds`` together in one ``fit_many`` group and write
    the results of those in ``write`` (default: all). An interrupted group writes nothing and
    raises ``KeyboardInterrupt``. ``threads``: as ``fit_many``'s (None: ``reglab.threads``' rule)."""
    return train_together([spec], seeds, out, progress, threads, write)


def train_together(specs: Sequence[ExperimentSpec], seeds: Sequence[int], out: Path, progress: bool = False,
                   threads: int | None = None, write: Iterable[int] | None = None) -> list[dict]:
    """``train_group`` for several grid points at once: the units (spec, seed) for every spec and
    seed in one ``fit_many`` group (model ``i`` is ``product(seeds, specs)[i]``, as ``fit_many``'s
    grid orders them). The specs must differ only in what their builders build (their data,
    split and ``[train]`` are the first's): the grid points of one ``reglab tune`` batch."""
    write = set(seeds if write is None else write)
    t0 = time.perf_counter()
    spec = specs[0]
    resample = spec.split.resample
    by_seed = {s: splits_of(spec, s) if resample else None for s in seeds}
    sp0 = by_seed[seeds[0]] if resample else splits_of(spec, 0)
    order = [(s, j) for s in seeds for j in range(len(specs))]
    data = [by_seed[s] if resample else sp0 for s, _ in order]
    tr = spec.train
    apart = resample and len(seeds) > 1

    def per_model(attr: str) -> Any:
        return [getattr(d, attr) for d in data] if apart else getattr(sp0, attr)

    if len(specs) == 1:
        build, grid = builder(spec, sp0.input_shape, sp0.n_outputs), None
    else:
        builders = [builder(sp, sp0.input_shape, sp0.n_outputs) for sp in specs]
        build, grid = (lambda j: builders[j]()), [{"j": j} for j in range(len(specs))]
    device = _devices.of(spec)
    x, y = training_data(data, shared=not apart)
    res = fit_many(build, x, y, seeds=list(seeds), grid=grid, loss=loss_of(spec, sp0.task), optimizer=tr.optimizer,
                   epochs=tr.epochs, batch_size=tr.batch_size, validation_data=(per_model("x_val"), per_model("y_val")),
                   callbacks=early_stopping(spec), progress=progress, threads=threads, device=device,
                   metrics=("accuracy",) if sp0.task != "regression" else ())
    if res.interrupted:
        raise KeyboardInterrupt(f"{spec.name}: interrupted; its {len(order)} unfinished run(s) were not written")
    wall = time.perf_counter() - t0
    where = _grammar.record(device)
    out_rows = []
    for i, (seed, j) in enumerate(order):
        if seed not in write:
            continue
        sp = specs[j]
        unit = Unit(sp, seed)
        base = None if sp.is_baseline else sp.baseline().name
        failed = res.failed.get(i)
        result, arrays = evaluate_run(sp, res.models[i], data[i], res.histories[i], arrays_for_report=seed == seeds[0])
        title = sp.title.replace("default loss", loss_name(sp, sp0.task))
        row = {"run_id": unit.run_id, "experiment": sp.name, "title": title, "seed": seed,
               "version": __version__, "config": sp.config, "digest": sp.digest(), "inputs": sp.inputs,
               "task": sp0.task, "loss_name": loss_name(sp, sp0.task), "is_baseline": sp.is_baseline,
               "baseline": base, "sweep": sp.sweep_point, "validation_is_test": sp0.validation_is_test,
               "history": res.histories[i].to_dict(), "failed": jsonable(failed), "group_wall_time": wall,
               "group_size": len(order), "engine": res.engine, "engine_reason": res.engine_reason,
               "threads": res.threads, **where, **({"classes": sp0.classes} if sp0.classes is not None else {}),
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


def train_group_task(spec: ExperimentSpec, seeds: list[int], out: str, write: list[int],
                     threads: int | None = None) -> int:
    """Helper-process and Ray entry point: the validated spec crosses as it is (a frozen
    dataclass of plain data, pickled), nothing is rebuilt from raw parts."""
    train_group(spec, seeds, Path(out), write=write, threads=threads)
    return len(write)


def engine_choice(spec: ExperimentSpec, n_models: int = 2) -> Any:
    """The engine ``choose_engine`` picks for a group of ``n_models`` of the experiment's models
    (model 0 built as seed 0's -- the one ``prepare`` built, where it ran in this process --
    probed on seed 0's first examples): an ``EngineChoice``."""
    from .. import losses as _losses
    from ..engines.choose import choose_engine
    from ..training.engine import ArrayData
    from ..training.fit import prepare_arrays

    sp = splits_of(spec, 0)
    probe = take_probe(spec)
    if probe is None:
        torch.manual_seed(0)
        out = builder(spec, sp.input_shape, sp.n_outputs)()
        probe = out if isinstance(out, tuple) else (out, loss_of(spec, sp.task))
    model, lo = probe
    lo = _losses.get(lo)
    p0 = next(model.parameters())
    data = ArrayData(*prepare_arrays(model, sp.x_train[:2], sp.y_train[:2], lo, p0.dtype, p0.device))
    sets = sp.training()  # examples read one by one: each model reads (and augments) its own
    return choose_engine(model, lo, data.probe_batch(), n_models=n_models, optimizer=spec.train.optimizer,
                         arrays=sets is None, data_draws=sets is not None and draws_random(sets))


def group_rule(spec: ExperimentSpec) -> str:
    """How a unit's numbers depend on the ``fit_many`` group it trains in: the rule of the engine
    ``choose_engine`` picks for the experiment's group (``EngineChoice.group_rule``) --

    - ``"any"``: not at all -- the Dense-stack engine, alone or in a group of any size (at 1
      and 2 threads alike);
    - ``"threads"``: not on the group, but on the thread count, as its kernels' own numbers do --
      the per-model loop, each model as ``fit`` trains it alone;
    - ``"pairs"``: at a given thread count, the same in every group of two or more -- the vmap
      engine, whose optimizer steps each model's tensors apart and whose dropout masks come from
      each model's own generator; one model alone trains on the loop, whose kernels (a
      convolution, a batch norm) round differently from their batched forms.

    Each tested at 1 and 2 threads."""
    return engine_choice(spec).group_rule
