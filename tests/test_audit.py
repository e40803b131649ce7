"""The audit's numbers: equal to fairlearn's MetricFrame, honest intervals, correct flags."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score

from debias import ConfigError, DataError
from debias.fairness.audit import AuditOptions, audit
from debias.fairness.bootstrap import bootstrap_counts, cell_counts
from debias.fairness.metrics import metric_keys, metrics_from_counts


def _random_predictions(n: int, classes: list[str], seed: int = 0):
    rng = np.random.default_rng(seed)
    race = rng.choice(["White", "Black", "Asian", "Indian"], n, p=[0.55, 0.2, 0.15, 0.1])
    gender = rng.choice(["male", "female"], n)
    y = rng.choice(classes, n)
    wrong = rng.random(n) < np.where(race == "Black", 0.35, 0.1)
    shift = rng.integers(1, len(classes), n)  # a wrong prediction is another class
    other = np.array(classes)[(np.searchsorted(classes, y) + shift) % len(classes)]
    pred = np.where(wrong, other, y)
    return y, pred, pd.DataFrame({"race": race, "gender": gender})


def _direct_metric_frame(y, p, sensitive, pos):
    """MetricFrame on the raw rows, with fairlearn's and scikit-learn's own metric functions."""
    yt, yp = np.asarray(y) == pos, np.asarray(p) == pos
    metrics = {
        "count": lambda a, b: count(a, b),
        "accuracy": lambda a, b: accuracy_score(y[a], p[a]),
        "base_rate": lambda a, b: selection_rate(yt[a], yt[a], pos_label=True),
        "selection_rate": lambda a, b: selection_rate(yt[a], yp[a], pos_label=True),
        "tpr": lambda a, b: true_positive_rate(yt[a], yp[a], pos_label=True),
        "fpr": lambda a, b: false_positive_rate(yt[a], yp[a], pos_label=True),
        "fnr": lambda a, b: false_negative_rate(yt[a], yp[a], pos_label=True),
        "precision": lambda a, b: precision_score(yt[a], yp[a], zero_division=np.nan),
    }
    rows = np.arange(len(y))  # metrics receive row indices so they can read any column
    return MetricFrame(metrics=metrics, y_true=rows, y_pred=rows, sensitive_features=sensitive)


@pytest.mark.parametrize("classes", [["face", "not_face"], ["cat", "dog", "owl"]])
def test_values_equal_fairlearn_metricframe_on_the_raw_rows(classes: list[str]) -> None:
    y, p, groups = _random_predictions(3000, classes)
    result = audit(y, p, groups, AuditOptions(groups=["race", "gender"], bootstrap=50))
    judged = ["face"] if len(classes) == 2 else classes
    checked = 0
    for pos in judged:
        for attribute, sensitive in (
            ("race", groups["race"]),
            ("gender", groups["gender"]),
            ("race & gender", groups["race"] + " & " + groups["gender"]),
        ):
            expected = _direct_metric_frame(y, p, sensitive, pos).by_group
            ours = result.by_group[result.by_group.attribute == attribute]
            for group, row in expected.iterrows():
                for metric, value in row.items():
                    cls = "" if metric in ("count", "accuracy") else pos
                    got = ours[
                        (ours.group == group) & (ours.metric == metric) & (ours["class"] == cls)
                    ]
                    assert len(got) == 1, (attribute, group, metric, cls)
                    assert got["value"].iloc[0] == pytest.approx(value, abs=1e-12)
                    checked += 1
        overall = _direct_metric_frame(y, p, np.zeros(len(y)), pos).overall
        ours = result.by_group[result.by_group.attribute == "overall"]
        for metric, value in overall.items():
            cls = "" if metric in ("count", "accuracy") else pos
            got = ours[(ours.metric == metric) & (ours["class"] == cls)]["value"].iloc[0]
            assert got == pytest.approx(value, abs=1e-12)
    assert checked >= 8 * 14 * len(judged)


def test_count_formulas_used_by_the_bootstrap_equal_the_estimates() -> None:
    y, p, groups = _random_predictions(2000, ["a", "b", "c"], seed=1)
    result = audit(y, p, groups, AuditOptions(groups=["race"], bootstrap=0))
    codes = {c: i for i, c in enumerate(result.classes)}
    yt = np.array([codes[v] for v in y])
    yp = np.array([codes[v] for v in p])
    for race in ["White", "Black"]:
        rows = (groups["race"] == race).to_numpy()
        confusion = cell_counts(np.zeros(rows.sum(), int), yt[rows], yp[rows], 1, 3)[0]
        from_counts = metrics_from_counts(confusion, metric_keys(result.classes, [0, 1, 2]))
        ours = result.by_group[(result.by_group.group == race)]["value"].to_numpy()
        np.testing.assert_allclose(from_counts, ours, equal_nan=True)


def test_undefined_rates_are_nan_not_zero() -> None:
    # Group "b" has no positives: its TPR and FNR are undefined (fairlearn's functions return 0).
    y = ["1"] * 40 + ["0"] * 80
    p = ["1"] * 30 + ["0"] * 10 + ["0"] * 80
    groups = pd.DataFrame({"g": ["a"] * 80 + ["b"] * 40})
    result = audit(y, p, groups, AuditOptions(groups=["g"], bootstrap=100))
    b = result.by_group[result.by_group.group == "b"].set_index("metric")["value"]
    assert np.isnan(b["tpr"]) and np.isnan(b["fnr"]) and np.isnan(b["precision"])
    assert b["fpr"] == 0.0 and b["accuracy"] == 1.0
    flags = result.disparities[result.disparities.group == "b"].set_index("metric")["flag"]
    assert flags["tpr"] == "undefined"


def test_bootstrap_of_counts_has_the_binomial_spread() -> None:
    # Resampling n rows with accuracy p has standard deviation sqrt(p(1-p)/n) for the accuracy.
    rng = np.random.default_rng(0)
    counts = np.array([[[300, 50], [30, 120]]])  # one cell, 500 rows, accuracy 0.84
    boot = bootstrap_counts(counts, 4000, rng)
    assert (boot.sum(axis=(2, 3)) == 500).all()  # cells keep their size
    accuracy = metrics_from_counts(boot[:, 0], metric_keys(["a", "b"], [1]))[:, 1]
    expected_sd = np.sqrt(0.84 * 0.16 / 500)
    assert accuracy.mean() == pytest.approx(0.84, abs=0.002)
    assert accuracy.std() == pytest.approx(expected_sd, rel=0.08)


def test_interval_covers_the_true_accuracy_at_its_level() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    trials = 120
    for t in range(trials):
        correct = rng.random(400) < 0.8
        y = np.array(["a"] * 400)
        p = np.where(correct, "a", "b")
        r = audit(
            y,
            p,
            pd.DataFrame({"g": ["x"] * 400}),
            AuditOptions(groups=["g"], bootstrap=300, seed=t),
        )
        row = r.by_group[(r.by_group.group == "x") & (r.by_group.metric == "accuracy")].iloc[0]
        covered += row["ci_low"] <= 0.8 <= row["ci_high"]
    assert 0.88 <= covered / trials <= 0.995  # 95% nominal; 120 trials give +-0.04


def test_planted_failing_group_is_flagged_and_worst() -> None:
    y, p, groups = _random_predictions(4000, ["face", "not_face"])
    result = audit(y, p, groups, AuditOptions(groups=["race", "gender"]))
    summary = result.summary()
    assert summary["worst_group"]["group"].startswith("Black")
    acc = result.disparities[result.disparities.metric == "accuracy"].set_index(
        ["attribute", "group"]
    )
    assert acc.loc[("race", "Black"), "reference"] == "White"  # the largest group
    assert acc.loc[("race", "Black"), "flag"] == "fail"
    assert bool(acc.loc[("race", "Black"), "significant"])
    assert acc.loc[("race", "Asian"), "flag"] == "pass"
    assert acc.loc[("gender", "male"), "flag"] == "pass"
    low, high = acc.loc[("race", "Black"), ["difference_ci_low", "difference_ci_high"]]
    assert low < acc.loc[("race", "Black"), "difference"] < high < 0


def test_small_groups_are_reported_not_judged() -> None:
    y, p, groups = _random_predictions(1000, ["face", "not_face"])
    groups.loc[:9, "race"] = "Pacific"
    groups.loc[10:14, "race"] = ""  # missing: counted overall, in no race group
    result = audit(y, p, groups, AuditOptions(groups=["race"], min_group_size=30))
    pacific = result.by_group[result.by_group.group == "Pacific"]
    assert (pacific["n"] == 10).all() and not pacific["judged"].any()
    assert (result.disparities[result.disparities.group == "Pacific"].flag == "too small").all()
    race_total = result.by_group[
        (result.by_group.attribute == "race") & (result.by_group.metric == "count")
    ]
    assert race_total["value"].sum() == 995
    assert result.n == 1000


def test_reference_group_can_be_chosen() -> None:
    y, p, groups = _random_predictions(2000, ["face", "not_face"])
    result = audit(y, p, groups, AuditOptions(groups=["race"], reference={"race": "Black"}))
    assert set(result.disparities.reference) == {"Black"}
    with pytest.raises(ConfigError, match="has no group 'Martian'"):
        audit(y, p, groups, AuditOptions(groups=["race"], reference={"race": "Martian"}))


def test_one_million_predictions_with_a_thousand_replicates_is_vectorized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not a timing test: it checks that the bootstrap draws confusion counts of the 8 race x
    # gender cells, in a few multinomial calls, never anything per row or per replicate.
    import debias.fairness.audit as audit_module

    calls: list[tuple] = []
    real_bootstrap = audit_module.bootstrap_counts

    class CountingRng:
        def __init__(self, rng: np.random.Generator) -> None:
            self.rng = rng

        def multinomial(self, n, pvals, size):  # noqa: ANN001, ANN201
            calls.append(("multinomial", np.shape(pvals), size))
            return self.rng.multinomial(n, pvals, size=size)

    def spy(counts, n_boot, rng, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(("bootstrap", counts.shape, n_boot))
        return real_bootstrap(counts, n_boot, CountingRng(rng), **kwargs)

    monkeypatch.setattr(audit_module, "bootstrap_counts", spy)
    y, p, groups = _random_predictions(1_000_000, ["face", "not_face"])
    result = audit(y, p, groups, AuditOptions(groups=["race", "gender"], bootstrap=1000))
    assert calls[0] == ("bootstrap", (8, 2, 2), 1000)  # cells x true x predicted, once
    draws = calls[1:]
    assert len(draws) == 4  # 1000 replicates in chunks of 250
    assert all(shape == (8, 4) and size == (250, 8) for _, shape, size in draws)
    black = result.by_group[
        (result.by_group.group == "Black") & (result.by_group.metric == "accuracy")
    ]
    assert black["ci_high"].iloc[0] - black["ci_low"].iloc[0] < 0.01


def test_grouping_by_the_target_does_not_judge_label_bound_rates() -> None:
    # Gender classifier audited by gender: every female's true label is female.
    rng = np.random.default_rng(0)
    gender = rng.choice(["female", "male"], 2000)
    wrong = rng.random(2000) < 0.1
    pred = np.where(wrong, np.where(gender == "male", "female", "male"), gender)
    result = audit(gender, pred, pd.DataFrame({"gender": gender}), AuditOptions(groups=["gender"]))
    flags = result.disparities.set_index("metric")["flag"]
    assert flags["precision"] == "undefined" and flags["selection_rate"] == "undefined"
    assert flags["accuracy"] == "pass"
    assert result.summary()["largest_disparity"]["metric"] not in ("precision", "selection_rate")


@pytest.mark.parametrize("form", ["dataframe", "dict", "series", "array"])
def test_fairlearn_style_call_and_summaries_equal_metricframe(form: str) -> None:
    # A fairlearn user's call: y as Series with their own index, features in any of the forms
    # MetricFrame takes, no options; the summaries MetricFrame has must agree with it.
    y, p, groups = _random_predictions(2000, ["face", "not_face"], seed=3)
    y_true = pd.Series(y, index=np.arange(5000, 7000))  # a non-default index, as after a filter
    features = {
        "dataframe": groups,
        "dict": {"race": groups["race"].to_numpy(), "gender": groups["gender"].tolist()},
        "series": groups["race"],
        "array": groups["race"].to_numpy(),
    }[form]
    result = audit(y_true, p, sensitive_features=features, options=AuditOptions(bootstrap=20))
    sensitive = groups if form in ("dataframe", "dict") else groups["race"]
    expected = _direct_metric_frame(y, p, sensitive, "face")
    names = ["race", "gender"] if form in ("dataframe", "dict") else None
    if form == "array":
        names = ["sensitive_feature_0"]
    if form == "series":
        names = ["race"]
    assert result.options.groups == names  # every suitable feature, as the command line picks
    wide = result.wide()  # the intersection for several features, as MetricFrame groups them
    theirs = expected.by_group
    if isinstance(theirs.index, pd.MultiIndex):
        theirs.index = [" & ".join(map(str, k)) for k in theirs.index]
    pd.testing.assert_frame_equal(
        wide.loc[theirs.index, theirs.columns], theirs, check_names=False, check_dtype=False
    )
    metrics = [c for c in theirs.columns if c != "count"]
    pd.testing.assert_series_equal(
        result.overall[metrics], expected.overall[metrics], check_names=False, check_dtype=False
    )
    for ours, mf in (
        (result.difference(), expected.difference()),
        (result.ratio(), expected.ratio()),
        (result.group_min(), expected.group_min()),
    ):
        pd.testing.assert_series_equal(
            ours[metrics], mf[metrics], check_names=False, check_dtype=False
        )
    assert json.loads(result.to_json())["n"] == 2000


def test_features_of_another_length_are_one_clear_error() -> None:
    with pytest.raises(DataError, match="sensitive_features has 3 rows but there are 4"):
        audit(["a", "b", "a", "b"], ["a", "a", "a", "b"], sensitive_features=["x", "y", "x"])
