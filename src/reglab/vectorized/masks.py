"""Moved to ``reglab.engines.masks`` (kept so that old imports work)."""

from ..engines.masks import recipe_holds, draw  # noqa: F401

__all__ = ['recipe_holds', 'draw']
