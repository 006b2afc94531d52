"""A validated experiment (``ExperimentSpec``, made by ``schema.validate``) and its typed sections:
what the rest of reglab reads of an experiment file. The raw ``config`` dictionary is the
schema's; ``digest`` (a run's identity) hashes it, so the typed views change no run's identity.

A section's view is made from the validated config when asked for (a few reads), so a spec
stays one plain JSON-able dictionary that crosses process boundaries as it is."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import devices as _devices
from .. import losses as _losses
from .. import optimizers as _optimizers
from .. import regularizers as _regularizers

__all__ = ["ExperimentSpec", "Data", "Split", "Model", "Train", "Loss", "Regularize", "Analysis", "PRESENTATION",
           "BASELINE_PREFIX", "DEFAULT_LOSS", "with_strength"]

#: keys that say how an experiment is shown, not what it trains: no part of a run's identity
PRESENTATION = ("seeds", "title", "description", "reference")
BASELINE_PREFIX = "baseline."  # "." cannot appear in an experiment's name: no name can enter this namespace
#: the loss an experiment trains with when ``train.loss`` is absent
DEFAULT_LOSS = {"binary": "binary_crossentropy", "multiclass": "sparse_categorical_crossentropy",
                "regression": "mean_squared_error"}


@dataclass(frozen=True)
class Data:
    """``[data]``: where the examples come from (``data.load_splits`` reads the table)."""
    table: Mapping[str, Any]

    @property
    def source(self) -> str:
        """A set's name, a file, a loader, or ``"files"`` (split files)."""
        t = self.table
        return t.get("name") or t.get("file") or t.get("loader") or "files"

    @property
    def transform(self) -> str | None:
        return self.table.get("transform")


@dataclass(frozen=True)
class Split:
    """``[split]``: validation and test fractions (``data.load_splits`` reads the table)."""
    table: Mapping[str, Any]

    @property
    def resample(self) -> bool:
        """Whether each seed draws its own split (else seed 0's serves every seed)."""
        return bool(self.table.get("resample", True))


@dataclass(frozen=True)
class Model:
    """``[model]``: Keras-style ``layers`` (the MLP shorthand) or a ``builder`` with ``args``."""
    layers: list[dict[str, Any]] | None
    builder: str | None
    args: dict[str, Any]

    @property
    def described(self) -> str:
        return ("MLP " + "-".join(str(layer["units"]) for layer in self.layers) if self.layers is not None
                else f"builder {self.builder}")


@dataclass(frozen=True)
class Loss:
    """``[train] loss``: what it means, worked out here only. ``written`` is the value in the file
    -- None (the task's default, ``DEFAULT_LOSS``), a Keras name, ``{name, from_logits}``, or
    ``{name = "regularized", data_loss, codes, strength}`` (a ``RegularizedLoss`` bound to the
    model, which the builder returns with it)."""
    written: Any

    @property
    def regularized(self) -> bool:
        return isinstance(self.written, Mapping) and self.written.get("name") == "regularized"

    def config(self, task: str) -> Any:
        """The loss as written, or the task's default."""
        return DEFAULT_LOSS[task] if self.written is None else self.written

    def name(self, task: str) -> str:
        """The Keras name, or ``"regularized"``."""
        lo = self.config(task)
        return lo["name"] if isinstance(lo, Mapping) else lo

    def from_logits(self, task: str) -> bool:
        lo = self.config(task)
        return bool(lo.get("from_logits", False)) if isinstance(lo, Mapping) else False

    def for_fit(self, task: str) -> Any:
        """What ``fit_many(loss=...)`` takes (None where the builder returns the loss)."""
        lo = self.config(task)
        if not isinstance(lo, Mapping):
            return lo
        if self.regularized:
            return None
        return type(_losses.get(lo["name"]))(from_logits=bool(lo.get("from_logits", False)))

    @property
    def data_loss(self) -> Any:
        """What a regularized loss measures the data with (as written)."""
        return self.written.get("data_loss", "binary_crossentropy")

    @property
    def regression(self) -> str | None:
        """The loss's name where the file names a regression loss (mean squared or absolute
        error; of a regularized loss, its data loss), else None: integer targets are then a
        regression."""
        lo = self.written
        if isinstance(lo, Mapping):
            lo = self.data_loss if self.regularized else lo.get("name")
        if not isinstance(lo, str):
            return None
        loss = _losses.get(lo)
        return loss.name if isinstance(loss, (_losses.MeanSquaredError, _losses.MeanAbsoluteError)) else None


@dataclass(frozen=True)
class Train:
    """``[train]``: the loss (``Loss``), the optimizer's table, the schedule, early stopping's
    arguments (None: none) and the device (None: the CPU)."""
    loss: Loss
    optimizer: dict[str, Any]
    epochs: int
    batch_size: int
    early_stopping: dict[str, Any] | None
    device: str | None


@dataclass(frozen=True)
class Regularize:
    """``[regularize]``: penalties on parameters and activities, constraints (serialized; None
    where the file has no such table)."""
    params: Mapping[str, Any] | None
    activity: Mapping[str, Any] | None
    constraints: Mapping[str, Any] | None


@dataclass(frozen=True)
class Analysis:
    """``[analysis]``: the layers whose activations' sparsity is measured, weight histograms."""
    sparsity_layers: list[str]
    weight_histograms: bool


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment (one grid point of its sweep): plain JSON-able ``config``, the
    file it came from, and ``inputs`` -- the sha256 of every file that shapes its results
    (a builder's source, data files), part of its identity."""

    config: dict[str, Any]
    path: str
    inputs: dict[str, str] = field(default_factory=dict)

    # -- the typed sections (what the rest of reglab reads; the raw ``config`` is the schema's)
    @property
    def data(self) -> Data:
        return Data(self.config["data"])

    @property
    def split(self) -> Split:
        return Split(self.config["split"])

    @property
    def model(self) -> Model:
        m = self.config["model"]
        return Model(m.get("layers"), m.get("builder"), dict(m.get("args", {})))

    @property
    def train(self) -> Train:
        t = self.config["train"]
        return Train(Loss(t.get("loss")), dict(t["optimizer"]), t["epochs"], t["batch_size"], t.get("early_stopping") or None,
                     t.get("device"))

    @property
    def regularize(self) -> Regularize:
        r = self.config.get("regularize", {})
        return Regularize(r.get("params"), r.get("activity"), r.get("constraints"))

    @property
    def analysis(self) -> Analysis:
        a = self.config.get("analysis", {})
        return Analysis(list(a.get("sparsity_layers", [])), bool(a.get("weight_histograms", False)))

    def with_train(self, **changes: Any) -> ExperimentSpec:
        """The same experiment with ``[train]`` keys set, after the others (a value None removes
        the key)."""
        train = {k: v for k, v in self.config["train"].items() if k not in changes}
        train.update((k, v) for k, v in changes.items() if v is not None)
        return dataclasses.replace(self, config={**self.config, "train": train})

    def with_seeds(self, seeds: int) -> ExperimentSpec:
        return dataclasses.replace(self, config={**self.config, "seeds": seeds})

    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def base(self) -> Path:
        """The folder relative paths in the file are resolved against."""
        return Path(self.path).resolve().parent

    @property
    def title(self) -> str:
        return self.config.get("title", self.name)

    @property
    def seeds(self) -> int:
        return int(self.config.get("seeds", 20))

    @property
    def sweep_point(self) -> dict[str, Any]:
        """``{"regularize/params/*.weight/l2": value, ...}``: this grid point's sweep values."""
        return dict(self.config.get("sweep_point", {}))

    @property
    def is_baseline(self) -> bool:
        return bool(self.config.get("baseline_of"))

    def digest(self) -> str:
        """Hash of what produces the results: the validated config (not the file's formatting or
        presentation keys) and the hashes of its input files."""
        cfg = {k: v for k, v in self.config.items() if k not in PRESENTATION + ("baseline_of", "name")}
        if "device" in cfg.get("train", {}):  # a GPU run is another run than a CPU run; which GPU, not
            cfg["train"] = {k: v for k, v in cfg["train"].items() if k != "device"}
            if _devices.kind(self.config["train"]["device"]) != "cpu":
                cfg["device"] = "cuda"
        validation = self.config.get("split", {}).get("validation", 0.2)
        if not isinstance(validation, str) and "files" not in self.config["data"]:
            # a validation fraction of one pool is ceil(fraction x all examples) since reglab 0.1.0's
            # second split rule (before: fraction / (1 - test) of the rest, one more at times): new ids
            cfg["split_rule"] = 2
        if (self.config.get("train", {}).get("early_stopping") or {}).get("min_delta"):
            # early stopping's min_delta has Keras's sign since reglab 0.1.0's engine seam (before,
            # a fall smaller than min_delta counted as an improvement): new ids for such runs
            cfg["min_delta_rule"] = 2
        blob = json.dumps({"config": cfg, "inputs": self.inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def strength_free_core(self) -> tuple[dict[str, Any], Any]:
        """What this experiment trains with every regularizer's numbers blanked (its strengths;
        presentation aside): two experiments with equal cores differ only in penalty strengths --
        the same regularizer kinds on the same parameters, the same constraints -- so their models
        train in one ``fit_many`` group (``reglab tune``'s batches)."""
        drop = set(PRESENTATION) | {"name", "sweep_point", "analysis"}
        reg = {"kernel_regularizer", "bias_regularizer", "activity_regularizer"}

        def blank(v: Any) -> Any:
            if isinstance(v, Mapping):
                return {k: blank(x) for k, x in v.items()}
            if isinstance(v, list):
                return [blank(x) for x in v]
            return None if isinstance(v, (int, float)) and not isinstance(v, bool) else v

        c = {k: v for k, v in self.config.items() if k not in drop}
        if "regularize" in c:
            c["regularize"] = {k: (blank(v) if k in ("params", "activity") else v) for k, v in c["regularize"].items()}
        layers = c.get("model", {}).get("layers")
        if layers is not None:
            c["model"] = {**c["model"], "layers": [{k: (blank(v) if k in reg else v) for k, v in lay.items()}
                                                   for lay in layers]}
        return c, self.inputs

    def trains_as_baseline(self) -> bool:
        """Whether this experiment trains exactly what its baseline trains (the same model, data,
        loss, optimizer and schedule: nothing the baseline rule removes -- a builder's own
        regularization is turned off only by ``[baseline] args``)."""
        drop = set(PRESENTATION) | {"name", "analysis", "sweep_point", "baseline", "baseline_of"}
        mine, its = ({k: v for k, v in c.items() if k not in drop} for c in (self.config, self.baseline().config))
        return mine == its

    def baseline(self) -> ExperimentSpec:
        """The unregularized counterpart: the same data (without ``data.transform``'s
        augmentation), split, model (without its regularizers, constraints and dropout; builder
        arguments overridden by ``[baseline] args``), data loss, optimizer with all its settings
        but weight decay, epochs and batch size; no early stopping."""
        c = copy.deepcopy(self.config)
        model = c["model"]
        if "layers" in model:
            model["layers"] = [{k: v for k, v in layer.items() if k in ("units", "activation", "use_bias",
                                                                         "kernel_initializer", "bias_initializer")}
                               for layer in model["layers"]]
        else:
            model["args"] = {**model.get("args", {}), **c.get("baseline", {}).get("args", {})}
        for k in ("regularize", "baseline", "sweep_point", "analysis"):  # analyses are the experiment's
            c.pop(k, None)
        c["data"] = {k: v for k, v in c["data"].items() if k != "transform"}  # augmentation is regularization
        tr = c["train"]
        tr.pop("early_stopping", None)
        if isinstance(tr.get("loss"), Mapping) and tr["loss"].get("name") == "regularized":
            tr["loss"] = tr["loss"].get("data_loss", "binary_crossentropy")
        opt = dict(tr["optimizer"])
        opt.pop("weight_decay", None)
        opt.pop(_optimizers.DECAY, None)  # what the decay applies to goes with it
        if opt["name"] == "adamw":
            opt["name"] = "adam"  # AdamW without its decay is Adam
        tr["optimizer"] = opt
        for k in PRESENTATION:
            c.pop(k, None)
        c["seeds"] = self.seeds
        c["name"] = "baseline"
        c["baseline_of"] = True
        b = ExperimentSpec(c, self.path, {k: v for k, v in self.inputs.items() if k != "data.transform"})
        c["name"] = BASELINE_PREFIX + b.digest()[:10]
        c["title"] = f"Unregularized baseline ({_schedule_words(tr)})"
        return b


def _schedule_words(tr: Mapping[str, Any]) -> str:
    opt = tr["optimizer"]
    extra = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in opt.items()
                      if k not in ("name", "learning_rate"))
    loss = tr.get("loss")
    loss = loss if isinstance(loss, str) else (loss or {}).get("name", "default loss")
    return (f"{opt['name']} lr {opt.get('learning_rate', 0.001):g}{', ' + extra if extra else ''}, "
            f"{tr['epochs']} epochs, batch {tr['batch_size']}, {loss}")


def _set_strength(ser: dict, lam: float) -> dict:
    reg = _regularizers.deserialize(ser)
    hp = {k: lam for k, v in reg.hparams().items() if v}
    return _regularizers.serialize(reg.with_hparams(**hp)) if hp else ser


def with_strength(spec: ExperimentSpec, lam: float) -> ExperimentSpec:
    """The experiment with every non-zero regularization strength replaced by ``lam``."""
    cfg = copy.deepcopy(spec.config)
    n = 0
    for layer in cfg["model"].get("layers", []):
        for k in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            if k in layer:
                layer[k] = _set_strength(layer[k], lam)
                n += 1
    for key in ("params", "activity"):
        for pattern, ser in cfg.get("regularize", {}).get(key, {}).items():
            cfg["regularize"][key][pattern] = _set_strength(ser, lam)
            n += 1
    loss = cfg["train"].get("loss")
    if isinstance(loss, dict) and loss.get("name") == "regularized":
        loss["strength"] = lam
        n += 1
    if n == 0:
        raise ValueError(f"experiment {spec.name!r} has no regularizer whose strength a path could vary")
    cfg["name"] = f"{spec.name}_path"
    return ExperimentSpec(cfg, spec.path, dict(spec.inputs))
