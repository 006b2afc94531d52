"""Many models at once: ``fit_many`` (vectorized over seeds x strengths)."""

from .fit_many import ManyResult, fit_many

__all__ = ["fit_many", "ManyResult"]
