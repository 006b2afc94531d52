"""The Dense-stack engine's plan of a step: for a batch size (and mode and thread count), every
buffer, view and kernel the forward and backward passes use, made once (``FramePlans``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..._lanes import LANES
from ...attach import batch_factor
from .kernels import ACTS, blas, into, model_buffer, product, product_add

__all__ = ["Frame", "FramePlans", "AFFINE", "ACT", "SIGMOID_PADDED", "DROPOUT", "DROPOUT_EVAL"]


# forward op kinds of a frame (ints: compared on every op of every step)
AFFINE, ACT, SIGMOID_PADDED, DROPOUT, DROPOUT_EVAL = range(5)


@dataclass
class Frame:
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


class FramePlans:
    """``DenseStack``'s frames: ``_frame(B)`` gives the plan of a batch of ``B``."""

    def _frame(self, B: int) -> Frame:
        key = (B, self._training, torch.get_num_threads())
        fr = self._frames.get(key)
        if fr is None:
            fr = self._frames[key] = self._build_frame(B)
        return fr

    def _padded_sigmoid(self, j: int, dest: list) -> bool:
        """Whether op ``j`` is a sigmoid that runs padded (``SIGMOID_PADDED``) on its affine's output."""
        if not 0 < j < len(self.ops) or self.flat.device.type != "cpu":
            return False
        op, prev = self.ops[j], self.ops[j - 1]
        return op.kind == "act" and op.act == "sigmoid" and prev.kind == "affine" and dest[j - 1] is None

    def _buffer(self, *shape, lead=()):
        """Zeros of ``lead + (M,) + shape``, every model's block aligned (see ``ALIGN``)."""
        return model_buffer(self.flat, self.n_models, shape, self._unit, lead)

    def _loose(self, *shape) -> bool:
        """Whether model m > 0 of a new contiguous ``(M, *shape)`` tensor starts off ``ALIGN``."""
        return self.n_models > 1 and int(np.prod(shape)) % self._unit != 0

    def _kernel(self, n, k, p, add=False, out=False):
        """The product kernel (``product``) of this shape, the same kind for every M;
        ``out``: the plan gives the product a result to write."""
        M, unit = self.n_models, self._unit
        make = product_add if add else product
        if not blas(n, k, p):
            return make(n, k, p)
        if (n * p) % unit:  # lone products (a stack's results strided, aligned)
            return make(n, k, p, self._buffer(n, p) if M > 1 and not out else None)
        if not (self.flat.device.type == "cpu" and torch.get_num_threads() > 1):
            return make(n, k, p)  # one thread: lone and batched products give the same bits
        if M == 1:  # batched: one model as a batch member
            return make(n, k, p, as_member=True)
        return torch.baddbmm if add else into(torch.bmm)

    def _build_frame(self, B: int) -> Frame:
        """The buffers, views and per-op plans of a batch of ``B`` (made once per batch size, mode
        and thread count; the step then only calls kernels)."""
        abuf, dest, inb, xcopy, first = self._frame_buffers(B)
        fwd = self._forward_plan(B, dest, inb)
        G, gmaps, gconst, bwd = self._backward_plan(B, abuf, first)
        drops, width = [], self.shapes[next(op.w for op in self.ops if op.kind == "affine")][1]
        for op in self.ops:
            if op.kind == "affine":
                width = self.shapes[op.w][0]
            elif op.kind == "dropout":
                drops.append((op.p, (B, width)))
        return Frame(abuf, fwd, G, gmaps, gconst, bwd, xcopy, drops)

    def _frame_buffers(self, B: int) -> tuple:
        """The activity buffer, each op's destination, each biased layer's input buffer (a ones
        column last), the first layer's input copy and the first affine op's index."""
        n_ops = len(self.ops)
        buffer, loose = self._buffer, self._loose
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
                if not blas(B, in_, out_):
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
        return abuf, dest, inb, xcopy, first

    def _forward_plan(self, B: int, dest: list, inb: dict[int, torch.Tensor]) -> list:
        """Per op, ``(op, kind, a, b, destination)``: what the forward pass calls."""
        M, unit, kernel = self.n_models, self._unit, self._kernel
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
                    fwd.append((j, AFFINE, w, (kernel(B, k, p, out=True), inb.get(j)), out))
                    fwd.append((j + 1, SIGMOID_PADDED, zbuf, (ybuf, ybuf[:n].as_strided((M, B, p), (S, p, 1))),
                                dest[j + 1]))
                    continue
                fwd.append((j, AFFINE, w, (kernel(B, k, p, out=out is not None), inb.get(j)), out))
            elif op.kind == "act":
                if fwd and fwd[-1][0] == j:
                    continue  # the padded sigmoid above
                fwd.append((j, ACT, op.act, None, dest[j]))
            else:
                fwd.append((j, DROPOUT if self._training else DROPOUT_EVAL, op.p, None, dest[j]))
        return fwd

    def _backward_plan(self, B: int, abuf: Any, first: int) -> tuple:
        """``(G, gmaps, gconst, bwd)``: the activity derivative's buffer and maps, and per op
        (last first) what the backward pass calls (training only)."""
        M, unit, kernel, buffer, loose = self.n_models, self._unit, self._kernel, self._buffer, self._loose
        n_ops = len(self.ops)
        G, gsl, gconst, gmaps, bwd = None, [None] * n_ops, None, [], []
        if self._training and self.agroups is not None:
            gconst, gmaps = self.agroups.grad_maps(1, batch_factor(B))
            if gmaps:
                G = model_buffer(self.flat, M, tuple(abuf.shape[2:]), unit, (abuf.shape[0],))
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
                    if loose(B, out_) and (blas(out_, B, k) or has_dh and blas(B, out_, in_)):
                        stage = buffer(B, out_)
                    dh = None  # (kernel, G's view it adds or None)
                    if has_dh and gsl[j - 1] is not None:  # dh = G's view + g W in one kernel
                        dh, folded = (kernel(B, out_, in_, add=True), gsl[j - 1]), j - 1
                    elif has_dh:
                        dh = (kernel(B, out_, in_), None)
                    bwd.append((j, AFFINE, self.views[op.w], op.w, kernel(out_, B, k, out=direct), dh,
                                self.gblocks[op.w] if direct else None, gs, stage))
                elif op.kind == "act":
                    bwd.append((j, ACT, ACTS[op.act][1], -1, None, None, None, gs, None))
                else:
                    bwd.append((j, DROPOUT, None, -1, None, None, None, gs, None))
        return G, gmaps, gconst, bwd
