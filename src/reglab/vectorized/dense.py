"""Moved to ``reglab.engines.dense`` (kept so that old imports work)."""

from ..engines.dense import NotTransformable, takes, unsupported_reason, DenseStack  # noqa: F401

__all__ = ['NotTransformable', 'takes', 'unsupported_reason', 'DenseStack']
