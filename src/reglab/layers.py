"""Keras-style layers built on ``reglab.regularize``/``reglab.constrain`` (no second mechanism)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import activations as _activations
from . import initializers as _initializers
from .attach import Handle, constrain, regularize

__all__ = ["Dense", "Activation"]


class Dense(nn.Linear):
    """``activation(x @ W.T + b)`` -- a ``torch.nn.Linear`` with Keras's ``Dense`` arguments.

    Keras: ``keras.layers.Dense(units, activation, use_bias, kernel_initializer="glorot_uniform",
    bias_initializer="zeros", kernel_regularizer, bias_regularizer, activity_regularizer,
    kernel_constraint, bias_constraint)``. The weight keeps torch's ``(out, in)`` layout (the Keras
    kernel is its transpose). The activity regularizer sees the layer's output *after* the
    activation, as in Keras. Everything is attached with ``reglab.regularize``/``reglab.constrain``
    (``self.handle.remove()`` detaches it), so it shows in ``reglab.penalties`` like any source.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        device: Any = None,
        dtype: Any = None,
    ):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        super().__init__(in_features, out_features, bias=use_bias, device=device, dtype=dtype)
        self.activation_name = activation if isinstance(activation, str) or activation is None else getattr(activation, "__name__", "custom")
        self.activation = _activations.get(activation)
        with torch.no_grad():
            _initializers.get(kernel_initializer)(self.weight)
            if self.bias is not None:
                _initializers.get(bias_initializer)(self.bias)
        params = {"weight": kernel_regularizer}
        if use_bias:
            params["bias"] = bias_regularizer
        elif bias_regularizer is not None or bias_constraint is not None:
            raise ValueError("bias_regularizer/bias_constraint given but use_bias=False")
        params = {k: v for k, v in params.items() if v is not None}
        self.handle = Handle()
        h1 = regularize(self, params=params, activity={"": activity_regularizer} if activity_regularizer is not None else None)
        cons = {k: v for k, v in (("weight", kernel_constraint), ("bias", bias_constraint)) if v is not None}
        h2 = constrain(self, cons) if cons else Handle()
        self.handle._undo.extend([h1.remove, h2.remove])
        self.handle.sources = h1.sources + h2.sources

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation_name}"


class Activation(nn.Module):
    """``keras.layers.Activation``: applies a named activation (used for "activity before activation")."""

    def __init__(self, activation: Any):
        super().__init__()
        self.activation_name = activation if isinstance(activation, str) else getattr(activation, "__name__", "custom")
        self.fn = _activations.get(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return f"{self.activation_name}"
