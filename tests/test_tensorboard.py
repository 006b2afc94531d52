"""``reglab export tensorboard`` / ``--tensorboard``: read back with TensorBoard's own readers
(its event accumulator for the scalars, its HParams plugin backend for trials and sessions)."""

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("tensorboard")

import reglab  # noqa: E402
from reglab.cli import main  # noqa: E402
from reglab.experiments.runner import execute, plan_units, prepare  # noqa: E402
from reglab.experiments.schema import load_experiments  # noqa: E402
from reglab.report.tensorboard import MANIFEST, export_tensorboard, trial_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _session_groups(logdir: Path):
    """TensorBoard's HParams dashboard's own answer: its backend's ListSessionGroups handler on
    the log folder, seeds' metrics averaged."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mx = plugin_event_multiplexer.EventMultiplexer()
    mx.AddRunsFromDirectory(str(logdir))
    mx.Reload()
    provider = data_provider.MultiplexerDataProvider(mx, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mx, data_provider=provider))
    req = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=1000, aggregation_type=api_pb2.AGGREGATION_AVG,
                                           allowed_statuses=[api_pb2.STATUS_UNKNOWN])
    return list_session_groups.Handler(context.RequestContext(), ctx, "", req).run().session_groups


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    """The shipped diabetes study (three experiments, two swept over three strengths) at 2 seeds
    and 3 epochs."""
    specs = load_experiments(sorted((ROOT / "studies" / "diabetes" / "experiments").glob("*.toml")))
    small = []
    for s in specs:
        cfg = json.loads(json.dumps(s.config))
        cfg["train"]["epochs"] = 3
        small.append(type(s)(cfg, s.path, s.inputs))
    prepare(small + [s.baseline() for s in small])
    out = tmp_path_factory.mktemp("tb") / "out"
    execute(plan_units(small, seeds=2), out, progress=False)
    return out


def test_one_trial_per_grid_point_one_session_per_seed(diabetes, tmp_path):
    logdir = tmp_path / "logs"
    n = export_tensorboard(diabetes, logdir)
    df = reglab.load_results(diabetes)
    points = df.drop_duplicates(["experiment", "regularize/params/@kernels/l1", "regularize/params/@kernels/l2"])
    assert n == {"runs": len(df), "trials": len(points)}
    groups = _session_groups(logdir)
    # l1 and l2 at three strengths each, early stopping, and the baseline(s): one trial each
    assert len(groups) == len(points) == 3 + 3 + 1 + df[df.is_baseline].experiment.nunique()
    for g in groups:
        assert len(g.sessions) == 2, g.name  # one per seed
        hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in g.hparams.items()}
        rows = df[df.experiment == hp["experiment"]]
        if "sweep/regularize/params/@kernels/l2" in hp:
            rows = rows[rows["regularize/params/@kernels/l2"] == hp["sweep/regularize/params/@kernels/l2"]]
        if "sweep/regularize/params/@kernels/l1" in hp:
            rows = rows[rows["regularize/params/@kernels/l1"] == hp["sweep/regularize/params/@kernels/l1"]]
        assert len(rows) == 2 and bool(rows.is_baseline.iloc[0]) == hp["is_baseline"]
        got = {m.name.tag: m.value for m in g.metric_values}
        # TensorBoard's mean over the seeds is results.csv's (float32 scalars)
        assert got["final/test_mse"] == pytest.approx(rows.test_mse.mean(), rel=1e-6)
        assert got["final/val_r2"] == pytest.approx(rows.val_r2.mean(), rel=1e-5, abs=1e-6)


def test_scalars_per_epoch_are_the_history(diabetes, tmp_path):
    export_tensorboard(diabetes, tmp_path / "logs")
    run = json.loads(next((diabetes / "runs" / "l2").glob("*.json")).read_text())
    name, folder = trial_of(run)
    assert name.startswith("l2 [regularize/params/@kernels/l2=") and folder.startswith("l2/point-")
    got = _scalars(tmp_path / "logs" / folder / f"seed-{run['seed']}")
    hist = run["history"]
    for key, series in hist["history"].items():
        assert [s for s, _ in got[f"epoch/{key}"]] == hist["epoch"]
        assert [v for _, v in got[f"epoch/{key}"]] == pytest.approx(series, rel=1e-6)
    assert got["final/test_mae"] == [(hist["epoch"][-1], pytest.approx(run["metrics"]["test_mae"], rel=1e-6))]


def test_export_again_replaces_its_own_logs_and_keeps_everything_else(diabetes, tmp_path):
    logdir = tmp_path / "logs"
    export_tensorboard(diabetes, logdir)
    trials = len(_session_groups(logdir))
    first = sorted(p.relative_to(logdir) for p in logdir.rglob("events.out.tfevents.*"))
    (logdir / "notes.txt").write_text("mine")
    manifest = json.loads((logdir / MANIFEST).read_text())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "events.out.tfevents.1.x").write_text("not reglab's")
    manifest["folders"].append("../outside")  # a path read from a file never leads out of LOGDIR
    (logdir / MANIFEST).write_text(json.dumps(manifest))
    export_tensorboard(diabetes, logdir)
    again = list(logdir.rglob("events.out.tfevents.*"))
    assert len(again) == len(first)  # replaced, not doubled (TensorBoard would show each run twice)
    assert (logdir / "notes.txt").read_text() == "mine"
    assert (outside / "events.out.tfevents.1.x").read_text() == "not reglab's"
    assert len(_session_groups(logdir)) == trials


def test_bad_logdirs_are_refused_before_anything_trains(tmp_path):
    cli = CliRunner()
    f = tmp_path / "afile"
    f.write_text("x")
    res = cli.invoke(main, ["run", str(ROOT / "studies" / "diabetes" / "experiments" / "l1.toml"), "--out",
                            str(tmp_path / "out"), "--tensorboard", str(f)])
    assert res.exit_code == 1 and "the TensorBoard log folder is a file" in res.output
    assert not (tmp_path / "out").exists() and f.read_text() == "x"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("y")
    res = cli.invoke(main, ["study", str(ROOT / "studies" / "diabetes"), "--out", str(tmp_path / "out"),
                            "--tensorboard", str(other)])
    assert res.exit_code == 1 and "holds files that no reglab export wrote" in res.output
    assert not (tmp_path / "out").exists() and [p.name for p in other.iterdir()] == ["keep.txt"]
    res = cli.invoke(main, ["export", "tensorboard", str(tmp_path / "nope"), str(tmp_path / "logs")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_run_with_tensorboard_writes_the_logs(tmp_path):
    text = (ROOT / "studies" / "diabetes" / "experiments" / "l2.toml").read_text()
    text = text.replace("seeds = 20", "seeds = 2").replace("epochs = 150", "epochs = 2")
    (tmp_path / "l2.toml").write_text(text)
    res = CliRunner().invoke(main, ["run", str(tmp_path / "l2.toml"), "--out", str(tmp_path / "out"),
                                    "--no-progress", "--tensorboard", str(tmp_path / "logs")])
    assert res.exit_code == 0, res.output
    assert "TensorBoard: 8 runs in 4 trials written to" in res.output
    assert [len(g.sessions) for g in _session_groups(tmp_path / "logs")] == [2, 2, 2, 2]
    assert pd.read_csv(tmp_path / "out" / "results.csv").shape[0] == 8
