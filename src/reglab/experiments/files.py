"""Writing under an output folder: atomically, never through a symlink, never outside it.

Every file reglab writes under ``--out`` goes through ``atomic_write``: a unique temporary file
in the same folder, then a rename over the name. A reader, a concurrent writer or a killed
process never sees a file half-written, and a symlink planted at the name is replaced, never
written through. The folders reglab keeps its own files in (``runs/<experiment>``, ``locks``,
``figures``, ``paths``, ``analyses``) are made by ``own_folder``, which refuses a symlink or a
non-folder at any level below ``out`` (``OutputError``, naming it).

A failed write (a full disk, a read-only folder) raises ``OSError`` naming the file and leaves
no temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_json", "write_text", "own_folder", "own_file", "OutputError", "DISK_ERRNOS",
           "is_disk_error"]

#: the errors of a disk or folder that cannot take what is written (full, read-only, no permission, quota)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG})


def _umask() -> int:
    mask = os.umask(0o022)  # read it (there is no other way), then put it back
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file here


class OutputError(ValueError):
    """Something other than reglab's own folder sits where reglab keeps its files under ``--out``
    (a symlink, a file): said with its path, before anything is written there."""


def is_disk_error(e: BaseException) -> bool:
    """Whether ``e`` is a disk's or folder's refusal to be written (``DISK_ERRNOS``)."""
    return isinstance(e, OSError) and e.errno in DISK_ERRNOS


def own_folder(out: str | Path, *parts: str) -> Path:
    """``out/parts...``, made where missing. Each level below ``out`` must be a real folder: a
    symlink (which would send reglab's files elsewhere) or a file there is an ``OutputError``.
    ``out`` itself may be a symlink: it is the folder the user named."""
    folder = Path(out)
    for part in parts:
        folder = folder / part
        if folder.is_symlink():
            raise OutputError(f"{folder} is a symlink; reglab keeps its own files there and writes nothing outside "
                              f"{out}: remove the link (or choose another --out)")
        try:
            folder.mkdir(parents=False, exist_ok=True)
        except FileNotFoundError:
            Path(out).mkdir(parents=True, exist_ok=True)
            folder.mkdir(exist_ok=True)
        except FileExistsError:
            pass
        if not folder.is_dir():
            raise OutputError(f"{folder} is a file, not a folder: reglab keeps its own files there; move it away")
    return folder


def own_file(path: str | Path) -> Path:
    """``path``, a file reglab opens in place (a lock): a symlink there is an ``OutputError``."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path} is a symlink; reglab keeps its own files there and writes nothing outside the "
                          "output folder: remove the link")
    return path


def atomic_write(path: Path, write: Callable[[Any], None], durable: bool = False) -> None:
    """Write ``path`` atomically: a unique temporary file in its folder (which must exist), then
    a rename over the name -- which replaces a symlink there instead of writing through it.

    ``durable``: fsync the file before the rename (the tables and documents a study ends with).
    Run files are not fsynced (40 fsyncs cost a 20-model group 0.4 s): after an operating-system
    crash one may come back empty or short, which the sha256 digests in its run's JSON
    (``Unit.done``) detect, and the run is redone. A failed write raises ``OSError`` with
    ``path`` as its file name; the temporary file is removed."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.fchmod(fd, _MODE)  # mkstemp makes files 0600: the results are the user's to share as any file
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, durable: bool = False) -> None:
    """Write JSON atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj).encode()), durable)


def write_text(path: Path, text: str, durable: bool = True) -> None:
    """Write UTF-8 text atomically (``atomic_write``), fsynced: for tables and reports."""
    atomic_write(path, lambda f: f.write(text.encode()), durable)
