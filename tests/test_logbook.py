"""The logbook (``reglab.training.logbook``) makes the histories ``History.append`` makes epoch by
epoch: models that stop, fail or drop out of the rows, keys that come and go, NaN values."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from reglab.training.history import History
from reglab.training.logbook import Logbook

KEYS = ("loss", "data_loss", "val_loss", "penalty/a")


@st.composite
def logs(draw):
    """Epochs of (keys, table, ids): models leave the rows for good (as the loop's compaction does)
    or skip epochs (stopped but still a row), keys may change, values may be NaN or inf."""
    M = draw(st.integers(1, 7))
    alive = list(range(M))
    vary = draw(st.booleans())
    entries = []
    for epoch in range(draw(st.integers(0, 6))):
        keys = tuple(k for k in KEYS if not vary or draw(st.booleans())) or ("loss",)
        ids = [m for m in alive if draw(st.booleans()) or not vary]
        vals = st.one_of(st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf))
        table = np.array([[draw(vals) for _ in ids] for _ in keys], dtype=np.float64).reshape(len(keys), len(ids))
        entries.append((epoch, keys, table, np.array(ids, dtype=np.int64)))
        if alive and draw(st.booleans()):
            alive.pop(draw(st.integers(0, len(alive) - 1)))
    return M, entries


def _appended(M, entries) -> list[History]:
    hs = [History() for _ in range(M)]
    for epoch, keys, table, ids in entries:
        for j, m in enumerate(ids):
            hs[m].append(epoch, dict(zip(keys, table[:, j].tolist())))
    return hs


@settings(max_examples=150, deadline=None)
@given(logs())
def test_logbook_histories_equal_history_append(case):
    M, entries = case
    book = Logbook(M)
    for e in entries:
        book.add(*e)
    want = _appended(M, entries)
    got = book.histories()
    assert got == want
    for m in range(M):
        assert list(got[m].history) == list(want[m].history)  # key order too
        assert book.history(m) == want[m]


def test_logbook_blocks_match_one_block(monkeypatch):
    """Histories made in blocks of models are the ones made all at once."""
    import reglab.training.logbook as lb

    rng = np.random.default_rng(0)
    M = 11
    book = Logbook(M)
    for epoch in range(5):
        ids = np.arange(M) if epoch < 3 else np.arange(0, M, 2)
        book.add(epoch, KEYS, rng.normal(size=(len(KEYS), len(ids))), ids)
    whole = book.histories()
    monkeypatch.setattr(lb, "BLOCK", 3)
    assert book.histories() == whole
    assert len(whole[1]) == 3 and len(whole[0]) == 5
    assert whole[4]["loss"][4] == book.entries[4][2][0, 2]


def test_lazy_history_pickles_and_an_older_pickle_reads():
    import pickle

    h = History.from_columns(("loss", "val_loss"), np.array([[1.0, 0.5], [2.0, math.nan]]), [0, 1])
    back = pickle.loads(pickle.dumps(h))
    assert back == h and back.history["loss"] == [1.0, 0.5] and back.keys() == ["loss", "val_loss"]
    old = History.__new__(History)  # the state a History pickled before had: its lists under "history"
    old.__setstate__({"history": {"loss": [1.0]}, "epoch": [0], "meta": {}})
    assert old.history == {"loss": [1.0]} and old["loss"].tolist() == [1.0] and len(old) == 1
