"""How the package and the ``reglab`` command start and end: a light package root (torch is
imported on first use), helpers started before the parent imports torch, no final garbage
collection at exit, and the per-epoch history rows."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import reglab
from reglab.training import History


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_package_root_and_the_command_import_no_torch():
    shown = _python("""
        import sys
        import reglab, reglab.cli
        print(sorted(m for m in ("torch", "numpy", "sklearn", "pandas", "matplotlib") if m in sys.modules))
        print(reglab.__version__)
    """).splitlines()
    assert shown == ["[]", reglab.__version__]


def test_every_public_name_resolves_lazily_and_star_import_gets_them_all():
    shown = _python("""
        import sys
        from reglab import *
        import reglab
        print(fit.__module__, L2.__name__, fit_many.__name__, load_results.__name__, reglab.threads.__name__)
        print(all(hasattr(reglab, n) for n in reglab.__all__), set(reglab.__all__) <= set(dir(reglab)))
        print(reglab.experiments.schema.LIMITS is not None, reglab.attach.quiet.__name__, reglab.report.comparisons.__name__)
        try:
            reglab.no_such_thing
        except AttributeError as e:
            print(e)
    """).splitlines()
    assert shown == ["reglab.training.fit L2 fit_many load_results reglab.threads", "True True",
                     "True quiet reglab.report.comparisons", "module 'reglab' has no attribute 'no_such_thing'"]
    assert "threads" not in reglab.__all__ and "experiments" not in reglab.__all__  # star-import as before
    # the same objects as their modules'
    assert reglab.fit is reglab.training.fit and reglab.MaxNorm is reglab.constraints.MaxNorm
    assert reglab.load_comparisons is __import__("reglab.report.comparisons", fromlist=["x"]).load_comparisons
    from reglab import RegularizedMLPClassifier, RegularizedMLPRegressor  # the estimators too (an ImportError before)

    assert RegularizedMLPClassifier is reglab.sklearn.RegularizedMLPClassifier
    assert RegularizedMLPRegressor.__module__ == "reglab.sklearn"


def test_helpers_start_before_this_process_imports_torch():
    # _start(2) is what `reglab run` / `reglab study` do first: the helper must be spawned while
    # torch is still unimported here, so it imports alongside this process (it was started
    # after this process's own 5 s of imports)
    shown = _python("""
        import sys
        from reglab import cli
        from reglab.experiments import helpers
        seen = []
        real = helpers.prestart
        def spy(*a, **k):
            seen.append("torch" in sys.modules)
            return real(*a, **k)
        helpers.prestart = spy
        cli._start(2)
        import torch
        print(seen, "torch" in sys.modules, torch.get_num_threads())
        helpers.discard_prestarted()
    """)
    assert shown == "[False] True 1"


def test_the_final_collection_is_skipped_at_exit():
    # atexit runs handlers last-registered first: the one registered before runs after gc.freeze
    shown = _python("""
        import atexit, gc
        from reglab.experiments.helpers import skip_final_collection
        atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
        before = atexit._ncallbacks()
        skip_final_collection()
        skip_final_collection()  # once per process
        print("handlers added:", atexit._ncallbacks() - before, "frozen now:", gc.get_freeze_count() > 0)
    """).splitlines()
    assert shown == ["handlers added: 1 frozen now: False", "frozen at exit: True"]


def _reference_append(h: dict, n: int, logs: dict) -> None:
    """History.append's rule, written plainly: a new key is NaN before, a missing one NaN now."""
    for k in logs:
        if k not in h:
            h[k] = [math.nan] * n
    for k, col in h.items():
        col.append(float(logs.get(k, math.nan)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["loss", "val_loss", "accuracy", "penalty/a"]),
                                st.floats(allow_nan=False, width=32), max_size=4), max_size=8))
def test_history_rows_follow_the_rule(rows):
    h, ref = History(), {}
    for e, logs in enumerate(rows):
        logs = {k: np.float32(v) for k, v in logs.items()}  # as callbacks may log them
        h.append(e, logs)
        _reference_append(ref, e, logs)
    assert h.epoch == list(range(len(rows)))
    assert list(h.history) == list(ref)
    for k in ref:
        np.testing.assert_array_equal(h[k], np.asarray(ref[k], dtype=float))
        assert all(type(v) is float for v in h.history[k])
