"""Diagnostics: evaluation, overfitting, sparsity and statistics over seeds."""

from .evaluate import accuracy, compare_predictions, evaluate, log_loss, predict
from .overfitting import OverfittingReport, overfitting
from .sparsity import activations, sparsity
from .statistics import PairedComparison, binomial_ci, holm, mean_ci, paired_comparison, with_adjusted

__all__ = ["evaluate", "compare_predictions", "log_loss", "accuracy", "predict", "overfitting", "OverfittingReport",
           "sparsity", "activations", "mean_ci", "binomial_ci", "paired_comparison", "holm", "PairedComparison",
           "with_adjusted"]
