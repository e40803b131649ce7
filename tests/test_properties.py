"""Property-based tests (Hypothesis) of the CSV readers: any text either loads exactly or is a
DataError with one line — never another exception, never a silently changed value."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from debias import DataError
from debias.data.layouts import read_labels_csv
from debias.predict import read_predictions_csv

# Any printable text, including separators, quotes, newlines, formula starts and non-ASCII.
cells = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00")
    | st.sampled_from([",", ";", '"', "\n", "=", "+", "-", "@", " ", "é", "中"]),
    max_size=12,
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line(exc: DataError) -> None:
    assert "\n" not in str(exc)  # cell values appear as repr(), so even "\n" stays one line
    assert str(exc).split(":")[0].endswith(".csv")  # names the file


@SETTINGS
@given(rows=st.lists(st.tuples(cells, cells, cells), min_size=1, max_size=8))
def test_labels_csv_loads_exactly_or_fails_cleanly(rows: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "labels.csv"
        frame = pd.DataFrame(rows, columns=["path", "label", "note"])
        frame.to_csv(csv, index=False)
        try:
            table, _ = read_labels_csv(csv, None)
        except DataError as exc:
            _one_line(exc)
            return
        assert table["label"].tolist() == [label.strip() for _, label, _ in rows]
        assert table["note"].tolist() == [note for _, _, note in rows]
        root = Path(tmp).resolve()
        assert all(Path(p).resolve().is_relative_to(root) for p in table["path"])


@SETTINGS
@given(
    y=st.lists(st.sampled_from(["0", "1"]), min_size=1, max_size=30),
    scores=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=30, max_size=30
    ),
    threshold=st.floats(0, 1),
)
def test_scores_threshold_exactly_or_fail_cleanly(
    y: list[str], scores: list[float], threshold: float
) -> None:
    scores = scores[: len(y)]
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "preds.csv"
        pd.DataFrame({"y_true": y, "score": scores, "g": "a"}).to_csv(csv, index=False)
        try:
            table = read_predictions_csv(csv, threshold=threshold)
        except DataError as exc:
            _one_line(exc)
            assert not all(0 <= s <= 1 for s in scores)  # only bad scores are refused
            return
        expected = np.where(np.array(scores, dtype=np.float64) >= threshold, "1", "0")
        assert table["y_pred"].tolist() == expected.tolist()


@SETTINGS
@given(
    y_true=st.lists(st.sampled_from(["cat", "dog", "owl"]), min_size=1, max_size=20),
    y_pred=st.lists(st.sampled_from(["cat", "dog", "owl", "eel"]), min_size=20, max_size=20),
)
def test_predicted_classes_must_be_known(y_true: list[str], y_pred: list[str]) -> None:
    y_pred = y_pred[: len(y_true)]
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "preds.csv"
        pd.DataFrame({"y_true": y_true, "y_pred": y_pred}).to_csv(csv, index=False)
        try:
            table = read_predictions_csv(csv)
        except DataError as exc:
            assert "not a value of y_true" in str(exc)
            assert set(y_pred) - set(y_true)
            return
        assert set(y_pred) <= set(y_true)
        assert table["y_pred"].tolist() == y_pred
        assert read_predictions_csv(csv, classes=["cat", "dog", "owl", "eel"]) is not None
