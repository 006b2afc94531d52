"""Code an experiment file names: ``"models.py:build"`` (a file relative to the experiment file)
or ``"package.module:function"``, resolved to the function, and the hash of its source file (so
that editing the code reruns the experiment instead of reusing old results)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["resolve", "file_sha256", "is_file_ref", "call_user", "call_problem", "NO_SIGNATURE", "UserCodeError",
           "where_in"]

_LOADED: dict[tuple[str, str], Any] = {}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_file_ref(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _split(ref: Any, where: str) -> tuple[str, str]:
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise ValueError(f"{where}: expected \"file.py:function\" or \"package.module:function\"; got {ref!r}")
    module, fn = ref.split(":")
    return module, fn


def resolve(ref: Any, base: str | Path, where: str) -> tuple[Callable[..., Any], str | None, str | None]:
    """``(function, source path, sha256 of the source)`` for ``ref``; errors name ``where``.

    A file reference is loaded as a module of its own (not put on ``sys.path``); a module
    reference is imported. The source hash is ``None`` where the module has no file.
    """
    module, fn = _split(ref, where)
    if is_file_ref(module):
        path = (Path(base) / module).resolve()
        if not path.is_file():
            raise ValueError(f"{where}: no such file {str(path)!r} (paths are relative to the file that names it)")
        digest = file_sha256(path)
        key = (str(path), digest)
        mod = _LOADED.get(key)
        if mod is None:
            name = f"reglab_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{digest[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # dataclasses and pickling look modules up by name
            try:
                with _same_directory():
                    spec.loader.exec_module(mod)
            except KeyboardInterrupt:
                sys.modules.pop(name, None)
                raise
            except BaseException as e:  # SystemExit too
                sys.modules.pop(name, None)
                raise UserCodeError(f"{where}: importing {str(path)!r} {_what(e)}{where_in(e, str(path))}") \
                    from None
            _LOADED[key] = mod
        source: str | None = str(path)
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"{where}: cannot import module {module!r}: {e}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # the module's own code failed while it was imported
            raise UserCodeError(f"{where}: importing module {module!r} {_what(e)}{where_in(e)}") from None
        source = getattr(mod, "__file__", None)
        digest = file_sha256(source) if source and Path(source).is_file() else None
    func = getattr(mod, fn, None)
    if not callable(func):
        raise ValueError(f"{where}: {module!r} has no function {fn!r}")
    return func, source, digest


class UserCodeError(ValueError):
    """The user's code (a builder, loader, transform, analysis or report section) raised, exited
    or returned what it must not: said with the file and key that name it, and the line."""


def _what(e: BaseException) -> str:
    """``raised TYPE: first line`` or ``called sys.exit(CODE)``."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    try:
        text = str(e).strip().splitlines()
    except Exception:  # noqa: BLE001 -- an exception whose __str__ fails
        text = ["(its message could not be made)"]
    return f"raised {type(e).__name__}" + (f": {text[0]}" if text else "")


def where_in(e: BaseException, source: str | None = None) -> str:
    """`` (at FILE, line N)``: the innermost frame of ``e``'s traceback in ``source``
    (the user's file), else the innermost outside reglab, the standard library and the
    installed packages; empty where there is none."""
    import sysconfig
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    if source is not None:
        mine = [f for f in frames if Path(f.filename).resolve() == Path(source).resolve()]
    else:
        here = str(Path(__file__).resolve().parents[1])
        skip = tuple({here, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                      sysconfig.get_paths()["platlib"]})
        mine = [f for f in frames if not str(Path(f.filename).resolve()).startswith(skip) and
                not f.filename.startswith("<frozen")]
    if not mine:
        return ""
    f = mine[-1]
    return f" (at {f.filename}, line {f.lineno})"


def call_user(fn: Callable[..., Any], where: str, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, the user's code called at its edge: whatever it raises -- an
    exception or ``SystemExit`` -- becomes a ``UserCodeError``: ``"<where> raised TYPE: message
    (at FILE, line N)"``, ``where`` naming the file, key and code (``"exp.toml: model.builder:
    models.py:build"``), the line the innermost of the user's code. A Ctrl-C passes through."""
    try:
        with _same_directory():
            return fn(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too
        source = getattr(getattr(fn, "__code__", None), "co_filename", None)
        raise UserCodeError(f"{where} {_what(e)}{where_in(e, source) or where_in(e)}") from None


@contextlib.contextmanager
def _same_directory() -> Iterator[None]:
    """Within: the user's code may change directory; after, the working directory is what it was
    (relative paths -- ``--out``, the experiment files -- keep their meaning)."""
    cwd = os.getcwd()
    try:
        yield
    finally:
        if os.getcwd() != cwd:
            os.chdir(cwd)


NO_SIGNATURE = "has no signature to call it by (a builtin?)"


def call_problem(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str | None:
    """Why ``fn(*args, **kwargs)`` cannot be called, known before the call: ``NO_SIGNATURE``
    (a builtin without one), the binding's ``TypeError`` message, or None (it binds)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return NO_SIGNATURE
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        return str(e)
    return None
