"""Validation and conversion of training data at the public boundary."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..losses import Loss


def as_tensor(a: Any, name: str, dtype: torch.dtype | None, device: Any, keep_ints: bool = False) -> torch.Tensor:
    """Array-like -> tensor; numeric, non-empty and finite, else a ValueError naming ``name``.
    Cast to ``dtype`` (when given), integers too unless ``keep_ints`` (``as_input``)."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        try:
            arr = np.asarray(a)
        except Exception as e:  # ragged lists etc.
            raise ValueError(f"{name} could not be read as an array: {e}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be numeric; got an array of dtype {arr.dtype}")
        t = torch.from_numpy(np.array(arr, copy=True, order="C"))  # a copy: read-only inputs stay untouched
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); need at least one example")
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s); first at index {first}")
        if dtype is not None and dtype.is_floating_point and torch.finfo(dtype).max < torch.finfo(t.dtype).max:
            big = t.abs() > torch.finfo(dtype).max  # finite here, inf once cast to the model's dtype
            if bool(big.any()):
                first = tuple(int(i) for i in big.nonzero()[0])
                raise ValueError(f"{name} holds {int(big.sum())} value(s) beyond {dtype}'s range (+-"
                                 f"{torch.finfo(dtype).max:.3g}), the model's dtype; first at index {first}: rescale "
                                 "the data (or train the model in float64)")
    if dtype is not None:
        t = as_input(t, dtype) if keep_ints else t.to(dtype)
    return t.to(device) if device is not None else t


def as_input(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A model's input: floats and booleans in the model's float ``dtype``; integers stay
    integers (an ``nn.Embedding``'s token ids). Where a model cannot take integer inputs, ``fit``
    gives it floats instead (``reglab.training.fit.probe_inputs``)."""
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        return t.to(dtype)
    return t


def targets(y: Any, name: str, loss: Loss, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """y as float (or long for sparse labels), with the label checks the loss needs."""
    if loss.task == "sparse":
        t = as_tensor(y, name, None, device)
        if t.is_floating_point() and bool((t != t.round()).any()):
            raise ValueError(f"{name}: sparse categorical labels must be integers")
        return t.long()
    t = as_tensor(y, name, dtype, device)
    if loss.task == "binary":
        bad = (t != 0) & (t != 1)
        if bool(bad.any()):
            vals = torch.unique(t[bad])[:5].tolist()
            raise ValueError(f"{name}: binary cross-entropy needs labels in {{0, 1}}; found {vals}")
    return t


def check_lengths(x: torch.Tensor, y: torch.Tensor, xname: str, yname: str, axis: int = 0) -> None:
    if x.shape[axis] != y.shape[axis]:
        raise ValueError(f"{xname} has {x.shape[axis]} examples but {yname} has {y.shape[axis]}")

