"""Keras activation names -> torch functions (``keras.activations.get``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

def linear(x: torch.Tensor) -> torch.Tensor:
    return x


def softmax(x: torch.Tensor) -> torch.Tensor:
    return F.softmax(x, dim=-1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(x, dim=-1)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)  # Keras default negative_slope=0.2


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0  # Keras 3 definition


# named functions (not lambdas) so that models holding them can be pickled
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": linear,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": softmax,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,  # Keras 3 default: approximate=False
    "softplus": F.softplus,
    "softsign": F.softsign,
    "swish": F.silu,
    "silu": F.silu,
    "leaky_relu": leaky_relu,
    "exponential": torch.exp,
    "hard_sigmoid": hard_sigmoid,
    "log_softmax": log_softmax,
}


def get(identifier: str | Callable | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A Keras activation name, a callable, or ``None`` (linear)."""
    if identifier is None:
        return _ACTIVATIONS["linear"]
    if isinstance(identifier, str):
        try:
            return _ACTIVATIONS[identifier]
        except KeyError:
            raise ValueError(f"unknown activation {identifier!r}; expected one of {sorted(_ACTIVATIONS)}") from None
    if callable(identifier):
        return identifier
    raise ValueError(f"activation must be a name, a callable or None; got {identifier!r}")


def names() -> list[str]:
    return sorted(_ACTIVATIONS)
