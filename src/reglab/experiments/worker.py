"""What a process that trains for another does first (a local helper, a Ray task)."""

from __future__ import annotations


def set_up_trainer(threads: int, explicit: int | None) -> None:
    """What a process that trains for another does first (a helper, a Ray task): denormals flushed,
    torch on ``threads`` threads (the thread rule's cap), the driver's ``--threads`` (``explicit``)."""
    import torch

    from .. import threads as _threads
    from ..training.denormals import keep_flushing_denormals

    keep_flushing_denormals()
    torch.set_num_threads(threads)
    _threads.set_explicit(explicit)
