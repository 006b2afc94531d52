"""``DenseStack``: the Dense-stack engine's parameter layout and its side of the engine protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._lanes import LANES
from ...attach import activity_regularizer
from ...losses import Loss
from ...selectors import select_all
from ..penalties import PenaltyGroups, elementwise_terms
from ..protocol import Capabilities, columns
from ..vmap import shared_constraints, stacked_hparams, take_rows
from .eligibility import NotTransformable, Unsupported, check_transformable, ops_of
from .frame import Frame, FramePlans
from .kernels import ALIGN, NONNEGATIVE
from .passes import Passes

__all__ = ["DenseStack"]


class DenseStack(FramePlans, Passes):
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
        self.ops, out_of = ops_of(base)
        self.plan, self.names, self.hparams = stacked_hparams(self.models, losses)
        named = list(base.named_parameters())
        self.param_names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        index = {n: i for i, n in enumerate(self.param_names)}
        spans = self._lay_out(named, index)
        self._plan_parameter_penalties(index, spans)
        self._plan_activity_penalties(out_of)
        # penalty values come as [grouped parameter sources, grouped activity sources, other
        # parameter sources, other activity sources, loss terms]; a permutation puts them in
        # self.names order
        order = (self.pgroups.names + (self.agroups.names if self.agroups else []) +
                 [n for n, _, _ in self.param_pens] +
                 [n for j in sorted(self.activity_at) for n, _, _ in self.activity_at[j]] +
                 ([self.loss.source_name] if self.loss_terms else []))
        if sorted(order) != sorted(self.names):
            raise AssertionError(f"penalty sources {order} vs {self.names}")
        self._perm = None if order == self.names else torch.tensor(
            [order.index(n) for n in self.names], device=self.flat.device)
        self._hp_cache: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self._other_sums: torch.Tensor | None = None  # (M, k): batch size x value of the ungrouped sources
        #: one random stream per model for its dropout masks (``fit_many`` sets them: each
        #: model's global RNG state right after its build, so a model draws the masks it draws
        #: trained alone, in any group); None: the global generator, as ``nn.Dropout``
        self.dropout_generators: list[torch.Generator] | None = None
        self.constraints = [(index[name], c) for name, c in shared_constraints(self.models)]
        self._training = self.base.training
        self._cache: tuple | None = None
        self._frames: dict[tuple[int, bool, int], Frame] = {}
        try:  # the chooser's own check (``eligibility``), for a stack built without it
            check_transformable(base)
        except Unsupported as e:
            raise NotTransformable(str(e)) from None
        self._aliased = M == 1
        if self._aliased:  # the model's parameters are views of the buffer while training
            for (_, p), v in zip(base.named_parameters(), self.views):
                p.data = v[0]

    def _lay_out(self, named: list, index: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
        """Place every model's parameters in row m of one ``(M, P)`` buffer (``flat``) and its
        gradient buffer; the models' weights copied in. Returns each parameter's spans in a row."""
        M = self.n_models
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
        #: elements per ALIGN bytes (CPU BLAS only; 1 elsewhere)
        self._unit = unit = ALIGN // p0.element_size() if dev.type == "cpu" else 1
        # each block starts at a multiple of ALIGN bytes: one model writes its [dW | db] straight
        # into its block, a stack into aligned buffers (see ALIGN); gaps stay zero
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

        return {n: self._spans(index[n]) for n in self.param_names}

    def _plan_parameter_penalties(self, index: dict[str, int], spans: dict[str, list[tuple[int, int]]]) -> None:
        """The parameter penalties: element-wise ones together on the buffer (``pgroups``), the
        others one by one (``param_pens``); a ``RegularizedLoss``'s terms (``loss_terms``)."""
        M, p0 = self.n_models, self.flat
        dtype, dev = p0.dtype, p0.device
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
        src = self.loss.source_name  # the loss's own penalty source (``RegularizedLoss``), if any
        if src is not None:
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


    def _plan_activity_penalties(self, out_of: dict[int, int]) -> None:
        """Activity penalties by the op whose output they see: element-wise ones on one buffer
        (``agroups``, ``aspan``), the others by op (``activity_at``)."""
        M, p0 = self.n_models, self.flat
        dtype, dev = p0.dtype, p0.device
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
                linear = reg.linear_in_strength  # the batch factor folds into its strength
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
                nonneg = self.ops[j].kind == "act" and self.ops[j].act in NONNEGATIVE
                for name, terms in grouped[j]:
                    self.agroups.add(0, name, [(k * width, k * width + widths[j])], terms, nonnegative=nonneg)
        for groups in (self.pgroups, self.agroups):
            if groups:
                groups.build()

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

    # -- the stack protocol
    def decayed(self, patterns: list[str]) -> list[bool | torch.Tensor]:
        chosen = select_all(self.base, patterns)
        return [columns(self.flat, [s for i, n in enumerate(self.param_names) if n in chosen for s in self._spans(i)])]

    def train(self, mode: bool) -> None:
        # the modules' own flags are set once, in write_back (module.train walks every submodule:
        # ~60 us, three times an epoch)
        self._training = mode

    def take(self, data, idx, per_model=False):
        return take_rows(data, idx, per_model)

    def after_step(self) -> None:
        for i, c in self.constraints:
            v = self.views[i]
            v.copy_(c.project(v, stacked=True))  # the one projection of stacked weights (``Constraint.stacked``)

    def snapshot(self, into=None):
        if into is not None and into.shape == self.flat.shape:
            return into.copy_(self.flat.detach())
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

    def random_of(self, m: int):
        return contextlib.nullcontext()  # not chosen for data that draws random numbers

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
