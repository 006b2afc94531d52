"""The one protocol every training engine speaks, and the capabilities an engine declares.

An *engine* holds M >= 1 models and trains them in lock-step under the loop of
``reglab.training.engine.run``: per batch the loop asks for each model's objective,

    objective_m = mean_b data_loss(f_m(x_mb), y_mb) + sum_k penalty_mk,

has the engine set the gradients of ``sum_m objective_m`` (models outside ``active`` contributing
nothing), steps the optimizer over ``optimized`` and lets the engine project its constraints.
Every member below is required; what differs between engines is declared data
(``Capabilities``), read by the loop, never found by probing for a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ContextManager, Protocol

import numpy as np
import torch

__all__ = ["Capabilities", "Engine", "KINDS", "columns"]

#: the engine kinds ``choose_engine`` picks from (``fit_many(engine=...)``)
KINDS = ("fused", "dense", "vmap", "loop")


@dataclass(frozen=True)
class Capabilities:
    """What an engine does beyond the plain protocol.

    - ``sets_grad``: ``backward`` writes the whole gradient itself (no autograd graph: the loop
      runs its steps under ``torch.no_grad`` and skips ``optimizer.zero_grad``);
    - ``defers_penalties``: in training, ``objective`` returns no penalty values;
      ``penalty_totals()`` gives them at the epoch's end, summed over its steps times their batch
      sizes ``(K, M)``;
    - ``can_keep``: ``keep(rows, snap)`` gives an engine of those rows' models only, with the
      numbers they would have had here (the loop drops stopped models' rows with it);
    - ``stacked_state``: ``optimized`` tensors hold all models along axis 0, so the loop slices
      the optimizer's state by row when it keeps rows;
    - ``runs_epochs``: the engine trains a whole epoch in one call, optimizer included
      (``train_epoch(data, batch_size, perms, active, optimizer)``, reading the optimizer's
      hyperparameters) and evaluates in one (``evaluate_sums``); ``objective`` serves evaluation
      only (the fused engine).
    """

    sets_grad: bool = False
    defers_penalties: bool = False
    can_keep: bool = False
    stacked_state: bool = True
    runs_epochs: bool = False


class Engine(Protocol):
    """M models trained together (see the module docstring)."""

    #: the engine's kind (one of ``KINDS``)
    kind: str
    caps: Capabilities
    n_models: int
    #: the models' trainable tensors (device and dtype are read from the first)
    params: list[torch.Tensor]
    #: the tensors the optimizer steps (may share storage with ``params``)
    optimized: list[torch.Tensor]

    def train(self, mode: bool) -> None: ...

    def decayed(self, patterns: list[str]) -> list[bool | torch.Tensor]:
        """For each ``optimized`` tensor, which of it holds parameters ``patterns`` select
        (``reglab.selectors.select_all``, in each model): True or False for the whole tensor, or a
        bool mask over its last axis (a stacked buffer's columns, the same for every model)."""

    def objective(self, xb: Any, yb: Any) -> tuple[torch.Tensor, torch.Tensor | None, list[str], torch.Tensor | None]:
        """``(data loss per example (M, B), correct (M, B) or None, penalty names, penalties (K, M) or None)``."""

    def take(self, data: torch.Tensor, idx: torch.Tensor, per_model: bool) -> torch.Tensor:
        """Model m's examples ``idx[m]`` of shared ``(N, ...)`` or per-model ``(M, N, ...)`` data, ``(M, B, ...)``."""

    def eval_batches(self, data: Any, batch_size: int) -> Any:
        """The ``(x, y, size)`` batches a validation pass over ``data`` takes."""

    def backward(self, total: torch.Tensor | None, active: np.ndarray | None) -> None:
        """Set the gradients of the objective summed over models, models outside ``active`` (when
        given) contributing nothing: they are not stepped. Autograd engines get ``total`` (per
        model); a ``sets_grad`` engine gets ``None`` and uses its own last objective."""

    def after_step(self) -> None:
        """After the optimizer's step: project the constrained weights of the stepped models."""

    def hold(self, frozen: np.ndarray, buffers: bool) -> Any:
        """Before a step that leaves the models ``frozen`` as they are (stopped or failed): what
        ``release`` needs to put back their buffers (``buffers``: called before the forward pass,
        which updates them) or their parameters (before the backward pass). An engine that never
        computes or steps frozen models notes them here and holds nothing."""

    def release(self, held: Any, frozen: np.ndarray) -> None:
        """Put the ``frozen`` models' parameters (and buffers) ``held`` back."""

    def snapshot(self, into: Any = None) -> Any:
        """A copy of every model's weights (and buffers). ``into``, an earlier snapshot of this
        engine that is no longer needed, may be overwritten and returned (no new allocation)."""

    def merge_snapshot(self, best: Any, mask: np.ndarray) -> Any:
        """``best`` with the current weights of the models in ``mask``."""

    def restore(self, snap: Any, mask: np.ndarray) -> None: ...

    def state_dict(self, snap: Any) -> dict[str, torch.Tensor]:
        """Model 0's ``state_dict`` in ``snap``."""

    def all_finite(self) -> np.ndarray: ...

    def penalty_totals(self) -> torch.Tensor | None: ...

    def keep(self, rows: list[int], snap: Any) -> tuple[Engine, Any]: ...

    def write_back(self) -> None:
        """Give each model its trained weights in its own tensors."""

    def random_of(self, m: int) -> ContextManager[None]:
        """A context in which the global generators hold model m's random state (what it draws
        alone: its dataset's augmentation); the per-model loop keeps one per model, the stacked
        engines none (they are not chosen for data that draws)."""


def columns(buffer: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """A bool mask over the last axis of a stacked ``(M, P)`` buffer, True in the ``[start,
    stop)`` ``spans`` (a stacked engine's ``decayed``)."""
    mask = torch.zeros(buffer.shape[-1], dtype=torch.bool, device=buffer.device)
    for a, b in spans:
        mask[a:b] = True
    return mask
