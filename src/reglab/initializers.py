"""Keras initializer names applied to torch tensors (fan computed in Keras's way, layout-free)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _fans(t: torch.Tensor) -> tuple[int, int]:
    if t.dim() < 2:
        n = t.numel()
        return n, n
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(t)
    return fan_in, fan_out


def _trunc_normal(t, std):
    # Keras's truncated normal draws within 2 std; its variance-scaling divides by .8796...
    std = std / 0.87962566103423978
    return nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std)


def _uniform(limit):
    return lambda t: nn.init.uniform_(t, -limit(t), limit(t))


_INITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "zeros": nn.init.zeros_,
    "ones": nn.init.ones_,
    "glorot_uniform": _uniform(lambda t: math.sqrt(6.0 / sum(_fans(t)))),
    "glorot_normal": lambda t: _trunc_normal(t, math.sqrt(2.0 / sum(_fans(t)))),
    "he_uniform": _uniform(lambda t: math.sqrt(6.0 / _fans(t)[0])),
    "he_normal": lambda t: _trunc_normal(t, math.sqrt(2.0 / _fans(t)[0])),
    "lecun_uniform": _uniform(lambda t: math.sqrt(3.0 / _fans(t)[0])),
    "lecun_normal": lambda t: _trunc_normal(t, math.sqrt(1.0 / _fans(t)[0])),
    "random_normal": lambda t: nn.init.normal_(t, 0.0, 0.05),
    "random_uniform": lambda t: nn.init.uniform_(t, -0.05, 0.05),
    "orthogonal": nn.init.orthogonal_,
}


def get(identifier: str | Callable[[torch.Tensor], object]) -> Callable[[torch.Tensor], object]:
    """A Keras initializer name (``"glorot_uniform"``, ``"he_normal"``, ``"zeros"``, ...) or an
    in-place callable ``fn(tensor)``."""
    if isinstance(identifier, str):
        try:
            return _INITS[identifier]
        except KeyError:
            raise ValueError(f"unknown initializer {identifier!r}; expected one of {sorted(_INITS)}") from None
    if callable(identifier):
        return identifier
    raise ValueError(f"initializer must be a name or a callable; got {identifier!r}")
