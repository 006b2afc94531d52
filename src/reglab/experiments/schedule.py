"""Where and in what order a run's tasks train (``runner.execute``'s loop).

A *task* is one grid point's pending units, trained together (``group.train_group``), or a side
task (a regularization path). ``compose`` makes a grid point's task so that each unit gets the
numbers it gets in any other run (the group rule of the experiment's plan, ``plan.py``). ``Scheduler`` runs the tasks, costliest
first, in this process and in helpers (``helpers.py``) or on Ray (``ray_backend.py``): a helper
gets its next task the moment it finishes one, and each group trains under its lock
(``locks.py``)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import threads as _threads
from .group import train_group_task
from .plan import Plan
from .schema import ExperimentSpec
from .store import Unit, verified

__all__ = ["Task", "compose", "Scheduler"]


def side_task(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


@dataclass
class Task:
    """A group of units to train (``units``), of which those in ``write`` (default: all) are
    written; or a side task (``side``: its index)."""
    units: list[Unit] | None = None
    side: tuple[int, Callable[..., Any], tuple] | None = None
    write: list[int] | None = None
    planned: list[Unit] | None = None  # every unit of the grid point (what ``compose`` draws on)
    plan: Plan | None = None  # its experiment's
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
            return side_task, self.side[1:]
        return train_group_task, (self.units[0].spec, self.plan, [u.seed for u in self.units], str(out),
                                  self.written, self.threads if threads is None else threads)


def compose(left: list[Unit], planned: list[Unit], plan: Plan, out: Path) -> Task:
    """The task that trains the units ``left`` (of a grid point's ``planned`` ones) so that each
    gets the numbers it gets in any other run (``Plan.group_rule``): beside a twin where one would
    train alone (``"pairs"``); only ``left`` is written. Where numbers depend on the thread count
    (not ``"any"``), at the count the grid point's finished units recorded, unless one is given
    (``--threads``)."""
    rule = plan.group_rule
    threads = None
    if rule != "any" and len(left) < len(planned):
        pending = {u.seed for u in left}
        rows = (verified(v.path(out)) for v in planned if v.seed not in pending)
        threads = next((r["threads"] for r in rows if r is not None and isinstance(r.get("threads"), int)), None)
    if rule == "pairs" and len(left) == 1:
        twin = next((v for v in planned if v.seed != left[0].seed), None) or Unit(left[0].spec, left[0].seed + 1)
        return Task(units=[left[0], twin], write=[left[0].seed], planned=planned, plan=plan, threads=threads)
    return Task(units=left, planned=planned, plan=plan, threads=threads)


class Scheduler:
    """Runs ``tasks`` (side tasks first, then groups costliest first) to the end: in this process
    and ``workers - 1`` helpers, or on Ray (``backend="ray"``); ``run`` returns the counts, the
    seconds, the side tasks' results (and, on Ray, the tasks per node). See ``runner.execute``.

    With helpers (local backend), a helper gets its next task the moment it finishes one: its
    future's done-callback, in the pool's thread, claims and sends it while this process trains
    (``feed``). ``handoff`` guards what both threads touch: the line of tasks, ``running``,
    ``waiting``, the locks, the counts."""

    def __init__(self, tasks: collections.deque, out: Path, n_side: int, skipped: int,
                 n_runs: int, progress: bool, threads: int | None, workers: int, backend: str, address: str | None,
                 gpus_per_task: float, on_group_done: Callable[[ExperimentSpec, list[int]], None] | None):
        from tqdm.auto import tqdm

        from .locks import GroupLocks

        self.tasks, self.out, self.on_group_done = tasks, out, on_group_done
        self.bar = tqdm(total=n_runs, desc="study", unit="run", disable=not progress or not sys.stderr.isatty())
        self.threads = _threads.check(threads) if threads is not None else _threads.explicit()
        self.here = backend == "local"  # whether this process trains too
        self._open_pool(workers, address, gpus_per_task)
        self.locks = GroupLocks(out)
        self.side: list[Any] = [None] * n_side
        self.counts = {"trained": 0, "skipped": skipped}
        self.waiting: list[Task] = []  # groups another process holds
        self.running: dict[cf.Future, Task] = {}
        self.handoff = threading.RLock()
        self.stop = threading.Event()
        self.feed_errors: list[BaseException] = []

    def _open_pool(self, workers: int, address: str | None, gpus_per_task: float) -> None:
        from .helpers import discard_prestarted, helper_pool, interrupt, submit

        if not self.here:
            from .ray_backend import RayPool

            discard_prestarted()
            self.share = None
            pool = self.pool = RayPool(address, self.threads or 1, self.threads, gpus_per_task)
            self.n_helpers = pool.slots
            self.pool_submit, self.pool_interrupt = pool.submit, pool.interrupt
        else:
            self.n_helpers = min(workers - 1, len(self.tasks) - 1) if workers > 1 else 0
            self.share = _threads.per_worker(workers) if workers > 1 else None
            pool = self.pool = helper_pool(self.n_helpers, self.threads or self.share) if self.n_helpers > 0 else None
            if pool is None:
                discard_prestarted()
            self.pool_submit = lambda fn, *a: submit(pool, fn, *a)
            self.pool_interrupt = lambda: interrupt(pool)

    def claim(self, task: Task, wait: bool = False) -> Task | None:
        """The task with its lock held and only its unfinished units, or None (nothing to do, or
        another process holds it: then it waits in ``waiting``). Called with ``handoff`` held."""
        if task.units is None:
            return task
        if wait:
            self.locks.wait(task.key)
        elif not self.locks.try_acquire(task.key):
            self.waiting.append(task)
            return None
        todo = [u for u in task.units if u.seed in set(task.written)]
        left = [u for u in todo if not u.done(self.out)]  # another run may have finished some
        for u in left:
            u.clear_partial(self.out)
        self.counts["skipped"] += len(todo) - len(left)
        self.bar.update(len(todo) - len(left))
        if not left:
            self.locks.release(task.key)
            return None
        return compose(left, task.planned, task.plan, self.out)

    def finish(self, task: Task, result: Any) -> None:
        if task.units is None:
            self.side[task.side[0]] = result
            return
        with self.handoff:
            self.locks.release(task.key)
            self.counts["trained"] += len(task.written)
            self.bar.update(len(task.written))
        if self.on_group_done is not None:
            self.on_group_done(task.units[0].spec, task.written)

    def busy(self) -> int:
        return sum(not f.done() for f in self.running)

    def feed(self, _done: cf.Future | None = None) -> None:
        """Claim and send tasks to the helpers that have none. A task whose claim or send fails
        goes back to the front of the line, its lock released, and the error is raised (in the
        pool's thread it is kept for this thread, ``feed_errors``)."""
        with self.handoff:
            while self.tasks and not self.stop.is_set() and self.busy() < self.n_helpers:
                head = self.tasks.popleft()
                try:
                    task = self.claim(head)
                    if task is not None:
                        self.send(task)
                except BaseException:
                    if head.units is not None:
                        self.locks.release(head.key)
                    self.tasks.appendleft(head)
                    raise

    def quiet_feed(self, f: cf.Future) -> None:
        if f.cancelled() or f.exception() is not None:
            return  # a helper failed: this thread collects it and stops the run; nothing more is sent
        try:
            self.feed(f)
        except BaseException as e:  # noqa: BLE001 (raised in this thread by the loop)
            self.feed_errors.append(e)

    def collect(self, block: bool) -> None:
        with self.handoff:
            futures = list(self.running)
        done, _ = cf.wait(futures, timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        for f in done:
            with self.handoff:
                task = self.running.pop(f)
            self.finish(task, f.result())  # re-raises a helper's error; finished groups stay written

    def send(self, task: Task) -> None:
        fn, args = task.call(self.out, self.threads)
        with self.handoff:
            f = self.pool_submit(fn, *args)
            self.running[f] = task
        if self.here:
            f.add_done_callback(self.quiet_feed)

    def run_here(self, task: Task) -> None:
        fn, args = task.call(self.out, self.threads)
        if task.units is not None:
            self.bar.set_postfix_str(task.units[0].spec.name)
        # as the helpers
        with _threads.using(self.threads or self.share if self.pool is not None else torch.get_num_threads()):
            self.finish(task, fn(*args))

    def step(self) -> None:
        """One turn of the loop: collect and feed the helpers, then train here the costliest
        task left (or wait for a helper, or for a group another process holds)."""
        tasks, here = self.tasks, self.here
        if self.feed_errors:
            raise self.feed_errors[0]
        if self.pool is not None:
            self.collect(block=False)
            if here:
                self.feed()
            else:
                while tasks and len(self.running) <= self.n_helpers:  # one queued ahead: no worker waits
                    task = self.claim(tasks.popleft())
                    if task is not None:
                        self.send(task)
        with self.handoff:
            task = self.claim(tasks.popleft()) if here and tasks else None  # the costliest left, as the helpers
        if task is not None:
            self.run_here(task)
        elif here and tasks:
            return
        elif self.running:
            self.collect(block=True)
        elif self.waiting:
            with self.handoff:
                task = self.claim(self.waiting.pop(0), wait=True)
            if task is not None and here:
                self.run_here(task)
            elif task is not None:
                self.send(task)

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        pool = self.pool
        try:
            while self.tasks or self.running or self.waiting:
                self.step()
        except BaseException:
            self.stop.set()
            if pool is not None:
                for f in list(self.running):
                    f.cancel()
                self.pool_interrupt()
            raise
        finally:
            self.stop.set()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.locks.release_all()
            self.bar.close()
        info = {**self.counts, "seconds": time.perf_counter() - t0, "side": self.side}
        if not self.here:
            info["where"] = dict(pool.where)
        return info
