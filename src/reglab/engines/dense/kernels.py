"""The Dense-stack engine's kernels: activations with their derivatives (one table), and the
batched products, chosen per shape so that a model's numbers do not depend on the stack."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ... import activations as _activations
from ..._lanes import whole_vectors
from ...layers import Activation

__all__ = ["ACTS", "NONNEGATIVE", "act_name", "fn_name", "ALIGN", "model_buffer", "blas", "product", "product_add", "into", "act"]


# autograd's own derivative kernels, bound to their overloads once (a packet lookup per call costs
# about as much as the kernel on these shapes)
_THRESHOLD_BWD = torch.ops.aten.threshold_backward.default
_SIGMOID_BWD = torch.ops.aten.sigmoid_backward.default
_TANH_BWD = torch.ops.aten.tanh_backward.default


def _relu_bwd(g, y):
    return _THRESHOLD_BWD(g, y, 0)


def _sigmoid(z):
    return whole_vectors(torch.sigmoid, z)


def _sigmoid_bwd(g, y):
    return _SIGMOID_BWD(g, y)


def _tanh_bwd(g, y):
    return _TANH_BWD(g, y)


def _softmax(z):
    return torch.softmax(z, dim=-1)


def _softmax_bwd(g, y):
    return torch.ops.aten._softmax_backward_data(g, y, -1, y.dtype)


#: activation name -> (forward, backward from the output y)
ACTS = {
    "relu": (torch.relu, _relu_bwd),
    "sigmoid": (_sigmoid, _sigmoid_bwd),
    "tanh": (torch.tanh, _tanh_bwd),
    "softmax": (_softmax, _softmax_bwd),
}
#: activations whose output is >= 0 and whose derivative is 0 wherever the output is 0: there an
#: activity penalty's |y| is y and sign(y) may be taken as 1 (``PenaltyGroups.add(nonnegative=)``)
NONNEGATIVE = frozenset({"relu", "sigmoid"})
_BY_FN = {id(fn): name for name, fn in _activations._ACTIVATIONS.items()}
_MODULE_ACTS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "linear"}


def fn_name(fn) -> str | None:
    """The name of activation function ``fn`` (one of ``reglab.activations``'), or None."""
    return _BY_FN.get(id(fn))


def act_name(mod: nn.Module) -> str | None:
    """The activation a module computes (an activation module, ``reglab.Activation``), or None."""
    if type(mod) in _MODULE_ACTS:
        return _MODULE_ACTS[type(mod)]
    if type(mod) is Activation:
        return _BY_FN.get(id(mod.fn))
    return None


# ----------------------------------------------------------------------------- products


#: MKL rounds a product differently depending on where its matrices start in memory: measured
#: with torch 2.13's MKL on an AMD EPYC (AVX2), a result or operand that starts 8 bytes (float64)
#: or 4-12 bytes (float32) off a 16-byte boundary changes last bits in about half of the shapes
#: tried (``MKL_CBWR=AVX2`` removes the effect; an AVX-512 Xeon did not show it). Model m's
#: matrices start m matrix sizes into a stacked tensor, so here every matrix a product reads or
#: writes starts a multiple of ``ALIGN`` bytes into its allocation, for every M: buffers from
#: ``model_buffer``, new results only of sizes that keep every model aligned (else strided
#: buffers), layer blocks at aligned offsets of a parameter row.
ALIGN = 64


def model_buffer(like: torch.Tensor, M: int, shape: tuple[int, ...], unit: int,
                  lead: tuple[int, ...] = ()) -> torch.Tensor:
    """Zeros of shape ``lead + (M,) + shape`` whose ``shape`` blocks (one per model and lead
    index) each start a multiple of ``unit`` elements after the allocation (itself aligned): a
    contiguous tensor where ``prod(shape)`` is a multiple of ``unit``, otherwise one with gaps."""
    n = int(np.prod(shape))
    S = n + (-n) % unit
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    outer = [S]  # the model axis, then the lead axes from the last
    for size in (M,) + tuple(reversed(lead))[:-1] if lead else ():
        outer.insert(0, outer[0] * size)
    buf = like.new_zeros(int(np.prod(lead, dtype=np.int64)) * M * S)
    return buf.as_strided(tuple(lead) + (M,) + tuple(shape), tuple(outer) + tuple(strides))


def _mkl_threads_local():
    """``mkl_set_num_threads_local`` of torch's own MKL (C interface), or None."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        import ctypes
        import os

        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        fn = lib.MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_MKL_THREADS_LOCAL = _mkl_threads_local()


def _one_mkl_thread(fn):
    """``fn`` with MKL on one thread (this thread's setting, restored after)."""
    set_local = _MKL_THREADS_LOCAL

    def f(*args, **kw):
        prev = set_local(1)
        try:
            return fn(*args, **kw)
        finally:
            set_local(prev)
    return f


def blas(n: int, k: int, p: int) -> bool:
    """Whether ``(M, n, k) @ (M, k, p)`` goes to BLAS (see ``product``)."""
    return n > 1 and k > 1 and p > 1


def product(n: int, k: int, p: int, buf: torch.Tensor | None = None, as_member: bool = False):
    """The kernel for ``(M, n, k) @ (M, k, p)`` products (``f(a, b, out=None)``). BLAS switches
    to matrix-vector kernels when a dimension is 1 and those round differently for one matrix
    than for a batch; there the product is written element-wise (exact in any layout).

    The rest goes to MKL, through one of two kernels: a lone product (one model; or a stack into
    a strided result, which torch computes model by model) or the batched kernel (a stack into a
    contiguous result). On one thread both give a matrix the same bits (if it starts where it
    does in any stack: ``ALIGN``); on more, MKL splits a lone product across the threads and
    gives each matrix of a batch to one thread (measured, torch 2.13). So the frame picks one kind
    per shape for every M (``kernel`` in ``_build_frame``): ``buf``, an aligned strided buffer a
    stack's result goes into when no ``out`` is given (lone products, for results that a
    contiguous tensor would leave off ``ALIGN``); ``as_member``, one model computed as a member
    of a batch is (MKL held to one thread; without access to that, the model and a stride-0 copy
    of it as a batch of two)."""
    if k == 1:  # outer product
        return torch.mul
    if p == 1:  # (M, n, k) . (M, 1, k) summed over k
        return lambda a, b, out=None: torch.sum(a * b.mT, 2, keepdim=True, out=out)
    if n == 1:  # (M, k, 1) . (M, k, p) summed over k
        return lambda a, b, out=None: torch.sum(a.mT * b, 1, keepdim=True, out=out)
    if buf is not None:
        return lambda a, b, out=None: torch.bmm(a, b, out=buf if out is None else out)
    if as_member and _MKL_THREADS_LOCAL is not None:
        return _one_mkl_thread(torch.bmm)
    if as_member:
        def twice(a, b, out=None):
            r = torch.bmm(a.expand((2,) + a.shape[1:]), b.expand((2,) + b.shape[1:]))[:1]
            return r if out is None else out.copy_(r)
        return twice
    return torch.bmm


def product_add(n: int, k: int, p: int, buf: torch.Tensor | None = None, as_member: bool = False):
    """The kernel for ``c + a @ b`` with ``a @ b`` as in ``product`` (``f(c, a, b)``): the add
    rides on the product's own kernel where it has one (``baddbmm``, ``addcmul``)."""
    if k == 1:
        return torch.addcmul
    if p == 1 or n == 1:
        prod = product(n, k, p)
        return lambda c, a, b: c + prod(a, b)
    if buf is not None:
        return lambda c, a, b: torch.baddbmm(c, a, b, out=buf)
    if as_member and _MKL_THREADS_LOCAL is not None:
        return _one_mkl_thread(torch.baddbmm)
    if as_member:
        return lambda c, a, b: torch.baddbmm(c, a.expand((2,) + a.shape[1:]), b.expand((2,) + b.shape[1:]))[:1]
    return torch.baddbmm


def into(prod):
    """``prod`` for a stack on the batched kernel when ``out`` is strided: a new result, copied."""
    def f(a, b, out=None):
        if out is None or out.is_contiguous():
            return prod(a, b, out=out)
        return out.copy_(prod(a, b))
    return f


def act(name: str, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The activation ``name`` of ``z`` (written into ``out`` if given)."""
    if out is None:
        return ACTS[name][0](z)
    if name == "relu":
        return torch.clamp_min(z, 0, out=out)
    if name == "tanh":
        return torch.tanh(z, out=out)
    return out.copy_(ACTS[name][0](z))
