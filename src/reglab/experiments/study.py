"""A study: a folder with ``study.toml``, its experiment files and any code of its own.

``study.toml``::

    title = "..."                      # the report's title
    intro = "..."                      # its first paragraph (Markdown: **bold**, `code`); "{seeds}"
                                       # stands for the seeds each row of the report ran
    experiments = "experiments"        # a folder of experiment files, or a list of files (relative)
    seeds = 20                         # seeds per experiment (default: each file's own)

    [[path]]                           # a regularization path of one experiment (optional)
    experiment = "l2_all"
    strengths = [0, 1e-4, 1e-3, 1e-2]
    seeds = 10

    [[analysis]]                       # the study's own analysis: function(out, **args) -> dict
    name = "autoencoder"
    function = "autoencoder.py:run"
    args = {epochs = 60}

    [margins]                          # the smallest effect worth having, per metric (optional;
    test_log_loss = 0.01               # defaults in reglab.report.comparisons)

    [statistics]                       # the interval method of comparisons.csv (optional):
    method = "bootstrap"               # "t" (default) or "bootstrap" for every family, or per
                                       # metric: {test_mse = "bootstrap"} (the rest "t")

    [[section]]                        # a section of the report: function(results, runs, out) -> list
    title = "The claims, checked"
    function = "claims.py:claims"

An analysis returns ``{"title", "description", "table": {"header", "rows"}, "verdict",
"figures": [paths relative to out]}``, written to ``out/analyses/<name>.json`` and rendered by the
report (figures only from inside ``out``). A section function returns paragraphs; a paragraph
that is a list of strings is a bulleted list. Code is named as in experiment files
(``"file.py:function"`` relative to the study folder, or ``"package.module:function"``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import devices
from .code import NO_SIGNATURE, UserCodeError, call_problem, call_user, resolve
from .files import own_folder, write_json
from .schema import ConfigError, ExperimentSpec, LIMITS, load_experiments, read_toml
from .sections import MAX_STRENGTH

__all__ = ["Study", "load_study", "experiment_files", "load_specs", "run_analysis"]

STUDY_KEYS = {"title", "intro", "experiments", "seeds", "path", "analysis", "section", "margins", "statistics", "train"}


@dataclass
class Study:
    folder: Path
    title: str
    intro: str
    files: list[str]
    seeds: int | None
    paths: list[dict[str, Any]] = field(default_factory=list)
    analyses: list[tuple[str, str, dict]] = field(default_factory=list)  # (name, function reference, args)
    sections: list[tuple[str, Callable[..., list], str]] = field(default_factory=list)  # (title, function, where)
    margins: dict[str, float] = field(default_factory=dict)  # metric -> smallest effect worth having
    methods: str | dict[str, str] = "t"  # comparisons.csv's interval method: for all families, or per metric
    device: str | None = None  # [train] device: its experiments' where a file does not say (``devices``)


def _sources(paths: tuple[str, ...] | list[str]) -> list[tuple[str, Study | None]]:
    """``(experiment file, the study folder it came from or None)`` for files and folders (a
    folder's ``*.toml``; a study folder's ``study.toml`` says which), each study read once."""
    out: list[tuple[str, Study | None]] = []
    for p in paths:
        if os.path.isdir(p):
            if os.path.isfile(os.path.join(p, "study.toml")):
                st = load_study(p)
                out.extend((f, st) for f in st.files)
            else:
                out.extend((f, None) for f in sorted(glob.glob(os.path.join(p, "*.toml"))))
        else:
            out.append((p, None))
    return out


def experiment_files(paths: tuple[str, ...] | list[str]) -> list[str]:
    """Experiment files from files and folders (a folder's ``*.toml``; a study folder's
    ``study.toml`` says which)."""
    return [f for f, _ in _sources(paths)]


def load_specs(paths: tuple[str, ...] | list[str]) -> list[ExperimentSpec]:
    """The experiments of ``paths`` (``experiment_files``), validated, with the ``seeds`` of the
    study folders among them, where their ``study.toml`` sets it, in place of each file's own
    (``seeds`` is no part of a run's identity; ``--seeds`` still overrides both), and the
    study's ``[train] device`` where a file sets none (``--device`` overrides both). A
    ``ConfigError`` for a bad file; an empty list where ``paths`` hold none."""
    sources = _sources(paths)
    study_of = {os.path.realpath(f): st for f, st in sources if st is not None}
    specs = load_experiments([f for f, _ in sources])
    return [_with_study(s, study_of.get(os.path.realpath(s.path))) for s in specs]


def _with_study(spec: ExperimentSpec, st: Study | None) -> ExperimentSpec:
    if st is None:
        return spec
    if st.seeds is not None:
        spec = spec.with_seeds(st.seeds)
    if st.device is not None and spec.train.device is None:
        spec = spec.with_train(device=st.device)
    return spec


def _device(raw: dict[str, Any], file: Path) -> str | None:
    """study.toml's ``[train] device`` (its only key there), checked (``devices.check``)."""
    train = raw.get("train", {})
    if not isinstance(train, dict) or set(train) - {"device"}:
        raise ConfigError(f"{file}: train: a study's [train] table holds only device (the rest is each "
                          f"experiment's); got {train!r}")
    try:
        return devices.check(train["device"], f"{file}: train.device") if "device" in train else None
    except devices.DeviceError as e:
        raise ConfigError(str(e)) from None


def load_study(folder: str | Path) -> Study:
    folder = Path(folder)
    file = folder / "study.toml"
    raw = read_toml(file)
    bad = set(raw) - STUDY_KEYS
    if bad:
        raise ConfigError(f"{file}: unknown key(s) {sorted(bad)}; expected some of {sorted(STUDY_KEYS)}")
    for k in ("title", "intro"):
        if k in raw and not isinstance(raw[k], str):
            raise ConfigError(f"{file}: {k}: expected a string; got {raw[k]!r}")
    files = _experiment_files(raw, folder, file)
    seeds = raw.get("seeds")
    if seeds is not None and not (isinstance(seeds, int) and not isinstance(seeds, bool) and
                                  1 <= seeds <= LIMITS["seeds"]):
        raise ConfigError(f"{file}: seeds: expected an integer from 1 to {LIMITS['seeds']}; got {seeds!r}")
    study = Study(folder, raw.get("title", folder.name), raw.get("intro", ""), files, seeds, device=_device(raw, file))
    study.margins, study.methods = _margins_and_methods(raw, file)
    study.paths = _paths(raw, file)
    _plugins(raw, folder, file, study)
    return study


def _experiment_files(raw: dict, folder: Path, file: Path) -> list[str]:
    """The study's experiment files (a folder's ``*.toml`` or a list)."""
    exps = raw.get("experiments", "experiments")
    if isinstance(exps, str):
        d = folder / exps
        if not d.is_dir():
            raise ConfigError(f"{file}: experiments: no folder {str(d)!r}")
        files = sorted(glob.glob(str(d / "*.toml")))
    elif isinstance(exps, list) and all(isinstance(e, str) for e in exps):
        files = [str(folder / e) for e in exps]
    else:
        raise ConfigError(f"{file}: experiments: expected a folder or a list of files; got {exps!r}")
    if not files:
        raise ConfigError(f"{file}: experiments: no experiment files found")
    return files


def _margins_and_methods(raw: dict, file: Path) -> tuple[dict[str, float], Any]:
    """The equivalence margins by metric and the statistics method(s), checked."""
    from ..report.summary import compared_metrics

    compared = sorted({m for t in ("binary", "regression") for k in (True, False) for m in compared_metrics(t, k)})
    margins = raw.get("margins", {})
    if not isinstance(margins, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and v == v and
            v != float("inf") for k, v in margins.items()):
        raise ConfigError(f"{file}: margins: expected {{<metric column> = <non-negative number>}}, e.g. "
                          f"{{test_log_loss = 0.01}}; got {margins!r}")
    for k in margins:
        if k not in compared:
            raise ConfigError(f"{file}: margins: {k!r} is no compared metric; the compared ones: {', '.join(compared)}")
    st = raw.get("statistics", {})
    method = st.get("method", "t") if isinstance(st, dict) else None
    ok = isinstance(st, dict) and not set(st) - {"method"} and (
        method in ("t", "bootstrap") or isinstance(method, dict) and all(
            isinstance(k, str) and v in ("t", "bootstrap") for k, v in method.items()))
    if not ok:
        raise ConfigError(f"{file}: statistics: expected method = \"t\" or \"bootstrap\", or method = "
                          f"{{<metric column> = \"t\" | \"bootstrap\"}}; got {st!r}")
    for k in method if isinstance(method, dict) else ():
        if k not in compared and k != "default":
            raise ConfigError(f"{file}: statistics: method: {k!r} is no compared metric; the compared ones: "
                              f"{', '.join(compared)} (or default)")
    return {k: float(v) for k, v in margins.items()}, method


def _tables(raw: dict, key: str, file: Path) -> list:
    """``[[key]]``: an array of tables, checked to be a list (each table is checked by its reader)."""
    items = raw.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(f"{file}: {key}: expected [[{key}]] tables; got {items!r}")
    return items


def _paths(raw: dict, file: Path) -> list[dict[str, Any]]:
    """The study's regularization paths ``[{experiment, strengths, seeds}]``, checked."""
    paths: list[dict[str, Any]] = []
    for i, p in enumerate(_tables(raw, "path", file)):
        where = f"path[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("experiment"), str) or set(p) - {"experiment", "strengths",
                                                                                          "seeds"}:
            raise ConfigError(f"{file}: {where}: expected {{experiment = \"name\", strengths = [...], seeds = N}}; "
                              f"got {p!r}")
        st = p.get("strengths", [0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
        if not isinstance(st, list) or not st or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s < MAX_STRENGTH for s in st):
            raise ConfigError(f"{file}: {where}.strengths: expected non-negative numbers below {MAX_STRENGTH:g}; "
                              f"got {st!r}")
        if len(set(st)) != len(st):
            raise ConfigError(f"{file}: {where}.strengths: each strength once; got {st!r}")
        n = p.get("seeds", 10)
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= LIMITS["seeds"]):
            raise ConfigError(f"{file}: {where}.seeds: expected an integer from 1 to {LIMITS['seeds']}; got {n!r}")
        if any(q["experiment"] == p["experiment"] for q in paths):
            raise ConfigError(f"{file}: {where}: a second path of {p['experiment']!r}")
        paths.append({"experiment": p["experiment"], "strengths": [float(s) for s in st], "seeds": n})
    return paths


def _plugins(raw: dict, folder: Path, file: Path, study: Study) -> None:
    """The study's analyses and report sections (their functions resolved now), into ``study``."""
    for key, target in (("analysis", study.analyses), ("section", study.sections)):
        for i, a in enumerate(_tables(raw, key, file)):
            where = f"{key}[{i}]"
            label = "name" if key == "analysis" else "title"
            if not isinstance(a, dict) or not isinstance(a.get(label), str) or "function" not in a:
                raise ConfigError(f"{file}: {where}: expected a table with {label} and function")
            if key == "analysis" and not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", a["name"]):
                raise ConfigError(f"{file}: {where}.name: expected letters, digits, _ and -; got {a['name']!r}")
            extra = set(a) - {label, "function", *(("args",) if key == "analysis" else ())}
            if extra:
                raise ConfigError(f"{file}: {where}: unknown key(s) {sorted(extra)}; expected {label}, function" +
                                  (" and args" if key == "analysis" else ""))
            if key == "analysis" and not isinstance(a.get("args", {}), dict):
                raise ConfigError(f"{file}: {where}.args: expected a table of keyword arguments, e.g. "
                                  f"args = {{epochs = 60}}; got {a['args']!r}")
            if any(t[0] == a[label] for t in target):
                raise ConfigError(f"{file}: {where}.{label}: a second {key} named {a[label]!r}")
            try:
                fn, _, _ = resolve(a["function"], folder, f"{file}: {where}.function")
            except ValueError as e:
                raise ConfigError(str(e)) from None
            _check_callable(fn, f"{file}: {where}.function: {a['function']}",
                            ("out",) if key == "analysis" else ("results", "runs", "out"),
                            a.get("args", {}) if key == "analysis" else {})
            if key == "analysis":
                target.append((a["name"], a["function"], dict(a.get("args", {}))))
            else:
                target.append((a["title"], fn, f"{file}: {where}.function: {a['function']}"))


def _check_callable(fn: Callable[..., Any], where: str, positional: tuple[str, ...], args: dict) -> None:
    """That ``fn(*positional, **args)`` is a call ``fn`` accepts (before anything trains)."""
    problem = call_problem(fn, *positional, **args)
    if problem == NO_SIGNATURE:
        raise ConfigError(f"{where}: {NO_SIGNATURE}; name a Python function")
    if problem:
        call = f"function({', '.join(positional)}{', **args' if args else ''})"
        raise ConfigError(f"{where}: cannot be called as {call}" + (f" with args {sorted(args)}" if args else "") +
                          f": {problem}")


def analysis_key(ref: str, folder: str | Path, args: dict) -> str:
    """What an analysis's results depend on: its function, the hash of its source and its args
    (a study reuses a written analysis only when its key matches)."""
    import hashlib
    import json

    _, _, digest = resolve(ref, folder, f"{folder}/study.toml")
    return hashlib.sha256(json.dumps([ref, digest, args], sort_keys=True).encode()).hexdigest()[:16]


def reusable(path: Path, key: str) -> bool:
    """A written path/analysis document whose key matches."""
    import json

    try:
        return json.loads(path.read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def run_analysis(name: str, ref: str, folder: str | Path, args: dict, out: str | Path) -> dict:
    """Run one analysis of a study (``ref`` resolved against the study ``folder``, also in a
    worker process) and write its document to ``out/analyses/<name>.json``.

    An analysis that raises, exits or returns what is not an analysis document fails on its own:
    its document then says so (``"failed"``: file, key, what and the line) and has no key, so the
    report shows the failure, the rest of the study goes on, and the next run tries it again. A
    Ctrl-C passes through (nothing is written)."""
    out = Path(out)
    where = f"{Path(folder) / 'study.toml'}: analysis {name!r}: {ref}"
    own_folder(out, "figures")
    try:
        fn, _, _ = resolve(ref, folder, where)
        doc = call_user(fn, where, out, **args)
        problem = analysis_problem(doc)
        if problem:
            raise UserCodeError(f"{where}: {problem}")
        doc = {**doc, "key": analysis_key(ref, folder, args)}
    except ValueError as e:  # UserCodeError included
        doc = {"title": f"Analysis {name!r}", "failed": str(e)}
    write_json(own_folder(out, "analyses") / f"{name}.json", doc, durable=True)
    return doc


def analysis_problem(doc: Any) -> str | None:
    """What is wrong with an analysis's return value, or None: a dict with a string ``title``;
    ``description`` and ``verdict`` strings; ``table`` ``{"header": [...], "rows": [[...], ...]}``;
    ``figures`` a list of paths (strings); all of it JSON."""
    import json

    if not isinstance(doc, dict):
        return f"it must return a dict (title, description, table, verdict, figures); it returned {type(doc).__name__}"
    if not isinstance(doc.get("title"), str):
        return f"its dict needs a string title; got {doc.get('title')!r}"
    for k in ("description", "verdict"):
        if k in doc and not isinstance(doc[k], str):
            return f"{k} must be a string; got {type(doc[k]).__name__}"
    t = doc.get("table")
    if t is not None and not (isinstance(t, dict) and isinstance(t.get("header"), list) and
                              isinstance(t.get("rows"), list) and all(isinstance(r, list) for r in t["rows"])):
        return "table must be {\"header\": [...], \"rows\": [[...], ...]}"
    f = doc.get("figures", [])
    if not isinstance(f, list) or not all(isinstance(p, str) for p in f):
        return f"figures must be a list of paths relative to the output folder; got {f!r}"
    try:
        json.dumps(doc, allow_nan=True)
    except (TypeError, ValueError) as e:
        return f"its dict must hold JSON values only: {e}"
    return None
