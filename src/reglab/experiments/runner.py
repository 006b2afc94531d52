"""Run experiments as independent, resumable units (experiment grid point x seed).

A *unit* is one model: a validated experiment (one point of its sweep) trained from one seed.
The seed sets the data draw and split (``[split] resample = true``), the initialization and the
shuffling. Its ``run_id`` hashes the experiment's digest (validated config and the hashes of its
builder's source and data files), the seed and the reglab version, so an edited file reruns and
an unchanged one is never recomputed. Each finished unit is written to
``<out>/runs/<experiment>/<run_id>.json`` (+ ``.pt`` weights, ``.npz`` arrays), every file
atomically; the JSON, written last, records each file's sha256, and a unit counts as done only
when they match (``store.py``). ``execute`` trains the pending units of one grid point in one
vectorized ``fit_many`` group (``train_group``), after the checks of ``prepare.py``; the metrics
come from ``evaluate.py``. Training decisions (early stopping, best weights) see only the
validation split; the reported scores come from the test split (and a fresh sample where the
distribution is known).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from .. import threads as _threads
from ..vectorized.fit_many import fit_many
from .build import builder, early_stopping, loss_name, loss_of, splits_of, training_data
from .code import file_sha256
from .current import mark_current
from .evaluate import FRESH_SAMPLES, evaluate_run
from .prepare import prepare
from .store import Unit, load_model, load_runs, verified
from .. import devices as _grammar
from . import devices as _devices
from ..training.sources import draws_random
from .files import atomic_write, own_folder, write_json
from .schema import ConfigError, ExperimentSpec

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
                    if "builder" in points[0].config["model"] else
                    "it has no regularizer, constraint, dropout, early stopping or weight decay")
            raise ConfigError(f"{path}: baseline: the experiment {name!r} trains exactly what its unregularized "
                              f"baseline trains, so the comparison would be +0 by construction: {hint}; or run it "
                              "with --no-baselines")


def train_group(spec: ExperimentSpec, seeds: Sequence[int], out: Path, progress: bool = False,
                threads: int | None = None, write: Iterable[int] | None = None) -> list[dict]:
    """Train the units (spec, seed) for ``seeds`` together in one ``fit_many`` group and write
    the results of those in ``write`` (default: all). An interrupted group writes nothing and
    raises ``KeyboardInterrupt``. ``threads``: as ``fit_many``'s (None: ``reglab.threads``' rule)."""
    write = set(seeds if write is None else write)
    t0 = time.perf_counter()
    resample = spec.config["split"].get("resample", True)
    data = [splits_of(spec, s) for s in seeds] if resample else [splits_of(spec, 0)] * len(seeds)
    sp0 = data[0]
    tr = spec.config["train"]

    def per_model(attr: str) -> Any:
        return [getattr(d, attr) for d in data] if resample and len(seeds) > 1 else getattr(sp0, attr)

    device = _devices.of(spec)
    x, y = training_data(data, shared=not (resample and len(seeds) > 1))
    res = fit_many(builder(spec, sp0.input_shape, sp0.n_outputs), x, y,
                   seeds=list(seeds), loss=loss_of(spec, sp0.task), optimizer=tr["optimizer"], epochs=tr["epochs"],
                   batch_size=tr["batch_size"], validation_data=(per_model("x_val"), per_model("y_val")),
                   callbacks=early_stopping(spec), progress=progress, threads=threads, device=device,
                   metrics=("accuracy",) if sp0.task != "regression" else ())
    if res.interrupted:
        raise KeyboardInterrupt(f"{spec.name}: interrupted; its {len(seeds)} unfinished run(s) were not written")
    wall = time.perf_counter() - t0
    where = _grammar.record(device)
    out_rows = []
    base = None if spec.is_baseline else spec.baseline().name
    for i, seed in enumerate(seeds):
        if seed not in write:
            continue
        unit = Unit(spec, seed)
        failed = res.failed.get(i)
        result, arrays = evaluate_run(spec, res.models[i], data[i], res.histories[i], arrays_for_report=i == 0)
        title = spec.title.replace("default loss", loss_name(spec, sp0.task))
        row = {"run_id": unit.run_id, "experiment": spec.name, "title": title, "seed": seed,
               "version": __version__, "config": spec.config, "digest": spec.digest(), "inputs": spec.inputs,
               "task": sp0.task, "loss_name": loss_name(spec, sp0.task), "is_baseline": spec.is_baseline,
               "baseline": base, "sweep": spec.sweep_point, "validation_is_test": sp0.validation_is_test,
               "history": res.histories[i].to_dict(), "failed": _jsonable(failed), "group_wall_time": wall,
               "group_size": len(seeds), "engine": res.engine, "engine_reason": res.engine_reason,
               "threads": res.threads, **where, **({"classes": sp0.classes} if sp0.classes is not None else {}), **result}
        path = unit.path(out)
        own_folder(out, "runs", spec.name)
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


def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    return json.loads(json.dumps(v, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _group_cost(spec: ExperimentSpec, n: int) -> float:
    t = spec.config["train"]
    return t["epochs"] * (1.0 + 300 / t["batch_size"]) * (1 + n / 100)  # steps dominate; M adds little


def _train_group_task(config: dict, path: str, inputs: dict, seeds: list[int], out: str, write: list[int],
                      threads: int | None = None) -> int:
    """Helper-process entry point (picklable arguments only)."""
    train_group(ExperimentSpec(config, path, inputs), seeds, Path(out), write=write, threads=threads)
    return len(write)


def engine_choice(spec: ExperimentSpec, n_models: int = 2) -> Any:
    """The engine ``choose_engine`` picks for a group of ``n_models`` of the experiment's models
    (model 0 built as seed 0's, probed on seed 0's first examples): an ``EngineChoice``."""
    from .. import losses as _losses
    from ..engines.choose import choose_engine
    from ..training.engine import ArrayData
    from ..training.fit import prepare_arrays

    sp = splits_of(spec, 0)
    torch.manual_seed(0)
    out = builder(spec, sp.input_shape, sp.n_outputs)()
    model, lo = out if isinstance(out, tuple) else (out, loss_of(spec, sp.task))
    lo = _losses.get(lo)
    p0 = next(model.parameters())
    data = ArrayData(*prepare_arrays(model, sp.x_train[:2], sp.y_train[:2], lo, p0.dtype, p0.device))
    sets = sp.training()  # examples read one by one: each model reads (and augments) its own
    return choose_engine(model, lo, data.probe_batch(), n_models=n_models, optimizer=spec.config["train"]["optimizer"],
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


def _side_task(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


@dataclass
class _Task:
    """A group of units to train (``units``), of which those in ``write`` (default: all) are
    written; or a side task (``side``: its index)."""
    units: list[Unit] | None = None
    side: tuple[int, Callable[..., Any], tuple] | None = None
    write: list[int] | None = None
    planned: list[Unit] | None = None  # every unit of the grid point (what ``compose`` draws on)
    threads: int | None = None  # the count its finished units recorded (used when none is given)

    @property
    def written(self) -> list[int]:
        return [u.seed for u in self.units] if self.write is None else self.write

    @property
    def key(self) -> str:
        s = self.units[0].spec
        return s.digest() + "/" + s.name

    def call(self, out: Path, threads: int | None = None) -> tuple[Callable[..., Any], tuple]:
        if self.side is not None:
            return _side_task, self.side[1:]
        s = self.units[0].spec
        return _train_group_task, (s.config, s.path, s.inputs, [u.seed for u in self.units], str(out), self.written,
                                   self.threads if threads is None else threads)


def compose(left: list[Unit], planned: list[Unit], rule: str, out: Path) -> _Task:
    """The task that trains the units ``left`` (of a grid point's ``planned`` ones) so that each
    gets the numbers it gets in any other run (``rule``: ``group_rule``'s): beside a twin where
    one would train alone (``"pairs"``); only ``left`` is written. Where numbers depend on the
    thread count (not ``"any"``), at the count the grid point's finished units recorded, unless
    one is given (``--threads``)."""
    threads = None
    if rule != "any" and len(left) < len(planned):
        pending = {u.seed for u in left}
        rows = (verified(v.path(out)) for v in planned if v.seed not in pending)
        threads = next((r["threads"] for r in rows if r is not None and isinstance(r.get("threads"), int)), None)
    if rule == "pairs" and len(left) == 1:
        twin = next((v for v in planned if v.seed != left[0].seed), None) or Unit(left[0].spec, left[0].seed + 1)
        return _Task(units=[left[0], twin], write=[left[0].seed], planned=planned, threads=threads)
    return _Task(units=left, planned=planned, threads=threads)


def execute(units: Iterable[Unit], out: str | Path, progress: bool = True,
            on_group_done: Callable[[ExperimentSpec, list[int]], None] | None = None,
            workers: int = 1, side_tasks: Sequence[tuple[Callable[..., Any], tuple]] = (),
            threads: int | None = None, backend: str = "local", address: str | None = None,
            record: str | None = "merge", gpus_per_task: float = 0.0) -> dict[str, Any]:
    """Run the pending units, one ``fit_many`` group per experiment grid point; finished units
    are skipped (resume).

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
    (``group_rule``): where one model alone would train on other kernels it trains beside a twin
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
    """
    import collections
    import concurrent.futures as cf
    import threading

    from tqdm.auto import tqdm

    from .helpers import discard_prestarted, helper_pool, interrupt, submit
    from .locks import GroupLocks

    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray'; got {backend!r}")
    if record not in ("merge", "replace", None):
        raise ValueError(f"record must be 'merge', 'replace' or None; got {record!r}")
    out = Path(out)
    units = list(units)
    for name in sorted({u.spec.name for u in units}):  # reglab's own folders, or an error naming what is there
        own_folder(out, "runs", name)
    own_folder(out, "locks")
    if record is not None:
        mark_current(out, units, replace=record == "replace")  # before training: finished units are current
    pending: dict[str, list[Unit]] = {}
    planned: dict[str, list[Unit]] = {}
    skipped = 0
    for u in units:
        key = u.spec.digest() + u.spec.name
        planned.setdefault(key, []).append(u)
        if u.done(out):
            skipped += 1
        else:
            pending.setdefault(key, []).append(u)
    rules: dict[str, str] = {}

    def whole(left: list[Unit], planned: list[Unit]) -> bool:
        """A whole group of two or more: its numbers are the same under every rule."""
        return len(left) > 1 and len(left) == len(planned)

    def rule_known(left: list[Unit], planned: list[Unit]) -> bool:
        """Whether ``rule`` can answer without ``group_rule`` (which builds a model)."""
        return whole(left, planned) or left[0].spec.digest() in rules

    def rule(left: list[Unit], planned: list[Unit]) -> str:
        if whole(left, planned):
            return "any"
        key = left[0].spec.digest()
        if key not in rules:
            rules[key] = group_rule(left[0].spec)
        return rules[key]

    group_tasks = [compose(us, planned[key], rule(us, planned[key]), out) for key, us in pending.items()]
    group_tasks.sort(key=lambda t: -_group_cost(t.units[0].spec, len(t.units)))
    tasks = collections.deque([_Task(side=(i, fn, args)) for i, (fn, args) in enumerate(side_tasks)] + group_tasks)
    bar = tqdm(total=sum(len(t.written) for t in group_tasks), desc="study", unit="run",
               disable=not progress or not sys.stderr.isatty())
    threads = _threads.check(threads) if threads is not None else _threads.explicit()
    here = backend == "local"  # whether this process trains too
    if not here:
        from .ray_backend import RayPool

        discard_prestarted()
        share = None
        pool = RayPool(address, threads or 1, threads, gpus_per_task)
        n_helpers = pool.slots
        pool_submit, pool_interrupt = pool.submit, pool.interrupt
    else:
        n_helpers = min(workers - 1, len(tasks) - 1) if workers > 1 else 0
        share = _threads.per_worker(workers) if workers > 1 else None
        pool = helper_pool(n_helpers, threads or share) if n_helpers > 0 else None
        if pool is None:
            discard_prestarted()
        pool_submit, pool_interrupt = (lambda fn, *a: submit(pool, fn, *a)), (lambda: interrupt(pool))
    locks = GroupLocks(out)
    side: list[Any] = [None] * len(side_tasks)
    counts = {"trained": 0, "skipped": skipped}
    waiting: list[_Task] = []  # groups another process holds
    running: dict[cf.Future, _Task] = {}
    t0 = time.perf_counter()

    # With helpers (local backend), a helper gets its next task the moment it finishes one: its
    # future's done-callback, in the pool's thread, claims and sends it while this process trains
    # (``feed``). ``handoff`` guards what both threads touch: the line of tasks, ``running``,
    # ``waiting``, the locks, the counts. A task whose group rule is not known yet stays for this
    # thread (``group_rule`` builds a model, drawing from the global generator this thread's
    # training may use).
    handoff = threading.RLock()
    stop = threading.Event()

    def claim(task: _Task, wait: bool = False, ahead: bool = False) -> _Task | None:
        """The task with its lock held and only its unfinished units, or None (nothing to do, or
        another process holds it: then it waits in ``waiting``; ``ahead``, from the pool's
        thread: also where its rule would have to be found, and then it goes back to the front
        of the line). Called with ``handoff`` held."""
        if task.units is None:
            return task
        if wait:
            locks.wait(task.key)
        elif not locks.try_acquire(task.key):
            waiting.append(task)
            return None
        todo = [u for u in task.units if u.seed in set(task.written)]
        left = [u for u in todo if not u.done(out)]  # another run may have finished some
        if ahead and left and not rule_known(left, task.planned):
            locks.release(task.key)
            tasks.appendleft(task)
            return None
        for u in left:
            u.clear_partial(out)
        counts["skipped"] += len(todo) - len(left)
        bar.update(len(todo) - len(left))
        if not left:
            locks.release(task.key)
            return None
        return compose(left, task.planned, rule(left, task.planned), out)

    def finish(task: _Task, result: Any) -> None:
        if task.units is None:
            side[task.side[0]] = result
            return
        with handoff:
            locks.release(task.key)
            counts["trained"] += len(task.written)
            bar.update(len(task.written))
        if on_group_done is not None:
            on_group_done(task.units[0].spec, task.written)

    def busy() -> int:
        return sum(not f.done() for f in running)

    def feed(_done: cf.Future | None = None) -> None:
        """Claim and send tasks to the helpers that have none. A task whose claim or send fails
        goes back to the front of the line, its lock released, and the error is raised (in the
        pool's thread it is kept for this thread, ``feed_errors``)."""
        with handoff:
            while tasks and not stop.is_set() and busy() < n_helpers:
                head = tasks.popleft()
                try:
                    task = claim(head, ahead=True)
                    if task is not None:
                        send(task)
                except BaseException:
                    if head.units is not None:
                        locks.release(head.key)
                    tasks.appendleft(head)
                    raise
                if task is None and tasks and tasks[0] is head:
                    break  # its rule is to be found: left for this thread

    feed_errors: list[BaseException] = []

    def quiet_feed(f: cf.Future) -> None:
        if f.cancelled() or f.exception() is not None:
            return  # a helper failed: this thread collects it and stops the run; nothing more is sent
        try:
            feed(f)
        except BaseException as e:  # noqa: BLE001 (raised in this thread by the loop)
            feed_errors.append(e)

    def collect(block: bool) -> None:
        with handoff:
            futures = list(running)
        done, _ = cf.wait(futures, timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        for f in done:
            with handoff:
                task = running.pop(f)
            finish(task, f.result())  # re-raises a helper's error; finished groups stay written

    def send(task: _Task) -> None:
        fn, args = task.call(out, threads)
        with handoff:
            f = pool_submit(fn, *args)
            running[f] = task
        if here:
            f.add_done_callback(quiet_feed)

    def run_here(task: _Task) -> None:
        fn, args = task.call(out, threads)
        if task.units is not None:
            bar.set_postfix_str(task.units[0].spec.name)
        with _threads.using(threads or share if pool is not None else torch.get_num_threads()):  # as the helpers
            finish(task, fn(*args))

    try:
        while tasks or running or waiting:
            if feed_errors:
                raise feed_errors[0]
            if pool is not None:
                collect(block=False)
                if here:
                    feed()
                else:
                    while tasks and len(running) <= n_helpers:  # one queued ahead: no worker waits
                        task = claim(tasks.popleft())
                        if task is not None:
                            send(task)
            with handoff:
                task = claim(tasks.popleft()) if here and tasks else None  # the costliest left, as the helpers
            if task is not None:
                run_here(task)
            elif here and tasks:
                continue
            elif running:
                collect(block=True)
            elif waiting:
                with handoff:
                    task = claim(waiting.pop(0), wait=True)
                if task is not None and here:
                    run_here(task)
                elif task is not None:
                    send(task)
    except BaseException:
        stop.set()
        if pool is not None:
            for f in list(running):
                f.cancel()
            pool_interrupt()
        raise
    finally:
        stop.set()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        locks.release_all()
        bar.close()
    info = {**counts, "seconds": time.perf_counter() - t0, "side": side}
    if not here:
        info["where"] = dict(pool.where)
    return info


def run_unit(unit: Unit, out: str | Path) -> dict:
    """Run one unit on its own (what a distributed executor would call per task): its JSON row,
    with the numbers ``execute`` gives it (``compose``: beside a twin where that matters)."""
    out = Path(out)
    if verified(unit.path(out)) is None:  # not recorded: the driver records the whole plan (``execute``)
        execute([unit], out, progress=False, record=None)
    return verified(unit.path(out))
