"""Many models at once: ``fit_many`` (vectorized over seeds x strengths).

``dense``: the Dense-stack engine (M >= 1 Sequential Dense stacks, backward written out; ``fit``
uses it too); ``penalties``: element-wise penalties of many sources computed together; ``stack``:
any other architecture under ``torch.vmap``.
"""

from .fit_many import ManyResult, fit_many

__all__ = ["fit_many", "ManyResult"]
