"""The fused engine's math, declared once: every element-wise term its compiled step supports,
with its value and derivative as C expressions (from which ``source`` writes the kernel) and
the reglab definition each must equal (checked in ``tests/test_fused.py``: value and derivative
against the Python definition and autograd, ``gradcheck`` in float64).

A term is an expression over ``vf`` (a vector of float lanes, one model per lane; the same code
instantiated over ``double`` for the float64 check). ``v_exp`` and ``v_log`` are the kernel's own
(Cephes' single-precision polynomials), so a model's bits do not depend on the C library.

- activations ``y = act(z)``; the derivative is written from the output: ``dz = dact(y, g)``
  for the incoming ``g = dL/dy``;
- penalty terms ``f(x)``, ``f'(x)`` (a regularizer is ``sum_k s_k * sum_i f_k(x_i)``:
  ``ElementwiseRegularizer.elementwise_terms``), matched by the Python functions they mirror;
- losses per element ``l(p, y)`` and ``dl/dp`` (averaged over the last axis by the kernel, as
  ``reglab.losses._mean_last``).

Anything not in these tables is not approximated: the model trains on another engine
(``eligibility``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ... import regularizers as _regularizers
from ...losses import EPSILON

__all__ = ["Term", "ACTIVATIONS", "PENALTIES", "LOSSES", "penalty_term", "RELU", "SIGMOID", "NONNEG",
           "DERIVS_NONNEG"]


@dataclass(frozen=True)
class Term:
    """One element-wise function: C expressions of its value and derivative, and the torch
    functions they must agree with (``ref`` the value, ``dref`` the derivative, in the same
    arguments)."""

    name: str
    value: str
    deriv: str
    ref: Callable[..., torch.Tensor]
    dref: Callable[..., torch.Tensor]


def _relu_d(y, g):
    return torch.where(y > 0, g, torch.zeros_like(g))


RELU = Term("relu", "sel(z > 0, z, z * 0)", "sel(y > 0, g, g * 0)", torch.relu, _relu_d)
SIGMOID = Term("sigmoid", "1 / (1 + v_exp(-z))", "g * y * (1 - y)", torch.sigmoid, lambda y, g: g * y * (1 - y))

#: activation name -> Term(value of z, derivative of (y, g))
ACTIVATIONS = {
    "linear": Term("linear", "z", "g", lambda z: z, lambda y, g: g),
    "relu": RELU,
    "sigmoid": SIGMOID,
}

#: penalty term name -> Term(f of x, f' of x), keyed by the regularizers' own functions below
PENALTIES = {
    "abs": Term("abs", "sel(x < 0, -x, x)", "sel(x > 0, x * 0 + 1, sel(x < 0, x * 0 - 1, x * 0))",
                _regularizers._abs, _regularizers._sign),
    "square": Term("square", "x * x", "2 * x", _regularizers._square, _regularizers._twice),
}
_BY_FN = {(t.ref, t.dref): name for name, t in PENALTIES.items()}

#: activations whose output is never below zero: relu's is z or z * 0 (+0 or -0 for z <= 0),
#: sigmoid's 1 / (1 + e) with e > 0 (or NaN, for either)
NONNEG = frozenset({"relu", "sigmoid"})
#: penalty term name -> its derivative where x is never below zero (an output of a ``NONNEG``
#: activation): the same values as ``deriv`` there (its x < 0 branch never taken), in fewer operations
DERIVS_NONNEG = {"abs": "sel(x > 0, x * 0 + 1, x * 0)"}


def penalty_term(f: Callable, df: Callable) -> str | None:
    """The name of the penalty term whose ``f``, ``f'`` are these regularizer functions, or None."""
    return _BY_FN.get((f, df))


def _bce(p, y):
    q = p.clamp(EPSILON, 1 - EPSILON)
    return -(y * torch.log(q) + (1 - y) * torch.log(1 - q))


def _bce_d(p, y):
    q = p.clamp(EPSILON, 1 - EPSILON)
    return (q - y) / (q * (1 - q)) * (q == p)


#: loss name (``Loss.name``) -> Term(l of (p, y), dl/dp of (p, y)); the clip passes no gradient
LOSSES = {
    "binary_crossentropy": Term(
        "binary_crossentropy",
        "-(y * v_log(q) + (1 - y) * v_log(1 - q))",
        "sel(q == p, (q - y) / (q * (1 - q)), p * 0)", _bce, _bce_d),
    "mean_squared_error": Term("mean_squared_error", "(p - y) * (p - y)", "2 * (p - y)",
                               lambda p, y: (p - y) * (p - y), lambda p, y: 2 * (p - y)),
}
#: the probability clip of each loss (``q`` in its expressions; ``q = p`` without one)
CLIPS = {"binary_crossentropy": EPSILON}
