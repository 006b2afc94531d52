"""How many CPU threads a training run uses: one rule, used by ``fit``, ``fit_many``, the study
runner's workers and its Ray tasks.

torch's default is one intra-op thread per physical core. For the small models regularization is
studied on that is the worst choice twice over: a step of a tiny model is bound by per-op
overhead, which a second thread only adds to, and when another process holds a core, OpenMP's
threads wait for a descheduled sibling at every parallel region -- ``reglab.fit`` of the README's
model took 19.5-24.9 s on two threads with one core busy, 1.64 s on one (``benchmarks/
bench_threads.py``). So:

    threads = explicit                                        if given (``threads=``, ``--threads``)
            = 1                                               if W < W_PAR or C = 1
            = min(C, 1 + floor(W / W_PAR), max(1, round(I)))  otherwise

where ``W`` is the work of one optimizer step in floating-point operations -- 3x the forward
pass's (forward, and backward for inputs and weights) of one example, times the batch size,
times the models trained together -- counted by ``torch.utils.flop_counter`` on one example;
``W_PAR`` = ``PARALLEL_WORK``, the work from which a second thread pays (measured); ``C`` the
cores this run may use (torch's current setting, which the study runner sets to its share of
the machine per worker); and ``I`` the idle cores of this process's CPU set, measured over 50 ms
from ``/proc/stat`` (where that exists). torch's setting is restored after the run.

On the Dense-stack engine the thread count changes no number (tested at 1 and 2 threads); on
the autograd and vmap paths it may change the last bits of a result.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch
    from torch import nn

#: floating-point operations per optimizer step from which a second thread pays: measured on
#: a small CNN and a deep-MLP stack, alone and in groups of 20 (``benchmarks/bench_threads.py``, RESULTS.md)
PARALLEL_WORK = 5e6

#: the most threads a run may ask for (torch would try to start them all)
MAX = 1024

#: seconds over which idle cores are measured
IDLE_WINDOW = 0.05


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask; a cgroup CPU quota, where set, caps it)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cpu_times() -> dict[str, tuple[int, int]] | None:
    """``{"cpuN": (idle, total)}`` jiffies from ``/proc/stat`` (idle includes iowait, total excludes guest time)."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
            times[name] = (v[3] + v[4], sum(v))
    return times


def idle_cores(window: float = IDLE_WINDOW) -> float | None:
    """How many of this process's CPUs were idle over the last ``window`` seconds (None where
    ``/proc/stat`` is not available). Steal time (a hypervisor's) counts as busy."""
    a = _cpu_times()
    if not a:
        return None
    time.sleep(window)
    b = _cpu_times()
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:
        mine = set(b)
    idle = 0.0
    for cpu in mine & set(a) & set(b):
        d_total = b[cpu][1] - a[cpu][1]
        if d_total > 0:
            idle += (b[cpu][0] - a[cpu][0]) / d_total
        else:  # no tick in the window: a tickless idle CPU
            idle += 1.0
    return idle


def per_worker(workers: int) -> int:
    """``C`` for each of ``workers`` training processes on this machine: an equal share of the
    usable cores (at least one)."""
    return max(1, usable_cores() // max(1, int(workers)))


def step_work(model: nn.Module, example: torch.Tensor, batch_size: int, n_models: int = 1) -> float:
    """``W``: floating-point operations of one optimizer step of ``n_models`` copies of ``model``
    on batches of ``batch_size`` (3x the forward pass of ``example``, one example with its batch
    axis; the model is run in eval mode without grad, and left as it was)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .attach import quiet

    with quiet(model), FlopCounterMode(display=False) as fc:
        model(example)
    return 3.0 * fc.get_total_flops() * batch_size * n_models


def choose(work: float | None, cap: int, idle: float | None) -> int:
    """The rule (see the module): the default thread count for ``work`` operations per step (None:
    unknown, treated as large) on ``cap`` cores of which ``idle`` are idle (None: unknown)."""
    if cap <= 1 or (work is not None and work < PARALLEL_WORK):
        return 1
    n = cap if work is None else min(cap, 1 + int(work // PARALLEL_WORK))
    return n if idle is None else min(n, max(1, round(idle)))


_explicit: int | None = None


def set_explicit(threads: int | None) -> None:
    """A process-wide explicit thread count (``reglab --threads N``): every run that is not given
    ``threads=`` uses it instead of the rule (None: the rule again)."""
    global _explicit
    _explicit = check(threads)


def explicit() -> int | None:
    """The process-wide explicit thread count, or None."""
    return _explicit


def check(threads: Any) -> int | None:
    """``threads`` validated: an int from 1 to ``MAX``, or None (the default rule)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX):
        raise ValueError(f"threads must be an int from 1 to {MAX} or None (the default rule); got threads={threads!r}")
    return threads


def decide(threads: int | None, model: nn.Module, example: torch.Tensor | None, batch_size: int,
           n_models: int = 1) -> int:
    """The thread count of a run: ``threads`` when given (else ``set_explicit``'s), else the rule (``choose``) for ``n_models``
    copies of ``model`` stepping on batches of ``batch_size`` (``example``: one input with its batch
    axis, or None when unknown). The work is only counted when more than one thread is possible."""
    import torch  # here, not at the top: the CLI reads this module's rule before it imports torch

    threads = check(threads) if threads is not None else _explicit
    if threads is not None:
        return threads
    cap = min(torch.get_num_threads(), usable_cores())
    if cap <= 1:
        return 1
    work = None if example is None else step_work(model, example, batch_size, n_models)
    return choose(work, cap, idle_cores() if work is None or work >= PARALLEL_WORK else None)


@contextlib.contextmanager
def using(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside, restored after."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
