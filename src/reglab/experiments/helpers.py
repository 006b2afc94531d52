"""Helper processes: a pool whose workers end with their parent and stop on its interrupt.

``execute`` trains groups in this process and in ``workers - 1`` helper processes (spawned, so
they share no state with the parent). Two guarantees a plain ``ProcessPoolExecutor`` does not
give:

- a helper whose parent dies (``kill -9``) exits within half a second instead of training on
  and writing runs nobody asked for;
- ``interrupt(pool)`` sends each helper the parent's Ctrl-C (SIGINT), so its group stops within
  a step and writes nothing, also when the signal reached the parent alone.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import threading
import time

from .worker import set_up_trainer

__all__ = ["helper_pool", "interrupt", "run_task", "submit", "prestart", "skip_final_collection", "started"]

_POLL_S = 0.5
_busy = False
_stopping = False
_started = False  # whether this process has started helpers
_signal: int | None = None  # the first stopping signal this helper got
_STOPS = {signal.SIGINT, signal.SIGTERM}  # a helper stops its task on either (SIGTERM: a scheduler's, to the group)


def started() -> bool:
    """Whether this process has started helper processes."""
    return _started


def run_task(fn, *args):
    """What a helper runs: ``fn(*args)``, interruptible by SIGINT while it runs; after a SIGINT
    the helper starts no further task (those already queued to it fail at once)."""
    global _busy
    if _stopping:
        from .interrupts import HELPER_TERMINATED

        raise KeyboardInterrupt(HELPER_TERMINATED if _signal == signal.SIGTERM else
                                "the run was interrupted before this task started")
    _busy = True
    try:
        return fn(*args)
    except KeyboardInterrupt:
        if _signal == signal.SIGTERM:  # said to the parent, which stops as by SIGTERM (``interrupts.note_helper``)
            from .interrupts import HELPER_TERMINATED

            raise KeyboardInterrupt(HELPER_TERMINATED) from None
        raise
    finally:
        _busy = False


def _on_sigint(signum, frame) -> None:
    # the first Ctrl-C (or SIGTERM) interrupts the running task (its group then writes nothing);
    # an idle helper, or one already stopping, ignores it: the parent shuts the pool down
    global _busy, _stopping, _signal
    _stopping = True
    _signal = _signal or signum
    if _busy:
        _busy = False
        raise KeyboardInterrupt


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_POLL_S)
        if os.getppid() != parent:  # re-parented: the parent is gone
            os._exit(70)


#: set in every helper process: notes about the machine (the fused engine's missing compiler) are
#: the parent's to give, once, not each helper's again
IN_HELPER = "REGLAB_IN_HELPER"


def _init(parent: int, threads: int, explicit: int | None = None) -> None:
    os.environ[IN_HELPER] = "1"
    skip_final_collection()
    for s in _STOPS:
        signal.signal(s, _on_sigint)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # blocked by submit() for the start-up
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="reglab-parent-watch").start()
    set_up_trainer(threads, explicit)


def skip_final_collection() -> None:
    """At exit, before the interpreter's final garbage collections, move every object to the
    permanent generation (``gc.freeze``), so the process ends without walking the millions of
    objects torch and its compiler stack made (1.3-1.9 s measured here, on the critical path:
    the pool's shutdown waits for its helpers, the shell for the CLI). Only cyclic garbage left
    at exit goes uncollected; reglab closes its files with ``with``."""
    import atexit
    import gc

    global _final_collection_skipped
    if not _final_collection_skipped:
        atexit.register(gc.freeze)
        _final_collection_skipped = True


_final_collection_skipped = False


_warm: tuple[int, int, cf.ProcessPoolExecutor] | None = None


def _warm_up() -> None:
    """What every group needs first: the runner's imports and an optimizer (torch imports its
    compiler stack, about 3 s, on the first optimizer a process builds)."""
    import torch

    from ..diagnostics import metrics  # noqa: F401  -- the runner's heavy imports (not the runner:
    from ..vectorized import fit_many  # noqa: F401  -- it imports this module)

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _explicit() -> int | None:
    from .. import threads

    return threads.explicit()


def prestart(n: int, threads: int = 1) -> None:
    """Start ``n`` helpers now and warm them up, while this process still loads and checks the
    experiments; the next ``helper_pool(n, threads)`` returns them."""
    global _warm, _started
    if _warm is None and n > 0:
        import atexit

        _started = True
        pool = cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init,
                                      initargs=(os.getpid(), threads, _explicit()))
        for _ in range(n):
            submit(pool, _warm_up)
        _warm = (n, threads, pool)
        # a command that stops before training (a bad file) leaves them unused: shut down while
        # the interpreter still runs (freed at its teardown, the pool's callback fails with a
        # traceback after the command's own error message)
        atexit.register(discard_prestarted)


def helper_pool(n: int, threads: int = 1) -> cf.ProcessPoolExecutor:
    """``n`` spawned helper processes, each with ``threads`` torch threads (the pre-started ones
    when they match; others are shut down)."""
    global _warm, _started
    _started = True
    if _warm is not None:
        wn, wt, pool = _warm
        _warm = None
        if (wn, wt) == (n, threads):
            return pool
        pool.shutdown(wait=False, cancel_futures=True)
    return cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init,
                                  initargs=(os.getpid(), threads, _explicit()))


def discard_prestarted() -> None:
    """Shut down pre-started helpers no run used."""
    global _warm
    if _warm is not None:
        _warm[2].shutdown(wait=False, cancel_futures=True)
        _warm = None


def submit(pool: cf.ProcessPoolExecutor, fn, *args) -> cf.Future:
    """``pool.submit(run_task, fn, *args)``, with SIGINT and SIGTERM blocked meanwhile: a helper the pool
    starts now inherits the blocked signal (``exec`` keeps the signal mask), so a Ctrl-C while
    it is still importing does not kill it with a traceback; ``_init`` installs ``_on_sigint``,
    then unblocks. This process gets a Ctrl-C of that moment when the call returns."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        return pool.submit(run_task, fn, *args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def interrupt(pool: cf.ProcessPoolExecutor) -> None:
    """Forward Ctrl-C to the pool's live helpers (a group interrupted there writes nothing)."""
    # the pool's own table of its processes: the standard library has no public handle before 3.14
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        except (OSError, ValueError):
            pass
