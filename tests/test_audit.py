"""The audit's numbers: equal to fairlearn's MetricFrame, honest intervals, correct flags."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score

from debias import ConfigError, DataError, report_predictions
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
        "tnr": lambda a, b: true_negative_rate(yt[a], yp[a], pos_label=True),
        # Aequitas's metrics that fairlearn lacks, counted row by row from their definitions
        "npv": lambda a, b: _share(~yt[a], ~yp[a]),
        "fdr": lambda a, b: _share(~yt[a], yp[a]),
        "for_": lambda a, b: _share(yt[a], ~yp[a]),
    }
    rows = np.arange(len(y))  # metrics receive row indices so they can read any column
    return MetricFrame(metrics=metrics, y_true=rows, y_pred=rows, sensitive_features=sensitive)


def _share(event: np.ndarray, among: np.ndarray) -> float:
    """Share of rows ``among`` where ``event`` holds (NaN when there are none)."""
    return float(event[among].mean()) if among.any() else float("nan")


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
    assert checked >= 12 * 14 * len(judged)


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


def test_fairness_summaries_equal_fairlearns_functions() -> None:
    y, p, groups = _random_predictions(3000, ["face", "not_face"], seed=4)
    result = audit(y, p, sensitive_features=groups["race"], options=AuditOptions(bootstrap=0))
    for ours, theirs in (
        (result.demographic_parity_difference(), demographic_parity_difference),
        (result.equalized_odds_difference(), equalized_odds_difference),
    ):
        expected = theirs(y == "face", p == "face", sensitive_features=groups["race"])
        assert ours == pytest.approx(expected, abs=1e-12)
    several = audit(*_random_predictions(300, ["a", "b", "c"])[:2], groups["race"][:300])
    with pytest.raises(ConfigError, match="need a binary target"):
        several.demographic_parity_difference()


def test_a_fact_measured_twice_is_counted_once() -> None:
    # Every positive is a man, so race-level FNR and race & male FNR are one fact; the headline
    # and the gate count it once.
    rng = np.random.default_rng(5)
    n = 4000
    race = rng.choice(["White", "Black"], n, p=[0.6, 0.4])
    gender = rng.choice(["male", "female"], n)
    y = np.where((gender == "male") & (rng.random(n) < 0.5), "pos", "neg")
    missed = (y == "pos") & (rng.random(n) < np.where(race == "Black", 0.5, 0.1))
    p = np.where(missed, "neg", y)
    frame = pd.DataFrame({"race": race, "gender": gender})
    result = audit(y, p, frame, AuditOptions(groups=["race", "gender"], pos_label="pos"))
    table = result.disparities
    fnr = table[(table.metric == "fnr") & (table.group.str.startswith("Black"))]
    race_row = fnr[fnr.attribute == "race"].iloc[0]
    men_row = fnr[fnr.group == "Black & male"].iloc[0]
    assert race_row.flag == men_row.flag == "fail"
    assert race_row.duplicate_of == "" and men_row.duplicate_of == "race = Black"
    assert race_row.direction == "worse"  # Black faces are missed more often
    assert "Black & male" not in set(result.failing().group[result.failing().metric == "fnr"])
    assert result.summary()["duplicates"] >= 1
    assert result.summary()["failing"] == len(
        table[(table.flag == "fail") & (table.duplicate_of == "")]
    )


def test_direction_says_which_side_of_the_reference_a_group_is() -> None:
    y, p, groups = _random_predictions(3000, ["face", "not_face"], seed=6)
    result = audit(
        y, p, groups["race"], AuditOptions(pos_label="face", reference={"race": "White"})
    )
    rows = result.disparities.set_index(["group", "metric"])
    assert rows.loc[("Black", "accuracy"), "direction"] == "worse"  # 35% wrong vs 10%
    assert rows.loc[("Black", "fnr"), "direction"] == "worse"  # lower is better for FNR
    assert rows.loc[("Black", "selection_rate"), "direction"] in ("higher", "lower")
    summary = result.summary()
    assert (
        sum(summary["failing_significant_by_direction"].values()) == summary["failing_significant"]
    )


def test_holm_correction_is_never_more_significant_and_adjusts_p_values() -> None:
    y, p, groups = _random_predictions(1500, ["face", "not_face"], seed=7)
    plain = audit(y, p, groups, AuditOptions(groups=["race", "gender"], bootstrap=400))
    holm = audit(
        y, p, groups, AuditOptions(groups=["race", "gender"], bootstrap=400, correction="holm")
    )
    tested = (plain.disparities.flag.isin(["pass", "fail"])) & (
        plain.disparities.duplicate_of == ""
    )
    raw, adjusted = plain.disparities.p_value[tested], holm.disparities.p_value[tested]
    assert (adjusted >= raw - 1e-12).all() and (adjusted > raw).any()
    assert holm.disparities.significant.sum() <= plain.disparities.significant.sum()
    assert holm.disparities.significant[tested].sum() >= 1  # Black's accuracy gap is large
    with pytest.raises(ConfigError, match="correction"):
        audit(y, p, groups, AuditOptions(correction="bonferroni"))


def test_paired_changes_equal_the_difference_and_are_tighter_than_unpaired() -> None:
    from debias.fairness.paired import paired_changes

    rng = np.random.default_rng(8)
    n = 4000
    race = rng.choice(["A", "B"], n, p=[0.8, 0.2])
    y = rng.choice(["x", "y"], n)
    wrong_before = rng.random(n) < np.where(race == "B", 0.3, 0.1)
    fixed = wrong_before & (race == "B") & (rng.random(n) < 0.5)  # the second model fixes half
    flip = {"x": "y", "y": "x"}
    before = np.where(wrong_before, [flip[v] for v in y], y)
    after = np.where(wrong_before & ~fixed, [flip[v] for v in y], y)
    table = paired_changes(y, before, after, {"race": race}, AuditOptions(bootstrap=500))
    rows = table.set_index(["attribute", "group"])
    for group in ("A", "B"):
        member = race == group
        expected = (after[member] == y[member]).mean() - (before[member] == y[member]).mean()
        assert rows.loc[("race", group), "change"] == pytest.approx(expected, abs=1e-12)
    b = rows.loc[("race", "B")]
    assert b.significant and b.ci_low > 0
    assert rows.loc[("race", "A"), "change"] == 0 and not rows.loc[("race", "A")].significant
    # Paired: the interval is much narrower than two independent accuracies' intervals combined.
    nb = (race == "B").sum()
    unpaired = 2 * 1.96 * np.sqrt(b.before * (1 - b.before) / nb + b.after * (1 - b.after) / nb)
    assert b.ci_high - b.ci_low < 0.6 * unpaired
    worst = rows.loc["worst group"].iloc[0]
    assert worst.before == pytest.approx(b.before) and worst.after == min(
        b.after, rows.loc[("race", "A"), "after"]
    )


def test_in_memory_module_is_audited_without_files_and_reported(tmp_path) -> None:
    import torch

    from debias import audit_model

    # A "classifier" that reads the red channel: right for group u, inverted for group v.
    rng = np.random.default_rng(9)
    n = 200
    group = np.repeat(["u", "v"], n // 2)
    truth = rng.choice(["dark", "light"], n)
    images = np.zeros((n, 3, 8, 8), dtype=np.uint8)
    images[:, 0] = np.where(truth == "light", 200, 50)[:, None, None]
    images[group == "v", 0] = 255 - images[group == "v", 0]

    class Red(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            red = x[:, 0].mean(dim=(1, 2))
            return torch.stack([0.5 - red, red - 0.5], dim=1) * 10

    result = audit_model(
        Red(),
        images,
        truth,
        {"group": group},
        classes=["dark", "light"],
        options=AuditOptions(bootstrap=100, pos_label="light"),
    )
    wide = result.wide("group")
    assert wide.loc["u", "accuracy"] == 1.0 and wide.loc["v", "accuracy"] == 0.0
    html = report_predictions(result, tmp_path / "mine", name="red-reader")
    facts = json.loads((html.parent / "report.json").read_text())
    assert facts["name"] == "red-reader" and facts["subject"]["kind"] == "predictions"
    assert facts["headline"]["overall_accuracy"] == pytest.approx(0.5)
    with pytest.raises(Exception, match="overwrite=True"):
        report_predictions(result, tmp_path / "mine")
