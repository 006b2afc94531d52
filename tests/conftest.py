import os
import signal

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("MPLBACKEND", "Agg")

# Ctrl-C reaches the processes the tests start (the interrupt tests send SIGINT as a terminal
# would): a suite started in the background of a non-interactive shell (`make test &`) inherits
# SIGINT ignored, and so would every `reglab run` it starts -- which then rightly ignores it too
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# the same examples on every run: CI results do not depend on luck (found cases are kept as explicit tests)
settings.register_profile("reglab", derandomize=True, deadline=None)
settings.load_profile("reglab")

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def keras():
    """Real Keras 3 on the torch backend, in float64, as the parity oracle."""
    import keras as k

    assert k.backend.backend() == "torch"
    k.config.set_floatx("float64")
    return k


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def to_np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


@pytest.fixture(autouse=True)
def _no_global_flush_to_zero():
    """The CLI turns flush-to-zero on for its process; tests that invoke it in-process must not
    leak that into later tests (hypothesis refuses to generate floats under FTZ)."""
    yield
    from reglab.training.denormals import stop_flushing_denormals

    stop_flushing_denormals()
