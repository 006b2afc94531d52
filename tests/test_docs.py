"""The documentation runs as written: README.md and every docs/*.md.

Conventions for fenced code blocks (the info string is the text after the opening fence):

* ``python`` blocks run in document order, one namespace per Markdown file, each file in a fresh
  temporary working directory (files a block writes land there). README.md runs as written, from
  an empty namespace; a page in docs/ may take ``PRELUDE``'s imports (numpy as np, torch, nn,
  reglab) as given, as its snippets do.
* ``python keras`` marks Keras code shown for comparison, and ``python fragment`` reglab code
  that relies on names the page does not define: both are compiled (a syntax check), not run.
* a block of any language whose first line is ``# file: NAME`` is the content of the file NAME:
  it is written into the working directory when the walk reaches it (the marker line is dropped
  unless it is a comment in the block's language, python or toml), and not run.
* every ``toml`` block must parse with ``tomllib``. One whose first line is ``# experiment file``
  (or ``# experiment file: NAME.toml``, to write it under that name for later blocks) is a
  complete experiment file: written into the working directory and validated as ``reglab run``
  validates it -- ``schema.expand`` and then ``runner.prepare`` (data, builder, ``[regularize]``
  patterns, output shape) for every grid point and its unregularized baseline. One whose first
  line is ``# study file`` is written as ``study.toml`` there and loaded with its experiments.
* other languages (``bash``, ``text``, ...) are not run.

The pages show real schedules (the lecture's 200 epochs); to keep this file fast, ``reglab.fit``
and ``reglab.fit_many`` called from a docs block train at most ``EPOCH_CAP`` epochs. Everything
else -- the calls, their arguments, what they return and what the blocks do with it -- runs as
written.

Blocks are taken in document order, so a file block or a python block that writes a data file
comes before the experiment that needs it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_TAGS = {"keras", "fragment"}
EPOCH_CAP = 3
#: the imports a page in docs/ may assume (README.md gets none)
PRELUDE = "import numpy as np\nimport torch\nfrom torch import nn\nimport reglab\n"
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.S | re.M)


@dataclass
class Block:
    lang: str
    tags: list[str]
    text: str
    line: int

    @property
    def first(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    def where(self, doc: Path) -> str:
        return f"{doc.relative_to(ROOT)}:{self.line} ({self.lang or 'no language'} block)"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        info = m.group("info").split()
        out.append(Block(info[0].lower() if info else "", [t.lower() for t in info[1:]], m.group("body"),
                         text.count("\n", 0, m.start()) + 2))
    return out


def _file_name(block: Block) -> str | None:
    m = re.fullmatch(r"#\s*file:\s*(\S+)", block.first)
    return m.group(1) if m else None


def _write(cwd: Path, name: str, text: str) -> Path:
    p = (cwd / name).resolve()
    assert cwd.resolve() in p.parents, f"{name}: a docs file must stay inside the working directory"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def _check_experiment(path: Path, raw: dict, where: str) -> None:
    from reglab.experiments.runner import prepare
    from reglab.experiments.schema import expand

    specs = expand(raw, str(path))
    assert specs, where
    prepare(specs + [s.baseline() for s in specs])


def _check_study(cwd: Path, where: str) -> None:
    from reglab.experiments.schema import load_experiments
    from reglab.experiments.study import load_study

    st = load_study(cwd)
    specs = load_experiments(st.files)
    names = {s.name for s in specs}
    for p in st.paths:
        assert p["experiment"] in names, f"{where}: [[path]] names {p['experiment']!r}, not one of {sorted(names)}"


def _capped(train):
    def capped(*args, **kwargs):
        kwargs["epochs"] = min(int(kwargs.get("epochs", 1)), EPOCH_CAP)
        return train(*args, **kwargs)

    return capped


def run_doc(doc: Path, cwd: Path) -> tuple[dict, dict[str, int]]:
    """Run/validate every block of ``doc``; return the Python namespace and how many blocks of each
    kind were executed (``python``), only compiled (``skipped``), validated as experiment or study
    files (``experiment``, ``study``) or only parsed (``toml``)."""
    namespace: dict = {"__name__": f"docs_{doc.stem.replace('-', '_')}"}
    counts = {"python": 0, "skipped": 0, "experiment": 0, "study": 0, "toml": 0}
    if doc.parent.name == "docs":
        exec(PRELUDE, namespace)
    n_experiments = 0
    for b in blocks(doc):
        where = b.where(doc)
        name = _file_name(b)
        if name is not None:
            keep = b.lang in ("python", "py", "toml")
            _write(cwd, name, b.text if keep else b.text.split("\n", 1)[1])
            if b.lang == "toml":
                tomllib.loads(b.text)
            continue
        if b.lang in ("python", "py"):
            if SKIP_TAGS & set(b.tags):
                compile(b.text, where, "exec")
                counts["skipped"] += 1
                continue
            counts["python"] += 1
            try:
                exec(compile(b.text, where, "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{where} failed: {type(e).__name__}: {e}") from e
        elif b.lang == "toml":
            try:
                raw = tomllib.loads(b.text)
            except tomllib.TOMLDecodeError as e:
                raise AssertionError(f"{where}: not valid TOML: {e}") from None
            m = re.fullmatch(r"#\s*experiment file(?::\s*(\S+\.toml))?", b.first)
            if m:
                n_experiments += 1
                counts["experiment"] += 1
                path = _write(cwd, m.group(1) or f"example_{n_experiments}.toml", b.text)
                try:
                    _check_experiment(path, raw, where)
                except Exception as e:
                    raise AssertionError(f"{where}: the experiment file does not validate: {e}") from e
            elif b.first == "# study file":
                counts["study"] += 1
                _write(cwd, "study.toml", b.text)
                try:
                    _check_study(cwd, where)
                except Exception as e:
                    raise AssertionError(f"{where}: the study file does not validate: {e}") from e
            else:
                counts["toml"] += 1
    return namespace, counts


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_doc_runs(doc, tmp_path, monkeypatch):
    import reglab

    for name in ("fit", "fit_many"):
        monkeypatch.setattr(reglab, name, _capped(getattr(reglab, name)))
    monkeypatch.chdir(tmp_path)
    namespace, counts = run_doc(doc, tmp_path)
    code = [b for b in blocks(doc) if b.lang in ("python", "py") and _file_name(b) is None]
    assert counts["python"] + counts["skipped"] == len(code) and counts["python"] > 0, counts
    if doc.name == "README.md":  # what the README's example promises, for real
        import numpy as np

        h = namespace["history"]
        assert len(h["loss"]) == 3 and np.isfinite(h["loss"]).all() and h["loss"][-1] < h["loss"][0]
        assert {"penalty/0.weight", "penalty/2.weight", "penalty/1:activity"} <= set(h.history)
        assert len(namespace["many"].models) == 40 and not namespace["many"].failed
        assert 0.5 < namespace["clf"].score(namespace["x_test"], namespace["y_test"].ravel()) <= 1
    if doc.name == "experiment-files.md":
        assert counts["experiment"] >= 5 and counts["study"] >= 1, counts


def test_every_doc_has_checked_blocks():
    """The walker finds the blocks (a changed fence style would silently check nothing)."""
    for doc in DOCS:
        bs = blocks(doc)
        assert any(b.lang in ("python", "toml") for b in bs), f"{doc}: no python or toml block found"
    guide = ROOT / "docs" / "experiment-files.md"
    if guide.is_file():
        firsts = [b.first for b in blocks(guide) if b.lang == "toml"]
        assert sum(f.startswith("# experiment file") for f in firsts) >= 5
        assert "# study file" in firsts
