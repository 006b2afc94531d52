"""reglab: regularize any PyTorch module the Keras way, and measure what regularization does."""

__version__ = "0.1.0"  # first: submodules read it (run ids hash it)

from . import activations, constraints, initializers, layers, losses, optimizers, regularizers
from .attach import (
    Handle,
    apply_constraints,
    apply_spec,
    accumulate_activity,
    clear_activity,
    constrain,
    penalties,
    penalty,
    refresh_constraints,
    regularization_spec,
    regularize,
)
from .constraints import MaxNorm, MinMaxNorm, NonNeg, UnitNorm
from .layers import Activation, Dense
from .losses import RegularizedLoss
from .regularizers import L1, L1L2, L2, KLSparsity, Lp, OrthogonalRegularizer, Regularizer
from . import selectors
from .selectors import BIASES, KERNELS, select
from .training import CSVLogger, EarlyStopping, History, ModelCheckpoint, TrainingDiverged, fit
from . import datasets, diagnostics, models, threads, training, vectorized
from .vectorized import ManyResult, fit_many
from .experiments.path import regularization_path
from .experiments.results import load_results
from .report.comparisons import load_comparisons


__all__ = [
    "__version__",
    "activations", "constraints", "initializers", "layers", "losses", "optimizers", "regularizers",
    "Handle", "regularize", "constrain", "penalty", "penalties", "apply_constraints", "clear_activity", "accumulate_activity",
    "regularization_spec", "apply_spec", "refresh_constraints",
    "selectors", "select", "KERNELS", "BIASES",
    "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm",
    "Dense", "Activation", "RegularizedLoss",
    "fit", "History", "EarlyStopping", "ModelCheckpoint", "CSVLogger", "TrainingDiverged", "models", "training", "diagnostics", "datasets", "vectorized", "fit_many", "ManyResult", "regularization_path", "load_results", "load_comparisons",
    "Regularizer", "L1", "L2", "L1L2", "Lp", "OrthogonalRegularizer", "KLSparsity",
]
