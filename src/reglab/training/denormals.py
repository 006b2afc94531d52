"""Float denormals flushed to zero while training, in every thread of torch's pool."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FlushDenormals", "keep_flushing_denormals", "stop_flushing_denormals", "set_flush_denormal"]


def _in_openmp_threads(fn: Any) -> None:
    """Run ``fn()`` once in each thread of torch's OpenMP pool (the calling thread included).

    ``torch.set_flush_denormal`` sets the floating-point mode of the calling thread only; worker
    threads copy it when they are created, so a pool that already exists keeps denormals. With
    2 threads that made 200 epochs of 256 32x5 MLPs 2.3x slower (0.143 vs 0.062 s/model).
    Uses libgomp's ``GOMP_parallel`` (torch's CPU builds on Linux); elsewhere it does nothing.
    """
    n = torch.get_num_threads()
    if n <= 1:
        return
    try:
        import ctypes

        lib = ctypes.CDLL("libgomp.so.1")  # the copy torch loaded (same soname)
        callback_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        lib.GOMP_parallel.argtypes = [callback_t, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
        lib.GOMP_parallel(callback_t(lambda _: fn()), None, n, 0)
    except (OSError, AttributeError):
        pass


def set_flush_denormal(on: bool) -> bool:
    ok = torch.set_flush_denormal(on)
    if ok:
        _in_openmp_threads(lambda: torch.set_flush_denormal(on))
    return ok


class FlushDenormals:
    """Flush float denormals to zero while training (TensorFlow does the same on CPU), in every
    thread of torch's pool.

    Weights and activations driven toward 0 by L1/L2 penalties become denormal floats, and CPU
    arithmetic on denormals is up to 100x slower (measured here: a 200-epoch regularization path of 80
    models took 25 s instead of 14 s). Numbers below 1.2e-38 (float32) change, nothing else.
    torch's default (off) is restored on exit; a process that turned it on itself keeps it on.
    """

    def __enter__(self):
        self._set = set_flush_denormal(True)
        return self

    def __exit__(self, *exc):
        if self._set and not _GLOBAL_FLUSH:
            set_flush_denormal(False)


_GLOBAL_FLUSH = False


def keep_flushing_denormals() -> None:
    """Turn flush-to-zero on for the whole process (the CLI does this)."""
    global _GLOBAL_FLUSH
    _GLOBAL_FLUSH = set_flush_denormal(True)


def stop_flushing_denormals() -> None:
    """Undo ``keep_flushing_denormals`` (torch's default: denormals kept)."""
    global _GLOBAL_FLUSH
    _GLOBAL_FLUSH = False
    set_flush_denormal(False)
