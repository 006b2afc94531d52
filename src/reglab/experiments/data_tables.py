"""An experiment file's ``[data]`` and ``[split]`` tables, checked before anything is read
(``check_data``, ``check_split``), and the files whose hashes join a run's identity
(``data_inputs``). ``data.py`` reads and splits the data; ``data_files.py`` reads files and
loaders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets as _datasets
from ..diagnostics.metrics import TASKS
from .code import file_sha256, resolve

__all__ = ["DataError", "check_data", "check_split", "data_inputs", "fail", "DATA_KEYS", "SPLIT_KEYS", "SPLIT_NAMES",
           "MAX_EXAMPLES", "DEFAULT_SPLIT"]

DATA_KEYS = {"name", "file", "target", "files", "loader", "args", "standardize", "standardize_target", "task",
             "transform"}
SPLIT_KEYS = {"validation", "test", "resample"}
SPLIT_NAMES = ("train", "validation", "test")
MAX_EXAMPLES = 10_000_000
DEFAULT_SPLIT = {"validation": 0.2, "test": 0.2, "resample": True}


class DataError(ValueError):
    """Bad data: the message names the file and key."""


def fail(file: str, key: str, msg: str) -> None:
    raise DataError(f"{file}: {key}: {msg}")


def _frac(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def check_split(split: Any, file: str, has_files: bool) -> dict[str, Any]:
    """Validate ``[split]`` (defaults filled in)."""
    if split is None:
        return {}
    if not isinstance(split, Mapping):
        fail(file, "split", f"expected a table; got {split!r}")
    bad = set(split) - SPLIT_KEYS
    if bad:
        fail(file, "split", f"unknown key(s) {sorted(bad)}; expected some of {sorted(SPLIT_KEYS)}")
    if has_files and set(split) - {"validation"}:
        fail(file, "split", "data.files gives the splits; [split] may only set validation (a fraction of the "
              "training file, where files has no validation entry)")
    out = dict(split)  # as written: the defaults apply where a key is absent (load_splits)
    if "test" in out and not _frac(out["test"]):
        fail(file, "split.test", f"expected a fraction in (0, 1); got {out['test']!r}")
    v = out.get("validation")
    if v is not None and v != "test" and not _frac(v):
        fail(file, "split.validation", f'expected a fraction in (0, 1) or "test" (the validation data are the test '
              f"data); got {v!r}")
    t = out.get("test", DEFAULT_SPLIT["test"])
    if _frac(v) and _frac(t) and v + t >= 1:
        fail(file, "split", f"validation + test = {v + t:g} leaves no training data")
    if not isinstance(out.get("resample", True), bool):
        fail(file, "split.resample", f"expected true or false; got {out['resample']!r}")
    return out


def check_data(data: Any, file: str) -> dict[str, Any]:
    """Validate ``[data]``'s keys and values (files are read later, by ``load_splits``)."""
    if not isinstance(data, Mapping):
        fail(file, "data", f"expected a table; got {data!r}")
    bad = set(data) - DATA_KEYS - (set(data) if isinstance(data.get("name"), str) and
                                   data["name"] in ("blobs", "moons", "circles") else set())
    sources = [k for k in ("name", "file", "files", "loader") if k in data]
    if len(sources) != 1:
        fail(file, "data", f"expected exactly one of name, file, files, loader; got {sources or 'none'}")
    if "name" in data and (not isinstance(data["name"], str) or data["name"] not in _datasets.names()):
        fail(file, "data.name", f"expected one of {_datasets.names()}; got {data['name']!r}")
    if "test_size" in data or "validation_size" in data:
        fail(file, "data.test_size", "the splits come from data.files; remove it here" if "files" in data else
              "the split is set in [split] (validation = 0.2, test = 0.2); remove it here")
    if bad:
        fail(file, "data", f"unknown key(s) {sorted(bad)}; expected some of {sorted(DATA_KEYS)}")
    if "random_state" in data:
        fail(file, "data.random_state", "set by the seed of each run; remove it")
    out = dict(data)
    if "task" in data and data["task"] not in TASKS:
        fail(file, "data.task", f"expected one of {list(TASKS)}; got {data['task']!r}")
    for k in ("standardize", "standardize_target"):
        if k in data and not isinstance(data[k], bool):
            fail(file, f"data.{k}", f"expected true or false; got {data[k]!r}")
    src = sources[0]
    if src == "name":
        if not isinstance(data["name"], str) or data["name"] not in _datasets.names():
            fail(file, "data.name", f"expected one of {_datasets.names()}; got {data['name']!r}")
        args = {k: v for k, v in data.items() if k not in DATA_KEYS}
        if "n_samples" in args and not (isinstance(args["n_samples"], int) and not isinstance(args["n_samples"], bool)
                                        and 4 <= args["n_samples"] <= MAX_EXAMPLES):
            fail(file, "data.n_samples", f"expected an integer in [4, {MAX_EXAMPLES}]; got {args['n_samples']!r}")
        for k, v in args.items():  # the generators' arguments are numbers: true is no noise level
            if isinstance(v, bool):
                fail(file, f"data.{k}", f"expected a number; got {v!r}")
        try:
            _datasets.sample(data["name"], 0, **{**args, "n_samples": 8} if "n_samples" in args or
                             data["name"] in ("blobs", "moons", "circles") else args)
        except (TypeError, ValueError) as e:
            fail(file, "data", str(e))
    elif src == "file":
        _check_path(data["file"], file, "data.file")
        if str(data["file"]).endswith(".csv") and not isinstance(data.get("target"), str):
            fail(file, "data.target", f"a CSV file needs target = \"<column>\"; got {data.get('target')!r}")
    elif src == "files":
        fs = data["files"]
        if not isinstance(fs, Mapping) or not {"train", "test"} <= set(fs) or set(fs) - set(SPLIT_NAMES):
            fail(file, "data.files", f"expected a table with train and test (and optionally validation) files; got {fs!r}")
        for k, v in fs.items():
            _check_path(v, file, f"data.files.{k}")
    else:
        if "args" in data and not isinstance(data["args"], Mapping):
            fail(file, "data.args", f"expected a table; got {data['args']!r}")
    if "transform" in data and not (isinstance(data["transform"], str) and ":" in data["transform"]):
        fail(file, "data.transform", f"expected \"file.py:function\" or \"package.module:function\"; got "
              f"{data['transform']!r}")
    if "target" in data and src not in ("file", "files"):
        fail(file, "data.target", "only used with data.file / data.files (CSV)")
    if "args" in data and src != "loader":
        fail(file, "data.args", "only used with data.loader")
    return out


def _check_path(v: Any, file: str, key: str) -> None:
    if not isinstance(v, str) or not v.endswith((".csv", ".npz")):
        fail(file, key, f"expected a path to a .csv or .npz file; got {v!r}")


def data_inputs(data: Mapping[str, Any], base: Path, file: str) -> dict[str, str]:
    """``{role: sha256}`` of every file the data come from (a run's identity includes them)."""
    out: dict[str, str] = {}
    paths = {}
    if "file" in data:
        paths["data.file"] = data["file"]
    for k, v in (data.get("files") or {}).items():
        paths[f"data.files.{k}"] = v
    for key, rel in paths.items():
        p = (base / rel).resolve()
        if not p.is_file():
            fail(file, key, f"no such file {str(p)!r} (paths are relative to the experiment file)")
        out[key] = file_sha256(p)
    for key in ("loader", "transform"):
        if key in data:
            try:
                _, _, digest = resolve(data[key], base, f"{file}: data.{key}")
            except ValueError as e:
                raise DataError(str(e)) from None
            out[f"data.{key}"] = digest or data[key]
    return out
