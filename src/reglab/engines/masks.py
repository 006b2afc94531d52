"""Dropout masks for a stack of M models on the CPU, each model's drawn from its own generator
exactly as ``nn.Dropout`` draws them for that model alone.

``nn.Dropout(p)`` in training multiplies its input by ``noise = empty_like(x).bernoulli_(q) / q``
with ``q = 1 - p``. torch's CPU ``bernoulli_`` with a scalar ``q`` takes, element by element in
memory order, one double ``u ~ U[0, 1)`` from the generator -- the draw ``torch.rand(n,
dtype=torch.float64)`` makes -- and writes ``u < q``. So a model's masks for several dropout
calls in a row are one ``rand`` of their total size, cut in call order:

    noise_c = (u[o_c : o_c + n_c] < q_c) / q_c,    o_c = n_1 + ... + n_(c-1)

one generator call per model and step instead of one per model and dropout call (a 5-layer
dropout MLP, 20 models: 100 ``bernoulli_`` calls a step, about 12 us each here), and the
comparison, the cast and the scaling run once for the whole stack. ``recipe_holds()`` checks the
equivalence on this torch build (once per process); where it does not hold, each mask is drawn
by ``bernoulli_`` itself, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = ["draw", "recipe_holds"]


@functools.lru_cache(maxsize=1)
def recipe_holds() -> bool:
    """Whether ``bernoulli_(q)`` equals ``rand(dtype=float64) < q`` here, draws and generator
    state both (checked on 4,000 draws at two probabilities, into float32 and float64)."""
    for q, dtype in ((0.8, torch.float32), (0.3, torch.float64)):
        a, b = torch.Generator().manual_seed(20261201), torch.Generator().manual_seed(20261201)
        mask = torch.empty(2000, dtype=dtype).bernoulli_(q, generator=a)
        mine = (torch.rand(2000, dtype=torch.float64, generator=b) < q).to(dtype)
        if not (torch.equal(mask, mine) and torch.equal(a.get_state(), b.get_state())):
            return False
    return True


def draw(generators: Sequence[torch.Generator], calls: Sequence[tuple[float, tuple[int, ...]]],
         dtype: torch.dtype, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The noise tensors ``(M,) + shape`` of dropout calls ``(p, shape)``, ``0 < p <= 1``, in the
    order one forward pass makes them; model m's from ``generators[m]`` (CPU generators).
    ``p = 1`` gives zeros and draws nothing, as torch (which multiplies by zero)."""
    M = len(generators)
    sizes = [0 if p == 1 else int(torch.Size(shape).numel()) for p, shape in calls]
    total = sum(sizes)
    if total and not recipe_holds():
        return [_drawn_one_by_one(generators, p, shape, dtype, device) for p, shape in calls]
    u = torch.empty(M, total, dtype=torch.float64)
    if total:
        for row, g in zip(u, generators):
            torch.rand(total, dtype=torch.float64, generator=g, out=row)
    qs = {1.0 - p for p, _ in calls if p != 1}
    whole = None
    if len(qs) == 1 and total:  # one rate (the usual case): compare, cast and scale once
        q = qs.pop()
        whole = torch.lt(u, q).to(device=device, dtype=dtype).div_(q)
    out = []
    o = 0
    for (p, shape), n in zip(calls, sizes):
        if p == 1:
            out.append(torch.zeros((M,) + tuple(shape), dtype=dtype, device=device))
            continue
        if whole is not None:
            noise = whole[:, o:o + n]
        else:
            noise = torch.lt(u[:, o:o + n], 1.0 - p).to(device=device, dtype=dtype).div_(1.0 - p)
        out.append(noise.view((M,) + tuple(shape)))
        o += n
    return out


def _drawn_one_by_one(generators, p, shape, dtype, device) -> torch.Tensor:
    noise = torch.empty((len(generators),) + tuple(shape), dtype=dtype)
    if p == 1:
        return noise.zero_().to(device)
    for m, g in enumerate(generators):
        noise[m].bernoulli_(1.0 - p, generator=g)
    return noise.div_(1.0 - p).to(device)
