"""Element-wise functions whose result for an element does not depend on the tensor around it.

torch's CPU kernels run the bulk of a tensor through SIMD code and the last few elements (fewer
than two vectors) through scalar code. For +, *, /, sqrt, exp and tanh both give the same bits;
for ``sigmoid``, float64 ``log`` and non-integer ``pow`` they differ in the last bit (measured on
torch 2.13 CPU). A model trained alone and the same model inside a stack of M sit at different
offsets of their tensors, so without care their results drift apart in chaotic runs.
``whole_vectors(fn, x)`` pads ``x`` to a multiple of ``LANES * threads`` elements (threads split a
tensor at ``ceil(n / threads)``), so that every element takes the SIMD path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LANES = 64  # two AVX-512 float32 vectors (32) rounded up; a multiple of every CPU vector pair


def whole_vectors(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an element-wise ``fn``, every element computed by the same (vector) code."""
    if x.device.type != "cpu":
        return fn(x)
    n = x.numel()
    unit = LANES * max(1, torch.get_num_threads())
    pad = (-n) % unit
    if pad == 0 and x.is_contiguous():
        return fn(x)
    buf = x.new_zeros(n + pad)
    buf[:n] = x.reshape(-1)
    return fn(buf)[:n].view(x.shape)
