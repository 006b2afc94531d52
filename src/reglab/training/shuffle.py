"""``Shuffler``: each model's example order per epoch, drawn from its own ``torch.Generator``
exactly as ``torch.randperm(n, generator=g)`` draws it -- for all models in one compiled call.

``torch.randperm`` on the CPU is a Fisher-Yates shuffle driven by the generator's MT19937:

    r = [0, 1, ..., n-1];  for i in 0..n-2:  z = mt() mod (n - i);  swap(r[i], r[i + z])

where ``mt()`` is the next 32-bit tempered output of the Mersenne twister (state of 624 words,
regenerated every 624 draws). For 1024 models that is 1024 Python calls per epoch (~4-10 ms);
here the generators' states are read once (``Generator.get_state``), and a small compiled loop
(built and cached like the fused kernel, ``engines.fused.build``) draws every model's order from
them. The first use in a process checks the compiled draws against ``torch.randperm`` itself;
where the library cannot be built or the check fails (another torch's generator layout), for
one model, and from ``LARGE`` examples on (where torch draws 64-bit numbers) the orders come from
``torch.randperm``, one call per model, as before. Either way the orders are the same bits
(tested).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

__all__ = ["Shuffler"]

_SOURCE = r"""
#include <stdint.h>
static const int N = 624, MM = 397;
static inline uint32_t twist(uint32_t u, uint32_t v) {
  return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}
static void next_state(uint32_t* s) {
  uint32_t* p = s;
  for (int j = N - MM + 1; --j; p++) *p = p[MM] ^ twist(p[0], p[1]);
  for (int j = MM; --j; p++) *p = p[MM - N] ^ twist(p[0], p[1]);
  *p = p[MM - N] ^ twist(p[0], s[0]);
}
/* the orders of models 0..count-1: states (count, 624), left and next (count), out (count, n) */
extern "C" void permutations(int32_t count, int64_t n, uint32_t* states, int32_t* left, int32_t* next,
                             int64_t* out) {
  for (int32_t m = 0; m < count; m++) {
    uint32_t* s = states + (int64_t)m * N;
    int64_t* r = out + (int64_t)m * n;
    for (int64_t i = 0; i < n; i++) r[i] = i;
    for (int64_t i = 0; i < n - 1; i++) {
      if (--left[m] == 0) { next_state(s); left[m] = N; next[m] = 0; }
      uint32_t y = s[next[m]++];
      y ^= (y >> 11);
      y ^= (y << 7) & 0x9d2c5680u;
      y ^= (y << 15) & 0xefc60000u;
      y ^= (y >> 18);
      int64_t z = (int64_t)(y % (uint32_t)(n - i));  /* n < LARGE: torch's 32-bit draws */
      int64_t t = r[i]; r[i] = r[i + z]; r[i + z] = t;
    }
  }
}
"""

#: from this many examples on, ``torch.randperm`` draws 64-bit numbers (two twister outputs a
#: step); the compiled loop draws 32-bit ones only, so larger orders come from torch itself
LARGE = (2**32 - 1) // 20

#: where ``Generator.get_state()`` keeps MT19937's ``left`` (int32), ``next`` (uint64) and its
#: 624 words (each a uint64), in bytes (torch's ``CPUGeneratorImplStateLegacy``)
LEFT, NEXT, WORDS, STATE_BYTES = 8, 16, 24, 5056


def _read(gens: list[torch.Generator]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = np.stack([g.get_state().numpy() for g in gens]) if gens else np.zeros((0, STATE_BYTES), np.uint8)
    left = raw[:, LEFT:LEFT + 4].copy().view(np.int32)[:, 0].copy()
    nxt = raw[:, NEXT:NEXT + 8].copy().view(np.uint64)[:, 0].astype(np.int32)
    words = raw[:, WORDS:WORDS + 624 * 8].copy().view(np.uint64).astype(np.uint32)
    return np.ascontiguousarray(words), left, nxt


@functools.lru_cache(maxsize=1)
def _compiled():
    """The compiled ``permutations``, checked against ``torch.randperm``; None where unavailable."""
    if raw_size() != STATE_BYTES:
        return None
    from ..engines.fused.build import library

    lib, _ = library(_SOURCE)
    if lib is None:
        return None
    fn = lib.permutations
    fn.argtypes = [ctypes.c_int32, ctypes.c_int64] + [ctypes.c_void_p] * 4
    fn.restype = None
    gens = [torch.Generator().manual_seed(s) for s in (0, 1, 12345, 2**40 + 7)]
    mine = _CompiledDraws(fn, gens)
    for n in (1, 2, 7, 225, 700, 1300):  # past one and two regenerations of the state
        theirs = torch.stack([torch.randperm(n, generator=g) for g in gens])
        if not torch.equal(mine.draw(n), theirs):
            return None
    return fn


def raw_size() -> int:
    return torch.Generator().get_state().numel()


class _CompiledDraws:
    def __init__(self, fn, gens: list[torch.Generator]):
        self.fn = fn
        self.words, self.left, self.next = _read(gens)

    def draw(self, n: int) -> torch.Tensor:
        out = np.empty((len(self.left), n), dtype=np.int64)
        self.fn(len(self.left), n, self.words.ctypes.data, self.left.ctypes.data, self.next.ctypes.data,
                out.ctypes.data)
        return torch.from_numpy(out)

    def take(self, rows: np.ndarray) -> None:
        self.words, self.left, self.next = (np.ascontiguousarray(a[rows]) for a in (self.words, self.left, self.next))

    def write_back(self, gens: list[torch.Generator]) -> None:
        """Each generator's state set to where its stream has got to here."""
        for g, w, left, nxt in zip(gens, self.words, self.left, self.next):
            raw = g.get_state().numpy().copy()
            raw[LEFT:LEFT + 4] = np.array([left], dtype=np.int32).view(np.uint8)
            raw[NEXT:NEXT + 8] = np.array([nxt], dtype=np.uint64).view(np.uint8)
            raw[WORDS:WORDS + 624 * 8] = w.astype(np.uint64).view(np.uint8)
            g.set_state(torch.from_numpy(raw))


class Shuffler:
    """Each row's generator (``gens``); ``draw(n)`` gives the rows' next epoch orders ``(rows,
    n)`` (int64, on the CPU), ``take(rows)`` keeps the rows ``rows`` only. The shuffler owns
    the generators' streams: while it draws them compiled it holds their states itself (built
    and read at the first draw, so a run that never shuffles builds nothing), and it gives the
    states back to the generators before torch draws from them again."""

    def __init__(self, gens: list[torch.Generator]):
        self.gens = list(gens)
        self.compiled: _CompiledDraws | None = None

    def draw(self, n: int) -> torch.Tensor:
        if len(self.gens) > 1 and n < LARGE:
            if self.compiled is None and (fn := _compiled()) is not None:
                self.compiled = _CompiledDraws(fn, self.gens)
            if self.compiled is not None:
                return self.compiled.draw(n)
        elif self.compiled is not None:
            self.compiled.write_back(self.gens)
            self.compiled = None
        out = torch.empty(len(self.gens), n, dtype=torch.int64)
        for row, g in zip(out.unbind(0), self.gens):
            torch.randperm(n, generator=g, out=row)
        return out

    def take(self, rows: np.ndarray) -> None:
        self.gens = [self.gens[i] for i in rows]
        if self.compiled is not None:
            self.compiled.take(np.asarray(rows))
