"""Name patterns with type selectors: "the weights of Linear/Conv layers, not biases or norms".

Every place that takes name patterns -- ``regularize(model, params=..., activity=...)``,
``constrain(model, ...)``, and so the string keys of experiment files -- reads them by this
grammar (patterns are strings)::

    pattern        := glob | selector
    glob           := any string not starting with "@": an fnmatch glob (case-sensitive) over the
                      names of model.named_parameters() / model.named_modules()
                      ("*.weight", "encoder.*", "0.bias"; "" is the root module)
    selector       := "@kernels" | "@biases"               (parameters only)
                    | "@" TypeGlob "." ParamGlob            (parameters)
                    | "@" TypeGlob                          (modules)

``"@kernels"`` (``reglab.KERNELS``) selects the kernel of every *kernel layer*, ``"@biases"``
(``reglab.BIASES``) its bias. The kernel layers are the modules that are instances of
``nn.Linear``, ``nn.Bilinear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` -- subclasses
included, so ``nn.LazyLinear``, ``nn.LazyConv*``, ``reglab.Dense`` and your own ``class
MyLinear(nn.Linear)`` are kernel layers -- whose kernel is their ``weight`` and whose bias is their
``bias``; and ``nn.MultiheadAttention``, whose kernels are ``in_proj_weight`` (or
``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` when ``kdim``/``vdim`` differ from
``embed_dim``) and whose bias is ``in_proj_bias`` (its ``out_proj`` is an ``nn.Linear``, selected as
one; without this rule ``"@kernels"`` would take one of its four projections). These are the
layers whose Keras counterparts take ``kernel_regularizer``/``bias_regularizer`` as matrix /
offset terms of an affine map (Dense, Conv*, MultiHeadAttention).

Not selected by ``"@kernels"``/``"@biases"``:

* normalization layers (``BatchNorm*``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm*``,
  ``RMSNorm``, ...): their ``weight``/``bias`` are a per-feature scale and shift, not a kernel
  (Keras's ``BatchNormalization`` has ``gamma_regularizer``/``beta_regularizer`` instead) and weight
  decay on them is what pytorch/pytorch#1402 asks to avoid. Select them with ``"@*Norm*.*"``.
* embeddings (``nn.Embedding``, ``nn.EmbeddingBag``): a table looked up row by row, not multiplied;
  Keras's ``Embedding`` has ``embeddings_regularizer``, not ``kernel_regularizer``. Select it with
  ``"@Embedding.weight"``.
* recurrent layers (``nn.RNN``/``LSTM``/``GRU``): Keras splits their weights into kernel and
  recurrent kernel; torch names them ``weight_ih_l<k>``/``weight_hh_l<k>``. Select them with
  ``"@RNNBase.weight_ih_*"``, ``"@RNNBase.weight_hh_*"``, ``"@RNNBase.bias_*"``.
* anything else (``nn.PReLU.weight``, parameters of your own modules): use ``"@Type.param"``.

``"@TypeGlob.ParamGlob"`` selects the parameters whose own name (the attribute, without the
module path) fnmatches ``ParamGlob`` and that are *directly* owned (``named_parameters(
recurse=False)``) by a module whose class name, or the name of any class in its MRO (``object``
excluded), fnmatches ``TypeGlob``: ``"@Conv2d.weight"``, ``"@Conv*.weight"`` (Conv1d/2d/3d and
ConvTranspose1d/2d/3d: their names start with ``Conv``; LazyConv* through their base class),
``"@BatchNorm*.*"``, ``"@Linear.bias"`` (``reglab.Dense`` too: it subclasses ``Linear``),
``"@Module.weight"`` (every parameter called ``weight``). The type glob ends at the first ``.``.
A parameter pattern needs the ``.ParamGlob`` part: ``"@Linear"`` alone is an error, not "all of
Linear's parameters" (write ``"@Linear.*"``), so ``"@Linear"`` can never be mistaken for
``"@kernels"``.

``"@TypeGlob"`` in a module (activity) pattern selects the modules whose class or a base class
name fnmatches ``TypeGlob``: ``"@ReLU"``, ``"@Conv*"``, ``"@Dense"``; the root module is one of
them if its type matches.

A tensor shared by several modules (tied weights) is one parameter, named as
``model.named_parameters()`` names it (the first path); it is selected when any module owning it
matches. Names are relative to the model given. A module whose name itself starts with ``@``
(possible with ``add_module``) is reached by a glob escaping it: ``"[@]odd.weight"``.

When attaching, every pattern must select at least one name and no name may be selected by two
patterns (a ``ValueError`` names them; for a selector it also lists the module types present).
``select`` returns what a pattern selects, an empty list where it selects nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

__all__ = ["KERNELS", "BIASES", "select", "select_all", "is_selector"]

#: Selector for the kernels (``weight``) of Linear/Bilinear/Conv*/ConvTranspose* layers and the
#: input projections of MultiheadAttention. Not biases, normalization layers or embeddings.
KERNELS = "@kernels"
#: Selector for the biases of the same layers ``KERNELS`` covers.
BIASES = "@biases"

_KERNEL_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
# role -> ((layer types, parameter names), ...)
_ROLES: dict[str, tuple[tuple[tuple[type[nn.Module], ...], tuple[str, ...]], ...]] = {
    "kernels": ((_KERNEL_LAYERS, ("weight",)),
                ((nn.MultiheadAttention,), ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"))),
    "biases": ((_KERNEL_LAYERS, ("bias",)),
               ((nn.MultiheadAttention,), ("in_proj_bias",))),
}
_WHATS = ("parameter", "module")


def is_selector(pattern: str) -> bool:
    """True for a type selector (a pattern starting with ``@``), False for a name glob."""
    return pattern.startswith("@")


def _type_matches(module: nn.Module, type_glob: str) -> bool:
    return any(fnmatch.fnmatchcase(c.__name__, type_glob) for c in type(module).__mro__ if c is not object)


def _role(role: str) -> Callable[[nn.Module, str], bool]:
    table = _ROLES[role]

    def pred(module: nn.Module, attr: str) -> bool:
        return any(isinstance(module, types) and attr in attrs for types, attrs in table)

    return pred


def _parse(pattern: str, what: str) -> Callable[..., bool]:
    """The predicate of selector ``pattern``: ``(module, attr)`` for parameters, ``(module)`` for modules."""
    body = pattern[1:]
    type_glob, dot, param_glob = body.partition(".")
    if not type_glob:
        raise ValueError(f"{what} pattern {pattern!r}: empty type glob after '@'; write e.g. '@kernels', "
                         "'@Conv*.weight' or, for modules, '@ReLU'")
    role = type_glob in _ROLES
    if what == "module":
        if role or dot:
            raise ValueError(f"{what} pattern {pattern!r} selects parameters, not modules; a module pattern "
                             "selects by type alone, e.g. '@ReLU', '@Conv*', '@Linear'")
        return lambda module: _type_matches(module, type_glob)
    if role:
        if dot:
            raise ValueError(f"{what} pattern {pattern!r}: '@{type_glob}' takes no parameter glob; write "
                             f"'@{type_glob}' alone, or '@<Type>.<param>' such as '@Linear.weight'")
        return _role(type_glob)
    if not dot:
        raise ValueError(f"{what} pattern {pattern!r} names no parameter; write '@{type_glob}.weight', "
                         f"'@{type_glob}.*' (all its parameters), or '@kernels' / '@biases'")
    if not param_glob:
        raise ValueError(f"{what} pattern {pattern!r}: empty parameter glob after '.'; write e.g. "
                         f"'@{type_glob}.weight' or '@{type_glob}.*'")
    return lambda module, attr: _type_matches(module, type_glob) and fnmatch.fnmatchcase(attr, param_glob)


def _check(model: nn.Module, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if what not in _WHATS:
        raise ValueError(f"what must be 'parameter' or 'module'; got {what!r}")


def select(model: nn.Module, pattern: str, what: str = "parameter") -> list[str]:
    """The names ``pattern`` selects in ``model``, in ``named_parameters()``/``named_modules()`` order.

    ``what`` is ``"parameter"`` (names as in ``model.named_parameters()``) or ``"module"`` (as in
    ``model.named_modules()``; ``""`` is ``model``). ``pattern`` is a name glob or a type selector
    (see ``reglab.selectors``). The names are exactly the ones ``regularize``/``constrain`` attach
    to for that pattern; where nothing matches this returns ``[]`` (attaching raises).

    Examples, for ``nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
    nn.Linear(16, 1))``::

        select(model, "@kernels")               # ['0.weight', '4.weight']
        select(model, reglab.BIASES)            # ['0.bias', '4.bias']   (not '1.bias')
        select(model, "@BatchNorm*.*")          # ['1.weight', '1.bias']
        select(model, "@Conv*.weight")          # ['0.weight']
        select(model, "*.weight")               # ['0.weight', '1.weight', '4.weight']  (a glob)
        select(model, "@ReLU", what="module")   # ['2']
    """
    _check(model, what)
    if not isinstance(pattern, str):
        raise ValueError(f"{what} patterns must be strings; got {pattern!r}")
    if what == "module":
        named_modules = list(model.named_modules())
        if not is_selector(pattern):
            return [n for n, _ in named_modules if fnmatch.fnmatchcase(n, pattern)]
        pred = _parse(pattern, what)
        return [n for n, m in named_modules if pred(m)]
    named = list(model.named_parameters())
    if not is_selector(pattern):
        return [n for n, _ in named if fnmatch.fnmatchcase(n, pattern)]
    pred = _parse(pattern, what)
    canonical = {id(p): n for n, p in named}
    hit: set[str] = set()
    for _, mod in model.named_modules():
        for attr, p in mod.named_parameters(recurse=False):
            if pred(mod, attr):
                hit.add(canonical[id(p)])
    return [n for n, _ in named if n in hit]


def select_all(model: nn.Module, patterns: list[str], what: str = "parameter") -> set[str]:
    """The names any of ``patterns`` selects in ``model``; a ValueError where one selects nothing
    (naming it and, for a selector, the module types present)."""
    hit: set[str] = set()
    for pattern in patterns:
        names = select(model, pattern, what)
        if not names:
            types = f"; {describe_types(model, what)}" if is_selector(pattern) else ""
            raise ValueError(f"{what} pattern {pattern!r} selects no {what} of the model{types}")
        hit.update(names)
    return hit


def describe_types(model: nn.Module, what: str) -> str:
    """The module types of ``model`` for error messages: ``"Conv2d(weight, bias), LayerNorm(weight, bias)"``
    (types owning parameters, with their parameters' names) or ``"Sequential, Conv2d, ReLU"`` (modules)."""
    seen: dict[str, list[str]] = {}
    for _, mod in model.named_modules():
        attrs = seen.setdefault(type(mod).__name__, [])
        attrs.extend(a for a, _ in mod.named_parameters(recurse=False) if a not in attrs)
    if what == "module":
        return "the module types are: " + ", ".join(seen)
    owning = [f"{t}({', '.join(a)})" for t, a in seen.items() if a]
    return "the module types owning parameters are: " + (", ".join(owning) if owning else "none")
