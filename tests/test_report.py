import copy
import re
from pathlib import Path

import pytest

from reglab.experiments.autoencoder import run_autoencoder
from reglab.experiments.path import regularization_path
from reglab.experiments.runner import execute, plan_units
from reglab.experiments.schema import ExperimentSpec, load_experiments
from reglab.report.render import write_report

ROOT = Path(__file__).resolve().parents[1]


def short(spec: ExperimentSpec, epochs: int = 2) -> ExperimentSpec:
    cfg = copy.deepcopy(spec.config)
    cfg["train"]["epochs"] = epochs
    return ExperimentSpec(cfg, spec.path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    specs = [short(s) for s in load_experiments(sorted((ROOT / "experiments").glob("*.toml")))]
    execute(plan_units(specs, seeds=2), out, progress=False)
    run_autoencoder(out, epochs=2)
    by = {s.name: s for s in specs}
    regularization_path(by["p6_all_together"], [0.0, 1e-3], [0, 1], out=out)
    paths = write_report(out, meta={"environment": {"cpu": "test"}, "wall_seconds": 1.0})
    return out, specs, paths


def test_report_has_every_program_row_and_baselines(study):
    out, specs, paths = study
    md = paths["markdown"].read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| `")]
    for s in specs:
        assert any(line.startswith(f"| `{s.name}`") for line in table_rows), s.name
        assert any(line.startswith(f"| `{s.baseline().name}`") for line in table_rows)
    for p in range(1, 8):
        assert f"**Program {p}** reported accuracy" in md
    assert "L1L2(0.001) is pure L1" in md
    assert "0.4971" in md and "0.2218" in md


def test_report_has_every_plot_and_html_embeds_them(study):
    out, specs, paths = study
    md = paths["markdown"].read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    for s in specs:
        assert f"figures/curves_{s.name}.png" in images
        assert f"figures/boundary_{s.name}.png" in images
    for name in ("kl_activation_histogram.png", "weights_l1_l2.png", "autoencoder_features.png",
                 "autoencoder_code_histogram.png", "regularization_path.png"):
        assert f"figures/{name}" in images
    for img in images:
        assert (out / img).is_file() and (out / img).stat().st_size > 2000
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == len(images)
    assert "src='figures" not in html and "http" not in html.replace("http-equiv", "")  # opens offline
    for section in ("Sparsity of hidden activations", "Sparse autoencoder on digits", "Regularization path",
                    "Environment", "The lecture's claims, checked"):
        assert __import__("html").escape(section) in html


def test_selection_by_loss_vs_accuracy_on_known_numbers():
    from reglab.report.summary import selection_by_loss_vs_accuracy, summarize

    rows = []
    for seed in range(4):
        for j, name in enumerate(["a", "b", "c"]):
            cfg = {"name": name, "baseline": True, "data": {"name": "blobs"}, "model": {"layers": [{"units": 1}]},
                   "train": {"loss": "binary_crossentropy", "optimizer": {"name": "adam"}, "epochs": 1,
                             "batch_size": 1}}
            # validation loss orders the models like their fresh excess risk; accuracy orders them backwards
            m = {"val_data_loss": 0.3 + 0.1 * j + 0.01 * seed, "val_accuracy": 0.7 + 0.05 * j,
                 "excess_log_loss": 0.01 + 0.02 * j, "fresh_accuracy": 0.84 - 0.01 * j}
            rows.append({"experiment": name, "seed": seed, "config": cfg, "metrics": m})
    sel = selection_by_loss_vs_accuracy(summarize(rows))
    assert sel["seeds"] == 4 and sel["models_per_seed"] == 3
    assert sel["tau_loss"][0] == pytest.approx(1.0) and sel["tau_accuracy"][0] == pytest.approx(-1.0)
    assert sel["by_loss_excess"][0] == pytest.approx(0.01) and sel["by_accuracy_excess"][0] == pytest.approx(0.05)
    assert sel["difference"].mean_difference == pytest.approx(-0.04) and sel["difference"].significant
