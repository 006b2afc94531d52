"""The Dense-stack engine's passes: the forward pass with every penalty source's value and
derivative, and the written-out backward pass into the gradient buffer (``Passes``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...attach import batch_factor, over_batch
from ..masks import draw
from ..objective import correct_per_example
from .frame import ACT, AFFINE, DROPOUT, SIGMOID_PADDED
from .kernels import act

__all__ = ["Passes"]


class Passes:
    """``DenseStack``'s ``objective`` (forward), ``backward`` and penalty bookkeeping."""

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
        h = self._forward(fr, h, B, training, inputs, outputs, act_grads, singles)
        if fr.abuf is not None:
            self._activity_groups(fr, B, training, blocks)
        if self.loss_terms:
            self._loss_terms(singles, grads)
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


    def _forward(self, fr, h, B: int, training: bool, inputs: list, outputs: list, act_grads: dict,
                 singles: list) -> torch.Tensor:
        """The forward pass of frame ``fr`` from the batch ``h``: each op's input (affine) or
        output (activation, dropout noise) kept for the backward pass; ungrouped activity
        penalties' values (``singles``) and derivatives (``act_grads``). The output."""
        activity_at = self.activity_at
        # each model's masks from its own generator, all of a step's at once (``masks.draw``)
        masks = iter(draw(self.dropout_generators, fr.drops, self.flat.dtype, self.flat.device)) if (
            training and fr.drops and self.dropout_generators is not None) else None
        if fr.xcopy is not None:
            fr.xcopy.copy_(h)
        for j, kind, a, b, dest in fr.fwd:
            if kind == AFFINE:
                prod, block_in = b
                if block_in is not None:  # [h, 1]: the producer wrote h into its head
                    h = block_in
                inputs[j] = h
                h = prod(h, a, out=dest)
            elif kind == ACT:
                h = outputs[j] = act(a, h, dest)
            elif kind == SIGMOID_PADDED:
                torch.sigmoid(a, out=b[0])
                h = outputs[j] = b[1] if dest is None else dest.copy_(b[1])
            elif kind == DROPOUT:  # torch's own recipe (same draws as nn.Dropout)
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
                        v, g = over_batch(v, B), over_batch(g, B)
                    singles.append(v)
                    act_grads[j] = act_grads[j] + g if j in act_grads else g
        return h

    def _activity_groups(self, fr, B: int, training: bool, blocks: list) -> None:
        """The element-wise activity penalties, all layers at once: values (a training step adds
        them up) and the derivative ``G``."""
        if training:  # batch size x the batch-mean penalty: the sum over the batch
            self.agroups.accumulate(fr.abuf)
        else:
            blocks.append(self.agroups.values(fr.abuf, batch_factor(B)))
        if fr.gmaps:  # the activity penalties' derivative, for all layers at once
            base = fr.gconst
            for lam, df in fr.gmaps:
                d = fr.abuf if df is None else df(fr.abuf)
                if base is None:
                    torch.mul(lam, d, out=fr.G)
                else:
                    torch.addcmul(base, lam, d, out=fr.G)
                base = fr.G

    def _loss_terms(self, singles: list, grads: list) -> None:
        """A ``RegularizedLoss``'s terms (not element-wise): values and gradients, times the
        stacked strength."""
        s = self.hparams[self.loss.source_name]["strength"]
        total = None
        for i, reg, hp in self.loss_terms:
            v, g = reg.value_and_grad(self.views[i], hp)
            total = v if total is None else total + v
            grads.append((i, s.reshape((-1,) + (1,) * (g.dim() - 1)) * g))
        singles.append(s * total)

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
            hp = self._hp_cache[key] = {k: over_batch(v, B) for k, v in self.hparams.get(name, {}).items()}
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
            if kind == ACT:
                g = a(g, outputs[j])
            elif kind == DROPOUT:
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
