"""SIGTERM handled as Ctrl-C: what a scheduler (Slurm, Kubernetes, systemd) sends to stop a job
gets the same orderly stop as a Ctrl-C -- training interrupted within a step, nothing unfinished
written, a message saying what was kept -- and the exit status a shell gives a process ended by
that signal (``128 + signal``: 130 for SIGINT, 143 for SIGTERM).

``handle_terminate()`` (in the main thread) makes SIGTERM raise ``KeyboardInterrupt`` as SIGINT
does, so every place that stops cleanly on a Ctrl-C (``fit_many``'s ``interrupted``, the runner,
the helpers) stops cleanly on it too; ``exit_status()`` says which of the two arrived.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["handle_terminate", "exit_status", "received", "note_helper", "HELPER_TERMINATED"]

#: the message of the interrupt a helper process raises on SIGTERM (``helpers``)
HELPER_TERMINATED = "a helper process was terminated (SIGTERM)"

_received: int | None = None


def _on_terminate(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signum
        raise KeyboardInterrupt(f"terminated by signal {signum}")


def handle_terminate() -> None:
    """SIGTERM raises ``KeyboardInterrupt`` in this process (once; a second one while the first
    is being handled is ignored). Only from the main thread (Python's rule for signal handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_terminate)


def note_helper(e: BaseException) -> None:
    """Where ``e`` is a helper's interrupt by SIGTERM (``HELPER_TERMINATED``) and this process
    got no signal itself: the run stops as by SIGTERM (143)."""
    global _received
    if _received is None and HELPER_TERMINATED in str(e):
        _received = signal.SIGTERM


def received() -> int | None:
    """The stopping signal that arrived (``signal.SIGTERM``), or None (a Ctrl-C, or none)."""
    return _received


def exit_status() -> int:
    """``128 + signal`` of the interrupt being handled: 143 after SIGTERM, else 130 (SIGINT)."""
    return 128 + (_received or signal.SIGINT)
