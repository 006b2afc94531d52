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
    assert sh.compiled is not None
    for epoch in range(4):
        if epoch == 2:  # rows dropped (the loop's compaction)
            keep = np.array([0, 2, 4])
            sh.take(keep)
            ref = [ref[i] for i in keep]
        want = torch.stack([torch.randperm(n, generator=g) for g in ref])
        assert torch.equal(sh.draw(n), want)


def test_generator_used_before_and_fallback(monkeypatch):
    """A generator that already drew (its state mid-way) and the torch.randperm fallback give the
    same orders."""
    gens, ref, plain = _gens([3, 4, 5]), _gens([3, 4, 5]), _gens([3, 4, 5])
    for g in (*gens, *ref, *plain):
        torch.rand(1000, generator=g)
    compiled = shuffle.Shuffler(gens)
    monkeypatch.setattr(shuffle, "_compiled", lambda: None)
    fallback = shuffle.Shuffler(plain)
    assert fallback.compiled is None
    for _ in range(3):
        want = torch.stack([torch.randperm(50, generator=g) for g in ref])
        assert torch.equal(compiled.draw(50), want)
        assert torch.equal(fallback.draw(50), want)
