"""The outlier detector: pyod's contract, planted outliers found, the false-flag rate kept."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from debias import RunError, load_model, train
from debias.jobs.outliers import OutlierConfig, fit_detector, write_outliers
from debias.outliers import (
    LatentOutlierDetector,
    _combine,
    calibrate,
    combined_scores,
    p_values,
)


def test_conformal_threshold_keeps_the_target_false_flag_rate() -> None:
    rng = np.random.default_rng(0)
    # Four correlated components, as real ones are.
    base = rng.normal(size=(42_000, 1))
    scores = np.exp(base + 0.5 * rng.normal(size=(42_000, 4)))
    calibration, test = scores[:2000], scores[2000:]
    for combine in ("fisher", "min"):
        for target in (0.01, 0.05, 0.2):
            decision, threshold = calibrate(list(calibration.T), combine, target)
            p = np.stack([p_values(calibration[:, j], test[:, j]) for j in range(4)], axis=1)
            combined = _combine(np.log(p), combine, len(calibration))
            realised = (combined > threshold).mean()
            # The threshold is a quantile of 2,000 scores: allow 3 of its standard errors.
            tolerance = 3 * np.sqrt(target * (1 - target) / 2000)
            assert abs(realised - target) < tolerance, (combine, target, realised)
            assert abs((decision > threshold).mean() - target) < tolerance


def test_false_flag_rate_holds_with_few_calibration_faces_and_tied_p_values() -> None:
    # Six two-sided components, 300 calibration inliers: the minimum p-value takes few values, so
    # many calibration scores tie at the threshold. Averaged over 150 calibrations the realised
    # rate must be the conformal (k + 1) / (n + 1) with k = floor(0.05 * 301) - 1, i.e. 0.0498;
    # counting ties wrongly gives about 0.057 (new inliers flagged on the tie) or 0.037.
    from debias.outliers import sided_log_p_values

    rng = np.random.default_rng(0)
    rates = []
    for _ in range(150):
        calibration = rng.normal(size=(6, 300))
        new = rng.normal(size=(6, 4000))
        _, threshold = calibrate(list(calibration), "min", 0.05, [True] * 6)
        log_p = np.stack(
            [sided_log_p_values(calibration[j], new[j], True) for j in range(6)], axis=1
        )
        rates.append((_combine(log_p, "min", 300) > threshold).mean())
    assert 0.046 < np.mean(rates) < 0.053, np.mean(rates)


def test_false_flag_rate_holds_when_components_are_folded_first() -> None:
    # Three correlated components Fisher-combined into one p-value (the face evidence), then the
    # minimum with two more: the calibration faces must be folded as the new inputs are (each
    # against the others), or the threshold sits on another scale (not folding them: 0.034).
    rng = np.random.default_rng(1)
    sides, fold = [False, False, True, True, True], [True, True, True, False, False]
    for combine in ("min", "fisher"):
        rates = []
        for _ in range(100):
            shared = rng.normal(size=(1, 4300))
            scores = np.exp(shared + rng.normal(size=(5, 4300)))
            calibration, new = list(scores[:, :300]), list(scores[:, 300:])
            _, threshold = calibrate(calibration, combine, 0.05, sides, fold)
            combined = combined_scores(calibration, new, combine, sides, fold)
            rates.append((combined > threshold).mean())
        assert 0.046 < np.mean(rates) < 0.053, (combine, np.mean(rates))


def test_local_outlier_factor_does_not_flag_a_sparse_group() -> None:
    # A dense group of 900 training faces and a sparse one of 100 (a group rare in training): a
    # plain neighbour distance calls new faces of the sparse group anomalous, the local outlier
    # factor does not, and a point off both groups is still the most anomalous.
    from debias.outliers import _neighbours, _unit, local_outlier_factor

    rng = np.random.default_rng(0)
    centre_a, centre_b = np.eye(64)[0] * 10, np.eye(64)[1] * 10

    def group(centre: np.ndarray, n: int, spread: float) -> torch.Tensor:
        return _unit(torch.from_numpy(centre + spread * rng.normal(size=(n, 64))))

    bank = torch.cat([group(centre_a, 900, 0.5), group(centre_b, 100, 1.5)])
    radius = _neighbours(bank, bank, 10, skip_self=True)[0][:, -1]
    dense, sparse = group(centre_a, 200, 0.5), group(centre_b, 200, 1.5)
    off = _unit(torch.from_numpy(np.eye(64)[2] * 10 + 0.5 * rng.normal(size=(50, 64))))
    plain = {
        n: _neighbours(x, bank, 10)[0][:, -1].numpy() for n, x in (("d", dense), ("s", sparse))
    }
    assert np.median(plain["s"]) > 2 * np.median(plain["d"])
    lof = {n: local_outlier_factor(x, bank, radius, 10) for n, x in (("d", dense), ("s", sparse))}
    assert abs(np.median(lof["s"]) - np.median(lof["d"])) < 0.25
    assert local_outlier_factor(off, bank, radius, 10).min() > max(lof["d"].max(), lof["s"].max())


def test_p_values_are_conformal_inside_and_keep_falling_beyond() -> None:
    calibration = np.arange(1.0, 100.0)  # 99 scores
    p = p_values(calibration, np.array([0.0, 50.0, 99.0, 100.0, 120.0]))
    assert p[0] == 1.0 and p[1] == pytest.approx(51 / 100) and p[2] == pytest.approx(2 / 100)
    assert 0 < p[4] < p[3] <= 1 / 100


def _planted(tmp_path: Path, faces: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n, _, s, _ = faces.shape
    return {
        "constant": np.broadcast_to(
            rng.integers(0, 256, (n, 3, 1, 1), dtype=np.uint8), faces.shape
        ).copy(),
        "uniform noise": rng.integers(0, 256, faces.shape, dtype=np.uint8),
    }


def test_detector_contract_and_planted_outliers(synth_run: tuple[Path, Path], tmp_path) -> None:
    data, run = synth_run
    detector = fit_detector(run, OutlierConfig(model=str(run), data=str(data), device="cpu"))
    # pyod's attributes after fit
    assert isinstance(detector, LatentOutlierDetector)
    # A detection model: its face class beside the face views and the pixel statistics.
    assert detector.components_ == [
        "not_face", "hidden_features", "conv_lof", "reconstruction_ratio", "sharpness",
        "blockiness",
    ]  # fmt: skip
    assert len(detector.decision_scores_) == detector.n_calibration_ == len(detector.labels_) == 60
    assert set(np.unique(detector.labels_)) <= {0, 1} and np.isfinite(detector.threshold_)

    # Fresh inliers: faces drawn by the same generator with another seed.
    from debias import write_synthetic
    from debias.data import load_data

    write_synthetic(tmp_path / "fresh", n_faces=200, n_non_faces=200, seed=7)
    fresh = load_data(tmp_path / "fresh", image_size=32)
    faces = fresh.images[fresh.y == fresh.classes.index("face")]
    scenes = fresh.images[fresh.y == fresh.classes.index("not_face")]
    inlier = detector.decision_function(faces)
    # Floors for a 3-epoch model at 32 px; the real-face benchmark sets the real bar.
    floors = {"constant": 0.9, "uniform noise": 0.9, "not a face": 0.8}
    for name, images in {**_planted(tmp_path, faces), "not a face": scenes}.items():
        outlier = detector.decision_function(images)
        y = np.r_[np.zeros(len(inlier)), np.ones(len(outlier))]
        auroc = roc_auc_score(y, np.r_[inlier, outlier])
        assert auroc >= floors[name], (name, auroc)
    # The encoder's own features see scenes without the classifier's face class.
    face_scores, scene_scores = detector.score_components(faces), detector.score_components(scenes)
    for component, floor in (
        ("hidden_features", 0.9), ("conv_lof", 0.8), ("reconstruction_ratio", 0.75),
    ):  # fmt: skip
        y = np.r_[np.zeros(len(faces)), np.ones(len(scenes))]
        s = np.r_[face_scores[component], scene_scores[component]]
        assert roc_auc_score(y, s) > floor, component
    # Each view is averaged over the image and its mirror image, so mirroring changes none.
    mirrored = detector.score_components(np.ascontiguousarray(faces[:, :, :, ::-1]))
    for component in ("hidden_features", "conv_lof", "reconstruction_ratio"):
        np.testing.assert_allclose(mirrored[component], face_scores[component], rtol=1e-5)
    table = detector.score_table(faces[:10])
    assert list(table.columns) == [
        "not_face", "hidden_features", "conv_lof", "reconstruction_ratio", "sharpness",
        "blockiness", "density",
        "combined", "p_value", "is_outlier", "calibrated_on", "rare_p_value", "is_rare",
    ]  # fmt: skip
    assert (table["is_outlier"] == (table["p_value"] <= 0.05)).all()
    # pyod's predict: 0/1 labels, 1 = outlier, the same flags as the table's
    mixed = np.concatenate([faces[:10], scenes[:10]])
    labels = detector.predict(mixed)
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels, detector.score_table(mixed)["is_outlier"].astype(int))
    assert labels[10:].sum() > labels[:10].sum()
    # higher = more anomalous, in pyod's sense
    assert detector.decision_function(scenes).mean() > inlier.mean()


def _model_and_faces(synth_run: tuple[Path, Path]) -> tuple[torch.nn.Module, np.ndarray]:
    """The synthetic run's model and the first 100 of its images."""
    from debias import load_data

    data, run = synth_run
    return load_model(run)[0], load_data(data, image_size=32).images[:100]


def test_detector_fit_holds_out_calibration_faces_and_keeps_the_model_mode(
    synth_run: tuple[Path, Path],
) -> None:
    model, faces = _model_and_faces(synth_run)
    model.train()  # as if the caller were still training it
    detector = LatentOutlierDetector(model, positive=0, calibration_fraction=0.2).fit(faces)
    assert model.training  # scoring ran in eval mode and gave the mode back
    assert detector.n_calibration_ == len(detector.decision_scores_) == 20  # fit(X) holds out 20%
    model.eval()
    again = LatentOutlierDetector(model, positive=0, calibration_fraction=0.2).fit(faces)
    np.testing.assert_allclose(detector.decision_scores_, again.decision_scores_)
    # Calibrating again on scores alone: the same faces give the same threshold, other faces
    # another one, and nothing is scored again (the model is not needed).
    scores = detector.calibration_
    same = copy.copy(detector).fit_calibration(scores)
    assert same.threshold_ == detector.threshold_ and same.n_calibration_ == 20
    fewer = copy.copy(detector)
    fewer.model = None
    fewer.fit_calibration({c: v[:18] for c, v in scores.items()})
    assert fewer.n_calibration_ == 18 and fewer.threshold_ == np.inf  # 18 cannot flag 5%


def test_the_face_views_reference_holds_the_training_faces_mirror_images(
    synth_run: tuple[Path, Path],
) -> None:
    model, faces = _model_and_faces(synth_run)
    train, calibration = faces[:80], faces[80:]
    mirrored = np.ascontiguousarray(train[:, :, :, ::-1])
    fits = [
        LatentOutlierDetector(model, positive=0).fit(x, calibration=calibration)
        for x in (train, mirrored)
    ]
    # Training flips faces, so the views' reference does too: fitted on the training faces or
    # on their mirror images, the hidden layer's statistics and the conv bank are the same.
    assert len(fits[0].conv_bank_) == 2 * len(train)
    # float32 sums over the rows in another order
    for a, b in zip(fits[0].hidden_stats_, fits[1].hidden_stats_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    for component in ("hidden_features", "conv_lof"):
        np.testing.assert_allclose(
            fits[0].calibration_[component], fits[1].calibration_[component], rtol=1e-4
        )


def test_rare_faces_are_rare_not_outliers(synth_run: tuple[Path, Path]) -> None:
    data, run = synth_run
    detector = fit_detector(run, OutlierConfig(model=str(run), data=str(data), device="cpu"))
    samples = pd.read_csv(run / "samples.csv", keep_default_na=False)
    from debias.data import decode_images

    faces = samples[(samples.label == "face")]
    images, _ = decode_images(faces["path"].tolist(), 32)
    table = detector.score_table(images)
    dark = (faces["skin_tone"] == "dark").to_numpy()
    # Dark-skinned faces are the rare kind: the rarity score ranks them above light ones, and
    # they are flagged rare at least as often. (The flag itself, a 5% cut calibrated on 60
    # validation faces, is too coarse to compare rates closely on 42 dark faces.)
    assert roc_auc_score(dark, table["density"]) > 0.65
    assert table["is_rare"][dark].mean() >= table["is_rare"][~dark].mean()


def test_outliers_cli_job_streams_and_reports_unreadable(
    synth_run: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = synth_run
    incoming = tmp_path / "incoming" / "nested"
    incoming.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    labels = pd.read_csv(data / "labels.csv", keep_default_na=False)
    for i, rel in enumerate(labels[labels.label == "face"]["path"][:40]):
        Image.open(data / rel).save(incoming / f"face{i}.png")
        rows.append((f"nested/face{i}.png", "face"))
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            incoming / f"noise{i}.png"
        )
        rows.append((f"nested/noise{i}.png", "noise"))
    (incoming / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (incoming / "notes.txt").write_text("not an image, not scored")
    pd.DataFrame(rows, columns=["path", "type"]).to_csv(tmp_path / "incoming" / "eval.csv")
    out = tmp_path / "o" / "outliers.csv"
    report = write_outliers(
        OutlierConfig(
            model=str(run),
            data=str(tmp_path / "incoming"),
            eval_labels=str(tmp_path / "incoming" / "eval.csv"),
            chunk_size=16,  # several chunks
            device="cpu",
            out=str(out),
        )
    )
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 61 and table["rank"].tolist() == list(range(1, 62))
    broken = table[table.path.str.endswith("broken.jpg")].iloc[0]
    assert broken["is_outlier"] and broken["reason"]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["calibration_size"] == 60 and summary["target_false_flag_rate"] == 0.05
    assert len(summary["model_sha256"]) == 64 and "conv_lof" in summary["definitions"]
    assert summary["n_unreadable"] == 1
    noise = report.evaluation["types"]["noise"]
    assert noise["auroc"] >= 0.75 and report.evaluation["n_inliers"] == 40  # tiny model


def test_run_without_validation_faces_cannot_calibrate(labels_dir: Path, tmp_path: Path) -> None:
    from conftest import tiny_config

    run = tmp_path / "run"
    train(tiny_config(data=str(labels_dir), out=str(run), epochs=1, val_fraction=0.0))
    assert load_model(run)
    with pytest.raises(RunError, match="no validation faces to calibrate on"):
        fit_detector(run, OutlierConfig(model=str(run), data=str(labels_dir), device="cpu"))


def test_two_sided_components_catch_atypically_typical_inputs() -> None:
    # A blurred face reconstructs *better* than a sharp one: only the lower tail sees it.
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=2000)
    too_low = np.full(100, -4.0)
    from debias.outliers import sided_log_p_values

    assert np.exp(sided_log_p_values(calibration, too_low, False)).min() > 0.9
    assert np.exp(sided_log_p_values(calibration, too_low, True)).max() < 0.01
    middle = np.exp(sided_log_p_values(calibration, np.array([0.0]), True))[0]
    assert 0.9 < middle <= 1.0


def test_pixel_statistics_see_blur_and_blocking() -> None:
    import io

    from PIL import ImageFilter

    from debias.outliers import pixel_statistics

    rng = np.random.default_rng(0)
    base = (rng.random((64, 64, 3)) * 60 + np.linspace(0, 180, 64)[None, :, None]).astype(np.uint8)
    img = Image.fromarray(base)
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(2)))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=5)
    jpeg = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    stats = pixel_statistics(np.stack([base, blurred, jpeg]).transpose(0, 3, 1, 2))
    assert stats["sharpness"][1] < stats["sharpness"][0] - 1  # far less detail
    assert stats["blockiness"][2] > stats["blockiness"][0] + 0.3  # block edges stand out


def test_calibrating_on_faces_like_the_screened_ones(
    synth_run: tuple[Path, Path], tmp_path: Path
) -> None:
    from debias import DataError, write_synthetic

    _, run = synth_run
    # A population unlike the run's (half dark-skinned faces instead of 15%), split in two:
    # calibrate on one half (a CSV of paths), screen the other.
    labels = pd.read_csv(
        write_synthetic(tmp_path / "pop", n_faces=400, n_non_faces=0, dark_fraction=0.5, seed=11)
    )
    faces = labels[labels.label == "face"]
    faces.iloc[:200].to_csv(tmp_path / "pop" / "calibration.csv", index=False)
    faces.iloc[200:].to_csv(tmp_path / "pop" / "screen.csv", index=False)
    out = tmp_path / "o" / "outliers.csv"
    report = write_outliers(
        OutlierConfig(
            model=str(run),
            paths=str(tmp_path / "pop" / "screen.csv"),
            calibration=str(tmp_path / "pop" / "calibration.csv"),
            device="cpu",
            out=str(out),
        )
    )
    detector = report.detector
    assert detector.n_calibration_ == 200 and "calibration.csv" in report.calibrated_on
    assert np.isfinite(detector.threshold_)
    from debias.data import decode_images

    calibration_images, _ = decode_images(
        [str(tmp_path / "pop" / p) for p in faces["path"].iloc[:200]], 32
    )
    expected = detector.score_components(calibration_images)["reconstruction"]
    np.testing.assert_allclose(detector.calibration_["reconstruction"], expected, rtol=1e-5)
    # 200 exchangeable calibration faces: the realised rate on 200 more has sd about 0.02.
    assert report.table["is_outlier"].mean() < 0.12
    assert "calibration.csv" in json.loads(out.with_suffix(".json").read_text())["calibrated_on"]

    faces.iloc[:10].to_csv(tmp_path / "pop" / "few.csv", index=False)
    few = OutlierConfig(model=str(run), paths=str(tmp_path / "pop" / "screen.csv"), device="cpu")
    with pytest.raises(DataError, match=r"10 calibration images .* Give at least 19"):
        fit_detector(run, dataclasses.replace(few, calibration=str(tmp_path / "pop" / "few.csv")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"1 calibration image\(s\) cannot be read"):
        fit_detector(run, dataclasses.replace(few, calibration=str(broken)))


def test_evaluation_does_not_read_a_docstring(tmp_path: Path, monkeypatch) -> None:
    # python -OO strips docstrings; the evaluation's convention text must not come from one.
    from types import SimpleNamespace

    from debias.jobs import outliers as job

    monkeypatch.setattr(job.evaluate, "__doc__", None)
    table = pd.DataFrame(
        {
            "path": [str((tmp_path / n).resolve()) for n in ("a.png", "b.png", "c.png", "d.png")],
            "combined": [0.1, 0.2, 5.0, 6.0],
            "is_outlier": [False, False, True, True],
        }
    )
    labels = tmp_path / "types.csv"
    labels.write_text("path,type\na.png,inlier\nb.png,inlier\nc.png,noise\nd.png,noise\n")
    kinds = job._kinds(table, labels)
    result = job.evaluate(table, kinds, SimpleNamespace(contamination=0.05), ["inlier"])
    assert result["convention"] == job.EVALUATION_CONVENTION
    assert result["types"]["noise"]["auroc"] == 1.0 and result["false_flag_rate"] == 0.0


@pytest.mark.parametrize("chunk_size", [1, 2048])
def test_a_chunk_of_unreadable_files_only_is_reported_not_a_crash(
    synth_run: tuple[Path, Path], tmp_path: Path, chunk_size: int
) -> None:
    data, run = synth_run
    folder = tmp_path / "u"
    folder.mkdir()
    (folder / "a.jpg").write_text("x")  # not an image
    if chunk_size == 1:  # one bad file among good ones, each in a chunk of its own
        for name in sorted((data / "face").iterdir())[:2]:
            (folder / name.name).write_bytes(name.read_bytes())
    report = write_outliers(
        OutlierConfig(
            model=str(run), data=str(folder), chunk_size=chunk_size, out=str(tmp_path / "o.csv")
        )
    )
    bad = report.table[report.table["path"].str.endswith("a.jpg")]
    assert len(bad) == 1 and bool(bad["is_outlier"].iloc[0]) and bad["reason"].iloc[0] != ""
    assert len(report.table) == (3 if chunk_size == 1 else 1)
    assert report.table["combined"].notna().sum() == len(report.table) - 1


def test_outliers_cli_prints_a_scan_where_nothing_could_be_read(
    synth_run: tuple[Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from debias_cli.main import app

    _, run = synth_run
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "a.jpg").write_text("x")
    argv = ["outliers", "--model", str(run), "--data", str(tmp_path / "u")]
    result = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps at 80 columns
    assert "1 unreadable" in said and "a.jpg" in said
    written = pd.read_csv(tmp_path / "o.csv")
    assert list(written.columns[:2]) == ["path", "rank"] and "p_value" in written.columns


def _detector_on(calibration: dict[str, np.ndarray], groups: np.ndarray | None):
    """A detector calibrated on given component scores (the model plays no part in judging)."""
    from debias.outliers import RARITY

    detector = LatentOutlierDetector(model=None, contamination=0.05)  # type: ignore[arg-type]
    detector.components_ = ["reconstruction", "mahalanobis"]
    return detector.fit_calibration({**calibration, RARITY: calibration["reconstruction"]}, groups)


def test_group_conditional_calibration_keeps_each_groups_rate_at_the_target() -> None:
    from debias.outliers import RARITY

    # A rare group whose faces look more anomalous to every component (as rare faces do): one
    # pooled threshold flags it far above the target; its own threshold flags it at the target.
    rng = np.random.default_rng(0)

    def draw(n_common: int, n_rare: int):
        shift = np.r_[np.zeros(n_common), np.full(n_rare, 1.2)]
        scores = {c: np.exp(rng.normal(size=len(shift)) * 0.5 + shift) for c in
                  ("reconstruction", "mahalanobis")}  # fmt: skip
        return scores, np.r_[np.full(n_common, "common"), np.full(n_rare, "rare")].astype(object)

    calibration, groups = draw(1500, 500)
    detector = _detector_on(calibration, groups)
    new, new_groups = draw(20_000, 20_000)
    new[RARITY] = new["reconstruction"]
    pooled = detector.table_from_scores(new)
    mondrian = detector.table_from_scores(new, new_groups)
    tolerance = 3 * np.sqrt(0.05 * 0.95 / 500)
    for name in ("common", "rare"):
        rows = new_groups == name
        assert abs(mondrian["is_outlier"][rows].mean() - 0.05) < tolerance, name
        assert (mondrian["calibrated_on"][rows] == name).all()
    rare = new_groups == "rare"
    # The disparity one pooled threshold makes: the rare group flagged about twice as often.
    assert pooled["is_outlier"][rare].mean() > 1.6 * pooled["is_outlier"][~rare].mean()
    assert (pooled["calibrated_on"] == "").all()
    # A face of a group without its own calibration is judged by the pooled threshold.
    other = detector.table_from_scores({c: v[:10] for c, v in new.items()}, ["martian"] * 10)
    assert (other["calibrated_on"] == "").all()


def test_calibration_groups_through_the_job(synth_run: tuple[Path, Path], tmp_path: Path) -> None:
    from debias import ConfigError, write_synthetic

    _, run = synth_run
    labels = pd.read_csv(
        write_synthetic(tmp_path / "pop", n_faces=400, n_non_faces=0, dark_fraction=0.5, seed=12),
        keep_default_na=False,
    )
    faces = labels[labels.label == "face"].copy()
    faces["site"] = ["a"] * 190 + ["b"] * 10 + ["a"] * 200  # b: too few to calibrate alone
    faces.iloc[:200].to_csv(tmp_path / "pop" / "calibration.csv", index=False)
    faces.iloc[200:].to_csv(tmp_path / "pop" / "screen.csv", index=False)
    config = OutlierConfig(
        model=str(run),
        paths=str(tmp_path / "pop" / "screen.csv"),
        calibration=str(tmp_path / "pop" / "calibration.csv"),
        calibration_groups="skin_tone",
        device="cpu",
        out=str(tmp_path / "o" / "outliers.csv"),
    )
    report = write_outliers(config)
    assert set(report.detector.group_calibration_) == {"dark", "light"}
    screened = pd.read_csv(tmp_path / "pop" / "screen.csv", keep_default_na=False)
    tone = dict(zip((tmp_path / "pop" / screened["path"]).map(lambda p: str(p.resolve())),
                    screened["skin_tone"], strict=True))  # fmt: skip
    judged = report.table["calibrated_on"].to_numpy()
    assert (judged == report.table["path"].map(tone).to_numpy()).all()  # its own group's
    rates = {r["group"]: r for r in report.by_group["skin_tone"]}
    assert set(rates) == {"dark", "light"} and rates["dark"]["n"] + rates["light"]["n"] == 200
    assert rates["dark"]["ci_low"] <= rates["dark"]["rate"] <= rates["dark"]["ci_high"]
    summary = json.loads((tmp_path / "o" / "outliers.json").read_text())
    assert summary["by_group"]["skin_tone"] == report.by_group["skin_tone"]

    small = write_outliers(dataclasses.replace(config, calibration_groups="site", overwrite=True))
    assert small.detector.small_groups_ == {"b": 10}
    assert any("site=b (10)" in n and "at least 19" in n for n in small.notes)
    with pytest.raises(ConfigError, match="must be a CSV with a 'skin_tone' column"):
        write_outliers(dataclasses.replace(config, paths=None, data=str(tmp_path / "pop"),
                                           overwrite=True))  # fmt: skip


def test_attribute_run_tells_non_faces_by_its_face_evidence(tmp_path: Path) -> None:
    """A classifier with no face class (glasses or not) still flags scenes, at the target rate."""
    from conftest import tiny_config

    from debias import ModelConfig, write_synthetic
    from debias.data import load_data, write_shortcut_synthetic

    write_shortcut_synthetic(tmp_path / "glasses", n_faces=400, seed=0)
    run = tmp_path / "run"
    model = ModelConfig(image_size=32, latent_dim=16, filters=8, hidden=64)
    train(tiny_config(data=str(tmp_path / "glasses"), out=str(run), epochs=3, model=model))
    detector = fit_detector(run, OutlierConfig(model=str(run), device="cpu"))
    assert detector.components_ == [
        "hidden_features", "conv_lof", "reconstruction_ratio", "sharpness", "blockiness",
    ]  # fmt: skip
    write_shortcut_synthetic(tmp_path / "faces", n_faces=400, seed=5)
    faces = load_data(tmp_path / "faces", image_size=32).images
    write_synthetic(tmp_path / "scenes", n_faces=20, n_non_faces=200, seed=7)
    both = load_data(tmp_path / "scenes", image_size=32)
    scenes = both.images[both.y == both.classes.index("not_face")]
    inlier, outlier = detector.decision_function(faces), detector.decision_function(scenes)
    y = np.r_[np.zeros(len(faces)), np.ones(len(scenes))]
    # 0.98 on this 3-epoch run; the real-face benchmark sets the real bar (scene crops).
    assert roc_auc_score(y, np.r_[inlier, outlier]) >= 0.95
    for component in ("hidden_features", "conv_lof", "reconstruction_ratio"):
        own = detector.score_components(faces)[component]
        other = detector.score_components(scenes)[component]
        assert roc_auc_score(y, np.r_[own, other]) > 0.75, component
    assert abs(detector.predict(faces).mean() - 0.05) <= 0.04  # 80 calibration faces
