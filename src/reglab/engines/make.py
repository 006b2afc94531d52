"""Build the engine ``choose_engine`` picked: the one constructor of every kind."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..losses import Loss
from .loop import LoopEngine, RngState
from .protocol import Engine

__all__ = ["make_engine"]


def make_engine(kind: str, models: Sequence[nn.Module], losses: Sequence[Loss], with_accuracy: bool, x_dim: int,
                y_dim: int, rng_states: Sequence[RngState] | None = None) -> Engine:
    """An engine of ``kind`` holding ``models``. ``x_dim``/``y_dim``: the dimensions of one
    model's batch of inputs/targets. ``rng_states``: each model's random state right after its
    build (``fit_many``), from which it draws as it would trained alone; None: the global
    generators (``fit``). The stacked engines draw per-model dropout masks from them on the CPU
    for two or more models (one model alone draws from the global generator, which then holds
    its state)."""
    if kind == "loop":
        return LoopEngine(models, losses, with_accuracy, x_dim, rng_states)
    if kind == "fused":
        from .fused import FusedStack

        return FusedStack(models, losses, with_accuracy, x_dim, y_dim)
    if kind == "dense":
        from .dense import DenseStack as cls
    elif kind == "vmap":
        from .vmap import VmapStack as cls
    else:
        raise ValueError(f"unknown engine kind {kind!r}")
    stack = cls(models, losses, with_accuracy, x_dim, y_dim)
    p0 = stack.params[0]
    if rng_states is not None and p0.device.type == "cpu" and (kind == "vmap" or len(models) > 1):
        stack.dropout_generators = [_generator(cpu) for cpu, _ in rng_states]
    return stack


def _generator(state: torch.Tensor) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g
