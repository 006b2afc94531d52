"""An experiment's data: where it comes from (``[data]``), how it is split (``[split]``), its task.
(The tables are checked in ``data_tables.py``; files, split files and loaders are read in
``data_files.py``; this module splits, encodes labels, standardizes: ``load_splits``.)

Three roles, never mixed: the **training** split trains; the **validation** split drives every
training decision (early stopping, restoring the best weights, choosing a strength) and every
``val_*`` figure; the **test** split gives the reported scores. ``[split] validation = "test"``
(written out) is the protocol where the validation data *are* the test data; reports say so.

Splits of one pool of examples are stratified for classification: first ``test`` (a fraction of
all examples), then ``validation`` (a fraction of all examples) from the rest. With
``resample = true`` (default) each seed draws its own split -- and, for a synthetic set, its own
sample -- so the variance from the data counts; with ``false`` one split (seed 0) is shared and
only the initialization and shuffling change with the seed. ``standardize = true`` scales each
input feature by the training split's mean and standard deviation only.

Task (``binary | multiclass | regression``), inferred when not given: integer (or integral) targets
with at most 2 values -> binary; more -> multiclass; anything else -> regression. Binary labels
must be 0/1, multiclass labels 0..K-1.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..training.sources import draws_random
from .augment import Augmented, Transform
from .code import resolve
from .data_files import check_xy, read_roles
from .data_tables import DEFAULT_SPLIT, fail

__all__ = ["Splits", "ARRAYS", "load_splits", "infer_task", "fingerprint"]


#: the arrays of ``Splits``
ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass
class Splits:
    """The three splits of one seed (``x_val``/``y_val`` are the test arrays when
    ``validation_is_test``), the task and the model's output width; ``transform`` maps raw
    inputs to what the model sees (the standardization), for fresh samples of a known
    ``distribution``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    n_outputs: int
    distribution: Any = None
    validation_is_test: bool = False
    transform: Callable[[np.ndarray], np.ndarray] | None = None  # None: the model sees the raw inputs
    y_transform: Callable[[np.ndarray], np.ndarray] | None = None
    classes: list[str] | None = None  # string labels: class i is classes[i] (sorted)
    #: the training split as a loader's Dataset (read at every step), or None: the arrays
    train_set: Any = None
    #: ``[data] transform``: random augmentation of each training example (``augment.py``)
    augment: Transform | None = None

    def training(self) -> Any:
        """What the training split trains from: a map-style ``Dataset`` where examples are read
        one by one (a loader's Dataset, or the arrays through ``[data] transform``), else None
        (the arrays ``x_train``, ``y_train``)."""
        if self.train_set is not None:
            return self.train_set
        return Augmented(self.x_train, self.y_train, self.augment) if self.augment is not None else None

    def model_inputs(self, x: np.ndarray) -> np.ndarray:
        """Raw inputs (e.g. a fresh sample) as the model sees them."""
        return x if self.transform is None else self.transform(x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _integral(y: np.ndarray) -> bool:
    return np.issubdtype(y.dtype, np.integer) or y.dtype == bool or bool(np.all(np.mod(y, 1) == 0))


def infer_task(y: np.ndarray) -> str:
    if y.ndim == 2 and y.shape[1] > 1:
        return "regression"
    if _integral(y):
        return "binary" if np.unique(y).size <= 2 else "multiclass"
    return "regression"


def _labels(y: np.ndarray, task: str, n_classes: int | None, file: str, key: str) -> np.ndarray:
    if task == "regression":
        return y.astype(np.float32).reshape(y.shape[0], -1)
    flat = y.reshape(-1) if y.ndim == 1 or y.shape[1] == 1 else None
    if flat is None:
        fail(file, key, f"{task} labels must be one column; got y of shape {y.shape}")
    if not _integral(flat):
        i = int(np.argwhere(np.mod(flat, 1) != 0)[0][0])
        fail(file, key, f"{task} labels must be integers; label {flat[i]!r} at index {i} is not")
    lab = flat.astype(np.int64)
    hi = 1 if task == "binary" else (n_classes - 1 if n_classes else lab.max())
    bad = np.argwhere((lab < 0) | (lab > hi))
    if bad.size:
        i = int(bad[0][0])
        want = "0 or 1" if task == "binary" else f"0..{hi}"
        fail(file, key, f"{task} labels must be {want}; label {lab[i]} at index {i} is not")
    return lab.astype(np.float32).reshape(-1, 1) if task == "binary" else lab


def _source_key(data: Mapping[str, Any], base: Path, role: str) -> str:
    """Where the examples of ``role`` (``"all"`` for one pool) come from, for an error message:
    the key, and the file where there is one."""
    if "file" in data:
        return f"data.file ({str((base / data['file']).resolve())!r})"
    if "files" in data:
        return f"data.files.{role} ({str((base / data['files'][role]).resolve())!r})"
    if "loader" in data:
        return "data.loader" + ("" if role == "all" else f" ({role!r})")
    return "data.name"


def _every_class(labels: np.ndarray, n_classes: int, file: str) -> None:
    """Multiclass labels are 0..K-1 with K = the largest + 1, and every class has an example
    somewhere in the data (all splits together): a class without one is a label that does not
    fit (labels 1..K, a gap), not a class to predict."""
    present = set(np.unique(labels.astype(np.int64)).tolist())
    missing = [c for c in range(n_classes) if c not in present]
    if not missing or min(present) < 0:
        return  # a negative label: named by the label check (``_labels``)
    lo = min(present)
    if lo > 0 and missing[:lo] == list(range(lo)) and len(missing) == lo:
        fail(file, "data", f"multiclass labels must be 0..K-1; these start at {lo} (class 0 would have no example): "
              "relabel them, or set data.task = \"regression\" for a count or measurement")
    fail(file, "data", f"multiclass labels must be 0..K-1 with an example of every class; class(es) "
          f"{missing[:10]}{' ...' if len(missing) > 10 else ''} of 0..{n_classes - 1} have none (labels present: "
          f"{sorted(present)[:10]}{' ...' if len(present) > 10 else ''}): relabel them 0..{len(present) - 1}")


def _stratify(y: np.ndarray, task: str) -> np.ndarray | None:
    if task == "regression":
        return None
    lab = y.reshape(-1)
    _, counts = np.unique(lab, return_counts=True)
    return lab if counts.min() >= 2 else None


def _check_sizes(n: int, test: float, validation: Any, file: str, what: str = "the data") -> None:
    """Every split gets an example: ``n`` examples, ``test`` and ``validation`` fractions
    (``"test"``: the test split validates), rounded as scikit-learn rounds them (the test share
    up)."""
    n_test = math.ceil(round(test * n, 6))
    n_val = 0 if validation == "test" else math.ceil(round(float(validation) * n, 6))
    sizes = {"train": n - n_test - n_val, **({"validation": n_val} if validation != "test" else {}),
             **({"test": n_test} if test else {})}
    empty = [k for k, v in sizes.items() if v < 1]
    if empty:
        keys = "split.test and split.validation" if test else "split.validation"
        fail(file, keys, f"{what} hold {n} example(s); fractions test = {test}, validation = {validation} leave "
              f"the {' and '.join(empty)} split(s) empty ({', '.join(f'{k} {v}' for k, v in sizes.items())}): "
              "use more data or other fractions")


def _split_off(x, y, frac, seed, task):
    from sklearn.model_selection import train_test_split

    strat = _stratify(y, task)
    try:
        return train_test_split(x, y, test_size=frac, random_state=seed, stratify=strat)
    except ValueError:  # too few examples of a class for a stratified split of this size
        return train_test_split(x, y, test_size=frac, random_state=seed)


def _encode_labels(roles: dict[str, tuple], data: Mapping[str, Any], regression_loss: str | None,
                   file: str) -> tuple[dict[str, tuple], list[str] | None]:
    """String class labels (``"setosa"``) as integers 0..K-1 in sorted order, the same mapping for
    every role, and the class names; numbers are left as they are (``None``)."""
    ys = [np.asarray(y) for _, y in roles.values()]
    if not any(y.dtype.kind in "USO" for y in ys):
        return roles, None
    if data.get("task") == "regression" or regression_loss:
        why = "data.task is \"regression\"" if data.get("task") == "regression" else \
            f"the loss {regression_loss} is a regression loss"
        fail(file, "data.task" if data.get("task") else "train.loss", f"the targets are class names (strings) but "
              f"{why}: a regression needs numbers; for classes, use a classification loss (or remove data.task)")
    try:
        names = sorted({str(v) for y in ys for v in y.reshape(-1)})
    except TypeError as e:
        fail(file, "data", f"the targets mix strings with other values: {e}")
    index = {n: i for i, n in enumerate(names)}
    return {r: (x, np.array([index[str(v)] for v in np.asarray(y).reshape(-1)], dtype=np.int64).reshape(
        np.asarray(y).shape)) for r, (x, y) in roles.items()}, names


def load_splits(data: Mapping[str, Any], split: Mapping[str, Any], base: str | Path, file: str, seed: int,
                regression_loss: str | None = None) -> Splits:
    """The three splits for one seed, validated (shapes, NaN, labels fitting the task). String
    class labels are encoded (``Splits.classes``); ``regression_loss``, the name of the training
    loss where it is a regression loss, makes integer targets a regression where ``data.task``
    does not say."""
    base = Path(base)
    resample = bool(split.get("resample", True))
    data_seed = seed if resample else 0
    roles, dist, known_task = read_roles(data, base, file, data_seed)
    train_set = roles["train"][2] if len(roles.get("train", ())) == 3 else None
    roles = {r: v[:2] for r, v in roles.items()}
    roles, classes = _encode_labels(roles, data, regression_loss, file)
    if train_set is not None:
        _check_train_set(data, classes, file)
    key = lambda r: _source_key(data, base, r)  # noqa: E731
    for role, (x, y) in roles.items():
        check_xy(np.asarray(x), np.asarray(y), file, key(role))
    all_y = np.concatenate([np.asarray(y).reshape(np.asarray(y).shape[0], -1) for _, y in roles.values()])
    task = data.get("task") or known_task or ("regression" if regression_loss and classes is None else None) or \
        infer_task(all_y if all_y.shape[1] > 1 else all_y.reshape(-1))
    if classes is not None and task == "regression":
        fail(file, "data.task", "the targets are class names (strings): the task is binary or multiclass")
    n_classes = None
    if task == "multiclass":
        n_classes = int(all_y.max()) + 1 if _integral(all_y) else None
    if task == "binary" and all_y.shape[1] == 1 and _integral(all_y) and np.unique(all_y).size > 2:
        fail(file, "data.task", f"binary needs two classes; the targets have {np.unique(all_y).size} values")
    if task in ("binary", "multiclass") and np.unique(all_y).size < 2:
        only = all_y.reshape(-1)[0].item()
        fail(file, "data", f"the targets hold one class only ({only!r} in all {all_y.shape[0]} examples): a "
              "classifier has nothing to learn; check the target column (or set data.task = \"regression\")")
    if task == "multiclass" and n_classes:
        _every_class(all_y.reshape(-1), n_classes, file)
    roles = {r: (np.asarray(x), _labels(np.asarray(y), task, n_classes, file, key(r))) for r, (x, y) in roles.items()}
    vfrac = split.get("validation", DEFAULT_SPLIT["validation"] if "all" in roles else None)
    val_is_test = vfrac == "test"
    if "all" in roles:
        x, y = roles["all"]
        tfrac = split.get("test", DEFAULT_SPLIT["test"])
        _check_sizes(x.shape[0], tfrac, vfrac, file)
        xr, xte, yr, yte = _split_off(x, y, tfrac, data_seed, task)
        if val_is_test:
            xtr, ytr, xv, yv = xr, yr, xte, yte
        else:  # a fraction of all the examples, rounded up as scikit-learn rounds the test share
            n_val = math.ceil(round(vfrac * x.shape[0], 6))
            xtr, xv, ytr, yv = _split_off(xr, yr, n_val, data_seed + 7919, task)
    else:
        xtr, ytr, xv, yv, xte, yte, train_set = _given_splits(roles, split, vfrac, train_set, data_seed, task, file)
    shapes = {r: a.shape[1:] for r, a in (("train", xtr), ("validation", xv), ("test", xte))}
    if len(set(shapes.values())) != 1:
        fail(file, "data.files", f"the splits' examples differ in shape: {shapes}")
    n_out = (int(n_classes or (max(ytr.max(), yv.max(), yte.max()) + 1)) if task == "multiclass" else
             1 if task == "binary" else int(ytr.shape[1]))
    transform = None
    if data.get("standardize"):
        mean = xtr.mean(axis=0, dtype=np.float64)
        std = xtr.std(axis=0, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        transform = _Standardize(mean, std)
        xtr, xv, xte = transform(xtr), transform(xv), transform(xte)
    y_transform = None
    if data.get("standardize_target") and task != "regression":
        fail(file, "data.standardize_target", f"only for regression targets; the task is {task}")
    if data.get("standardize_target"):
        y_transform = _Standardize(ytr.mean(axis=0, dtype=np.float64), np.where(ytr.std(axis=0) > 0, ytr.std(axis=0), 1.0))
        ytr, yv, yte = y_transform(ytr), y_transform(yv), y_transform(yte)
    if val_is_test:
        xv, yv = xte, yte
    augment = None
    if data.get("transform"):
        where = f"{file}: data.transform: {data['transform']}"
        augment = Transform(resolve(data["transform"], base, f"{file}: data.transform")[0], where)
    return Splits(xtr, ytr, xv, yv, xte, yte, task, n_out, dist, val_is_test, transform, y_transform, classes,
                  train_set, augment)


def _given_splits(roles: dict[str, tuple], split: Mapping[str, Any], vfrac: Any, train_set: Any, data_seed: int,
                  task: str, file: str) -> tuple:
    """``(x_train, y_train, x_val, y_val, x_test, y_test, train_set)`` of data that come split
    (files, a loader's dict): the validation role, the test split (``"test"``) or a fraction of
    the training split held out by the seed -- by index where the training split is a Dataset
    (``train_set`` becomes the Subset it keeps)."""
    ignored = [k for k in ("test", "validation") if k in split and split[k] != "test" and
               (k == "test" or "validation" in roles)]
    if ignored:
        fail(file, f"split.{ignored[0]}", "the data come already split (files or a loader's dict with "
              f"{sorted(roles)}), so this fraction would be ignored; remove it")
    xtr, ytr = roles["train"]
    xte, yte = roles["test"]
    if "validation" in roles:
        return (xtr, ytr, *roles["validation"], xte, yte, train_set)
    if vfrac == "test":
        return xtr, ytr, xte, yte, xte, yte, train_set
    frac = vfrac or DEFAULT_SPLIT["validation"]
    _check_sizes(xtr.shape[0], 0.0, frac, file, "the train data")
    if train_set is None:
        xtr, xv, ytr, yv = _split_off(xtr, ytr, frac, data_seed + 7919, task)
        return xtr, ytr, xv, yv, xte, yte, None
    from torch.utils.data import Subset  # the same split, by index: the training examples are the Dataset's

    _no_augmented_validation(train_set, file)
    itr, iv, _, _ = _split_off(np.arange(len(xtr)), ytr, frac, data_seed + 7919, task)
    return xtr[itr], ytr[itr], xtr[iv], ytr[iv], xte, yte, Subset(train_set, itr.tolist())


def _check_train_set(data: Mapping[str, Any], classes: Any, file: str) -> None:
    """What a loader's training Dataset cannot be combined with, said before anything trains."""
    if classes is not None:
        fail(file, "data.loader", "the training Dataset's labels are strings; a Dataset gives the model its labels "
              "as they are, so give integers 0..K-1")
    for key in ("standardize", "standardize_target", "transform"):
        if data.get(key):
            fail(file, f"data.{key}", "the training split is a loader's Dataset: do this in the Dataset (it gives "
                  "the model its examples as they are)")


def _no_augmented_validation(ds: Any, file: str) -> None:
    if draws_random(ds):
        fail(file, "split.validation", "the training Dataset draws random numbers (augmentation), so validation "
              "examples cut from it would be augmented: return a \"validation\" Dataset from the loader, or set "
              "[split] validation = \"test\"")


class _Standardize:
    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean, self.std = mean, std

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return ((a - self.mean) / self.std).astype(np.float32)


def fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()[:16]
