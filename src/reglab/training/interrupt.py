"""``DeferredInterrupt``: Ctrl-C during training becomes a flag the loop checks between steps."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["DeferredInterrupt"]


class DeferredInterrupt:
    """Turn Ctrl-C into a flag checked between steps, so weights stay those of a completed step."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Any = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
