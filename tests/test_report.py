"""The report of a study: the lecture's at small size, generic sections from its contents and
the study's own sections from its folder."""

import copy
import html as _html
import re
from pathlib import Path

import pytest

from reglab.experiments.path import regularization_path
from reglab.experiments.runner import execute, plan_units
from reglab.experiments.schema import ExperimentSpec, load_experiments
from reglab.experiments.study import load_study, run_analysis
from reglab.report.render import write_report

ROOT = Path(__file__).resolve().parents[1]
LECTURE = ROOT / "studies" / "lecture"


def short(spec: ExperimentSpec, epochs: int = 2) -> ExperimentSpec:
    cfg = copy.deepcopy(spec.config)
    cfg["train"]["epochs"] = epochs
    return ExperimentSpec(cfg, spec.path, spec.inputs)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    st = load_study(LECTURE)
    specs = [short(s) for s in load_experiments(st.files)]
    execute(plan_units(specs, seeds=2), out, progress=False)
    for name, ref, args in st.analyses:
        run_analysis(name, ref, st.folder, {**args, "epochs": 2}, out)
    by = {s.name: s for s in specs}
    regularization_path(by["p6_all_together"], [0.0, 1e-3], [0, 1], out=out)
    paths = write_report(out, meta={"environment": {"cpu": "test"}, "wall_seconds": 1.0}, title=st.title,
                         intro=st.intro, sections=st.sections)
    return out, specs, paths


def test_report_has_every_experiment_and_baseline_row(study):
    out, specs, paths = study
    md = paths["markdown"].read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| `")]
    for s in specs:
        assert any(line.startswith(f"| `{s.name}`") for line in table_rows), s.name
        assert any(line.startswith(f"| `{s.baseline().name}`") for line in table_rows)
        # the comparison rows name the baseline each experiment is judged against
        assert any(line.startswith(f"| `{s.name}` | `{s.baseline().name}`") for line in table_rows)
    assert "Task: binary" in md and "Validation data = test data" in md
    # the study's intro says how many seeds ran (its "{seeds}"; 20 in study.toml, 2 here)
    assert "re-run on PyTorch with reglab, each over 2 seeds." in md and "{seeds}" not in md
    # both forms of an interval in the results table, each explained under it
    results = md[md.index("## Results over seeds"):md.index("## Paired comparisons")]
    assert " ± " in results and " [" in results
    assert ("*mean ± the half-width of its 95% t-interval over the finished seeds; mean [low, high]: the interval "
            "itself, where mean ± half-width would leave the metric's range") in results


def test_the_lecture_sections_come_from_the_study_folder(study, tmp_path):
    import shutil

    out, specs, paths = study
    md = paths["markdown"].read_text()
    for p in range(1, 8):
        assert f"**Program {p}** reported accuracy" in md
    assert "L1L2(0.001) is pure L1" in md
    assert "0.4971" in md and "0.2218" in md
    # without the study, the same runs give a generic report
    shutil.copytree(out, tmp_path / "copy")
    generic = write_report(tmp_path / "copy")["markdown"].read_text()
    assert "Program 1" not in generic and "0.4971" not in generic and "Results over seeds" in generic


def test_report_has_every_plot_and_html_embeds_them(study):
    out, specs, paths = study
    md = paths["markdown"].read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    for name in ("training_curves.png", "decision_boundaries.png", "activation_histograms.png", "weights_p2_layer_regularizers.png", "autoencoder_features.png",
                 "autoencoder_code_histogram.png", "regularization_path_p6_all_together.png"):
        assert f"figures/{name}" in images
    for img in images:
        assert (out / img).is_file() and (out / img).stat().st_size > 2000
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == len(images)
    # opens offline: nothing fetched (the embedded images' base64 may spell "http" by chance)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "src='figures" not in text and "http" not in text.replace("http-equiv", "")
    for section in ("Sparsity of hidden activations", "Sparse autoencoder on digits", "Regularization path",
                    "Environment", "The lecture's claims, checked", "Protocol"):
        assert _html.escape(section) in html


def test_planted_figure_paths_outside_the_folder_are_not_embedded(tmp_path, study):
    import json
    import shutil

    out, _, _ = study
    copy_dir = tmp_path / "copy"
    shutil.copytree(out, copy_dir)
    doc = json.loads((copy_dir / "analyses" / "autoencoder.json").read_text())
    secret = tmp_path / "secret.png"
    secret.write_bytes((copy_dir / doc["figures"][0]).read_bytes())
    doc["figures"] = ["../secret.png", "/etc/hostname", doc["figures"][0]]
    (copy_dir / "analyses" / "autoencoder.json").write_text(json.dumps(doc))
    md = write_report(copy_dir)["markdown"].read_text()
    assert "secret.png" not in md and "hostname" not in md and doc["figures"][2] in md


def test_text_from_files_is_literal_in_figures_and_tables(tmp_path):
    from click.testing import CliRunner

    from reglab.cli import main

    text = (LECTURE / "experiments" / "x_dropout.toml").read_text()
    text = text.replace('title = "', 'title = "$\\\\undefinedmacro$ | pipe ').replace("epochs = 200", "epochs = 2")
    (tmp_path / "x.toml").write_text(text)
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["run", str(tmp_path / "x.toml"), "--out", str(out), "--seeds", "1",
                                     "--no-progress", "--workers", "1"]).exit_code == 0
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "$\\undefinedmacro$ \\| pipe" in md


def test_a_relative_output_folder_with_analysis_figures(study, tmp_path, monkeypatch):
    """`make run` writes to `results` (relative): figures of analyses must still be placed."""
    import shutil

    out, _, _ = study
    shutil.copytree(out, tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    md = write_report(Path("rel"))["markdown"].read_text()
    assert "](figures/autoencoder_features.png)" in md


def test_report_writes_comparisons_whose_estimates_are_the_paired_means(study):
    import reglab

    out, specs, _ = study
    comp = reglab.load_comparisons(out)
    res = reglab.load_results(out)
    own = comp[comp.comparison == "own baseline"]
    assert len(own) == len(specs) * 5  # excess log-loss + 4 test metrics per experiment
    assert set(own.baseline) == {s.baseline().name for s in specs}
    plain = comp[comp.comparison == "best plain baseline"]
    assert len(plain) == len(own) and plain.baseline.isin(own.baseline).all()
    for r in comp.itertuples():
        e = res[res.experiment == r.experiment].set_index("seed")[r.metric]
        b = res[res.experiment == r.baseline].set_index("seed")[r.metric]
        d = (e - b).dropna()
        assert r.n == len(d) == 2 and r.estimate == pytest.approx(d.mean(), abs=1e-12)
        assert r.verdict == "no verdict"  # 2 seeds: fewer than 5 pairs


def test_findings_and_forest_plot_come_first_and_contents_links_land_on_headings(study):
    out, specs, paths = study
    md = paths["markdown"].read_text()
    heads = re.findall(r"^## (.+)$", md, flags=re.M)
    assert heads[0] == "Findings"
    assert md.index("figures/forest.png") < md.index("## Protocol")
    assert f"{len(specs)} have fewer than 5 finished pairs and no verdict" in md  # 2 seeds here
    html = paths["html"].read_text()
    links = re.findall(r"<a href='#([^']+)'>", html)
    ids = set(re.findall(r"<h2 id='([^']+)'>", html))
    assert len(links) == len(heads) and set(links) <= ids
    assert "forest plot" in html


def test_figures_keep_math_for_log_ticks_and_draw_dollars_literally(tmp_path):
    """Log-axis ticks (10^-8 ... 10^0) are mathtext: reglab must not turn matplotlib's math off
    (it did, globally, and the ticks printed as "$\\mathdefault{10^{3}}$"); a "$" in a label from
    an experiment file is still a dollar sign (unescaped, this one fails to parse as math)."""
    import matplotlib
    import numpy as np
    from PIL import Image

    from reglab.report import plots

    assert matplotlib.rcParams["text.parse_math"] is True
    rng = np.random.default_rng(0)
    p = plots.weight_histograms({"$\\undefinedmacro$ L1": rng.random(100), "L2 $5": rng.random(100)},
                                tmp_path / "w.png")
    with Image.open(p) as im:
        assert im.size == (864, 518)


def test_table_intervals_never_leave_the_metrics_range():
    from reglab.report.render import _ci

    assert _ci((0.99, 0.97, 1.01), 3, "test_accuracy") == "0.990 [0.970, 1.000]"   # was 0.990 ± 0.020
    assert _ci((0.01, -0.02, 0.04), 3, "test_log_loss") == "0.010 [0.000, 0.040]"
    assert _ci((0.95, 0.9, 1.1), 3, "test_r2") == "0.950 [0.900, 1.000]"
    assert _ci((0.5, 0.4, 0.6), 3, "test_accuracy") == "0.500 ± 0.100"             # inside: as before
    assert _ci((-0.001, -0.003, 0.001), 4, "excess_log_loss") == "-0.0010 ± 0.0020"  # an excess may be < 0


def test_every_number_of_the_findings_and_comparison_tables_is_a_row_of_comparisons_csv(tmp_path):
    """Five lecture experiments at 5 seeds (verdicts exist): each findings citation is
    ``name estimate [ci_low, ci_high]`` of its comparisons.csv row, under the bullet of its
    verdict; each comparison-table row carries its row's estimate, interval, median, IQM, p and
    verdict; the best-plain counts are the CSV's."""
    import reglab

    names = ("p2_layer_regularizers", "p4_activity_after", "p6_all_together", "x_dropout", "x_early_stopping")
    specs = [short(s, epochs=3) for s in load_experiments(load_study(LECTURE).files) if s.name in names]
    execute(plan_units(specs, seeds=5), tmp_path, progress=False)
    md = write_report(tmp_path, meta={}, title="t")["markdown"].read_text()
    comp = reglab.load_comparisons(tmp_path)
    metric = comp.metric.iloc[0]
    own = comp[(comp.metric == metric) & (comp.comparison == "own baseline")]
    assert metric == "excess_log_loss" and len(own) == 5 and own.n.eq(5).all()
    findings = md[md.index("## Findings"):md.index("Every number here is a row")]
    bullets = {"better": "help", "worse": "hurt", "equivalent": "no difference worth", "inconclusive": "inconclusive"}
    cited = 0
    for r in own.itertuples():
        cite = f"`{r.experiment}` {r.estimate:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}]"
        line = next(l for l in findings.splitlines() if cite in l)
        assert bullets[r.verdict] in line, (r.verdict, line)
        cited += 1
    assert cited == 5
    plain = comp[(comp.metric == metric) & (comp.comparison == "best plain baseline")].verdict.value_counts()
    counts = ", ".join(f"{int(plain[v])} {v}" for v in ("better", "worse", "equivalent", "inconclusive") if v in plain)
    assert f"): {counts}. The filled and hollow markers" in findings
    table = md[md.index("### Δ excess over Bayes log-loss"):]
    for r in own.itertuples():
        row = next(l for l in table.splitlines() if l.startswith(f"| `{r.experiment}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"`{r.baseline}`" and cells[2] == "5"
        def f(v, d=3):
            return "n/a" if v != v else f"{v:+.{d}f}"   # no spread (identical runs): d_z is n/a

        assert cells[3] == f(r.estimate) and cells[4] == f"[{f(r.ci_low)}, {f(r.ci_high)}]"
        assert cells[5] == f(r.median) and cells[6] == f(r.iqm)
        assert cells[8] == f(r.effect_size, 2) and cells[9].startswith(r.verdict)


@pytest.mark.parametrize("scale", [1.0, 1e5])
def test_fixed_layouts_keep_every_tick_label_inside_the_figure(tmp_path, monkeypatch, scale):
    """The grid figures skip tight_layout's extra draw for margins estimated from their tick
    labels: with losses and coordinates of 1 and of 1e5 (6-digit labels), every tick label and
    y label lies inside the figure, and neighbouring panels' x tick labels do not overlap."""
    import numpy as np

    from reglab.report import plots

    figs = []
    monkeypatch.setattr(plots.plt, "close", figs.append)

    def shown(t, lim, i):  # a tick label matplotlib draws: visible, with text, inside the axis limits
        lo, hi = sorted(lim)
        return t.get_visible() and bool(t.get_text()) and lo - 1e-9 * abs(hi - lo) <= t.get_position()[i] <= hi + 1e-9 * abs(hi - lo)
    rng = np.random.default_rng(0)
    hist = {k: scale * (1 + rng.random((5, 30))) for k in ("data_loss", "val_data_loss", "loss")}
    plots.curves([(f"experiment_{i}", hist) for i in range(6)], "mse", tmp_path / "c.png")
    g = np.linspace(-2 * scale, 2 * scale, 20)
    gx, gy = np.meshgrid(g, g)
    arrays = {"x_train": scale * rng.normal(size=(30, 2)), "y_train": rng.integers(0, 2, 30).astype(float),
              "grid_x": gx, "grid_y": gy, "grid_p": (gx > 0).astype(float)}
    plots.boundaries([(f"e{i}", arrays, 0) for i in range(6)], tmp_path / "b.png")
    for fig in figs:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        W, H = fig.bbox.width, fig.bbox.height
        for ax in fig.axes:
            if not ax.axison:
                continue
            texts = [t for t in ax.get_yticklabels() if shown(t, ax.get_ylim(), 1)] + \
                [t for t in ax.get_xticklabels() if shown(t, ax.get_xlim(), 0)] + [ax.yaxis.label]
            for t in texts:
                if not t.get_text():
                    continue
                bb = t.get_window_extent(r)
                assert bb.x0 >= 0 and bb.x1 <= W and bb.y0 >= 0 and bb.y1 <= H, (t.get_text(), bb)
        rows = {}  # per row of panels: each panel's x tick labels' horizontal extent
        for ax in fig.axes:
            bbs = [t.get_window_extent(r) for t in ax.get_xticklabels() if shown(t, ax.get_xlim(), 0)]
            if ax.axison and bbs:
                rows.setdefault(round(ax.get_position().y0, 3), []).append((min(b.x0 for b in bbs), max(b.x1 for b in bbs)))
        for spans in rows.values():
            spans.sort()
            for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
                assert a1 <= b0, ("neighbouring panels' x tick labels overlap", a1, b0, scale)
