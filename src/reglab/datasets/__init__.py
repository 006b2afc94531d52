"""Datasets with known distributions (Bayes-optimal references) and .npz storage."""

from .core import DATASETS, SKLEARN, Dataset, blobs, circles, digits, get, load, moons, names, sample
from .distributions import Circles, Distribution, Moons, TwoGaussians

__all__ = ["Dataset", "blobs", "moons", "circles", "digits", "get", "load", "DATASETS", "SKLEARN", "sample", "names", "Distribution",
           "TwoGaussians", "Moons", "Circles"]
