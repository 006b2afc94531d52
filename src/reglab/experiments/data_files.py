"""Reading an experiment's examples: a CSV or NPZ file, split files, a built-in set or a loader
(``read_roles``: the arrays of each role, ``all`` or ``train``/``validation``/``test``), with
the checks a file's contents need (a unique header, the same columns across split files,
float32 range, matching lengths)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import datasets as _datasets
from .augment import is_dataset, read_all
from .code import NO_SIGNATURE, call_problem, call_user, resolve

from .data_tables import DATA_KEYS, MAX_EXAMPLES, SPLIT_NAMES, DataError, fail

__all__ = ["read_roles", "check_xy"]


def _read(path: Path, target: str | None, file: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if not {"x", "y"} <= set(f.files):
                    fail(file, key, f"{str(path)!r} must hold arrays 'x' and 'y'; it holds {sorted(f.files)}")
                return f["x"], f["y"]
        except Exception as e:  # noqa: BLE001 -- numpy raises several kinds for a damaged file (BadZipFile, ...)
            if isinstance(e, DataError):
                raise
            fail(file, key, f"cannot read {str(path)!r} as .npz: {type(e).__name__}: {e}")
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as e:  # pandas raises several kinds for a bad file
        fail(file, key, f"cannot read {str(path)!r} as CSV: {e}")
    _unique_header(path, list(df.columns), file, key)
    if df.empty:
        fail(file, key, f"{str(path)!r} has a header ({list(df.columns)[:10]}) but no rows")
    if target is None or target not in df.columns:
        fail(file, "data.target", f"column {target!r} not in {str(path)!r}; its columns are {list(df.columns)}")
    xdf = df.drop(columns=[target])
    non_num = [c for c in xdf.columns if not pd.api.types.is_numeric_dtype(xdf[c])]
    if non_num:
        fail(file, key, f"{str(path)!r}: non-numeric input column(s) {non_num}")
    if not pd.api.types.is_numeric_dtype(df[target]):  # class names: encoded by ``_encode_labels``
        if df[target].isna().any():
            r = int(np.argwhere(df[target].isna().to_numpy())[0][0])
            fail(file, "data.target", f"{str(path)!r}: {int(df[target].isna().sum())} empty target value(s), the "
                  f"first on line {r + 2} of the file")
        return xdf.to_numpy(dtype=np.float32), df[target].astype(str).to_numpy()
    for cols, what in ((xdf, "input"), (df[[target]], "target")):
        bad = ~np.isfinite(cols.to_numpy(dtype=np.float64))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            fail(file, key if what == "input" else "data.target",
                  f"{str(path)!r}: {int(bad.sum())} empty/NaN/inf {what} value(s), the first in column "
                  f"{cols.columns[c]!r}, line {r + 2} of the file")
    _within_float32(xdf.to_numpy(dtype=np.float64), file, key, f"{str(path)!r}: input column(s) hold",
                    lambda i: f"line {i + 2} of the file")
    return xdf.to_numpy(dtype=np.float32), df[target].to_numpy()


def _unique_header(path: Path, columns: list, file: str, key: str) -> None:
    """Each column name of a CSV once (pandas renames a repeated ``t`` to ``t.1``: the wrong
    column would be the target or an input)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    if len(header) == len(columns):
        seen: set[str] = set()
        for name in header:
            if name in seen:
                fail(file, key, f"{str(path)!r}: the column name {name!r} appears twice in the header: each column "
                      "needs its own name")
            seen.add(name)


def _same_columns(paths: Mapping[str, Path], file: str) -> None:
    """The CSV files of one data set name the same columns in the same order (a test file with
    other columns would be read as the same features)."""
    import pandas as pd

    cols = {k: list(pd.read_csv(p, nrows=0).columns) for k, p in paths.items() if p.suffix != ".npz"}
    first = next(iter(cols), None)
    for k, c in cols.items():
        if c != cols[first]:
            fail(file, f"data.files.{k}", f"its columns {c} differ from data.files.{first}'s {cols[first]}: the "
                  "splits must hold the same columns, in the same order")


def _within_float32(a: np.ndarray, file: str, key: str, what: str, where: Callable[[int], str]) -> None:
    """Fail where a (finite) value is beyond float32's range, which the model trains in: cast,
    it would become inf."""
    big = np.abs(a.astype(np.float64)) > np.finfo(np.float32).max
    if big.any():
        i = int(np.argwhere(big)[0][0])
        fail(file, key, f"{what} {int(big.sum())} value(s) beyond float32's range (+-3.4e38, what the model trains "
              f"in), the first in {where(i)}, of magnitude {float(np.abs(a[i]).max()):.3g}: rescale the data")


def _pair(v: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise DataError(f"{where}: expected (x, y); got {type(v).__name__}")
    out = []
    for name, a in zip("xy", v):
        try:
            out.append(np.asarray(a))
        except (ValueError, TypeError) as e:  # ragged lists, objects numpy cannot hold
            raise DataError(f"{where}: {name} is not an array of one shape ({e})") from None
    return out[0], out[1]


def check_xy(x: np.ndarray, y: np.ndarray, file: str, key: str) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        fail(file, key, f"x must have shape (examples, features...) with at least one example; got {x.shape}")
    if y.shape[0] != x.shape[0] or y.ndim > 2:
        fail(file, key, f"x has {x.shape[0]} examples of shape {x.shape[1:]} but y has shape {y.shape}")
    if x.shape[0] > MAX_EXAMPLES:
        fail(file, key, f"{x.shape[0]} examples is more than {MAX_EXAMPLES}")
    for name, a in (("x", x), ("y", y)):
        if not np.issubdtype(a.dtype, np.number) and a.dtype != bool or np.iscomplexobj(a):
            fail(file, key, f"{name} must be real numbers; got dtype {a.dtype}")
        bad = ~np.isfinite(a.astype(np.float64))
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            fail(file, key, f"{name} has {int(bad.sum())} NaN/inf value(s), the first in example {i} "
                  f"(counting from 0: {name}[{i}])")
        if a.dtype.kind == "f":
            _within_float32(a, file, key, f"{name} has", lambda i: f"example {i} (counting from 0: {name}[{i}])")


def read_roles(data: Mapping[str, Any], base: Path, file: str, seed: int) -> tuple[dict[str, tuple], Any, str | None]:
    """``({role: (x, y)}, distribution, task of a built-in set)``; role ``"all"`` for one pool."""
    if "name" in data:
        args = {k: v for k, v in data.items() if k not in DATA_KEYS}
        x, y, dist, task = _datasets.sample(data["name"], seed, **args)
        return {"all": (x, y)}, dist, task
    if "file" in data:
        p = (base / data["file"]).resolve()
        return {"all": _read(p, data.get("target"), file, "data.file")}, None, None
    if "files" in data:
        got = {k: _read((base / v).resolve(), data.get("target"), file, f"data.files.{k}")
               for k, v in data["files"].items()}
        _same_columns({k: (base / v).resolve() for k, v in data["files"].items()}, file)
        return got, None, None
    try:
        fn, _, _ = resolve(data["loader"], base, f"{file}: data.loader")
        args = dict(data.get("args", {}))
        problem = call_problem(fn, **args)
        if problem and problem != NO_SIGNATURE:  # a builtin: the call says what is wrong
            raise DataError(f"{file}: data.args: {problem}")
        got = call_user(fn, f"{file}: data.loader: {data['loader']}", **args)
    except DataError:
        raise
    except ValueError as e:  # the loader raised or exited, or cannot be resolved
        raise DataError(str(e)) from None
    if isinstance(got, Mapping):
        if not {"train", "test"} <= set(got) or set(got) - set(SPLIT_NAMES):
            raise DataError(f"{file}: data.loader: a dict must have keys train and test (and optionally validation); "
                            f"got {sorted(got)}")
        return {k: _role(v, f"{file}: data.loader[{k!r}]") for k, v in got.items()}, None, None
    if is_dataset(got):
        raise DataError(f"{file}: data.loader: returned one Dataset; return a dict of Datasets per role, "
                        "{\"train\": ..., \"test\": ...} (and \"validation\"): how a Dataset is split is yours")
    return {"all": _pair(got, f"{file}: data.loader")}, None, None


def _role(v: Any, where: str) -> tuple:
    """A loader's role: ``(x, y)`` arrays, or a Dataset read once into arrays, with the Dataset
    itself third (the training split trains from it)."""
    if not is_dataset(v):
        from torch.utils.data import IterableDataset

        if isinstance(v, IterableDataset):
            raise DataError(f"{where}: an IterableDataset; a study reads map-style Datasets (with __len__ and "
                            "__getitem__), each split once and the training split at every step")
        return _pair(v, where)
    try:
        return (*read_all(v, where), v)
    except ValueError as e:
        raise DataError(str(e)) from None
