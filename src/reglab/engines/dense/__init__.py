"""The Dense-stack engine: M >= 1 models of one ``nn.Sequential`` of ``Linear``/``Dense`` and
activation layers, trained with the backward pass written out. ``fit`` (M = 1) and ``fit_many``
(any M) use it for every model it can run; anything else goes through autograd
(the per-model loop) or ``torch.vmap`` (``VmapStack``); ``reglab.engines.choose_engine``
decides.

Why: for the small MLPs regularization is studied on, autograd's bookkeeping costs more than the
arithmetic (a step of a 5 x Dense(32) MLP with weight, bias and activity penalties, batch 20, on a
2-core CPU: ~1.4 ms through autograd, ~0.25 ms here, where every buffer, view and kernel choice
of a batch size is planned once: ``Frame``).
Per model m and Dense layer (torch layout ``W (out, in)``), with ``[h, 1]`` the layer's input and a
column of ones and ``[W | b]`` its weights and bias side by side::

    forward    z = [h, 1] [W | b]^T,        y = act(z)
    backward   dy += d activity(y) / dy
               dz = act'(z) * dy,    [dW | db] = dz^T [h, 1],    dh = dz W

with the data-loss derivative from ``Loss.per_example_grad`` and penalty derivatives from
``Regularizer.value_and_grad`` (the same objects ``fit`` uses; each derivative is tested against
autograd). Activity penalties are divided by the batch size, as in Keras. In training, penalty
values (only logged) are summed over an epoch's steps and mapped to their sources at its end
(``penalty_totals``; the loop's ``defers_penalties`` protocol). ``nn.Dropout`` layers
draw their masks exactly as ``nn.Dropout`` does, so ``fit`` gives the autograd path's numbers; in
a stack of M > 1 each model draws from its own generator, holding the global state it had right
after its build, so a model gets the masks it gets alone (the vmap path does the same,
``reglab.engines.vmap``).

Layout: row m of one ``(M, P)`` buffer holds all of model m's parameters (P padded to a multiple
of 64), each biased layer as one ``(out, in + 1)`` block ``[W | b]`` at an aligned offset (its
weight and bias are strided views of the block), so the optimizer runs one fused kernel on one
tensor and every element is updated by the same SIMD code. Together with ``reglab._lanes``,
``ALIGN`` (every matrix a product reads or writes starts at an aligned address) and ``product``
(one BLAS kernel kind per shape, whatever M and the thread count) below this makes a model's
numbers bit-identical whether it is trained alone (``fit``) or in a stack of any size
(``fit_many``). With M = 1 the model's own parameters become views of that buffer while
training, so callbacks see the current weights.

The engine's parts, one concept each: ``kernels`` (activations and their derivatives; the
product kernels and their alignment), ``eligibility`` (which models and losses it trains),
``frame`` (the per-batch-size plan of buffers and kernels), ``passes`` (the forward pass with
the penalties, and the backward pass), ``stack`` (the parameter layout and the engine protocol).
"""

from .eligibility import NotTransformable, unsupported_reason
from .stack import DenseStack

__all__ = ["DenseStack", "NotTransformable", "unsupported_reason"]
