"""reglab: regularize any PyTorch module the Keras way, and measure what regularization does.

The public API is re-exported here and loaded on first use (PEP 562 ``__getattr__``): ``import
reglab`` costs nothing until a name is used, so the ``reglab`` command starts its helper
processes before this process imports torch, and ``reglab --help`` answers at once.
``from reglab import fit`` and ``reglab.fit`` work as with eager imports."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__  # submodules read it from there (run ids hash it)

#: the subpackages and modules star-imported with the API
_PUBLIC = ("activations", "constraints", "initializers", "layers", "losses", "optimizers", "regularizers",
           "selectors", "models", "training", "diagnostics", "datasets", "vectorized", "engines")
#: every subpackage and module ``reglab.<name>`` reaches after a bare ``import reglab``
_MODULES = _PUBLIC + ("threads", "attach", "experiments", "report", "sklearn", "tuning")

#: public name -> the module that defines it (relative to this package)
_NAMES = {
    **dict.fromkeys(("Handle", "regularize", "constrain", "penalty", "penalties", "apply_constraints",
                     "clear_activity", "accumulate_activity", "regularization_spec", "apply_spec",
                     "refresh_constraints"), ".attach"),
    **dict.fromkeys(("select", "KERNELS", "BIASES"), ".selectors"),
    **dict.fromkeys(("MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"), ".constraints"),
    **dict.fromkeys(("Dense", "Activation"), ".layers"),
    "RegularizedLoss": ".losses",
    **dict.fromkeys(("Regularizer", "L1", "L2", "L1L2", "Lp", "OrthogonalRegularizer", "KLSparsity"), ".regularizers"),
    **dict.fromkeys(("fit", "History", "EarlyStopping", "ModelCheckpoint", "CSVLogger", "TrainingDiverged"), ".training"),
    **dict.fromkeys(("fit_many", "ManyResult"), ".vectorized"),
    **dict.fromkeys(("choose_engine", "EngineChoice", "EngineUnavailable"), ".engines"),
    "regularization_path": ".experiments.path",
    "load_results": ".experiments.results",
    "load_comparisons": ".report.comparisons",
    **dict.fromkeys(("tune", "seed_objective", "Objective"), ".tuning"),
    "export_tensorboard": ".report.tensorboard",
    **dict.fromkeys(("RegularizedMLPClassifier", "RegularizedMLPRegressor"), ".sklearn"),
}

__all__ = ["__version__", *_PUBLIC, *_NAMES]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name], __name__), name)
    else:
        raise AttributeError(f"module 'reglab' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static analysis and IDEs see
    from . import (activations, attach, constraints, datasets, diagnostics, engines, experiments, initializers, layers, losses,
                   models, optimizers, regularizers, report, selectors, sklearn, threads, training, tuning, vectorized)
    from .attach import (Handle, accumulate_activity, apply_constraints, apply_spec, clear_activity, constrain,
                         penalties, penalty, refresh_constraints, regularization_spec, regularize)
    from .constraints import MaxNorm, MinMaxNorm, NonNeg, UnitNorm
    from .engines import EngineChoice, EngineUnavailable, choose_engine
    from .experiments.path import regularization_path
    from .experiments.results import load_results
    from .layers import Activation, Dense
    from .losses import RegularizedLoss
    from .regularizers import L1, L1L2, L2, KLSparsity, Lp, OrthogonalRegularizer, Regularizer
    from .report.comparisons import load_comparisons
    from .report.tensorboard import export_tensorboard
    from .selectors import BIASES, KERNELS, select
    from .sklearn import RegularizedMLPClassifier, RegularizedMLPRegressor
    from .tuning import Objective, seed_objective, tune
    from .training import CSVLogger, EarlyStopping, History, ModelCheckpoint, TrainingDiverged, fit
    from .vectorized import ManyResult, fit_many
