"""Moved to ``reglab.engines.objective`` (kept so that old imports work)."""

from ..engines.objective import correct_per_example, model_objective

__all__ = ["correct_per_example", "model_objective"]
