"""The Dense-stack engine: M >= 1 models of one ``nn.Sequential`` of ``Linear``/``Dense`` and
activation layers, trained with the backward pass written out. ``fit`` (M = 1) and ``fit_many``
(any M) use it for every model it can run; anything else goes through autograd
(``SingleStack``) or ``torch.vmap`` (``VmapStack``).

Why: for the small MLPs regularization is studied on, autograd's bookkeeping costs more than the
arithmetic (a step of a 5 x Dense(32) MLP with weight, bias and activity penalties, batch 20, on a
2-core CPU: ~1.4 ms through autograd, ~0.25 ms here, where every buffer, view and kernel choice
of a batch size is planned once: ``_Frame``).
Per model m and Dense layer (torch layout ``W (out, in)``), with ``[h, 1]`` the layer's input and a
column of ones and ``[W | b]`` its weights and bias side by side::

    forward    z = [h, 1] [W | b]^T,        y = act(z)
    backward   dy += d activity(y) / dy
               dz = act'(z) * dy,    [dW | db] = dz^T [h, 1],    dh = dz W

with the data-loss derivative from ``Loss.per_example_grad`` and penalty derivatives from
``Regularizer.value_and_grad`` (the same objects ``fit`` uses; each derivative is tested against
autograd). Activity penalties are divided by the batch size, as in Keras. In training, penalty
values (only logged) are summed over an epoch's steps and mapped to their sources at its end
(``penalty_totals``; the loop's ``defers_penalties`` protocol). ``nn.Dropout`` layers
draw their masks exactly as ``nn.Dropout`` does, so ``fit`` gives the autograd path's numbers; in
a stack of M > 1 each model draws from its own generator, holding the global state it had right
after its build, so a model gets the masks it gets alone (the vmap path does the same,
``reglab.vectorized.stack``).

Layout: row m of one ``(M, P)`` buffer holds all of model m's parameters (P padded to a multiple
of 64), each biased layer as one ``(out, in + 1)`` block ``[W | b]`` at an aligned offset (its
weight and bias are strided views of the block), so the optimizer runs one fused kernel on one
tensor and every element is updated by the same SIMD code. Together with ``reglab._lanes``,
``_ALIGN`` (every matrix a product reads or writes starts at an aligned address) and ``_product``
(one BLAS kernel kind per shape, whatever M and the thread count) below this makes a model's
numbers bit-identical whether it is trained alone (``fit``) or in a stack of any size
(``fit_many``). With M = 1 the model's own parameters become views of that buffer while
training, so callbacks see the current weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import activations as _activations
from .. import regularizers as R
from .._lanes import LANES, whole_vectors
from ..attach import activity_regularizer, activity_sources, foreign_hooks, param_sources
from ..layers import Activation, Dense
from ..losses import Loss, RegularizedLoss
from .objective import correct_per_example
from .masks import draw
from .penalties import PenaltyGroups, elementwise_terms
from .protocol import Capabilities
from .vmap import shared_constraints, stacked_hparams, take_rows

__all__ = ["DenseStack", "NotTransformable", "takes", "unsupported_reason"]


# ----------------------------------------------------------------------------- activations


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
_ACTS = {
    "relu": (torch.relu, _relu_bwd),
    "sigmoid": (_sigmoid, _sigmoid_bwd),
    "tanh": (torch.tanh, _tanh_bwd),
    "softmax": (_softmax, _softmax_bwd),
}
#: activations whose output is >= 0 and whose derivative is 0 wherever the output is 0: there an
#: activity penalty's |y| is y and sign(y) may be taken as 1 (``PenaltyGroups.add(nonnegative=)``)
_NONNEGATIVE = frozenset({"relu", "sigmoid"})
_BY_FN = {id(fn): name for name, fn in _activations._ACTIVATIONS.items()}
_MODULE_ACTS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "linear"}


def _act_name(mod: nn.Module) -> str | None:
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
#: writes starts a multiple of ``_ALIGN`` bytes into its allocation, for every M: buffers from
#: ``_model_buffer``, new results only of sizes that keep every model aligned (else strided
#: buffers), layer blocks at aligned offsets of a parameter row.
_ALIGN = 64


def _model_buffer(like: torch.Tensor, M: int, shape: tuple[int, ...], unit: int,
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


def _blas(n: int, k: int, p: int) -> bool:
    """Whether ``(M, n, k) @ (M, k, p)`` goes to BLAS (see ``_product``)."""
    return n > 1 and k > 1 and p > 1


def _product(n: int, k: int, p: int, buf: torch.Tensor | None = None, as_member: bool = False):
    """The kernel for ``(M, n, k) @ (M, k, p)`` products (``f(a, b, out=None)``). BLAS switches
    to matrix-vector kernels when a dimension is 1 and those round differently for one matrix
    than for a batch; there the product is written element-wise (exact in any layout).

    The rest goes to MKL, through one of two kernels: a lone product (one model; or a stack into
    a strided result, which torch computes model by model) or the batched kernel (a stack into a
    contiguous result). On one thread both give a matrix the same bits (if it starts where it
    does in any stack: ``_ALIGN``); on more, MKL splits a lone product across the threads and
    gives each matrix of a batch to one thread (measured, torch 2.13). So the frame picks one kind
    per shape for every M (``kernel`` in ``_build_frame``): ``buf``, an aligned strided buffer a
    stack's result goes into when no ``out`` is given (lone products, for results that a
    contiguous tensor would leave off ``_ALIGN``); ``as_member``, one model computed as a member
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


def _product_add(n: int, k: int, p: int, buf: torch.Tensor | None = None, as_member: bool = False):
    """The kernel for ``c + a @ b`` with ``a @ b`` as in ``_product`` (``f(c, a, b)``): the add
    rides on the product's own kernel where it has one (``baddbmm``, ``addcmul``)."""
    if k == 1:
        return torch.addcmul
    if p == 1 or n == 1:
        prod = _product(n, k, p)
        return lambda c, a, b: c + prod(a, b)
    if buf is not None:
        return lambda c, a, b: torch.baddbmm(c, a, b, out=buf)
    if as_member and _MKL_THREADS_LOCAL is not None:
        return _one_mkl_thread(torch.baddbmm)
    if as_member:
        return lambda c, a, b: torch.baddbmm(c, a.expand((2,) + a.shape[1:]), b.expand((2,) + b.shape[1:]))[:1]
    return torch.baddbmm


def _into(prod):
    """``prod`` for a stack on the batched kernel when ``out`` is strided: a new result, copied."""
    def f(a, b, out=None):
        if out is None or out.is_contiguous():
            return prod(a, b, out=out)
        return out.copy_(prod(a, b))
    return f


def _act(name: str, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The activation ``name`` of ``z`` (written into ``out`` if given)."""
    if out is None:
        return _ACTS[name][0](z)
    if name == "relu":
        return torch.clamp_min(z, 0, out=out)
    if name == "tanh":
        return torch.tanh(z, out=out)
    return out.copy_(_ACTS[name][0](z))


# ----------------------------------------------------------------------------- the plan

# forward op kinds of a frame (ints: compared on every op of every step)
_AFFINE, _ACT, _SIGMOID_PADDED, _DROPOUT, _DROPOUT_EVAL = range(5)


@dataclass
class _Frame:
    """What a step of batch size B needs, made once: the activity buffer ``abuf`` (L, M, B, units + 1)
    and, per op, the forward plan ``fwd`` [(op, kind, a, b, destination view)]; in training the
    activity derivative ``G = gconst + sum Lam * f'(abuf)`` over the maps ``gmaps``
    [(Lam, f' or None for f'(x) = x)] (without maps, ``G`` is ``gconst`` itself, made once) and
    the backward plan ``bwd`` (kernels chosen for B, views made). Layer inputs that carry a ones
    column live in these buffers (the activity buffer's reserved columns, or their own),
    ``xcopy`` for the first layer's."""

    abuf: torch.Tensor | None
    fwd: list[tuple[int, int, Any, Any, torch.Tensor | None]]
    G: torch.Tensor | None
    gmaps: list[tuple[torch.Tensor, Any]]
    gconst: torch.Tensor | None
    bwd: list[tuple]
    xcopy: torch.Tensor | None  # where the batch goes when the first layer takes [x, 1]
    drops: list[tuple[float, tuple[int, int]]]  # the dropout calls of a step, (p, (B, width)) in order


@dataclass
class _Op:
    kind: str  # "affine", "act" or "dropout"
    w: int = -1
    b: int | None = None
    act: str = "linear"
    p: float = 0.0


def _act_ops(cname: str, act: str | None, unknown: str) -> list[_Op]:
    """The op of activation ``act`` of layer ``cname`` (none for linear); ``unknown``: why None."""
    if act is None:
        raise _Unsupported(f"layer {cname!r} {unknown}")
    if act == "linear":
        return []
    if act not in _ACTS:
        raise _Unsupported(f"layer {cname!r}: activation {act!r} has no hand-written derivative")
    return [_Op("act", act=act)]


def _ops(model: nn.Module) -> tuple[list[_Op], dict[int, int]]:
    """The op list of a supported model and, per module id, the op whose output is the module's."""
    if type(model) is not nn.Sequential:
        raise _Unsupported(f"the model is a {type(model).__name__}, not a plain torch.nn.Sequential")
    names = [n for n, _ in model.named_parameters()]
    ops: list[_Op] = []
    out_of: dict[int, int] = {}
    for cname, mod in model.named_children():
        if type(mod) in (nn.Linear, Dense):
            w = names.index(f"{cname}.weight")
            b = names.index(f"{cname}.bias") if mod.bias is not None else None
            ops.append(_Op("affine", w=w, b=b))
            act = _BY_FN.get(id(mod.activation)) if type(mod) is Dense else "linear"
            ops += _act_ops(cname, act, "has a custom activation")
        elif type(mod) is nn.Dropout:
            if mod.p > 0:
                ops.append(_Op("dropout", p=float(mod.p)))
        else:
            ops += _act_ops(cname, _act_name(mod), f"is a {type(mod).__name__}")
        out_of[id(mod)] = len(ops) - 1
    out_of[id(model)] = len(ops) - 1
    if not any(op.kind == "affine" for op in ops):
        raise _Unsupported("the model has no Linear layer")
    return ops, out_of


class _Unsupported(Exception):
    pass


class NotTransformable(ValueError):
    """A custom regularizer that ``torch.func`` cannot differentiate per model."""


def _check_hooks(model: nn.Module) -> None:
    from torch.nn.modules import module as _m

    for store in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                  "_global_backward_pre_hooks"):
        if getattr(_m, store, None):
            raise _Unsupported("global module hooks are registered")
    for name, mod in model.named_modules():
        what = foreign_hooks(mod)
        if what:
            raise _Unsupported(f"module {name!r} has {what}")


def takes(model: nn.Module, loss: Loss, example_ndim: int) -> bool:
    """Whether the Dense-stack engine trains ``model`` with ``loss`` on examples of
    ``example_ndim`` dimensions (one feature axis, a supported module and loss) -- the one rule
    ``fit``, ``fit_many`` and the study runner ask."""
    return example_ndim == 1 and unsupported_reason(model, loss) is None


def unsupported_reason(model: nn.Module, loss: Loss) -> str | None:
    """Why ``DenseStack`` cannot train ``model`` with ``loss`` (``None``: it can)."""
    try:
        _ops(model)
        _check_hooks(model)
        params = list(model.parameters())
        if list(model.buffers()):
            raise _Unsupported("the model has buffers")
        if not params or not all(p.requires_grad for p in params):
            raise _Unsupported("some parameters are frozen")
        if len({(p.dtype, p.device) for p in params}) != 1 or not params[0].is_floating_point():
            raise _Unsupported("parameters differ in dtype or device")
        if not loss.native_grad:
            raise _Unsupported(f"loss {loss!r} has no per_example_grad")
        _check_transformable(model)
    except _Unsupported as e:
        return str(e)
    return None


def _check_transformable(model: nn.Module) -> None:
    """Regularizers without a hand-written derivative go through ``torch.func``: try each once
    (activity ones on zeros of their layer's width); one that cannot be transformed leaves the
    model to autograd."""
    ops, out_of = _ops(model)
    params = dict(model.named_parameters())
    widths, w = {}, None
    for j, op in enumerate(ops):
        if op.kind == "affine":
            w = list(params.values())[op.w].shape[0]
        widths[j] = w
    p0 = next(iter(params.values()))
    checks = [(name, reg, getattr(mod, attr).detach()[None]) for name, mod, attr, reg in param_sources(model)]
    checks += [(name, state.regularizer, p0.new_zeros(1, 2, widths[out_of[id(mod)]]))
               for name, mod, state in activity_sources(model)]
    for name, reg, x in checks:
        if reg.native_grad:
            continue
        hp = {k: torch.tensor([float(v)], dtype=p0.dtype, device=p0.device) for k, v in reg.hparams().items()}
        try:
            reg.value_and_grad(x, hp)
        except Exception as e:  # noqa: BLE001 -- any failure of a user's regularizer: autograd trains it
            raise _Unsupported(f"penalty source {name!r}: {reg!r} could not be differentiated with torch.func "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


# ----------------------------------------------------------------------------- the stack


class DenseStack:
    """The stack protocol of ``reglab.training.engine`` for M >= 1 supported models (see the
    module docstring); ``unsupported_reason`` says which models qualify. Its buffers do not
    require gradients, so no step builds an autograd graph (the engine also runs the steps of a
    ``sets_grad`` stack under ``torch.no_grad``)."""

    kind = "dense"

    def __init__(self, models: Sequence[nn.Module], losses: Sequence[Loss], with_accuracy: bool, x_dim: int, y_dim: int):
        self.models = list(models)
        M = self.n_models = len(self.models)
        base = self.base = self.models[0]
        self.loss = losses[0]
        self.losses = list(losses)
        self.with_accuracy = with_accuracy
        self.x_dim, self.y_dim = x_dim, y_dim
        self.ops, out_of = _ops(base)
        self.plan, self.names, self.hparams = stacked_hparams(self.models, losses)
        named = list(base.named_parameters())
        self.param_names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        index = {n: i for i, n in enumerate(self.param_names)}
        # layout: a Dense layer with a bias keeps W and b as one (out, in + 1) block [W | b]; its
        # input carries a column of ones, so one product gives z = [h, 1] [W | b]^T and one gives
        # [dW | db] = dz^T [h, 1] (no bias copy forward, no batch sum backward)
        self._bias_of = {op.w: op.b for op in self.ops if op.kind == "affine" and op.b is not None}
        biases = set(self._bias_of.values())
        self._spec: list[tuple[int, tuple[int, ...], Any]] = [None] * len(self.shapes)  # type: ignore[list-item]
        self._block_order: list[int] = []  # the flat order of blocks, by their (weight) parameter index
        self._block_shape: dict[int, tuple[int, ...]] = {}
        p0 = named[0][1]
        dtype, dev = p0.dtype, p0.device
        #: elements per _ALIGN bytes (CPU BLAS only; 1 elsewhere)
        self._unit = unit = _ALIGN // p0.element_size() if dev.type == "cpu" else 1
        # each block starts at a multiple of _ALIGN bytes: one model writes its [dW | db] straight
        # into its block, a stack into aligned buffers (see _ALIGN); gaps stay zero
        self._gap_before: dict[int, int] = {}
        o = 0
        for i, shape in enumerate(self.shapes):
            if i in biases:
                continue  # placed with its weight
            if o % unit:
                self._gap_before[i] = (-o) % unit
                o += (-o) % unit
            self._block_order.append(i)
            if i in self._bias_of:
                out_, in_ = shape
                blk = (out_, in_ + 1)
                self._spec[i] = (o, blk, slice(0, in_))
                self._spec[self._bias_of[i]] = (o, blk, in_)
            else:
                blk = shape
                self._spec[i] = (o, blk, None)
            self._block_shape[i] = blk
            o += int(np.prod(blk))
        P = o
        self.padded = P + (-P) % LANES
        self.flat = torch.zeros(M, self.padded, dtype=dtype, device=dev)
        # the gradient buffer (one model: products write into its views; a stack: one cat)
        self.gflat = torch.zeros_like(self.flat)
        self.views = [self._view(self.flat, i) for i in range(len(self.shapes))]
        self.gviews = [self._view(self.gflat, i) for i in range(len(self.shapes))]
        self.blocks = {i: self._block(self.flat, i) for i in self._block_order}
        self.gblocks = {i: self._block(self.gflat, i) for i in self._block_order}
        with torch.no_grad():
            for k, m in enumerate(self.models):
                for (_, p), v in zip(m.named_parameters(), self.views):
                    v[k].copy_(p.detach())
        # a stack's gradient buffer is one cat of [gap zeros,] block, ..., padding zeros
        self._pad = self.flat.new_zeros(M, self.padded - P)
        self._gaps = {i: self.flat.new_zeros(M, g) for i, g in self._gap_before.items()}
        # used every step, made once: [W | b]^T (M, in + 1, out), or W^T (M, in, out) without a bias
        self.wt = {i: b.transpose(1, 2) for i, b in self.blocks.items() if b.dim() == 3}
        self.params = [self.flat]
        self.optimized = self.params
        spans = {n: self._spans(index[n]) for n in self.param_names}

        # parameter penalties: element-wise ones together on the buffer, the others one by one
        self.pgroups = PenaltyGroups(M, self.padded, dtype, dev)
        self.param_pens = []
        for name, _, _, reg in self.plan.params:
            terms = elementwise_terms(reg, self.hparams.get(name, {}))
            if terms is None:
                self.param_pens.append((name, index[name], reg))
            else:
                self.pgroups.add(0, name, spans[name], terms)
        # a RegularizedLoss: its terms with fixed strengths, scaled by the stacked "strength"
        self.loss_terms = []
        if isinstance(self.loss, RegularizedLoss):
            src = RegularizedLoss.source_name
            strength = self.hparams[src]["strength"]
            fixed = [(pname, reg, {k: torch.full((M,), float(v), dtype=dtype, device=dev)
                                   for k, v in reg.hparams().items()}) for pname, reg in self.loss.terms]
            terms = [(pname, elementwise_terms(reg, hp)) for pname, reg, hp in fixed]
            if terms and all(t is not None for _, t in terms):
                for pname, ts in terms:  # per-model strength times the term's constant
                    self.pgroups.add(1, src, spans[pname], [(k, f, df, strength) for k, f, df, _ in ts],
                                     weights={k: float(st[0]) for k, _, _, st in ts})
            else:
                self.loss_terms = [(index[pname], reg, hp) for pname, reg, hp in fixed]

        # activity penalties by the op whose output they see; element-wise ones on one buffer
        widths, w = [], None
        for op in self.ops:
            if op.kind == "affine":
                w = self.shapes[op.w][0]
            widths.append(w)
        self._widest = max(self.shapes[op.w][0] for op in self.ops if op.kind == "affine")  # for eval_batches
        self._eval_models = M  # eval_batches' size rule: the first stack's M, kept by ``keep`` (same bits)
        self.activity_at: dict[int, list[tuple[str, Any, bool]]] = {}
        self.agroups: PenaltyGroups | None = None
        grouped = {}
        self._one_pass = True
        for name, mod in self.plan.activity:
            reg = activity_regularizer(mod)
            j = out_of[id(mod)]
            terms = elementwise_terms(reg, self.hparams.get(name, {}))
            if terms is None:
                self._one_pass = False
                linear = isinstance(reg, R.KLSparsity)  # value and derivative linear in its strength
                self.activity_at.setdefault(j, []).append((name, reg, linear))
            else:
                grouped.setdefault(j, []).append((name, terms))
        # the activity buffer (L, M, B, width + 1): one slice per layer output with element-wise
        # activity penalties, each (M, B, units) block nearly contiguous (a view striding over the
        # other layers' outputs costs up to 4x per pass once M is large); the column after a
        # layer's units holds ones where its output is the input of a [W | b] block
        self.aspan: dict[int, tuple[int, int]] = {}  # op -> (slice, units)
        self._ones_at: list[tuple[int, int]] = []  # (slice, column) holding ones
        if grouped:
            slots = sorted(grouped)
            width = max(widths[j] for j in slots) + 1
            for k, j in enumerate(slots):
                self.aspan[j] = (k, widths[j])
                if self._feeds_block(j):
                    self._ones_at.append((k, widths[j]))
            self.agroups = PenaltyGroups(M, len(slots) * width, dtype, dev, layers=len(slots))
            for k, j in enumerate(slots):
                nonneg = self.ops[j].kind == "act" and self.ops[j].act in _NONNEGATIVE
                for name, terms in grouped[j]:
                    self.agroups.add(0, name, [(k * width, k * width + widths[j])], terms, nonnegative=nonneg)
        for groups in (self.pgroups, self.agroups):
            if groups:
                groups.build()
        # penalty values come as [grouped parameter sources, grouped activity sources, other
        # parameter sources, other activity sources, loss terms]; a permutation puts them in
        # self.names order
        order = (self.pgroups.names + (self.agroups.names if self.agroups else []) +
                 [n for n, _, _ in self.param_pens] +
                 [n for j in sorted(self.activity_at) for n, _, _ in self.activity_at[j]] +
                 ([RegularizedLoss.source_name] if self.loss_terms else []))
        if sorted(order) != sorted(self.names):
            raise AssertionError(f"penalty sources {order} vs {self.names}")
        self._perm = None if order == self.names else torch.tensor(
            [order.index(n) for n in self.names], device=dev)
        self._hp_cache: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self._other_sums: torch.Tensor | None = None  # (M, k): batch size x value of the ungrouped sources
        #: one random stream per model for its dropout masks (``fit_many`` sets them: each
        #: model's global RNG state right after its build, so a model draws the masks it draws
        #: trained alone, in any group); None: the global generator, as ``nn.Dropout``
        self.dropout_generators: list[torch.Generator] | None = None
        self.constraints = [(index[name], c) for name, c in shared_constraints(self.models)]
        self._training = self.base.training
        self._cache: tuple | None = None
        self._frames: dict[tuple[int, bool, int], _Frame] = {}
        self._check_regularizers(widths)
        self._aliased = M == 1
        if self._aliased:  # the model's parameters are views of the buffer while training
            for (_, p), v in zip(base.named_parameters(), self.views):
                p.data = v[0]

    def _block(self, buf: torch.Tensor, i: int) -> torch.Tensor:
        """The block parameter ``i`` lies in, in a ``(M, P)`` buffer: ``(M, out, in + 1)`` for a
        layer with a bias (its weight's and its bias's), the parameter's own shape otherwise."""
        o, blk, _ = self._spec[i]
        return buf[:, o:o + int(np.prod(blk))].view((buf.shape[0],) + tuple(blk))

    def _view(self, buf: torch.Tensor, i: int) -> torch.Tensor:
        """Parameter ``i`` of every model in a ``(M, P)`` buffer (a strided view inside its layer's
        ``[W | b]`` block)."""
        col = self._spec[i][2]
        block = self._block(buf, i)
        return block if col is None else block[:, :, col]

    def _spans(self, i: int) -> list[tuple[int, int]]:
        """Where parameter ``i`` lies in a row of the buffer, as ``[start, stop)`` ranges."""
        o, blk, col = self._spec[i]
        if col is None:
            return [(o, o + int(np.prod(blk)))]
        rows, width = blk
        if isinstance(col, slice):
            return [(o + r * width + col.start, o + r * width + col.stop) for r in range(rows)]
        return [(o + r * width + col, o + r * width + col + 1) for r in range(rows)]

    def _feeds_block(self, j: int) -> bool:
        """Whether op ``j``'s output is the input of a layer with a ``[W | b]`` block."""
        nxt = self.ops[j + 1] if j + 1 < len(self.ops) else None
        return nxt is not None and nxt.kind == "affine" and nxt.w in self._bias_of

    def _check_regularizers(self, widths: list[int]) -> None:
        """Regularizers without a hand-written derivative go through ``torch.func``: try each once
        now (activity ones on zeros of their layer's width), so one that cannot be transformed is
        reported before training."""
        checks = [(name, reg, self.views[i]) for name, i, reg in self.param_pens]
        checks += [(name, reg, self.flat.new_zeros(self.n_models, 2, widths[j]))
                   for j, regs in self.activity_at.items() for name, reg, _ in regs]
        for name, reg, x in checks:
            if not reg.native_grad:
                try:
                    reg.value_and_grad(x, self.hparams.get(name, {}))
                except Exception as e:  # noqa: BLE001 -- reported with the source
                    raise NotTransformable(
                        f"penalty source {name!r}: {reg!r} could not be differentiated with torch.func ({e}); "
                        "give it compute(x, **strengths)/hparams(), or train the models one by one with fit "
                        "(autograd)") from e

    # -- the stack protocol
    def train(self, mode: bool) -> None:
        # the modules' own flags are set once, in write_back (module.train walks every submodule:
        # ~60 us, three times an epoch)
        self._training = mode

    def take(self, data, idx, per_model=False):
        return take_rows(data, idx, per_model)

    def _frame(self, B: int) -> _Frame:
        key = (B, self._training, torch.get_num_threads())
        fr = self._frames.get(key)
        if fr is None:
            fr = self._frames[key] = self._build_frame(B)
        return fr

    def _padded_sigmoid(self, j: int, dest: list) -> bool:
        """Whether op ``j`` is a sigmoid that runs padded (``_SIGMOID_PADDED``) on its affine's output."""
        if not 0 < j < len(self.ops) or self.flat.device.type != "cpu":
            return False
        op, prev = self.ops[j], self.ops[j - 1]
        return op.kind == "act" and op.act == "sigmoid" and prev.kind == "affine" and dest[j - 1] is None

    def _build_frame(self, B: int) -> _Frame:
        """The buffers, views and per-op plans of a batch of ``B`` (made once per batch size, mode
        and thread count; the step then only calls kernels)."""
        M, dev = self.n_models, self.flat.device
        n_ops = len(self.ops)
        unit = self._unit

        def buffer(*shape, lead=()):  # every model's block aligned (see _ALIGN)
            return _model_buffer(self.flat, M, shape, unit, lead)

        def loose(*shape):  # model m > 0 of a new contiguous (M, *shape) tensor starts off _ALIGN
            return M > 1 and int(np.prod(shape)) % unit != 0

        threaded = dev.type == "cpu" and torch.get_num_threads() > 1

        def kernel(n, k, p, add=False, out=False):
            """The product kernel (``_product``) of this shape, the same kind for every M;
            ``out``: the plan gives the product a result to write."""
            make = _product_add if add else _product
            if not _blas(n, k, p):
                return make(n, k, p)
            if (n * p) % unit:  # lone products (a stack's results strided, aligned)
                return make(n, k, p, buffer(n, p) if M > 1 and not out else None)
            if not threaded:  # one thread: lone and batched products give the same bits
                return make(n, k, p)
            if M == 1:  # batched: one model as a batch member
                return make(n, k, p, as_member=True)
            return torch.baddbmm if add else _into(torch.bmm)

        abuf = None
        if self.agroups:
            L = self.agroups.layers
            abuf = buffer(B, self.agroups.W // L, lead=(L,))  # zeros: columns no layer writes
            for k, c in self._ones_at:
                abuf[k, :, :, c] = 1.0
        dest = [None if (sp := self.aspan.get(j)) is None else abuf[sp[0], :, :, :sp[1]] for j in range(n_ops)]
        # the input of each layer with a [W | b] block: its producer writes into the head of a
        # buffer whose last column holds ones (the activity buffer's reserved column, or its own)
        inb: dict[int, torch.Tensor] = {}
        xcopy = None
        first = next(j for j, op in enumerate(self.ops) if op.kind == "affine")
        for j, op in enumerate(self.ops):
            if op.kind != "affine":
                continue
            out_, in_ = self.shapes[op.w]
            if op.w not in self._bias_of:
                # BLAS reads the input where it lies: the batch itself (at any offset of the data)
                # gets copied into an aligned buffer, a new tensor only where it is loose
                if not _blas(B, in_, out_):
                    continue
                if j == 0:
                    inb[j] = xcopy = buffer(B, in_)
                elif self.ops[j - 1].kind != "affine" and dest[j - 1] is None and (j == first or loose(B, in_)) and \
                        not self._padded_sigmoid(j - 1, dest):
                    dest[j - 1] = buffer(B, in_)
                continue
            if j > 0 and self.aspan.get(j - 1) is not None:
                k, units = self.aspan[j - 1]
                inb[j] = abuf[k, :, :, :units + 1]
                continue
            buf = buffer(B, in_ + 1)
            buf[..., in_] = 1.0
            inb[j] = buf
            if j == 0:
                xcopy = buf[..., :in_]
            else:
                dest[j - 1] = buf[..., :in_]
        fwd = []
        for j, op in enumerate(self.ops):
            if op.kind == "affine":
                w = self.wt[op.w]  # (M, in (+ 1), out)
                k, p = w.shape[1], w.shape[2]
                out = dest[j]
                if self._padded_sigmoid(j + 1, dest):
                    # sigmoid on whole SIMD vectors (reglab._lanes): the affine writes into the head
                    # of a zero-padded buffer (each model's block aligned where BLAS writes it), the
                    # sigmoid runs over all of it
                    S = B * p if p == 1 else B * p + (-B * p) % unit
                    n = M * S
                    lanes = LANES * max(1, torch.get_num_threads())
                    zbuf = self.flat.new_zeros(n + (-n) % lanes)
                    ybuf = torch.empty_like(zbuf)
                    out = zbuf[:n].as_strided((M, B, p), (S, p, 1))
                    fwd.append((j, _AFFINE, w, (kernel(B, k, p, out=True), inb.get(j)), out))
                    fwd.append((j + 1, _SIGMOID_PADDED, zbuf, (ybuf, ybuf[:n].as_strided((M, B, p), (S, p, 1))),
                                dest[j + 1]))
                    continue
                fwd.append((j, _AFFINE, w, (kernel(B, k, p, out=out is not None), inb.get(j)), out))
            elif op.kind == "act":
                if fwd and fwd[-1][0] == j:
                    continue  # the padded sigmoid above
                fwd.append((j, _ACT, op.act, None, dest[j]))
            else:
                fwd.append((j, _DROPOUT if self._training else _DROPOUT_EVAL, op.p, None, dest[j]))
        G, gsl, gconst, gmaps, bwd = None, [None] * n_ops, None, [], []
        if self._training and self.agroups is not None:
            gconst, gmaps = self.agroups.grad_maps(1, 1.0 / B)
            if gmaps:
                G = _model_buffer(self.flat, M, tuple(abuf.shape[2:]), unit, (abuf.shape[0],))
            else:  # constant: one model reads it whole (fewer dispatches), a stack one broadcast row
                G = gconst.expand(abuf.shape[0], M, B if M == 1 else 1, abuf.shape[3])
                G = G.contiguous() if M == 1 else G
            gsl = [None if (sp := self.aspan.get(j)) is None else G[sp[0], :, :, :sp[1]] for j in range(n_ops)]
        if self._training:
            # the backward plan, last op first: (op, kind, derivative or W, block index, the dW and
            # dh kernels (dh None for the first layer), gradient block to write into (one model), G's view)
            # and, where the incoming derivative g (a new tensor) is loose for BLAS, an aligned
            # buffer it is copied into)
            direct = M == 1
            folded = None  # an op below an affine whose activity derivative the affine's dh adds
            for j in range(n_ops - 1, first - 1, -1):
                op = self.ops[j]
                gs = None if j == folded else gsl[j]
                if op.kind == "affine":
                    out_, in_ = self.shapes[op.w]
                    k = in_ + 1 if op.w in self._bias_of else in_
                    has_dh = j > first
                    stage = None
                    if loose(B, out_) and (_blas(out_, B, k) or has_dh and _blas(B, out_, in_)):
                        stage = buffer(B, out_)
                    dh = None  # (kernel, G's view it adds or None)
                    if has_dh and gsl[j - 1] is not None:  # dh = G's view + g W in one kernel
                        dh, folded = (kernel(B, out_, in_, add=True), gsl[j - 1]), j - 1
                    elif has_dh:
                        dh = (kernel(B, out_, in_), None)
                    bwd.append((j, _AFFINE, self.views[op.w], op.w, kernel(out_, B, k, out=direct), dh,
                                self.gblocks[op.w] if direct else None, gs, stage))
                elif op.kind == "act":
                    bwd.append((j, _ACT, _ACTS[op.act][1], -1, None, None, None, gs, None))
                else:
                    bwd.append((j, _DROPOUT, None, -1, None, None, None, gs, None))
        drops, width = [], self.shapes[next(op.w for op in self.ops if op.kind == "affine")][1]
        for op in self.ops:
            if op.kind == "affine":
                width = self.shapes[op.w][0]
            elif op.kind == "dropout":
                drops.append((op.p, (B, width)))
        return _Frame(abuf, fwd, G, gmaps, gconst, bwd, xcopy, drops)

    def objective(self, xb, yb):
        M = self.n_models
        h = xb.unsqueeze(0).expand((M,) + tuple(xb.shape)) if xb.dim() == self.x_dim else xb
        if yb.dim() == self.y_dim:
            yb = yb.unsqueeze(0).expand((M,) + tuple(yb.shape))
        B = h.shape[1]
        fr = self._frame(B)
        n_ops = len(self.ops)
        inputs: list[Any] = [None] * n_ops
        outputs: list[Any] = [None] * n_ops
        act_grads: dict[int, torch.Tensor] = {}
        grads: list[tuple[int, torch.Tensor]] = []
        training = self._training
        # penalty values, (M, k) blocks in the order of self._perm; a training step adds them up
        # for penalty_totals instead (the element-wise groups: their f(x) only)
        blocks: list[torch.Tensor] = []
        if self.pgroups:
            if training:
                self.pgroups.accumulate(self.flat, B)
            else:
                blocks.append(self.pgroups.values(self.flat))
        singles: list[torch.Tensor] = []  # values of the other sources
        for name, i, reg in self.param_pens:
            v, g = reg.value_and_grad(self.views[i], self.hparams.get(name, {}))
            singles.append(v)
            grads.append((i, g))
        activity_at = self.activity_at
        # each model's masks from its own generator, all of a step's at once (``masks.draw``)
        masks = iter(draw(self.dropout_generators, fr.drops, self.flat.dtype, self.flat.device)) if (
            training and fr.drops and self.dropout_generators is not None) else None
        if fr.xcopy is not None:
            fr.xcopy.copy_(h)
        for j, kind, a, b, dest in fr.fwd:
            if kind == _AFFINE:
                prod, block_in = b
                if block_in is not None:  # [h, 1]: the producer wrote h into its head
                    h = block_in
                inputs[j] = h
                h = prod(h, a, out=dest)
            elif kind == _ACT:
                h = outputs[j] = _act(a, h, dest)
            elif kind == _SIGMOID_PADDED:
                torch.sigmoid(a, out=b[0])
                h = outputs[j] = b[1] if dest is None else dest.copy_(b[1])
            elif kind == _DROPOUT:  # torch's own recipe (same draws as nn.Dropout)
                if masks is not None:
                    noise = next(masks)
                elif a == 1:  # torch: the input times zero, nothing drawn
                    noise = torch.zeros_like(h)
                else:
                    noise = torch.empty_like(h).bernoulli_(1.0 - a).div_(1.0 - a)
                h = torch.mul(h, noise, out=dest)
                outputs[j] = noise
            elif dest is not None:  # dropout in evaluation: the identity
                h = dest.copy_(h)
            if activity_at and j in activity_at:
                for name, reg, linear in activity_at[j]:
                    # Keras divides an activity penalty by the batch size; folded into the strengths
                    if linear:
                        v, g = reg.value_and_grad(h, self._over_batch(name, B))
                    else:
                        v, g = reg.value_and_grad(h, self.hparams.get(name, {}))
                        v, g = v / B, g / B
                    singles.append(v)
                    act_grads[j] = act_grads[j] + g if j in act_grads else g
        if fr.abuf is not None:
            if training:  # batch size x the batch-mean penalty: the sum over the batch
                self.agroups.accumulate(fr.abuf)
            else:
                blocks.append(self.agroups.values(fr.abuf, 1.0 / B))
            if fr.gmaps:  # the activity penalties' derivative, for all layers at once
                base = fr.gconst
                for lam, df in fr.gmaps:
                    d = fr.abuf if df is None else df(fr.abuf)
                    if base is None:
                        torch.mul(lam, d, out=fr.G)
                    else:
                        torch.addcmul(base, lam, d, out=fr.G)
                    base = fr.G
        if self.loss_terms:
            s = self.hparams[RegularizedLoss.source_name]["strength"]
            total = None
            for i, reg, hp in self.loss_terms:
                v, g = reg.value_and_grad(self.views[i], hp)
                total = v if total is None else total + v
                grads.append((i, s.reshape((-1,) + (1,) * (g.dim() - 1)) * g))
            singles.append(s * total)
        stacked = None
        if singles:
            singles = torch.stack(singles, dim=1)
            if training:
                o = self._other_sums
                self._other_sums = singles * B if o is None else o.add_(singles, alpha=B)
            else:
                blocks.append(singles)
        if blocks:
            stacked = self._table(blocks)
        out = h
        if training:
            data, dout = self.loss.per_example_and_grad(out, yb)
            self._cache = (inputs, outputs, act_grads, grads, dout, B, fr)
        else:
            data = self.loss.per_example(out, yb)
        correct = correct_per_example(out, yb, self.loss) if self.with_accuracy else None
        return data, correct, self.names, stacked

    def _table(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """``(K, M)`` penalty values in ``self.names`` order from the ``(M, k)`` blocks."""
        cols = torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
        if self._perm is not None:
            cols = cols.index_select(1, self._perm)
        return cols.T

    def penalty_totals(self) -> torch.Tensor | None:
        """``(K, M)``: each penalty source's value summed over the training steps since the last
        call, each step's value times its batch size (what the loop sums for a stack that returns
        its values every step); the sums start again from 0."""
        blocks = [g.totals() for g in (self.pgroups, self.agroups) if g]
        if self._other_sums is not None:
            blocks.append(self._other_sums)
            self._other_sums = None
        return self._table(blocks) if blocks else None

    def _over_batch(self, name: str, B: int) -> dict[str, torch.Tensor]:
        key = (name, B)
        hp = self._hp_cache.get(key)
        if hp is None:
            hp = self._hp_cache[key] = {k: v / B for k, v in self.hparams.get(name, {}).items()}
        return hp

    def eval_batches(self, data: Any, batch_size: int):
        """Validation in one pass where that gives Keras's batch-weighted numbers exactly: the
        data loss and accuracy are per-example means, parameter penalties do not depend on the
        batch, and an element-wise activity penalty over batches b sums to
        ``sum_b bs_b * R(h_b) / bs_b = R(h_all)``. A non-decomposable activity penalty (KL
        sparsity) or a large set is evaluated batch by batch."""
        if self._one_pass and data.n * self._eval_models * self._widest <= 2**22:
            return [(data.x, data.y, data.n)]
        return data.batches(self, batch_size, None)

    def backward(self, total: torch.Tensor, active: np.ndarray | None) -> None:
        """Write the gradient buffer: d (data mean + penalties) / d parameters, per model (models
        outside ``active`` get zeros, as autograd gives them through the masked objective)."""
        c = self._cache
        if c is None:
            raise RuntimeError("backward() without a training-mode objective()")
        self._cache = None
        inputs, outputs, act_grads, grads, dout, B, fr = c
        g = dout / B
        direct = self.n_models == 1
        parts: dict[int, torch.Tensor] = {}
        for j, kind, a, w, dw, dh, gout, gs, stage in fr.bwd:
            if gs is not None:
                g = g + gs
            if act_grads and j in act_grads:
                g = g + act_grads[j]
            if kind == _ACT:
                g = a(g, outputs[j])
            elif kind == _DROPOUT:
                g = g * outputs[j]
            else:
                if stage is not None:
                    g = stage.copy_(g)
                # [dW | db] = dz^T [h, 1] in one product. One model: straight into its (contiguous)
                # gradient block; a stack: into new tensors, gathered by one cat below (writing into
                # strided views makes bmm loop per model)
                parts[w] = dw(g.mT, inputs[j], out=gout)
                if dh is not None:
                    g = dh[0](g, a) if dh[1] is None else dh[0](dh[1], g, a)
        if not direct:
            M = self.n_models
            pieces = []
            for i in self._block_order:
                if i in self._gaps:
                    pieces.append(self._gaps[i])
                pieces.append(parts[i].reshape(M, -1))
            pieces.append(self._pad)
            torch.cat(pieces, dim=1, out=self.gflat)
        for i, pg in grads:
            self.gviews[i].add_(pg)
        if self.pgroups:
            self.pgroups.grad(self.flat, out=self.gflat)
        if active is not None:
            self.gflat.masked_fill_(~torch.as_tensor(active, device=self.gflat.device)[:, None], 0.0)
        self.flat.grad = self.gflat

    def after_step(self) -> None:
        for i, c in self.constraints:
            v = self.views[i]
            v.copy_(c.stacked(v) if hasattr(c, "stacked") else torch.vmap(c)(v))

    def snapshot(self):
        return self.flat.detach().clone()

    def state_dict(self, snap) -> dict[str, torch.Tensor]:
        """Model 0's weights in ``snap`` as a state dict."""
        return {n: self._view(snap[:1], i)[0].clone() for i, n in enumerate(self.param_names)}

    @torch.no_grad()
    def restore(self, snap, mask) -> None:
        m = torch.as_tensor(np.asarray(mask), device=self.flat.device)[:, None]
        self.flat.copy_(torch.where(m, snap, self.flat))

    @torch.no_grad()
    def merge_snapshot(self, best, mask):
        m = torch.as_tensor(np.asarray(mask), device=self.flat.device)[:, None]
        return torch.where(m, self.flat, best)

    def all_finite(self) -> np.ndarray:
        return torch.isfinite(self.flat).all(1).cpu().numpy()

    @property
    def caps(self) -> Capabilities:
        """``backward`` writes the whole gradient (no autograd graph); training steps add their
        penalty values up (``penalty_totals``); rows can go (``can_keep``)."""
        return Capabilities(sets_grad=True, defers_penalties=True, can_keep=self.can_keep)

    def hold(self, frozen, buffers):
        return None if buffers else self.flat.detach().clone()  # (a Dense stack has no buffers)

    @torch.no_grad()
    def release(self, held, frozen) -> None:
        if held is not None:
            self.flat.copy_(torch.where(torch.as_tensor(frozen, device=self.flat.device)[:, None], held, self.flat))

    @property
    def can_keep(self) -> bool:
        """Whether ``keep`` leaves every kept model's numbers as they are: not where dropout masks
        come from one generator for the whole stack (no per-model ``dropout_generators``, e.g. on
        CUDA), as a smaller stack would then draw other masks."""
        return self.dropout_generators is not None or not any(op.kind == "dropout" for op in self.ops)

    @torch.no_grad()
    def keep(self, rows: Sequence[int], snap: torch.Tensor | None = None) -> tuple[DenseStack, torch.Tensor | None]:
        """A stack of the models at ``rows`` only, with their current weights and dropout
        streams, and ``snap``'s rows for them: the engine goes on with it once other models have
        stopped, so those cost nothing more. A model's numbers do not depend on the models beside
        it (``group_rule`` "any"), so the kept ones train on exactly as they would have here
        (where ``can_keep``; ``eval_batches`` keeps this stack's rule). The
        others keep their current weights in their modules (``write_back``). The new stack's
        parameter is this one's tensor, holding only the kept rows now, so the optimizer steps it
        on (its state is sliced by the engine)."""
        self.write_back()
        new = DenseStack([self.models[i] for i in rows], [self.losses[i] for i in rows], self.with_accuracy,
                         self.x_dim, self.y_dim)
        new.train(self._training)
        if self.dropout_generators is not None:
            new.dropout_generators = [self.dropout_generators[i] for i in rows]
        new._eval_models = self._eval_models
        self.flat.data = new.flat  # the same tensor object for the optimizer; new's views share its storage
        new.flat = self.flat
        new.params = new.optimized = [self.flat]
        # this stack is done: its buffers go now (the caller may hold it until the loop ends)
        self.gflat = self.gviews = self.gblocks = self._cache = None
        self._frames = {}
        kept = None if snap is None else snap[torch.as_tensor(list(rows), device=snap.device)]
        return new, kept

    @torch.no_grad()
    def write_back(self) -> None:
        """Leave the trained weights in the models (with M = 1: give the model its own storage
        back) and the first model in the stack's last mode."""
        self.base.train(self._training)
        for k, m in enumerate(self.models):
            for p, v in zip(m.parameters(), self.views):
                if self._aliased:
                    p.data = v[k].clone()
                else:
                    p.copy_(v[k])
        self._aliased = False
