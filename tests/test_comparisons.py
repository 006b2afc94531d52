"""comparisons.csv: one row per (experiment, baseline, metric); verdicts follow the intervals."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from reglab.report.comparisons import COLUMNS, comparisons_frame


def frame(diffs: dict[str, list[float]], base: list[float]) -> pd.DataFrame:
    """A load_results-shaped table: a baseline "b" and experiments whose test MSE is the
    baseline's plus the given per-seed differences."""
    rows = []
    for s, v in enumerate(base):
        rows.append({"experiment": "b", "is_baseline": True, "baseline": None, "seed": s, "task": "regression",
                     "test_mse": v, "test_mae": v / 2, "test_r2": 0.5})
    for name, d in diffs.items():
        for s, (v, dv) in enumerate(zip(base, d)):
            rows.append({"experiment": name, "is_baseline": False, "baseline": "b", "seed": s, "task": "regression",
                         "test_mse": v + dv, "test_mae": v / 2, "test_r2": 0.5})
    return pd.DataFrame(rows)


BASE = [10.0, 11.0, 9.5, 10.5, 10.2, 9.8, 10.1, 10.4]
DIFFS = {
    "helps": [-1.0, -1.2, -0.8, -1.1, -0.9, -1.0, -1.05, -0.95],
    "hurts": [0.9, 1.1, 1.0, 0.8, 1.2, 1.0, 0.95, 1.05],
    "tiny": [0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0],
    "noisy": [2.0, -1.5, 1.0, -2.5, 0.5, 1.5, -1.0, 0.5],
}


def test_every_column_and_the_rules():
    df = comparisons_frame(frame(DIFFS, BASE))
    assert list(df.columns) == COLUMNS
    mse = df[df.metric == "test_mse"].set_index("experiment")
    m = 4  # four experiments in the test_mse family
    for name, d in DIFFS.items():
        d = np.array(d)
        r = mse.loc[name]
        assert r.n == 8 and r.better == "lower" and r.baseline == "b"
        assert r.estimate == pytest.approx(d.mean(), abs=1e-12)  # the paired mean
        half = stats.t.ppf(1 - 0.05 / m / 2, 7) * d.std(ddof=1) / math.sqrt(8)
        assert (r.ci_low, r.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
        assert r.p_adjusted == pytest.approx(min(1.0, m * stats.ttest_1samp(d, 0).pvalue))
        assert (r.p_adjusted < 0.05) == (r.ci_low > 0 or r.ci_high < 0)  # p and interval agree
        assert r.method == "paired t, Bonferroni over 4"
        assert r.margin == pytest.approx(0.02 * np.mean(BASE))
        wins = np.sum(d < 0) + 0.5 * np.sum(d == 0)
        assert r.p_improvement == pytest.approx(wins / 8)
        assert r.p_improvement_low <= r.p_improvement <= r.p_improvement_high
        mde = (stats.t.ppf(1 - 0.05 / m / 2, 7) + stats.t.ppf(0.8, 7)) * d.std(ddof=1) / math.sqrt(8)
        assert r.mde == pytest.approx(mde)
    assert mse.loc["helps"].verdict == "better" and mse.loc["hurts"].verdict == "worse"
    assert mse.loc["tiny"].verdict == "equivalent"  # inside (-0.2, 0.2): too small to matter
    noisy = mse.loc["noisy"]
    assert noisy.verdict == "inconclusive" and noisy.n_needed > 8
    assert pd.isna(mse.loc["helps"].n_needed)
    # identical metrics: an interval of zero width, equivalent
    assert (df[df.metric == "test_mae"].verdict == "equivalent").all()


def test_fewer_than_five_pairs_get_no_verdict_and_failed_runs_are_left_out():
    t = frame({"few": DIFFS["helps"]}, BASE)
    t.loc[(t.experiment == "few") & (t.seed >= 4), "test_mse"] = np.nan  # 4 seeds failed
    r = comparisons_frame(t).set_index("metric").loc["test_mse"]
    assert r.n == 4 and r.verdict == "no verdict" and pd.isna(r.ci_low) and pd.isna(r.p_adjusted)
    assert r.estimate == pytest.approx(np.mean(DIFFS["helps"][:4]))


def test_margins_can_be_given():
    r = comparisons_frame(frame({"tiny": DIFFS["tiny"]}, BASE), margins={"test_mse": 0.001})
    assert r.set_index("metric").loc["test_mse"].verdict == "inconclusive"


def test_best_plain_baseline_is_its_own_family():
    """With baseline kinds, each experiment is also compared with the best plain baseline of
    its kind (lowest validation loss), in a family of its own."""
    t = frame(DIFFS, BASE)
    t["val_mse"] = t["test_mse"]
    short = t[t.experiment == "b"].copy()
    short["experiment"] = "b_short"
    short["val_mse"] = short["test_mse"] = short["test_mse"] - 2.0  # a better plain schedule
    t = pd.concat([t, short], ignore_index=True)
    df = comparisons_frame(t, kinds={"b": "mlp", "b_short": "mlp"})
    plain = df[(df.metric == "test_mse") & (df.comparison == "best plain baseline")].set_index("experiment")
    own = df[(df.metric == "test_mse") & (df.comparison == "own baseline")].set_index("experiment")
    assert set(plain.baseline) == {"b_short"} and set(own.baseline) == {"b"}
    for name, d in DIFFS.items():
        assert plain.loc[name].estimate == pytest.approx(np.mean(d) + 2.0)
        assert plain.loc[name].method == "paired t, Bonferroni over 4"
    assert plain.loc["helps"].verdict == "worse" and own.loc["helps"].verdict == "better"
    other_kind = comparisons_frame(t, kinds={"b": "mlp", "b_short": "cnn"})  # not comparable: b is its own best
    assert set(other_kind[other_kind.comparison == "best plain baseline"].baseline) == {"b"}


def test_study_margins_are_validated_and_reach_the_report(tmp_path):
    import shutil
    from pathlib import Path

    from reglab.experiments.schema import ConfigError
    from reglab.experiments.study import load_study

    src = Path(__file__).resolve().parents[1] / "studies" / "diabetes"
    folder = tmp_path / "st"
    shutil.copytree(src, folder)
    toml = folder / "study.toml"
    text = toml.read_text()
    toml.write_text(text + "\n[margins]\ntest_mse = 50.0\n")
    assert load_study(folder).margins == {"test_mse": 50.0}
    toml.write_text(text + "\n[margins]\ntest_mse = -1\n")
    with pytest.raises(ConfigError, match=r"study.toml: margins: expected \{<metric column> = <non-negative number>\}"):
        load_study(folder)
    toml.write_text(text + "\n[margins]\nmse = 1\n")
    with pytest.raises(ConfigError, match="margins"):
        load_study(folder)
    df = comparisons_frame(frame({"tiny": DIFFS["tiny"]}, BASE), margins={"test_mse": 50.0})
    assert df.set_index("metric").loc["test_mse"].margin == 50.0


def test_an_experiment_whose_runs_all_failed_gets_empty_cells_not_an_error():
    t = frame({"boom": DIFFS["helps"]}, BASE)
    t.loc[t.experiment == "boom", "test_mse"] = np.nan
    r = comparisons_frame(t).set_index("metric").loc["test_mse"]
    assert r.n == 0 and r.verdict == "no verdict" and pd.isna(r.estimate) and pd.isna(r.p_improvement)
    assert list(comparisons_frame(t).columns) == COLUMNS


def test_robust_summaries_and_effect_size():
    df = comparisons_frame(frame(DIFFS, BASE))
    noisy = df[(df.metric == "test_mse") & (df.experiment == "noisy")].iloc[0]
    d = np.sort(np.array(DIFFS["noisy"]))              # -2.5 -1.5 -1.0 0.5 0.5 1.0 1.5 2.0
    assert noisy["median"] == pytest.approx(0.5)         # (0.5 + 0.5) / 2
    assert noisy["iqm"] == pytest.approx(np.mean(d[2:6]))  # the middle four: (-1 + 0.5 + 0.5 + 1) / 4 = 0.25
    assert noisy["iqm"] == pytest.approx(0.25)
    assert noisy["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))


def test_the_bootstrap_family():
    """method = bootstrap: the percentile interval of the resampled means at 1 - alpha/m, its p
    consistent with it, the estimate inside; other metrics keep the t."""
    df = comparisons_frame(frame(DIFFS, BASE), methods={"test_mse": "bootstrap"})
    mse = df[df.metric == "test_mse"].set_index("experiment")
    assert set(mse.method) == {"bootstrap, Bonferroni over 4"}
    assert set(df[df.metric == "test_mae"].method) == {"paired t, Bonferroni over 4"}
    for name, d in DIFFS.items():
        r = mse.loc[name]
        assert r.ci_low <= r.estimate <= r.ci_high
        assert (r.p_adjusted < 0.05) == (r.ci_low > 0 or r.ci_high < 0)
    # "helps": every resampled mean is negative -> p = 0; the interval within the data's range
    helps = mse.loc["helps"]
    assert helps.p_adjusted == 0.0 and helps.verdict == "better"
    assert -1.2 <= helps.ci_low < helps.ci_high <= -0.8
    assert mse.loc["noisy"].verdict == "inconclusive" and mse.loc["tiny"].verdict == "equivalent"
    again = comparisons_frame(frame(DIFFS, BASE), methods="bootstrap")   # fixed seed: the same numbers
    assert again[again.metric == "test_mse"].set_index("experiment").loc["noisy", "ci_low"] == mse.loc["noisy", "ci_low"]
    with pytest.raises(ValueError, match="expected one of"):
        comparisons_frame(frame(DIFFS, BASE), methods="wilcoxon")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=5, max_size=30), st.integers(1, 20))
def test_bootstrap_p_and_interval_agree(d, m):
    from reglab.report.comparisons import bootstrap_interval

    d = np.array(d)
    a = 0.05 / m
    lo, hi, p = bootstrap_interval(d, a)
    assert lo <= hi
    assert (p < a) == (lo > 0 or hi < 0)


def test_study_statistics_method_is_validated(tmp_path):
    import shutil
    from pathlib import Path

    from reglab.experiments.schema import ConfigError
    from reglab.experiments.study import load_study

    folder = tmp_path / "st"
    shutil.copytree(Path(__file__).resolve().parents[1] / "studies" / "diabetes", folder)
    toml = folder / "study.toml"
    text = toml.read_text()
    assert load_study(folder).methods == "t"
    toml.write_text(text + '\n[statistics]\nmethod = "bootstrap"\n')
    assert load_study(folder).methods == "bootstrap"
    toml.write_text(text + '\n[statistics]\nmethod = {test_mse = "bootstrap"}\n')
    assert load_study(folder).methods == {"test_mse": "bootstrap"}
    for bad in ('method = "wilcoxon"', 'method = {test_mse = "Bootstrap"}', 'resamples = 10'):
        toml.write_text(text + f"\n[statistics]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"study.toml: statistics: expected method = \"t\" or \"bootstrap\""):
            load_study(folder)
    for bad in ('test_fooo', 'val_mse', 'mse'):   # a typo, a metric never compared: refused, not ignored
        toml.write_text(text + f'\n[statistics]\nmethod = {{{bad} = "bootstrap"}}\n')
        with pytest.raises(ConfigError, match=rf"statistics: method: '{bad}' is no compared metric; the compared "
                                              r"ones: excess_log_loss, test_accuracy"):
            load_study(folder)
        toml.write_text(text + f"\n[margins]\n{bad} = 0.1\n")
        with pytest.raises(ConfigError, match=rf"margins: '{bad}' is no compared metric"):
            load_study(folder)


def test_findings_name_an_inconclusive_row_that_no_number_of_seeds_would_settle(tmp_path):
    """A zero mean difference has no n_needed (pandas' NA in the Int64 column): the findings said
    'TypeError: boolean value of NA is ambiguous' and the report was not written."""
    from reglab.report.render import Doc, _section_findings

    zero = [0.5, -0.5, 0.3, -0.3, 0.2, -0.2, 0.1, -0.1]
    df = comparisons_frame(frame({"zero": zero, "helps": DIFFS["helps"]}, BASE))
    row = df[(df.metric == "test_mse") & (df.experiment == "zero")].iloc[0]
    assert row.verdict == "inconclusive" and pd.isna(row.n_needed)
    doc = Doc()
    _section_findings(doc, df, tmp_path)
    text = doc.markdown(tmp_path)
    assert "**1 is inconclusive** with these seeds: `zero`" in text
    assert "seeds would settle it" not in text


def test_a_study_mixing_tasks_gets_findings_and_a_forest_plot_per_task(tmp_path):
    """Findings took the first row's metric only: a regression experiment beside classification
    ones appeared in neither the findings nor the forest plot."""
    from reglab.report.render import Doc, _section_findings

    reg = frame({"reg_l1": DIFFS["helps"]}, BASE)
    cls = frame({"cls_l2": DIFFS["hurts"]}, BASE).rename(columns={"test_mse": "test_log_loss"})
    cls = cls.assign(experiment=cls.experiment.replace({"b": "bc"}), baseline=cls.baseline.replace({"b": "bc"}),
                     task="binary", test_accuracy=0.8, test_brier=0.2, test_ece=0.05).drop(columns=["test_mae",
                                                                                                  "test_r2"])
    df = comparisons_frame(pd.concat([cls, reg], ignore_index=True))
    doc = Doc()
    _section_findings(doc, df, tmp_path)
    md = doc.markdown(tmp_path)
    assert md.count("## Findings") == 1
    assert "On the test log-loss (lower is better), the one experiment against" in md and "`cls_l2` +1" in md
    assert "On the test mean squared error (lower is better), the one experiment against" in md and "`reg_l1` -1" in md
    assert "(forest.png)" in md and "(forest_1.png)" in md
