"""Constraints: projections applied to a parameter after every optimizer step (Keras 3 math).

``axis`` has Keras's meaning on the Keras view of the weight (see ``reglab._layout``): for a torch
Linear weight ``(out, in)`` the Keras kernel is ``(in, out)``, so the default ``axis=0`` takes one
norm per *output unit* (over its incoming weights), exactly as Keras does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import _checks
from ._layout import keras_axis_to_torch

__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "get", "serialize", "deserialize"]

EPSILON = 1e-7  # keras.config.epsilon()

_REGISTRY: dict[str, type[Constraint]] = {}


def _register(cls, *aliases):
    _REGISTRY[cls.__name__] = cls
    for a in aliases:
        _REGISTRY[a] = cls
    return cls


def _check_axis(axis: Any) -> int | tuple[int, ...] | None:
    if axis is None or (isinstance(axis, int) and not isinstance(axis, bool)):
        return axis
    if isinstance(axis, (list, tuple)) and all(isinstance(a, int) and not isinstance(a, bool) for a in axis):
        return tuple(axis)
    raise ValueError(f"axis must be an int, a sequence of ints or None; got axis={axis!r}")


class Constraint:
    """Base class: ``__call__(w)`` returns the projected weight. Keras: ``keras.constraints.Constraint``."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stacked(self, w: torch.Tensor) -> torch.Tensor:
        """The constraint on each of a stack of weights (dim 0: the model), i.e.
        ``torch.stack([self(w_m) for w_m in w])``: ``torch.vmap`` unless a subclass does it directly."""
        return torch.vmap(self)(w)

    def project(self, w: torch.Tensor, stacked: bool = False) -> torch.Tensor:
        """``self(w)`` (``stacked``: ``self.stacked(w)``), checked to have ``w``'s shape, for the
        copy into the weight: a constraint that returns another shape is an error naming it, never
        broadcast into the weight."""
        try:
            out = self.stacked(w) if stacked else self(w)
        except (RuntimeError, ValueError):
            one = self(w[0] if stacked else w)  # what it returns for one weight says what went wrong
            if isinstance(one, torch.Tensor):
                raise
            out = one
        if not isinstance(out, torch.Tensor) or out.shape != w.shape:
            lead = 1 if stacked else 0  # the shapes of one model's weight
            got = f"shape {tuple(out.shape[lead:])}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{self!r} returned {got} for a weight of shape {tuple(w.shape[lead:])}: a constraint "
                             "returns the projected weight, of the weight's own shape")
        return out

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Constraint:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self.get_config() == other.get_config()  # type: ignore[union-attr]

    __hash__ = object.__hash__


def _norms(w: torch.Tensor, axis, lead: int = 0) -> torch.Tensor:
    """L2 norms over the Keras ``axis`` of each weight; ``lead`` leading dims index a stack."""
    rank = w.dim() - lead
    if rank == 0:
        return w.abs()
    dims = keras_axis_to_torch(axis, rank)
    dims = tuple(range(lead, w.dim())) if dims is None else tuple(d + lead for d in dims)
    return torch.sqrt(w.square().sum(dim=dims, keepdim=True))


class MaxNorm(Constraint):
    """``w * clip(n, 0, max_value) / (1e-7 + n)`` with ``n`` the L2 norms over ``axis``.
    Keras: ``keras.constraints.MaxNorm(max_value=2, axis=0)``."""

    def __init__(self, max_value: float = 2.0, axis: int | tuple[int, ...] | None = 0):
        self.max_value = _checks.non_negative_float(max_value, "max_value")
        self.axis = _check_axis(axis)

    def __call__(self, w, lead: int = 0):
        n = _norms(w, self.axis, lead)
        return w * (n.clamp(0, self.max_value) / (EPSILON + n))

    def stacked(self, w):
        return self(w, lead=1)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class MinMaxNorm(Constraint):
    """``w * d / (1e-7 + n)`` with ``d = rate * clip(n, min_value, max_value) + (1 - rate) * n``.
    Keras: ``keras.constraints.MinMaxNorm(min_value=0.0, max_value=1.0, rate=1.0, axis=0)``."""

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, axis=0):
        self.min_value = _checks.non_negative_float(min_value, "min_value")
        self.max_value = _checks.non_negative_float(max_value, "max_value")
        if self.min_value > self.max_value:
            raise ValueError(
                f"min_value must be <= max_value; got min_value={min_value!r}, max_value={max_value!r}"
            )
        self.rate = _checks.non_negative_float(rate, "rate")
        self.axis = _check_axis(axis)

    def stacked(self, w):
        return self(w, lead=1)

    def __call__(self, w, lead: int = 0):
        n = _norms(w, self.axis, lead)
        desired = self.rate * n.clamp(self.min_value, self.max_value) + (1 - self.rate) * n
        return w * (desired / (EPSILON + n))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate, "axis": self.axis}


class NonNeg(Constraint):
    """``w * (w >= 0)``. Keras: ``keras.constraints.NonNeg()``."""

    def __call__(self, w):
        return w * (w >= 0).to(w.dtype)

    def stacked(self, w):
        return self(w)


class UnitNorm(Constraint):
    """``w / (1e-7 + n)`` with ``n`` the L2 norms over ``axis``. Keras: ``keras.constraints.UnitNorm(axis=0)``."""

    def __init__(self, axis: int | tuple[int, ...] | None = 0):
        self.axis = _check_axis(axis)

    def __call__(self, w, lead: int = 0):
        return w / (EPSILON + _norms(w, self.axis, lead))

    def stacked(self, w):
        return self(w, lead=1)

    def get_config(self):
        return {"axis": self.axis}


_register(MaxNorm, "max_norm")
_register(MinMaxNorm, "min_max_norm")
_register(NonNeg, "non_neg")
_register(UnitNorm, "unit_norm")


def register_constraint(cls: type[Constraint]) -> type[Constraint]:
    """Class decorator: make a custom constraint resolvable by ``get``/``deserialize``."""
    return _register(cls)


def serialize(constraint: Constraint | None) -> dict[str, Any] | None:
    if constraint is None:
        return None
    cfg = constraint.get_config()
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    return {"class_name": type(constraint).__name__, "config": cfg}


def deserialize(config: Mapping[str, Any]) -> Constraint:
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise ValueError(f"a serialized constraint must be a dict with 'class_name' and 'config'; got {config!r}")
    cls = _REGISTRY.get(config["class_name"])
    if cls is None:
        raise ValueError(f"unknown constraint {config['class_name']!r}; expected one of {sorted(_REGISTRY)}")
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier: Any) -> Constraint | None:
    """Resolve ``None``, a name (``"max_norm"``, ``"MaxNorm"``, ``"non_neg"``, ``"unit_norm"``,
    ``"min_max_norm"``), a serialized dict or an instance, as ``keras.constraints.get``."""
    if identifier is None:
        return None
    if isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, Mapping):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _REGISTRY.get(identifier)
        if cls is None:
            raise ValueError(f"unknown constraint {identifier!r}; expected one of {sorted(_REGISTRY)}")
        return cls()
    raise ValueError(f"could not interpret constraint identifier {identifier!r}")
