"""Epoch orders (``reglab.training.shuffle``): the compiled draws are ``torch.randperm``'s, bit
for bit, for every row, epoch after epoch, after rows are dropped, and past regenerations of the
twister's state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reglab.engines.fused.build import unavailable
from reglab.training import shuffle


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("n", [1, 2, 3, 20, 225, 1000])
def test_compiled_orders_are_randperms(n):
    if unavailable() is not None:
        pytest.skip(f"no compiled draws here ({unavailable()}): the orders come from torch.randperm itself")
    assert shuffle._compiled() is not None  # built, and it passed its own check against torch.randperm
    seeds = [0, 1, 7, 2**33 + 5, 123456789]
    sh, ref = shuffle.Shuffler(_gens(seeds)), _gens(seeds)
    for epoch in range(4):
        if epoch == 2:  # rows dropped (the loop's compaction)
            keep = np.array([0, 2, 4])
            sh.take(keep)
            ref = [ref[i] for i in keep]
        want = torch.stack([torch.randperm(n, generator=g) for g in ref])
        assert torch.equal(sh.draw(n), want)
        assert sh.compiled is not None  # drawn compiled


def test_generator_used_before_and_fallback(monkeypatch):
    """A generator that already drew (its state mid-way) and the torch.randperm fallback give the
    same orders."""
    gens, ref, plain = _gens([3, 4, 5]), _gens([3, 4, 5]), _gens([3, 4, 5])
    for g in (*gens, *ref, *plain):
        torch.rand(1000, generator=g)
    want = [torch.stack([torch.randperm(50, generator=g) for g in ref]) for _ in range(3)]
    compiled = shuffle.Shuffler(gens)
    assert all(torch.equal(compiled.draw(50), w) for w in want)
    assert compiled.compiled is not None or unavailable() is not None
    monkeypatch.setattr(shuffle, "_compiled", lambda: None)
    fallback = shuffle.Shuffler(plain)
    assert all(torch.equal(fallback.draw(50), w) for w in want)
    assert fallback.compiled is None


def test_large_orders_come_from_torch_after_compiled_ones(monkeypatch):
    """From ``LARGE`` examples on torch draws 64-bit numbers: those orders come from torch, which
    takes each stream where the compiled draws left it (and back again)."""
    if unavailable() is not None:
        pytest.skip(f"no compiled draws here ({unavailable()})")
    monkeypatch.setattr(shuffle, "LARGE", 100)
    sh, ref = shuffle.Shuffler(_gens([5, 6, 7])), _gens([5, 6, 7])
    for n in (50, 700, 150, 50, 60, 150):  # 700 regenerates the twister's state mid-stream
        want = torch.stack([torch.randperm(n, generator=g) for g in ref])
        got = sh.draw(n)
        assert torch.equal(got, want), n
        assert (sh.compiled is not None) == (n < 100)


def test_no_shuffle_builds_nothing():
    sh = shuffle.Shuffler(_gens([1, 2]))
    assert sh.compiled is None  # made at the first draw
    sh.take(np.array([1]))
    assert len(sh.gens) == 1
