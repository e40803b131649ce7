"""Where predictions come from: CSVs (ours, Aequitas's), runs, TorchScript, ONNX; never pickles."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from debias import ConfigError, DataError, RunError
from debias.fairness.audit import AuditOptions
from debias.jobs.audit import AuditConfig, write_audit
from debias.predict import load_classifier, read_predictions_csv
from debias.runfolder import load_model


def test_csv_with_aequitas_names_and_a_threshold(tmp_path: Path) -> None:
    csv = tmp_path / "preds.csv"
    csv.write_text("label_value,score,race\n1,0.9,a\n0,0.7,a\n1,0.2,b\n0,0.1,b\n")
    table = read_predictions_csv(csv, threshold=0.5)
    assert table["y_pred"].tolist() == ["1", "1", "0", "0"]
    assert read_predictions_csv(csv, threshold=0.8)["y_pred"].tolist() == ["1", "0", "0", "0"]


def test_csv_semicolons_and_paths_relative_to_the_csv(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    csv = tmp_path / "sub" / "preds.csv"
    csv.write_text("path;y_true;y_pred;g\nimg/1.png;a;b;x\nimg/2.png;b;b;y\n")
    table = read_predictions_csv(csv)
    assert table["y_pred"].tolist() == ["b", "b"]
    assert table["path"][0] == str((tmp_path / "sub" / "img" / "1.png").resolve())


@pytest.mark.parametrize(
    "text, message",
    [
        ("y_pred,race\n1,a\n", "column 'y_true' not found"),
        ("y_true,race\n1,a\n", "column 'y_pred' not found"),
        ("y_true,y_pred,race\n1,1,a\n,0,b\n", "1 row(s) have an empty 'y_true' (first: row 3)"),
        ("y_true,y_pred,race\n1,1,a\nNaN,0,b\n", "empty 'y_true'"),
        ("y_true,score,race\n1,0.3,a\n0,high,b\n", "row 3 has score 'high'"),
        (
            "y_true,score,race\n1,0.3,a\n0,1.7,b\n",
            "row 3 has score '1.7', which is not a number between 0 and 1",
        ),
        ("y_true,y_pred\na,a\nb,c\n", "row 3 predicts 'c', which is not a value of y_true"),
        ("y_true,score\na,0.3\nb,0.2\nc,0.9\n", "needs a binary target"),
    ],
)
def test_bad_csv_is_a_clear_data_error(tmp_path: Path, text: str, message: str) -> None:
    csv = tmp_path / "preds.csv"
    csv.write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_predictions_csv(csv)


def test_all_empty_group_column_is_an_error(tmp_path: Path) -> None:
    csv = tmp_path / "preds.csv"
    csv.write_text("y_true,y_pred,race,gender\n1,1,a,\n0,0,b,\n")
    with pytest.raises(DataError, match="group column 'gender' is empty in every row"):
        write_audit(
            AuditConfig(
                predictions=str(csv),
                options=AuditOptions(groups=["race", "gender"]),
                out=str(tmp_path / "o"),
            )
        )


class _Boom:
    """Unpickling this would create a marker file: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_posing_as_a_model_is_refused_unopened(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    raw = tmp_path / "model.pt"
    raw.write_bytes(pickle.dumps(_Boom(marker), protocol=4))
    with pytest.raises(RunError, match="is a Python pickle"):
        load_classifier(raw)
    zipped = tmp_path / "model.pth"  # torch.save's zip format, pickle inside
    torch.save({"model": _Boom(marker)}, zipped)
    with pytest.raises(RunError, match="TorchScript or ONNX model"):
        load_classifier(zipped)
    assert not marker.exists()


def test_text_file_is_not_a_model(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("hello")
    with pytest.raises(RunError, match="TorchScript or ONNX model"):
        load_classifier(bogus)


class _Logits(torch.nn.Module):
    """An external classifier made of a run's encoder: logits from [0, 1] images."""

    def __init__(self, run: Path) -> None:
        super().__init__()
        self.model = load_model(run)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)[0]


def _export(run: Path, path: Path, kind: str) -> None:
    module = _Logits(run).eval()
    example = torch.zeros(2, 3, 32, 32)
    if kind == "torchscript":
        torch.jit.save(torch.jit.trace(module, example), str(path))
    elif kind == "torch-export":  # what this torch recommends; the batch dimension is dynamic
        program = torch.export.export(
            module, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},)
        )
        torch.export.save(program, str(path))
    else:
        pytest.importorskip("onnxruntime")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )


@pytest.mark.parametrize(
    "kind, name",
    [("torchscript", "model.pt"), ("onnx", "model.onnx"), ("torch-export", "model.pt2")],
)
def test_external_model_gives_the_same_audit_as_its_run(
    synth_run: tuple[Path, Path], tmp_path: Path, kind: str, name: str
) -> None:
    data, run = synth_run
    path = tmp_path / name
    _export(run, path, kind)
    ours = write_audit(
        AuditConfig(
            model=str(run),
            data=str(data),
            options=AuditOptions(bootstrap=0),
            out=str(tmp_path / "a"),
        )
    )
    theirs = write_audit(
        AuditConfig(
            model=str(path),
            data=str(data),
            image_size=32,
            options=AuditOptions(bootstrap=0),
            embed_with=str(run),
            out=str(tmp_path / "b"),
        )
    )
    agree = (ours.predictions["y_pred"] == theirs.predictions["y_pred"]).mean()
    assert agree > 0.995  # float differences may flip a prediction at exactly 0.5
    a = ours.result.by_group.set_index(["attribute", "group", "metric", "class"])["value"]
    b = theirs.result.by_group.set_index(["attribute", "group", "metric", "class"])["value"]
    np.testing.assert_allclose(a.to_numpy(), b.reindex(a.index).to_numpy(), atol=0.01)
    p = np.stack([theirs.predictions["p_face"], ours.predictions["p_face"]])
    assert np.abs(p[0] - p[1]).max() < 1e-3
    # Each audit.json says what it audited: the weights' hash, the input it was fed, the classes
    import hashlib
    import json

    facts = {k: json.loads((tmp_path / k / "audit.json").read_text())["model"] for k in "ab"}
    checkpoint = hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest()
    assert facts["a"]["sha256"] == checkpoint and facts["a"]["kind"] == "debias-run"
    assert facts["b"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert facts["a"]["input_size"] == facts["b"]["input_size"] == 32
    assert facts["b"]["normalisation_assumed"] and facts["b"]["mean"] == [0.0, 0.0, 0.0]
    assert not facts["a"]["normalisation_assumed"]
    assert facts["a"]["classes"] == facts["b"]["classes"] == ["face", "not_face"]
    assert facts["b"]["kind"] == kind
    assert any("assumed" in note for note in theirs.notes)  # said in the terminal and report


def test_export_program_holding_pickles_is_refused_unopened(tmp_path: Path) -> None:
    # torch.export.load would unpickle a weight marked use_pickle (with weights_only=False):
    # such an archive is refused before torch reads it.
    import json
    import zipfile

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval()
    program = torch.export.export(
        module, (torch.zeros(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    clean = tmp_path / "clean.pt2"
    torch.export.save(program, str(clean))
    assert load_classifier(clean).kind == "torch-export"
    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
                payload = f"{item.filename.rsplit('/', 1)[0]}/{first['path_name']}"
            dst.writestr(item, data)
    with zipfile.ZipFile(evil, "a") as dst:  # a pickle that would touch the marker if loaded
        dst.writestr(payload + ".evil", pickle.dumps(_Boom(marker)))
    with pytest.raises(RunError, match="stores .* as Python pickles"):
        load_classifier(evil)
    assert not marker.exists()


def test_model_that_fails_on_its_input_is_one_line(tmp_path: Path) -> None:
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval()
    path = tmp_path / "eight.pt"
    torch.jit.save(torch.jit.trace(module, torch.zeros(2, 3, 8, 8)), str(path))
    model = load_classifier(path)
    with pytest.raises(RunError, match=r"failed on a batch of inputs of shape \(1, 3, 16, 16\)"):
        model.predict(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_model_with_wrong_number_of_outputs_names_the_fix(
    synth_run: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = synth_run
    path = tmp_path / "three.pt"
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    module(torch.zeros(1, 3, 32, 32))
    torch.jit.save(torch.jit.trace(module.eval(), torch.zeros(2, 3, 32, 32)), str(path))
    with pytest.raises(RunError, match="expected .N, 2. for classes face, not_face.*classes="):
        write_audit(
            AuditConfig(model=str(path), data=str(data), image_size=32, out=str(tmp_path / "o"))
        )


def test_predictions_csv_written_by_an_audit_audits_the_same(
    synth_run: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = synth_run
    first = write_audit(AuditConfig(model=str(run), data=str(data), out=str(tmp_path / "a")))
    again = write_audit(
        AuditConfig(predictions=str(tmp_path / "a" / "predictions.csv"), out=str(tmp_path / "b"))
    )
    cols = ["attribute", "group", "metric", "class", "value", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(first.result.by_group[cols], again.result.by_group[cols])


def test_audit_of_one_class_and_a_missing_partition(
    synth_run: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = synth_run
    labels = pd.read_csv(data / "labels.csv", keep_default_na=False)
    faces = labels[labels["label"] == "face"]
    faces.to_csv(data / "faces_only.csv", index=False)
    report = write_audit(
        AuditConfig(model=str(run), labels=str(data / "faces_only.csv"), out=str(tmp_path / "a"))
    )
    assert report.result.n == len(faces)
    assert report.result.pos_label == "face"  # the model's classes, not just the data's
    with pytest.raises(ConfigError, match="has no train/val/test partition"):
        write_audit(
            AuditConfig(model=str(run), data=str(data), split="test", out=str(tmp_path / "b"))
        )


def test_audit_of_a_partition_says_when_it_includes_training_images(
    synth_run: tuple[Path, Path], split_class_folders: Path, tmp_path: Path
) -> None:
    _, run = synth_run
    every = write_audit(
        AuditConfig(model=str(run), data=str(split_class_folders), out=str(tmp_path / "a"))
    )
    assert every.result.n == 40
    assert any("pass --split test" in note for note in every.notes)
    held_out = write_audit(
        AuditConfig(
            model=str(run), data=str(split_class_folders), split="test", out=str(tmp_path / "b")
        )
    )
    assert held_out.result.n == 8
    assert not any("--split" in note for note in held_out.notes)
