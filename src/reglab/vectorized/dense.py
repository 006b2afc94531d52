"""The Dense-stack engine: M >= 1 models of one ``nn.Sequential`` of ``Linear``/``Dense`` and
activation layers, trained with the backward pass written out. ``fit`` (M = 1) and ``fit_many``
(any M) use it for every model it can run; anything else goes through autograd
(``SingleStack``) or ``torch.vmap`` (``VmapStack``).

Why: for the small MLPs regularization is studied on, autograd's bookkeeping costs more than the
arithmetic (a 6-layer step of the lecture's net: ~0.7 ms through autograd, ~0.1 ms of actual
kernels). Per model m and Dense layer (torch layout ``W (out, in)``)::

    forward    z = h W^T + b,        y = act(z)
    backward   dy += d activity(y) / dy
               dz = act'(z) * dy,    dW = dz^T h,    db = sum over the batch of dz,    dh = dz W

with the data-loss derivative from ``Loss.per_example_grad`` and penalty derivatives from
``Regularizer.value_and_grad`` (the same objects ``fit`` uses; each derivative is tested against
autograd). Activity penalties are divided by the batch size, as in Keras.

Layout: row m of one ``(M, P)`` buffer holds all of model m's parameters (P padded to a multiple
of 64), so the optimizer runs one fused kernel on one tensor and every element is updated by the
same SIMD code. Together with ``reglab._lanes`` and ``_bmm`` below this makes a model's numbers
bit-identical whether it is trained alone (``fit``) or in a stack of any size (``fit_many``).
With M = 1 the model's own parameters become views of that buffer while training, so callbacks
see the current weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import activations as _activations
from .._lanes import LANES, whole_vectors
from ..attach import _activity_hook
from ..layers import Activation, Dense
from ..losses import Loss, RegularizedLoss
from .stack import shared_constraints, stacked_hparams

__all__ = ["DenseStack", "unsupported_reason"]


# ----------------------------------------------------------------------------- activations


def _relu_bwd(g, y):
    return torch.ops.aten.threshold_backward(g, y, 0)


def _sigmoid(z):
    return whole_vectors(torch.sigmoid, z)


def _sigmoid_bwd(g, y):
    return torch.ops.aten.sigmoid_backward(g, y)


def _tanh_bwd(g, y):
    return torch.ops.aten.tanh_backward(g, y)


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
_BY_FN = {id(fn): name for name, fn in _activations._ACTIVATIONS.items()}
_MODULE_ACTS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "linear"}


def _act_name(mod: nn.Module) -> str | None:
    if type(mod) in _MODULE_ACTS:
        return _MODULE_ACTS[type(mod)]
    if type(mod) is Activation:
        return _BY_FN.get(id(mod.fn))
    return None


# ----------------------------------------------------------------------------- products


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``(M, n, k) @ (M, k, p)``. BLAS switches to matrix-vector kernels when a
    dimension is 1 and those round differently for one matrix than for a batch; there the product
    is written element-wise (exact in any layout)."""
    if min(a.shape[1], a.shape[2], b.shape[2]) == 1:
        return (a.unsqueeze(-1) * b.unsqueeze(1)).sum(2)
    return torch.bmm(a, b)


def _affine(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h W^T + b`` per model: ``(M, B, in)``, ``(M, out, in)``, ``(M, out)`` -> ``(M, B, out)``."""
    wt = w.transpose(1, 2)
    if b is None:
        return _bmm(h, wt)
    if min(h.shape[1], h.shape[2], w.shape[1]) == 1:
        return _bmm(h, wt) + b.unsqueeze(1)
    return torch.baddbmm(b.unsqueeze(1), h, wt)


# ----------------------------------------------------------------------------- penalty groups


def _elementwise_terms(reg: Any, hp: dict[str, torch.Tensor]) -> list[tuple[Any, Any, Any, torch.Tensor]] | None:
    """``reg`` as ``[(key, f, f', strength (M,))]`` if it is a sum of element-wise terms, else None.
    Terms with one key share ``f`` and ``f'``."""
    from .. import regularizers as R

    if isinstance(reg, R.ElementwiseRegularizer):
        out = []
        for name, f, df in reg.elementwise_terms():
            local = "<locals>" in getattr(f, "__qualname__", "<locals>")
            key = (f, df) if not local else (type(reg), repr(reg.get_config()), name)
            out.append((key, f, df, hp[name]))
        return out
    if isinstance(reg, R.Scaled):
        inner = _elementwise_terms(reg.regularizer, R._split(hp, "inner/"))
        return None if inner is None else [(k, f, df, hp["factor"] * st) for k, f, df, st in inner]
    if isinstance(reg, R.Sum):
        out = []
        for i, t in enumerate(reg.terms):
            part = _elementwise_terms(t, R._split(hp, f"{i}/"))
            if part is None:
                return None
            out.extend(part)
        return out
    return None


class _ParamGroups:
    """Element-wise parameter penalties of all sources, computed on the whole ``(M, P)`` buffer.

    For a key (one ``f``, ``f'``) the strength map ``Lam[m, i]`` holds the strength of parameter
    element i's source in model m (0 where it has none), so that per source
    ``value = (Lam * f(theta)) @ S`` (``S``: element-to-source indicator) and the derivative is
    ``Lam * f'(theta)``: a handful of operations for any number of sources. A tensor penalized by
    two sources (its layer's regularizer and a ``RegularizedLoss``) sits in two channels.
    """

    def __init__(self, flat: torch.Tensor):
        self.flat = flat
        self.channels: list[list[str]] = []  # source names per channel
        self._spans: list[dict[str, list[tuple[int, int]]]] = []
        self._terms: list[dict[Any, Any]] = []  # per channel: key -> (f, df, [(span, strength)])

    def add(self, channel: int, source: str, span: tuple[int, int], terms: list) -> None:
        while len(self.channels) <= channel:
            self.channels.append([])
            self._spans.append({})
            self._terms.append({})
        if source not in self.channels[channel]:
            self.channels[channel].append(source)
        for key, f, df, st in terms:
            entry = self._terms[channel].setdefault(key, (f, df, []))
            entry[2].append((source, span, st))

    def build(self) -> None:
        M, P = self.flat.shape
        self.groups: dict[Any, tuple[Any, Any, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]] = {}
        for ch, terms in enumerate(self._terms):
            cols = {n: j for j, n in enumerate(self.channels[ch])}
            S = self.flat.new_zeros(P, len(cols))
            for key, (f, df, items) in terms.items():
                lam = self.flat.new_zeros(M, P)
                for source, (a, b), st in items:
                    lam[:, a:b] += st[:, None]
                    S[a:b, cols[source]] = 1.0
                if key not in self.groups:
                    self.groups[key] = (f, df, [], torch.zeros_like(lam))
                self.groups[key][2].append((lam, ch))
                self.groups[key][3].add_(lam)
            self._S = getattr(self, "_S", []) + [S]
        self.names = [n for ch in self.channels for n in ch]

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values (M, sources), d values / d buffer (M, P))``."""
        flat = self.flat
        values = [None] * len(self.channels)
        grad = None
        for f, df, per_channel, lam_total in self.groups.values():
            F = f(flat)
            for lam, ch in per_channel:
                v = (lam * F) @ self._S[ch]
                values[ch] = v if values[ch] is None else values[ch] + v
            g = lam_total * df(flat)
            grad = g if grad is None else grad + g
        return torch.cat([v for v in values if v is not None], dim=1), grad


# ----------------------------------------------------------------------------- the plan


@dataclass
class _Op:
    kind: str  # "affine" or "act"
    w: int = -1
    b: int | None = None
    act: str = "linear"


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
            if act is None:
                raise _Unsupported(f"layer {cname!r} has a custom activation")
            if act != "linear":
                if act not in _ACTS:
                    raise _Unsupported(f"layer {cname!r}: activation {act!r} has no hand-written derivative")
                ops.append(_Op("act", act=act))
        else:
            act = _act_name(mod)
            if act is None:
                raise _Unsupported(f"layer {cname!r} is a {type(mod).__name__}")
            if act != "linear":
                if act not in _ACTS:
                    raise _Unsupported(f"layer {cname!r}: activation {act!r} has no hand-written derivative")
                ops.append(_Op("act", act=act))
        out_of[id(mod)] = len(ops) - 1
    out_of[id(model)] = len(ops) - 1
    if not any(op.kind == "affine" for op in ops):
        raise _Unsupported("the model has no Linear layer")
    return ops, out_of


class _Unsupported(Exception):
    pass


def _check_hooks(model: nn.Module) -> None:
    from torch.nn.modules import module as _m

    for store in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                  "_global_backward_pre_hooks"):
        if getattr(_m, store, None):
            raise _Unsupported("global module hooks are registered")
    for name, mod in model.named_modules():
        if mod._forward_pre_hooks or mod._backward_hooks or getattr(mod, "_backward_pre_hooks", None):
            raise _Unsupported(f"module {name!r} has hooks")
        if any(h is not _activity_hook for h in mod._forward_hooks.values()):
            raise _Unsupported(f"module {name!r} has a forward hook")


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
    except _Unsupported as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- the stack


class DenseStack:
    """The stack protocol of ``reglab.training.engine`` for M >= 1 supported models (see the
    module docstring); ``unsupported_reason`` says which models qualify."""

    def __init__(self, models: Sequence[nn.Module], losses: Sequence[Loss], with_accuracy: bool, x_dim: int, y_dim: int):
        self.models = list(models)
        M = self.n_models = len(self.models)
        base = self.base = self.models[0]
        self.loss = losses[0]
        self.with_accuracy = with_accuracy
        self.x_dim, self.y_dim = x_dim, y_dim
        self.ops, out_of = _ops(base)
        self.plan, self.names, self.hparams = stacked_hparams(self.models, losses)
        named = list(base.named_parameters())
        self.param_names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = list(np.cumsum([0] + sizes[:-1]))
        P = sum(sizes)
        self.padded = P + (-P) % LANES
        p0 = named[0][1]
        with torch.no_grad():
            self.flat = torch.zeros(M, self.padded, dtype=p0.dtype, device=p0.device)
            for k, m in enumerate(self.models):
                for (_, p), o, n in zip(m.named_parameters(), self.offsets, sizes):
                    self.flat[k, o:o + n] = p.detach().reshape(-1)
        self.views = [self.flat[:, o:o + n].view((M,) + s) for o, n, s in zip(self.offsets, sizes, self.shapes)]
        self.params = [self.flat]
        self._pad = self.flat.new_zeros(M, self.padded - P)
        self._aliased = M == 1
        if self._aliased:  # the model's parameters are views of the buffer while training
            for (_, p), v in zip(base.named_parameters(), self.views):
                p.data = v[0]
        index = {n: i for i, n in enumerate(self.param_names)}
        spans = {n: (o, o + int(np.prod(sh))) for n, o, sh in zip(self.param_names, self.offsets, self.shapes)}
        # parameter penalties: element-wise ones grouped on the buffer, the others one by one
        self.groups = _ParamGroups(self.flat)
        self.param_pens = []
        for name, _, _, reg in self.plan.params:
            terms = _elementwise_terms(reg, self.hparams.get(name, {}))
            if terms is None:
                self.param_pens.append((name, index[name], reg))
            else:
                self.groups.add(0, name, spans[name], terms)
        # activity penalties by the op whose output they see
        self.activity_at: dict[int, list[tuple[str, Any]]] = {}
        from .. import regularizers as R

        self._one_pass = True
        for name, mod in self.plan.activity:
            reg = mod.__dict__["_reglab_activity"].regularizer
            linear = isinstance(reg, (R.ElementwiseRegularizer, R.KLSparsity))  # value and grad linear in each strength
            self.activity_at.setdefault(out_of[id(mod)], []).append((name, reg, linear))
            self._one_pass &= _elementwise_terms(reg, self.hparams.get(name, {})) is not None
        # a RegularizedLoss: its terms with fixed strengths, scaled by the stacked "strength"
        self.loss_terms = []
        if isinstance(self.loss, RegularizedLoss):
            src = RegularizedLoss.source_name
            strength = self.hparams[src]["strength"]
            terms_all = []
            for pname, reg in self.loss.terms:
                hp = {k: torch.full((M,), float(v), dtype=p0.dtype, device=p0.device) for k, v in reg.hparams().items()}
                terms = _elementwise_terms(reg, hp)
                if terms is None:
                    terms_all = None
                    break
                terms_all.append((pname, [(k, f, df, strength * st) for k, f, df, st in terms]))
            if terms_all is not None and terms_all:
                for pname, terms in terms_all:
                    self.groups.add(1, src, spans[pname], terms)
            else:
                for pname, reg in self.loss.terms:
                    hp = {k: torch.full((M,), float(v), dtype=p0.dtype, device=p0.device) for k, v in reg.hparams().items()}
                    self.loss_terms.append((index[pname], reg, hp))
        self.groups.build()
        # values are computed as [grouped sources, other parameter sources, activity, loss terms]
        order = self.groups.names + [n for n, _, _ in self.param_pens] + [
            n for j in sorted(self.activity_at) for n, _, _ in self.activity_at[j]] + (
            [RegularizedLoss.source_name] if self.loss_terms else [])
        if sorted(order) != sorted(self.names):
            raise AssertionError(f"penalty sources {order} vs {self.names}")
        self._perm = None if order == self.names else torch.tensor(
            [order.index(n) for n in self.names], device=self.flat.device)
        self._hp_cache: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        #: the loop may skip optimizer.zero_grad: backward() replaces the gradient
        self.sets_grad = True
        self.constraints = [(index[name], c) for name, c in shared_constraints(self.models)]
        self._training = True
        self._cache: dict[str, Any] | None = None
        self._check_regularizers()

    def _check_regularizers(self) -> None:
        """Regularizers without a hand-written derivative go through ``torch.func``: try each once
        now, so one that cannot be traced is reported before training."""
        for name, i, reg in self.param_pens:
            if not reg.native_grad:
                try:
                    reg.value_and_grad(self.views[i], self.hparams.get(name, {}))
                except Exception as e:  # noqa: BLE001 -- reported with the source
                    raise ValueError(f"penalty source {name!r}: {reg!r} could not be differentiated with "
                                     f"torch.func ({e}); give it compute()/hparams() or train with fit") from e

    # -- the stack protocol
    def train(self, mode: bool) -> None:
        self._training = mode
        self.base.train(mode)

    def take(self, data, idx, per_model=False):
        if per_model:
            return torch.gather(data, 1, idx.reshape(idx.shape + (1,) * (data.dim() - 2)).expand(
                idx.shape + data.shape[2:])) if data.dim() > 2 else torch.gather(data, 1, idx)
        return data[idx]

    @torch.no_grad()
    def objective(self, xb, yb):
        M = self.n_models
        h = xb.unsqueeze(0).expand((M,) + tuple(xb.shape)) if xb.dim() == self.x_dim else xb
        if yb.dim() == self.y_dim:
            yb = yb.unsqueeze(0).expand((M,) + tuple(yb.shape))
        B = h.shape[1]
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        act_grads: dict[int, torch.Tensor] = {}
        grads: dict[int, torch.Tensor] = {}
        group_grad = None
        blocks: list[torch.Tensor] = []  # (M, k) value columns, in self._value_order
        singles: list[torch.Tensor] = []
        if self.groups.groups:
            gv, group_grad = self.groups()
            blocks.append(gv)
        for name, i, reg in self.param_pens:
            v, g = reg.value_and_grad(self.views[i], self.hparams.get(name, {}))
            singles.append(v)
            grads[i] = grads[i] + g if i in grads else g
        for j, op in enumerate(self.ops):
            if op.kind == "affine":
                inputs[j] = h
                h = _affine(h, self.views[op.w], None if op.b is None else self.views[op.b])
            else:
                h = _ACTS[op.act][0](h)
                outputs[j] = h
            for name, reg, linear in self.activity_at.get(j, ()):
                # Keras divides an activity penalty by the batch size; folded into the strengths
                if linear:
                    v, g = reg.value_and_grad(h, self._over_batch(name, B))
                else:
                    v, g = reg.value_and_grad(h, self.hparams.get(name, {}))
                    v, g = v / B, g / B
                singles.append(v)
                act_grads[j] = act_grads[j] + g if j in act_grads else g
        if self.loss_terms:
            s = self.hparams[RegularizedLoss.source_name]["strength"]
            total = None
            for i, reg, hp in self.loss_terms:
                v, g = reg.value_and_grad(self.views[i], hp)
                total = v if total is None else total + v
                g = s.reshape((-1,) + (1,) * (g.dim() - 1)) * g
                grads[i] = grads[i] + g if i in grads else g
            singles.append(s * total)
        if singles:
            blocks.append(torch.stack(singles, dim=1))
        stacked = None
        if blocks:
            cols = torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
            if self._perm is not None:
                cols = cols.index_select(1, self._perm)
            stacked = cols.T
        out = h
        data = self.loss.per_example(out, yb)
        from ..training.objective import correct_per_example

        correct = correct_per_example(out, yb, self.loss) if self.with_accuracy else None
        if self._training:
            self._cache = dict(inputs=inputs, outputs=outputs, act_grads=act_grads, grads=grads, out=out, y=yb, B=B,
                               group_grad=group_grad)
        return data, correct, self.names, stacked

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
        widest = max([self.views[op.w].shape[1] for op in self.ops if op.kind == "affine"])
        if self._one_pass and data.n * self.n_models * widest <= 2**22:
            return [(data.x, data.y, data.n)]
        return data.batches(self, batch_size, None)

    @torch.no_grad()
    def backward(self, total: torch.Tensor, active: np.ndarray | None) -> None:
        """Set the buffer's gradient: d (data mean + penalties) / d parameters, per model (models
        outside ``active`` get zeros, as autograd gives them through the masked objective)."""
        c = self._cache
        if c is None:
            raise RuntimeError("backward() without a training-mode objective()")
        self._cache = None
        grads = c["grads"]
        g = self.loss.per_example_grad(c["out"], c["y"]) / c["B"]
        first = next(j for j, op in enumerate(self.ops) if op.kind == "affine")
        for j in range(len(self.ops) - 1, first - 1, -1):
            if j in c["act_grads"]:
                g = g + c["act_grads"][j]
            op = self.ops[j]
            if op.kind == "act":
                g = _ACTS[op.act][1](g, c["outputs"][j])
                continue
            dw = _bmm(g.transpose(1, 2), c["inputs"][j])
            grads[op.w] = grads[op.w] + dw if op.w in grads else dw
            if op.b is not None:
                db = g.sum(1)
                grads[op.b] = grads[op.b] + db if op.b in grads else db
            if j > first:
                g = _bmm(g, self.views[op.w])
        M = self.n_models
        parts = [grads[i].reshape(M, -1) if i in grads else self.views[i].new_zeros(M, int(np.prod(s)))
                 for i, s in enumerate(self.shapes)]
        flat_grad = torch.cat(parts + [self._pad], dim=1)
        if c["group_grad"] is not None:
            flat_grad = flat_grad + c["group_grad"]
        if active is not None:
            flat_grad = torch.where(torch.as_tensor(active, device=flat_grad.device)[:, None], flat_grad, 0.0)
        self.flat.grad = flat_grad

    @torch.no_grad()
    def after_step(self) -> None:
        for i, c in self.constraints:
            v = self.views[i]
            v.copy_(torch.vmap(c)(v))

    def snapshot(self):
        return self.flat.detach().clone()

    def state_dict(self, snap) -> dict[str, torch.Tensor]:
        """Model 0's weights in ``snap`` as a state dict."""
        return {n: snap[0, o:o + int(np.prod(s))].view(s).clone()
                for n, o, s in zip(self.param_names, self.offsets, self.shapes)}

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

    @torch.no_grad()
    def write_back(self) -> None:
        """Leave the trained weights in the models (with M = 1: give the model its own storage back)."""
        for k, m in enumerate(self.models):
            for p, v in zip(m.parameters(), self.views):
                if self._aliased:
                    p.data = v[k].clone()
                else:
                    p.copy_(v[k])
        self._aliased = False
