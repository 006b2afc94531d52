"""Datasets with known distributions (Bayes-optimal references) and .npz storage."""

from .core import DATASETS, Dataset, blobs, circles, digits, get, load, moons
from .distributions import Circles, Distribution, Moons, TwoGaussians

__all__ = ["Dataset", "blobs", "moons", "circles", "digits", "get", "load", "DATASETS", "Distribution",
           "TwoGaussians", "Moons", "Circles"]
