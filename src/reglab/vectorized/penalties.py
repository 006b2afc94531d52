"""Moved to ``reglab.engines.penalties`` (kept so that old imports work)."""

from ..engines.penalties import elementwise_terms, PenaltyGroups  # noqa: F401

__all__ = ['elementwise_terms', 'PenaltyGroups']
