"""Moved to ``reglab.engines.vmap`` (kept so that old imports work)."""

from ..engines.vmap import stacked_hparams, take_rows, shared_constraints, random_calls, VmapStack  # noqa: F401

__all__ = ['stacked_hparams', 'take_rows', 'shared_constraints', 'random_calls', 'VmapStack']
