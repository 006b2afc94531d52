"""Element-wise penalties of many sources computed together (used by the Dense-stack engine).

A penalty that is a sum of element-wise terms, ``sum_k s_k * sum_i f_k(x_i)`` (``L1``, ``L2``,
``L1L2``, ``Lp`` and sums/scalings of them), can be evaluated for every source at once when the
sources' tensors are spans of one buffer ``X`` of shape ``(M, *lead, W)`` -- the ``(M, P)``
parameter buffer, or the ``(M, B, units)`` buffer of the layer outputs that carry activity
penalties. For one kind of term (one ``f``, ``f'``) and a strength map ``Lam[m, w]`` (the strength
of the source owning column w in model m, 0 where none)::

    values[m, source] = sum_w (sum_lead f(X))[m, w] * Lam[m, w] * S[w, source]     (S: indicator)
    d values / d X    = Lam * f'(X)

a handful of operations for any number of sources and models. Two sources covering the same
elements (a layer's regularizer and a ``RegularizedLoss`` term on one tensor) go into separate
*channels*, each with its own maps. ``f`` and ``f'`` are the regularizer's own
(``ElementwiseRegularizer.elementwise_terms``): the math is not repeated here.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import regularizers as R


def elementwise_terms(reg: Any, hp: dict[str, torch.Tensor]) -> list[tuple[Any, Any, Any, torch.Tensor]] | None:
    """``reg`` as ``[(key, f, f', strength (M,))]`` if it is a sum of element-wise terms, else None.
    Terms with one key share ``f`` and ``f'``."""
    if isinstance(reg, R.ElementwiseRegularizer):
        out = []
        for name, f, df in reg.elementwise_terms():
            local = "<locals>" in getattr(f, "__qualname__", "<locals>")
            key = (f, df) if not local else (type(reg), repr(reg.get_config()), name)
            out.append((key, f, df, hp[name]))
        return out
    if isinstance(reg, R.Scaled):
        inner = elementwise_terms(reg.regularizer, R._split(hp, "inner/"))
        return None if inner is None else [(k, f, df, hp["factor"] * st) for k, f, df, st in inner]
    if isinstance(reg, R.Sum):
        out = []
        for i, t in enumerate(reg.terms):
            part = elementwise_terms(t, R._split(hp, f"{i}/"))
            if part is None:
                return None
            out.extend(part)
        return out
    return None


class PenaltyGroups:
    """The element-wise penalty sources on the spans of one buffer (see the module docstring)."""

    def __init__(self, n_models: int, width: int, dtype: torch.dtype, device: Any):
        self.M, self.W, self.dtype, self.device = n_models, width, dtype, device
        self._items: list[tuple[int, str, list[tuple[int, int]], list]] = []
        self.names: list[str] = []

    def add(self, channel: int, source: str, spans: list[tuple[int, int]], terms: list) -> None:
        self._items.append((channel, source, spans, terms))
        if source not in self.names:
            self.names.append(source)

    def __bool__(self) -> bool:
        return bool(self._items)

    def build(self) -> None:
        M, W = self.M, self.W
        col = {n: j for j, n in enumerate(self.names)}
        maps: dict[tuple[int, Any], torch.Tensor] = {}
        fns: dict[Any, tuple[Any, Any]] = {}
        S: dict[int, torch.Tensor] = {}
        for ch, source, spans, terms in self._items:
            s = S.setdefault(ch, torch.zeros(W, len(self.names), dtype=self.dtype, device=self.device))
            for key, f, df, st in terms:
                fns.setdefault(key, (f, df))
                lam = maps.setdefault((ch, key), torch.zeros(M, W, dtype=self.dtype, device=self.device))
                for a, b in spans:
                    lam[:, a:b] += st.to(self.dtype)[:, None]
                    s[a:b, col[source]] = 1.0
        # per key: f, f', [(Lam, S) per channel], Lam summed over channels (for the derivative)
        self.groups = []
        for key, (f, df) in fns.items():
            per = [(maps[(ch, k)], S[ch]) for ch, k in maps if k == key]
            total = per[0][0].clone()
            for lam, _ in per[1:]:
                total += lam
            self.groups.append((f, df, per, total))
        self._scaled: dict[float, list] = {}

    def _maps(self, scale: float | None) -> list:
        if scale is None:
            return self.groups
        g = self._scaled.get(scale)
        if g is None:
            g = self._scaled[scale] = [(f, df, [(lam * scale, s) for lam, s in per], total * scale)
                                       for f, df, per, total in self.groups]
        return g

    def values(self, x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """``(M, len(names))``: each source's penalty (times ``scale``) on the buffer ``x``."""
        out = None
        lead = tuple(range(1, x.dim() - 1))
        for f, _, per, _ in self._maps(scale):
            F = f(x)
            if lead:
                F = F.sum(lead)
            for lam, s in per:
                v = (F * lam) @ s
                out = v if out is None else out + v
        return out

    def grad(self, x: torch.Tensor, scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``d values.sum() / d x`` (times ``scale``), added into ``out`` when given."""
        lead = x.dim() - 2
        for _, df, _, total in self._maps(scale):
            lam = total.reshape((total.shape[0],) + (1,) * lead + (total.shape[1],))
            if out is None:
                out = lam * df(x)
            else:
                out.addcmul_(lam, df(x))
        return out
