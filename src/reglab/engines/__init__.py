"""Training engines: the one protocol the training loop speaks, the one chooser, and the engines.

- ``protocol``: ``Engine`` (every member required) and ``Capabilities`` (what differs, as data);
- ``choose``: ``choose_engine`` -- the only place that decides which engine trains a group;
- ``make``: ``make_engine`` -- builds the chosen one;
- ``dense``: the Dense-stack engine (Sequential Dense stacks, backward pass written out);
- ``vmap``: any architecture ``torch.vmap`` can batch, M models stacked;
- ``loop``: any ``nn.Module``, each model through autograd exactly as ``fit`` trains it;
- ``objective``: the per-batch objective of one model (what every autograd engine computes);
- ``penalties``, ``masks``: element-wise penalties of many sources, per-model dropout masks.
"""

from .choose import EngineChoice, EngineUnavailable, choose_engine
from .protocol import KINDS, Capabilities, Engine

__all__ = ["choose_engine", "EngineChoice", "EngineUnavailable", "Engine", "Capabilities", "KINDS"]
