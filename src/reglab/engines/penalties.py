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

The values are linear in ``sum_lead f(X)``, so a training loop that logs each source's mean over
an epoch's steps only adds ``f(X_t)`` up (one pass per kind, ``accumulate``) and maps the sum to
sources once (``totals``). On the output of a relu or sigmoid (``X >= 0``, and the activation's
derivative is 0 where ``X = 0``), ``|x|`` is ``x`` and its derivative ``sign(x)`` may be taken
as 1 everywhere: the activity derivative of ``L1`` there is a constant map, made once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch



def elementwise_terms(reg: Any, hp: dict[str, torch.Tensor]) -> list[tuple[Any, Any, Any, torch.Tensor]] | None:
    """``reg`` as ``[(key, f, f', strength (M,))]`` if it is a sum of element-wise terms, else None
    (``Regularizer.elementwise_sum``). Terms with one key share ``f`` and ``f'``."""
    return reg.elementwise_sum(hp)


def _index(spans: list[tuple[int, int]], device: Any) -> torch.Tensor:
    """The columns covered by ``[start, stop)`` ranges (distinct), as one index tensor."""
    return torch.as_tensor(np.concatenate([np.arange(a, b) for a, b in spans]), device=device)


class PenaltyGroups:
    """The element-wise penalty sources on the spans of one buffer (see the module docstring).

    ``values(x)`` gives each source's penalty on ``x`` now; ``accumulate(x, weight)`` adds
    ``weight * f(x)`` (summed over the lead axes) into per-kind sums and ``totals()`` turns
    those into ``sum_t weight_t * values(x_t)`` -- the values are linear in ``f(x)``, so a
    training epoch maps its sums to per-source values once instead of every step."""

    def __init__(self, n_models: int, width: int, dtype: torch.dtype, device: Any, layers: int = 0):
        """``layers = L > 0``: the buffers are ``(L, M, *lead, W / L)`` (column ``c`` of slice
        ``l`` is column ``l * W / L + c``), else ``(M, *lead, W)``."""
        if layers and width % layers:
            raise ValueError(f"width {width} is not a multiple of layers {layers}")
        self.M, self.W, self.dtype, self.device, self.layers = n_models, width, dtype, device, layers
        # (channel, key) -> source -> [(spans, strength (M,), weight)]
        self._items: dict[tuple[int, Any], dict[str, list]] = {}
        self._fns: dict[Any, tuple[Any, Any]] = {}
        self.names: list[str] = []

    def add(self, channel: int, source: str, spans: list[tuple[int, int]], terms: list,
            weights: dict[Any, float] | None = None, nonnegative: bool = False) -> None:
        """``terms``: ``[(key, f, f', strength (M,))]`` on ``spans``, each times ``weights[key]``
        (a constant, default 1). ``nonnegative``: the spans hold values ``>= 0`` whose
        derivative the caller zeroes where they are 0 (a relu's or sigmoid's output); there a
        term with ``|x|``, ``sign(x)`` is computed as ``x`` with the constant derivative 1."""
        for key, f, df, st in terms:
            if nonnegative and getattr(f, "identity_on_nonnegative", False) and \
                    getattr(df, "constant_on_positive", None) is not None:
                key, f = ("on nonnegative values", key), None
            self._fns.setdefault(key, (f, df))
            w = 1.0 if weights is None else float(weights.get(key, 1.0))
            self._items.setdefault((channel, key), {}).setdefault(source, []).append((spans, st, w))
        if source not in self.names:
            self.names.append(source)

    def __bool__(self) -> bool:
        return bool(self._items)

    def build(self) -> None:
        """Make the maps (after the last ``add``)."""
        M, W, K = self.M, self.W, len(self.names)
        col = {n: j for j, n in enumerate(self.names)}
        new = {"dtype": self.dtype, "device": self.device}
        per_key: dict[Any, list] = {}
        for (ch, key), sources in self._items.items():
            lam = torch.zeros(M, W, **new)
            # the (W, K) maps are transposes of row-major (K, W) tensors: BLAS reduces each
            # source's contiguous row (one model's F @ Sw: 4 us instead of 10 here)
            A, Sw = torch.zeros(M, K, **new), torch.zeros(K, W, **new).T
            S = torch.zeros(K, W, **new).T
            factor = True  # values = (f(x) @ Sw) * A, without a pass over Lam * f(x)
            for source, items in sources.items():
                c = col[source]
                for spans, st, w in items:
                    idx = _index(spans, self.device)
                    lam[:, idx] += (st.to(self.dtype) * w)[:, None]
                    S[idx, c] = 1.0
                if all(st is items[0][1] for _, st, _ in items):
                    A[:, c] = items[0][1]
                    for spans, _, w in items:
                        Sw[_index(spans, self.device), c] += w
                elif all(sp == items[0][0] for sp, _, _ in items):
                    A[:, c] = sum(st.to(self.dtype) * w for _, st, w in items)
                    Sw[_index(items[0][0], self.device), c] = 1.0
                else:
                    factor = False
            per_key.setdefault(key, []).append((lam, (Sw, A) if factor else None, S))
        # per key: f (None: the identity, with f' constant), f' (None where f'(x) = c x or f' is
        # constant: c is in Lam), value maps per channel, Lam over channels
        self.groups = []
        for key, chans in per_key.items():
            f, df = self._fns[key]
            total = chans[0][0].clone()
            for lam, _, _ in chans[1:]:
                total += lam
            c = df.constant_on_positive if f is None else getattr(df, "linear_coefficient", None)
            if c is not None:
                total *= c
            if M > 1 and bool((total == total[:1]).all()):
                total = total[:1].clone()  # the same strengths in every model: one row, broadcast (less to read)
            self.groups.append((f, df if c is None else None, chans, total))
        self._scaled: dict[float, list] = {}
        self._grad_maps: dict[tuple[int, float | None], tuple] = {}
        # accumulate()'s f(x) sums (in the buffer's layout), with f and whether f(x) = x * x
        shape = (self.layers, M, W // self.layers) if self.layers else (M, W)
        self._sums = [(torch.zeros(shape, **new), f, getattr(f, "is_square", False)) for f, _, _, _ in self.groups]

    def _maps(self, scale: float | None) -> list:
        if scale is None:
            return self.groups
        g = self._scaled.get(scale)
        if g is None:
            g = self._scaled[scale] = [
                (f, df, [(lam * scale, None if fa is None else (fa[0], fa[1] * scale), S) for lam, fa, S in chans],
                 total * scale) for f, df, chans, total in self.groups]
        return g

    def _features(self, f: Any, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` summed over the lead axes (between models and columns), in ``x``'s layout."""
        F = x if f is None else f(x)
        first = 2 if self.layers else 1
        return F.sum(tuple(range(first, x.dim() - 1))) if x.dim() > first + 1 else F

    def _columns(self, F: torch.Tensor) -> torch.Tensor:
        """Features ``(M, W)`` from the buffer's layout (``(L, M, W / L)`` with layers)."""
        return F.transpose(0, 1).reshape(self.M, self.W) if self.layers else F

    @staticmethod
    def _map(F: torch.Tensor, chans: list, out: torch.Tensor | None) -> torch.Tensor:
        """Per-source values ``(M, K)`` of one kind's features ``F`` (added to ``out``), in
        float64: a product's rounding depends on how many rows (models) it has, and a value
        rounded to ``F``'s dtype from float64 then does not (the values are only logged)."""
        F = F.double()
        out = out if out is None else out.double()
        for lam, fa, S in chans:
            lam = lam.double()
            S = S.double()
            fa = None if fa is None else (fa[0].double(), fa[1].double())
            if fa is not None:
                out = (F @ fa[0]) * fa[1] if out is None else torch.addcmul(out, F @ fa[0], fa[1])
            else:
                v = (F * lam) @ S
                out = v if out is None else out + v
        return out

    def values(self, x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """``(M, K)``: each source's penalty (times ``scale``) on the buffer ``x`` (``K`` = ``names``)."""
        out = None
        for f, _, chans, _ in self._maps(scale):
            out = self._map(self._columns(self._features(f, x)), chans, out)
        return out.to(x.dtype)

    def accumulate(self, x: torch.Tensor, weight: float = 1.0) -> None:
        """Add ``weight * f(x)`` (summed over the lead axes) to each kind's running sum."""
        flat = x.dim() == 2 and not self.layers
        for acc, f, square in self._sums:
            if square and flat:
                acc.addcmul_(x, x, value=weight)  # f(x) and the sum in one pass
            else:
                acc.add_(self._features(f, x), alpha=weight)

    def totals(self, scale: float | None = None) -> torch.Tensor:
        """``(M, K)``: the values of the accumulated sums (``sum_t weight_t * values(x_t)``,
        times ``scale``); the sums start again from 0."""
        out = None
        for (_, _, chans, _), (acc, _, _) in zip(self._maps(scale), self._sums):
            out = self._map(self._columns(acc), chans, out)
            acc.zero_()
        return out.to(self.dtype)

    def grad_maps(self, lead: int, scale: float | None = None) -> tuple[torch.Tensor | None, list]:
        """``(C, [(Lam, f')])``: the derivative is ``C + sum Lam * f'(x)``. Maps are shaped to
        broadcast against a buffer with ``lead`` axes between models and columns (of size 1:
        ``C``, the kinds with a constant derivative, is the same for every element of a column);
        ``f'`` is None where ``f'(x) = c x`` (``c`` is in ``Lam``). ``C`` is None without such kinds."""
        maps = self._grad_maps.get((lead, scale))
        if maps is None:
            maps = self._grad_maps[(lead, scale)] = self._make_grad_maps(lead, scale)
        return maps

    def _make_grad_maps(self, lead: int, scale: float | None) -> tuple[torch.Tensor | None, list]:
        const, maps = None, []
        for f, df, _, total in self._maps(scale):
            m = total.shape[0]
            if self.layers:
                L = self.layers
                lam = total.reshape(m, L, -1).transpose(0, 1).reshape((L, m) + (1,) * lead + (-1,))
            else:
                lam = total.reshape((m,) + (1,) * lead + (total.shape[1],))
            if f is None:
                const = lam if const is None else const + lam
            else:
                maps.append((lam, df))
        return const, maps

    def grad(self, x: torch.Tensor, scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``d values.sum() / d x`` (times ``scale``), added into ``out`` when given."""
        const, maps = self.grad_maps(x.dim() - (3 if self.layers else 2), scale)
        if const is not None:
            out = const.expand_as(x).clone() if out is None else out.add_(const)
        for lam, df in maps:
            d = x if df is None else df(x)
            out = lam * d if out is None else out.addcmul_(lam, d)
        return out
