"""Last-layer repair (DFR): the estimator on planted features, then whole models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from debias import ModelConfig, repair
from debias.data import write_shortcut_synthetic
from debias.errors import ConfigError, DataError
from debias.lastlayer import LastLayerRepair


def _shortcut_features(n: int, rng: np.random.Generator, agree: float) -> tuple[np.ndarray, ...]:
    """Feature 0 carries the class weakly, feature 1 the group strongly; ``agree`` of the rows
    have group == class (the shortcut), the rest break it."""
    y = rng.integers(0, 2, n)
    g = np.where(rng.random(n) < agree, y, 1 - y)
    X = np.c_[y + rng.normal(0, 0.7, n), 3.0 * g + rng.normal(0, 0.3, n), rng.normal(size=(n, 20))]
    return X, y, g


def _worst(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    return min(float((pred == y)[(y == a) & (g == b)].mean()) for a in (0, 1) for b in (0, 1))


# The layer a shortcut-taking model ends with: it reads the group feature only.
SHORTCUT_W = np.array([[0.0, -1.5] + [0.0] * 20, [0.0, 1.5] + [0.0] * 20])
SHORTCUT_B = np.array([2.25, -2.25])


def test_the_refit_layer_stops_reading_the_shortcut() -> None:
    rng = np.random.default_rng(0)
    X, y, g = _shortcut_features(4000, rng, agree=0.5)
    labelled = np.concatenate(
        [rng.choice(np.flatnonzero((y == a) & (g == b)), 40, replace=False) for a in (0, 1)
         for b in (0, 1)]
    )  # fmt: skip
    est = LastLayerRepair(n_draws=4, cv=4).fit(
        X[labelled], y[labelled], g[labelled], old_coef=SHORTCUT_W, old_intercept=SHORTCUT_B
    )
    assert est.old_worst_ == 0.0 and est.improved_
    assert est.cv_worst_ > 0.7
    test = np.setdiff1d(np.arange(4000), labelled)
    old = (X[test] @ SHORTCUT_W.T + SHORTCUT_B).argmax(1)
    assert _worst(old, y[test], g[test]) == 0.0
    assert _worst(est.predict(X[test]), y[test], g[test]) > 0.7  # on faces it never saw
    assert abs(est.coef_[1, 1] - est.coef_[0, 1]) < abs(est.coef_[1, 0] - est.coef_[0, 0])


def test_a_layer_that_cannot_be_beaten_is_kept() -> None:
    rng = np.random.default_rng(1)
    X, y, g = _shortcut_features(200, rng, agree=0.5)
    X[:, 0] = np.where(y == 1, 5.0, -5.0)  # the class is plain to see: the old layer is perfect
    perfect_w = np.zeros((2, 22))
    perfect_w[1, 0], perfect_w[0, 0] = 1.0, -1.0
    est = LastLayerRepair(n_draws=2, cv=3).fit(
        X, y, g, old_coef=perfect_w, old_intercept=np.zeros(2)
    )
    assert est.old_worst_ == 1.0
    assert not est.improved_  # equal is not above: the old layer stays


def test_bad_inputs_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match=r"^X="):
        LastLayerRepair().fit(np.zeros((3, 2)), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"^groups=.*single labelled example"):
        LastLayerRepair().fit(np.zeros((3, 2)), np.array([0, 1, 1]), np.array([0, 0, 0]))


class _Net(torch.nn.Module):
    """Reads the mean of each colour channel: red carries the class, green the group."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _images(y: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rng.integers(60, 120, size=(len(y), 3, 8, 8))
    x[:, 0] += (y * 30)[:, None, None] + rng.integers(-20, 20, size=(len(y), 1, 1))
    x[:, 1] += (g * 80)[:, None, None]
    return x.clip(0, 255).astype(np.uint8)


def _shortcut_net() -> _Net:
    net = _Net()
    with torch.no_grad():  # a model that took the shortcut: it reads green (the group) only
        net.fc.weight[:] = torch.tensor([[0.0, -20.0, 0.0], [0.0, 20.0, 0.0]])
        net.fc.bias[:] = torch.tensor([11.0, -11.0])
    return net


def test_repair_refits_a_modules_last_layer_and_leaves_the_original_alone() -> None:
    rng = np.random.default_rng(0)
    y, g = np.repeat([0, 1, 0, 1], 30), np.repeat([0, 0, 1, 1], 30)
    net = _shortcut_net()
    before = net.fc.weight.detach().clone()
    names = np.array(["young", "old"])[y]
    result = repair(net, _images(y, g, rng), names, {"gender": g}, classes=["young", "old"])
    assert result.repaired and result.estimator.old_worst_ == 0.0
    assert torch.equal(net.fc.weight, before)  # the caller's model is untouched
    y_new, g_new = rng.integers(0, 2, 2000), rng.integers(0, 2, 2000)
    with torch.no_grad():
        fresh = torch.from_numpy(_images(y_new, g_new, rng)).float() / 255
        old_pred = net(fresh).argmax(1).numpy()
        new_pred = result.model(fresh).argmax(1).numpy()
    assert _worst(old_pred, y_new, g_new) < 0.05
    assert _worst(new_pred, y_new, g_new) > 0.75
    summary = result.summary()
    assert summary["labelled"] == 120 and summary["worst_cell_old"] == 0.0
    assert {c["n"] for c in summary["cells"]} == {30}


def test_repair_keeps_a_model_it_cannot_improve() -> None:
    rng = np.random.default_rng(1)
    y, g = np.repeat([0, 1, 0, 1], 20), np.repeat([0, 0, 1, 1], 20)
    images = _images(y, g, rng)
    images[:, 0] = np.where(y == 1, 250, 10)[:, None, None]  # red alone tells the class apart
    net = _Net()
    with torch.no_grad():
        net.fc.weight[:] = torch.tensor([[-50.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
        net.fc.bias[:] = torch.tensor([25.0, -25.0])  # class 1 above half red
    result = repair(net, images, y.astype(str), pd.DataFrame({"g": g}), classes=["0", "1"])
    assert not result.repaired
    assert torch.equal(result.model.fc.weight, net.fc.weight)


def test_repair_refuses_an_empty_cell_unless_allowed() -> None:
    rng = np.random.default_rng(2)
    y, g = np.repeat([0, 1, 0], 20), np.repeat([0, 0, 1], 20)  # no class-1 face of group 1
    args = (_shortcut_net(), _images(y, g, rng), y.astype(str), {"g": g})
    with pytest.raises(DataError, match=r"1 class x group cell.*\(1 x 1\).*allow_empty_cells"):
        repair(*args, classes=["0", "1"])
    assert repair(*args, classes=["0", "1"], allow_empty_cells=True).estimator.cells_
    few = np.isin(np.arange(60), [0, 1, 2, 3, 4, 20, 21, 22, 23, 24])  # 5 per class in group 1
    small = repair(*args[:3], {"g": few.astype(int)}, classes=["0", "1"])
    assert any("fewer than 10" in w for w in small.warnings)


# ---------------------------------------------------------------------------------------------
# debias repair: every model kind through the command line


def _write_faces(root: Path, y: np.ndarray, g: np.ndarray, seed: int) -> Path:
    """PNG files of _images (16 px) and a labels CSV with their class and group."""
    from PIL import Image

    root.mkdir(parents=True)
    images = _images(y, g, np.random.default_rng(seed)).repeat(2, axis=2).repeat(2, axis=3)
    rows = []
    for i, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(root / f"{i}.png")
        rows.append((f"{i}.png", ["young", "old"][y[i]], f"g{g[i]}"))
    pd.DataFrame(rows, columns=["path", "label", "group"]).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def _balanced(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat([0, 1, 0, 1], n), np.repeat([0, 0, 1, 1], n)


def _cli(*args: object) -> Any:
    from typer.testing import CliRunner

    from debias_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _worst_file(path: Path, labels: Path) -> float:
    from debias.data import load_data
    from debias.predict import load_classifier, predict_images

    data = load_data(labels=labels, groups=["group"], image_size=16)
    pred = predict_images(load_classifier(path), data.images).argmax(1)
    order = ["young", "old"]  # the model's classes, in output order
    truth = pd.Index(order).get_indexer(np.asarray(data.classes)[data.y])
    g = data.frame["group"].str[1:].astype(int).to_numpy()
    return _worst(pred, truth, g)


@pytest.mark.parametrize("kind", ["pt2", "onnx"])
def test_a_model_file_is_repaired_in_its_own_format(kind: str, tmp_path: Path) -> None:
    net = _shortcut_net().eval()
    example = torch.zeros(2, 3, 16, 16)
    path = tmp_path / f"net.{kind}"
    if kind == "pt2":
        batch = torch.export.Dim.AUTO
        torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), path)
    else:
        torch.onnx.export(
            net, (example,), str(path), input_names=["x"], dynamic_axes={"x": {0: "batch"}},
            dynamo=False,
        )  # fmt: skip
    labels = _write_faces(tmp_path / "labelled", *_balanced(30), seed=0)
    held_out = _write_faces(tmp_path / "held-out", *_balanced(200), seed=1)
    result = _cli("repair", "--model", path, "--labels", labels, "--groups", "group", "--classes",
                  "young,old", "--image-size", 16, "--out", tmp_path / "out", "--eval-labels",
                  held_out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Repaired:" in result.output
    repaired = tmp_path / "out" / path.name
    summary = json.loads((tmp_path / "out" / "repair.json").read_text())
    assert summary["repaired"] and summary["labelled"] == 120
    assert _worst_file(path, held_out) < 0.05  # the shortcut model
    assert _worst_file(repaired, held_out) > 0.75  # the same file, its last layer refit
    evaluation = summary["evaluation"]  # on the held-out faces: before, after, and a report
    assert evaluation["worst_group_accuracy_after"] > evaluation["worst_group_accuracy_before"]
    facts = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    # per group (each holds both classes): the shortcut model is at chance in both
    assert facts["baseline_headline"]["worst_group_accuracy"] <= 0.55
    assert facts["headline"]["worst_group_accuracy"] > 0.8


def test_a_run_is_repaired_into_a_new_run_folder(tmp_path: Path) -> None:
    from conftest import tiny_config

    from debias import load_model, train

    labels = write_shortcut_synthetic(tmp_path / "glasses", n_faces=240, size=32, seed=0)
    run = tmp_path / "run"
    config = tiny_config(labels=str(labels), out=str(run), epochs=3, baseline=True)
    train(dataclasses.replace(config, model=ModelConfig(image_size=32, latent_dim=8, filters=4,
                                                        hidden=32)))  # fmt: skip
    out = tmp_path / "repaired"
    result = _cli("repair", "--model", run, "--labels", labels, "--groups", "skin_tone",
                  "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "repair.json").read_text())
    old, _ = load_model(run)
    new, card = load_model(out)
    rows = old.num_classes
    same = torch.equal(old.encoder.head.weight[:rows], new.encoder.head.weight[:rows])
    assert same != summary["repaired"]  # replaced exactly when the repair says it helped
    assert torch.equal(old.encoder.head.weight[rows:], new.encoder.head.weight[rows:])  # latent
    assert card["repair"]["labelled"] == 240 and card["repair"]["repaired"] == summary["repaired"]
    audit = _cli("audit", "--model", out, "--labels", labels, "--out", tmp_path / "audit",
                 "--bootstrap", 50)  # fmt: skip
    assert audit.exit_code == 0, audit.output
    report = _cli("report", "--model", out, "--audit", tmp_path / "audit", "--out",
                  tmp_path / "report")  # fmt: skip
    assert report.exit_code == 0, report.output
    card = json.loads((tmp_path / "report" / "report.json").read_text())["model_card"]
    assert "240 group-labelled faces" in card["method"]
    again = _cli("repair", "--model", run, "--labels", labels, "--groups", "skin_tone",
                 "--out", out)  # fmt: skip
    assert again.exit_code == 1 and "--overwrite" in again.output
    missing = _cli("repair", "--model", run, "--labels", labels, "--out", tmp_path / "x")
    assert missing.exit_code == 1 and "Error: --groups []: names no group" in missing.output
    assert "Pass --groups race,gender" in missing.output


def test_a_run_with_group_labels_ends_repaired(tmp_path: Path) -> None:
    from conftest import tiny_config

    from debias import load_model, train
    from debias.facts import model_card, report_subject

    labels = write_shortcut_synthetic(tmp_path / "glasses", n_faces=240, size=32, seed=0)
    few = pd.read_csv(labels).groupby(["label", "skin_tone"]).head(12)  # 12 per cell
    few.to_csv(tmp_path / "glasses" / "few.csv", index=False)
    config = tiny_config(
        labels=str(labels), out=str(tmp_path / "run"), epochs=3, baseline=True,
        group_labels=str(tmp_path / "glasses" / "few.csv"), repair_groups=["skin_tone"],
        model=ModelConfig(image_size=32, latent_dim=8, filters=4, hidden=32),
    )  # fmt: skip
    result = train(config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    repair_half, choose_half = saved["repair"]["labelled"], saved["repair"]["chose_epoch"]
    assert repair_half + choose_half == len(few) and abs(repair_half - choose_half) <= 4
    assert saved["repair"]["groups"] == ["skin_tone"] and saved["train"]["select"] == "worst-group"
    scores = [m["val_worst_group"] for m in result.metrics]
    kept = result.metrics[-1]["kept_epoch"]
    assert scores[kept - 1] == max(scores)  # the epoch kept is the best on the choosing half
    loaded, _ = load_model(tmp_path / "run")
    assert torch.equal(loaded.encoder.head.weight, result.model.encoder.head.weight)
    with pytest.raises(ConfigError, match=r"^select='worst-group': reads the group labels"):
        train(dataclasses.replace(config, group_labels=None, select="worst-group"))
    subject, _ = report_subject(tmp_path / "run", None, None)
    card = model_card(saved, None, subject)
    assert f"{repair_half} group-labelled faces" in card.method
    assert "best worst class x group accuracy" in card.method
    assert "to repair the last layer" in card.groups


def test_debias_repair_stays_the_function_whatever_was_imported_first() -> None:
    import debias
    import debias.jobs.repair  # noqa: F401  (it imports the module behind the function)

    assert callable(debias.repair) and debias.repair.__name__ == "repair"


def test_every_class_weighs_the_same_whatever_its_number_of_groups() -> None:
    from debias.lastlayer import _class_weights

    # a detector's labelled faces: four races of faces, one cell of non-faces, 5 rows each
    y = np.repeat([0, 0, 0, 0, 1], 5)
    cell = np.repeat([0, 1, 2, 3, 4], 5)
    w = _class_weights(y, cell, np.arange(25))
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())
    same = _class_weights(np.repeat([0, 0, 1, 1], 5), np.repeat([0, 1, 2, 3], 5), np.arange(20))
    assert np.array_equal(same, np.ones(20))  # equal cells per class: the fit is unweighted
