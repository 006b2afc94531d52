"""Moved to ``reglab.engines.dense`` (kept so that old imports work)."""

from ..engines.dense import NotTransformable, unsupported_reason, DenseStack  # noqa: F401

__all__ = ['NotTransformable', 'unsupported_reason', 'DenseStack']
