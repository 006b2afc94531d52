"""The run store: where a unit's files lie under ``OUT/runs/<experiment>/``, when a run counts
as finished (its JSON and every file it lists intact: ``verified``), the finished runs of the
files as last run (``load_runs``) and a run's trained model rebuilt from its experiment file
(``load_model``). A unit is one experiment grid point x one seed; its ``run_id`` hashes the
experiment's digest, the seed and the reglab version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from .build import builder, splits_of
from .code import file_sha256
from .current import split_current
from .schema import ExperimentSpec

__all__ = ["Unit", "verified", "load_runs", "load_model"]


@dataclass(frozen=True)
class Unit:
    spec: ExperimentSpec
    seed: int

    @property
    def run_id(self) -> str:
        key = json.dumps({"experiment": self.spec.digest(), "seed": self.seed, "version": __version__}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def path(self, out: Path) -> Path:
        return Path(out) / "runs" / self.spec.name / f"{self.run_id}.json"

    def done(self, out: Path) -> bool:
        return verified(self.path(out)) is not None

    def clear_partial(self, out: Path) -> None:
        """Remove the temporary files a killed writer of this unit left (``atomic_write``'s names);
        called with the unit's group lock held, so no live writer owns them."""
        p = self.path(out)
        for suffix in (".json", ".pt", ".npz"):
            for t in p.parent.glob(f".{p.stem}{suffix}.*.tmp"):
                t.unlink(missing_ok=True)


def verified(p: Path) -> dict | None:
    """The run's JSON if it and every file it lists are intact and finished; else ``None``."""
    try:
        row = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(row, dict) or not isinstance(row.get("metrics"), dict) or row.get("interrupted"):
        return None
    files = row.get("files", {})
    if not isinstance(files, dict):
        return None
    for suffix, digest in files.items():
        if suffix not in (".pt", ".npz"):
            return None  # never follow a name read from a results file
        f = p.with_suffix(suffix)
        try:
            if file_sha256(f) != digest:
                return None
        except OSError:
            return None
    return row


def load_runs(out: str | Path, left_out: list[dict] | None = None) -> list[dict]:
    """Every finished, verified run under ``out/runs`` of the experiment files as last run there
    (``current.py``), as a dict (anything else is skipped). The runs of earlier versions are
    appended to ``left_out`` where one is given."""
    rows = []
    root = Path(out).resolve() / "runs"
    for p in sorted(root.glob("*/*.json")):
        if not p.is_file() or p.resolve().parent.parent != root:
            continue
        row = verified(p)
        if row is None or not isinstance(row.get("experiment"), str) or row["experiment"] != p.parent.name:
            continue
        row["_path"] = str(p)
        rows.append(row)
    current, earlier = split_current(out, rows)
    if left_out is not None:
        left_out.extend(earlier)
    return current


def load_model(run: dict, experiment_file: str | Path) -> torch.nn.Module:
    """Rebuild the trained model of a finished run (a row of ``load_runs``) from the experiment
    file it came from -- given by the caller; no code or path named by a results file is used
    -- and its ``.pt`` weights, loaded with ``weights_only=True``."""
    from .schema import load_experiment

    specs = load_experiment(experiment_file)
    cands = {s.digest(): s for s in specs} | {s.baseline().digest(): s.baseline() for s in specs}
    spec = cands.get(run.get("digest"))
    if spec is None:
        raise ValueError(f"{experiment_file}: none of its grid points (or their baselines) produced run "
                         f"{run.get('run_id')!r}; the file, its builder or its data changed since")
    sp = splits_of(spec, int(run["seed"]))
    out = builder(spec, sp.input_shape, sp.n_outputs)()
    model = out[0] if isinstance(out, tuple) else out
    path = Unit(spec, int(run["seed"])).path(Path(run["_path"]).parents[2]).with_suffix(".pt")
    model.load_state_dict(torch.load(path, weights_only=True))
    return model
