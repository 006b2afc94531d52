"""Attach regularizers and constraints to any ``torch.nn.Module``, and read the penalty back.

Nothing is subclassed: parameter regularizers are recorded on the module that owns the parameter,
activity regularizers are forward hooks, constraints are recorded on the module that owns the
parameter and applied by one process-wide optimizer step post-hook. Every attachment returns a handle whose ``remove()``
detaches it again.

Penalty sources have stable names, relative to the module ``penalties`` is called on:
``"<module path>.<param>"`` for a parameter (``"0.weight"``), ``"<module path>:activity"`` for a
module output (``"3:activity"``; the root module's own output is ``":activity"``).

Activity regularization (Keras semantics): the regularizer sees the module's output -- for a
tuple/list output its first element (``nn.LSTM`` -> the output sequence, not ``(h, c)``), moved
so that the batch dimension comes first (recurrent modules with ``batch_first=False`` have it at
dimension 1) -- and its value is divided by the batch size. It is computed in every forward
pass, in ``train()`` and ``eval()`` mode alike (Keras's ``val_loss`` includes it).

Each top-level call starts afresh (Keras 3: a layer called outside any other layer's call clears
its losses): a *top-level call* is a forward of the model ``regularize`` was given, or of a
regularized module, that no such forward encloses (a wrapper or compiled module around the model
calls it, so it counts too). It drops the terms its own subtree recorded before, read or not, so
unread forward passes (a validation pass with grad enabled, 10,000 predictions) neither pile up
nor keep their graphs alive; the calls inside it add up. Reading with ``penalty``/``penalties``
changes nothing. Gradient accumulation over several forward passes is an explicit opt-in:
inside ``with reglab.accumulate_activity():`` top-level calls add to what is recorded since the
last read (a pass under a different grad mode still starts afresh). ``clear_activity(model)`` drops recorded
terms explicitly.

The parts: ``sources`` (what is kept on modules and its readers, handles, name matching),
``activity`` (the activity hook, top-level calls, reading the penalty back), ``constraining``
(constraints and the optimizer step hook), ``regularizing`` (attaching regularizers, specs).
"""

from .activity import (COLLECTOR, Collector, PenaltyPlan, accumulate_activity, activity_hook,  # noqa: F401
                       batch_factor, call_begins, call_ends, clear_activity, over_batch, penalties, penalty, quiet)
from .constraining import (apply_constraints, constrain, engine_owned, engine_steps, refresh_constraints,  # noqa: F401
                        register_live, track_live)
from .regularizing import apply_spec, foreign_hooks, regularization_spec, regularize  # noqa: F401
from .sources import (ActivityState, Handle, activity_regularizer, activity_sources, constraint_sources,  # noqa: F401
                      match_names, owner_of, param_sources)

__all__ = [
    "Handle",
    "regularize",
    "constrain",
    "penalty",
    "penalties",
    "apply_constraints",
    "clear_activity",
    "regularization_spec",
    "apply_spec",
    "PenaltyPlan",
    "refresh_constraints",
    "engine_steps",
]

# the names hooks and states had before this package was split: a model saved whole
# (``torch.save(model)``) refers to them
_register_live, _call_begins, _call_ends, _activity_hook = register_live, call_begins, call_ends, activity_hook
_ActivityState, _Collector, _COLLECTOR = ActivityState, Collector, COLLECTOR
