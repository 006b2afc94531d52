"""The layout rule between torch tensors and Keras kernels.

reglab receives torch tensors. A torch ``Linear`` weight has shape ``(out, in)``; the Keras
``Dense`` kernel holding the same numbers has shape ``(in, out)``. A torch ``ConvNd`` weight has
shape ``(out, in, *k)``; the Keras ``ConvNd`` kernel is ``(*k, in, out)``. Everything in reglab
that depends on layout (``OrthogonalRegularizer(mode=...)``, the constraints' ``axis``) keeps
Keras's meaning, on the Keras view of the tensor::

    keras_view(W) = W.permute(2, 3, ..., ndim-1, 1, 0)     # (out, in, *k) -> (*k, in, out)

so for a Linear weight ``r(W) == keras_r(W.T)``. Tensors of rank 0 or 1 (biases, activations)
are the same in both layouts.
"""

from __future__ import annotations

import torch


def keras_permutation(ndim: int) -> tuple[int, ...]:
    """Permutation taking a torch weight of rank ``ndim`` to Keras kernel layout."""
    if ndim < 2:
        return tuple(range(ndim))
    return tuple(range(2, ndim)) + (1, 0)


def to_keras(w: torch.Tensor) -> torch.Tensor:
    """View of a torch weight in Keras kernel layout (no copy)."""
    return w.permute(keras_permutation(w.dim()))


def keras_axis_to_torch(axis: int | tuple[int, ...] | list[int] | None, ndim: int):
    """Map a Keras kernel ``axis`` (int, sequence or None) to the torch weight's axes."""
    if axis is None:
        return None
    perm = keras_permutation(ndim)
    axes = [axis] if isinstance(axis, int) else list(axis)
    out = []
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor of rank {ndim}")
        a = a % max(ndim, 1)
        out.append(perm[a] if ndim >= 2 else a)
    return tuple(out)
