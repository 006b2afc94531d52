"""The fused Dense-stack engine: the eager Dense-stack engine's models (``reglab.engines.dense``)
trained by one compiled kernel per architecture, models in SIMD lanes, a whole epoch per call.

Why: the eager engine's step is a sequence of torch kernels, each a trip over buffers larger than
the cache once M is large; at M = 256 the batched products and Adam alone cost 13.7-18.6 ms per
model-run of a 5 x Dense(32) MLP, 200 epochs of 12 steps (``benchmarks/bench_floor.py``). Here a chunk of ``lanes``
models (one float32 vector register: 8 with AVX2, 16 with AVX-512) runs every step of an epoch
with its parameters, Adam state and activations in cache; forward, backward, penalties, loss
and Adam are one loop nest (``source``), chunks spread over threads.

The math is declared once (``terms``: activations, penalty terms and losses as C expressions
beside the reglab functions they must equal, checked by the tests), the source is generated
from it per architecture (``source``), compiled and cached (``build``). What the tables do not
hold (``eligibility``) -- another activation, loss, optimizer, weight decay, dropout,
constraints, float64, a GPU -- trains on the eager engines; so does everything where no C++
compiler is found (one line says so).

Numbers: a model's bits do not depend on M, its lane or chunk, or the thread count (lanes never
mix; unused lanes are zeros), nor on the C library (the kernel's own ``exp``/``log``); ``fit``
runs the same kernel with one model in a chunk, so ``fit`` and ``fit_many`` agree bit for bit.
Against the eager engine they differ by float32 rounding only (another summation order, FMA):
after one epoch within 1e-6, over a run within the eager engine's own distance from float64.
Each history records the engine and kernel version (``History.meta["engine"]``).
"""

from .build import say_once, unavailable
from .eligibility import arch_of
from .stack import FusedStack, FusedUnavailable

__all__ = ["FusedStack", "FusedUnavailable", "arch_of", "say_once", "unavailable"]
