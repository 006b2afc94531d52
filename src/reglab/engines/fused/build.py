"""Compile a fused kernel's source into a shared library, cached across processes, and load it.

A plain C++ shared library (no torch headers: ~1-2 s to build against ~30 s for a
``torch.utils.cpp_extension`` module), compiled by the system's C++ compiler (``$CXX``, else
``c++``/``g++``) for this CPU (``-march=native``), loaded with ``ctypes``. Built once per
source and CPU into ``$REGLAB_CACHE`` (default ``~/.cache/reglab``) ``/fused/<hash>.so``,
written under a file lock and renamed into place, so parallel processes build it once.

Where it cannot be built (no compiler, a failing build, ``REGLAB_FUSED=0``) ``library`` returns
None with the reason (``unavailable``), and the engine chooser picks the eager Dense-stack engine
instead; ``reglab`` says so once per process in one line.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

__all__ = ["Args", "library", "unavailable", "cache_dir", "FLAGS"]

FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC",
         "-pthread"]

_LIBS: dict[str, ctypes.CDLL] = {}
_FAILED: dict[str, str] = {}
_SAID: set[str] = set()


class Args(ctypes.Structure):
    """The kernel's argument block (``source._RUNTIME``'s ``struct Args``)."""

    _fields_ = [("n_chunks", ctypes.c_int32), ("n_threads", ctypes.c_int32), ("n", ctypes.c_int32),
                ("batch", ctypes.c_int32), ("train", ctypes.c_int32), ("_pad", ctypes.c_int32),
                ("params", ctypes.c_void_p), ("m", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("x", ctypes.c_void_p), ("y", ctypes.c_void_p), ("rows", ctypes.c_void_p),
                ("order", ctypes.c_void_p), ("lam", ctypes.c_void_p), ("active", ctypes.c_void_p),
                ("stats", ctypes.c_void_p), ("failed", ctypes.c_void_p), ("failval", ctypes.c_void_p),
                ("per_example", ctypes.c_void_p), ("hyper", ctypes.c_void_p)]


def cache_dir() -> Path:
    return Path(os.environ.get("REGLAB_CACHE") or Path.home() / ".cache" / "reglab") / "fused"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return shutil.which("c++") or shutil.which("g++")


@functools.lru_cache(maxsize=None)
def _cpu_key() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        keep = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor() or platform.machine()


def unavailable() -> str | None:
    """Why no fused kernel can be built here (None: one can be tried)."""
    if os.environ.get("REGLAB_FUSED", "1") == "0":
        return "REGLAB_FUSED=0"
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"no kernel is written for {platform.machine()}"
    if _compiler() is None:
        return "no C++ compiler (set CXX, or install g++)"
    return None


def library(src: str) -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded library built from ``src`` (built now unless cached), or ``(None, why)``."""
    why = unavailable()
    if why is not None:
        return None, why
    cxx = _compiler()
    key = hashlib.sha256("\0".join([src, cxx or "", " ".join(FLAGS), _cpu_key(), _version(cxx)]).encode()).hexdigest()[:24]
    if key in _LIBS:
        return _LIBS[key], None
    if key in _FAILED:
        return None, _FAILED[key]
    d = cache_dir()
    so = d / f"{key}.so"
    try:
        d.mkdir(parents=True, exist_ok=True)
        with FileLock(str(d / f"{key}.lock")):
            if not so.exists():
                _compile(cxx, src, so)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        _FAILED[key] = f"the fused kernel could not be built: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        return None, _FAILED[key]
    if hasattr(lib, "train_epoch"):  # a kernel of ``source`` (not some other compiled loop)
        lib.train_epoch.argtypes = lib.evaluate.argtypes = [ctypes.POINTER(Args)]
        lib.train_epoch.restype = lib.evaluate.restype = ctypes.c_int
        lib.term_check32.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.term_check64.argtypes = lib.term_check32.argtypes
    _LIBS[key] = lib
    return lib, None


@functools.lru_cache(maxsize=None)  # a compiler's version, asked once per process (a subprocess: ~5 ms)
def _version(cxx: str | None) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _compile(cxx: str, src: str, so: Path) -> None:
    """Compile ``src`` into ``so`` (written elsewhere, then renamed into place)."""
    with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
        cpp = Path(tmp) / "kernel.cpp"
        cpp.write_text(src)
        out = Path(tmp) / "kernel.so"
        r = subprocess.run([cxx, *FLAGS, str(cpp), "-o", str(out)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
            raise RuntimeError(f"{Path(cxx).name} failed: {first}")
        os.replace(out, so)


def say_once(why: str) -> None:
    """One line on stderr, once per process and reason: the fused engine is not used, and why.
    A study's helper processes say nothing: the parent, which chooses every group's engine
    before a helper trains it, has said it (``experiments.helpers.IN_HELPER``)."""
    if why not in _SAID:
        _SAID.add(why)
        if os.environ.get("REGLAB_IN_HELPER"):
            return
        print(f"reglab: {why}; Dense-stack models train on the eager engine", file=sys.stderr)
