"""The command line: one-line errors with a non-zero exit, and the real executable end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_ARGS
from typer.testing import CliRunner

from debias_cli.main import app

runner = CliRunner()
TINY = ["--image-size", "16", *TINY_ARGS]


def _one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert pattern in lines[0]
    assert "Traceback" not in result.output


def test_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope")])
    _one_line_error(result, "folder not found")


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.png").write_text("not an image")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    _one_line_error(result, "no readable images found (2 unreadable)")


def test_wrong_target(utkface_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["train", "--data", str(utkface_dir), "--target", "smile", "--out", str(tmp_path / "r")],
    )
    _one_line_error(result, "--target 'smile' is not available")


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    result = runner.invoke(app, ["train", "--data", str(tmp_path)])
    _one_line_error(result, "Accepted layouts")


def test_no_data_given() -> None:
    _one_line_error(runner.invoke(app, ["train"]), "Pass --data FOLDER or --labels FILE")


@pytest.mark.parametrize(
    "option, value, pattern",
    [
        ("--epochs", "0", "--epochs 0"),
        ("--bins", "-2", "--bins -2"),
        ("--alpha", "0", "--alpha 0"),
        ("--image-size", "50", "multiple of 16"),
        ("--device", "tpu", "--device 'tpu'"),
    ],
)
def test_bad_options(
    labels_dir: Path, tmp_path: Path, option: str, value: str, pattern: str
) -> None:
    result = runner.invoke(
        app, ["train", "--data", str(labels_dir), "--out", str(tmp_path / "r"), option, value]
    )
    _one_line_error(result, pattern)


@pytest.mark.parametrize(
    "options, pattern",
    [
        (["--baseline", "--error-share", "0.5"], "--error-share: not used with --baseline"),
        (
            ["--weighting", "rarity", "--error-epoch", "2", "--error-share", "0.5"],
            "--error-epoch, --error-share: not used with --weighting rarity (it keeps no error "
            "set). Drop them, or pass --weighting errors+rarity.",
        ),
        (
            ["--weighting", "mixture", "--error-share", "0.5"],
            "--error-share: not used with --weighting mixture (it keeps no error set). Drop it, "
            "or pass --weighting errors+mixture.",
        ),
        (["--balance-groups", "skin", "--weighting", "errors"], "not used with --balance"),
        (["--epochs", "3", "--error-epoch", "3"], "--error-epoch 3: the error set is frozen after"),
    ],
)
def test_options_the_weighting_would_ignore_are_refused(
    labels_dir: Path, tmp_path: Path, options: list[str], pattern: str
) -> None:
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "--data", str(labels_dir), "--out", str(out), *options])
    _one_line_error(result, pattern)
    assert not out.exists()  # refused before anything is written


def test_resume_rejects_other_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--batch-size", "8"])
    _one_line_error(result, "may change. Drop --batch-size")


def test_resume_of_a_non_run(tmp_path: Path) -> None:
    _one_line_error(
        runner.invoke(app, ["train", "--resume", str(tmp_path)]), "not a debias run folder"
    )


def test_train_and_resume_through_the_cli(labels_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--data", str(labels_dir), "--out", str(out), "--epochs", "1", *TINY]
    )
    assert result.exit_code == 0, result.output
    assert f"Run saved to {out}" in result.output
    # The default's error feedback starts after epoch 3: a 1-epoch run says it drew uniformly.
    assert "Note: error feedback starts after epoch 3 and this run had 1, so it drew" in (
        " ".join(result.output.split())
    )
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["model"]["filters"] == 4
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_executable_end_to_end(tmp_path: Path) -> None:
    """The installed `debias` executable: make the synthetic set, train on it, report errors."""
    exe = str(Path(sys.executable).parent / "debias")
    synth = subprocess.run(
        [exe, "data", "synth", str(tmp_path / "synth"), "--faces", "80", "--non-faces", "60"],
        capture_output=True,
        text=True,
    )
    assert synth.returncode == 0, synth.stderr
    run = subprocess.run(
        [
            exe,
            "train",
            "--data",
            str(tmp_path / "synth"),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "2",
            *TINY,
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert "Run saved to" in run.stdout
    audit = subprocess.run(
        [
            exe,
            "audit",
            "--model",
            str(tmp_path / "run"),
            "--data",
            str(tmp_path / "synth"),
            "--out",
            str(tmp_path / "audit"),
            "--bootstrap",
            "200",
        ],
        capture_output=True,
        text=True,
    )
    assert audit.returncode == 0, audit.stderr
    assert "Worst group: skin_tone" in audit.stdout
    assert (tmp_path / "audit" / "audit.json").is_file()
    bad = subprocess.run(
        [exe, "train", "--data", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'missing'}: folder not found. "
        "Pass an existing folder of images with --data."
    ]


def test_audit_through_the_cli(synth_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = synth_run
    out = tmp_path / "audit"
    result = runner.invoke(
        app,
        [
            "audit",
            "--model",
            str(run),
            "--data",
            str(data),
            "--groups",
            "skin_tone,glasses",
            "--reference",
            "skin_tone=light",
            "--bootstrap",
            "300",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Accuracy by group" in result.output and "Label-free slices" in result.output
    report = json.loads((out / "audit.json").read_text())
    assert report["config"]["options"]["groups"] == ["skin_tone", "glasses"]
    assert report["config"]["options"]["reference"] == {"skin_tone": "light"}
    assert report["versions"]["fairlearn"] and report["n"] == 600
    attributes = {row["attribute"] for row in report["by_group"]}
    assert attributes == {"overall", "skin_tone", "glasses", "skin_tone & glasses"}
    for name in ("by_group.csv", "disparities.csv", "slices.csv", "predictions.csv"):
        assert (out / name).is_file()
    assert list((out / "slices").glob("cluster-rank*.png"))


def _pickle_file(path: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return path


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--predictions", "P", "--model", "M"], "Pass either --model"),
        ([], "Pass either --model"),
        (["--model", "M"], "--model needs images"),
        (["--model", "PICKLE", "--data", "D"], "is a Python pickle"),
        (["--model", "TEXT", "--data", "D"], "TorchScript or ONNX model"),
        (["--predictions", "NOCOL"], "column 'y_pred' not found"),
        (["--predictions", "P", "--groups", "age"], "--groups 'age' is not a column"),
        (["--predictions", "P", "--groups", "race,empty"], "'empty' is empty in every row"),
        (["--predictions", "P", "--groups", "race", "--reference", "Martian"], "has no group"),
        (["--predictions", "P", "--reference", "White"], "Write it as ATTRIBUTE=GROUP"),
        (["--predictions", "P", "--ci", "95"], "--ci 95.0: out of range"),
        (["--model", "M", "--data", "D", "--mean", "0.5,x"], "--mean '0.5,x'"),
        (["--predictions", "P", "--embed-with", "D"], "not a debias run folder"),
    ],
)
def test_audit_bad_input_is_one_line(tmp_path: Path, args: list[str], pattern: str) -> None:
    (tmp_path / "d").mkdir()
    csv = tmp_path / "p.csv"
    csv.write_text("y_true,y_pred,race,empty\n1,1,White,\n0,1,Black,\n1,0,Black,\n")
    (tmp_path / "nocol.csv").write_text("y_true,race\n1,a\n")
    (tmp_path / "model.txt").write_text("not a model")
    names = {
        "P": str(csv),
        "M": str(tmp_path / "model.txt"),
        "D": str(tmp_path / "d"),
        "PICKLE": str(_pickle_file(tmp_path / "m.pt")),
        "TEXT": str(tmp_path / "model.txt"),
        "NOCOL": str(tmp_path / "nocol.csv"),
    }
    argv = ["audit", *[names.get(a, a) for a in args], "--out", str(tmp_path / "o")]
    _one_line_error(runner.invoke(app, argv), pattern)


def test_outliers_through_the_cli(synth_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = synth_run
    out = tmp_path / "o.csv"
    result = runner.invoke(
        app, ["outliers", "--model", str(run), "--data", str(data / "face"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Scored 300 files" in result.output and "Most anomalous first" in result.output
    assert out.is_file() and out.with_suffix(".json").is_file()


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--model", "D", "--data", "D"], "not a debias run folder"),
        (["--model", "RUN"], "No data given"),
        (["--model", "RUN", "--data", "D", "--contamination", "2"], "--contamination 2.0"),
        (["--model", "RUN", "--data", "D", "--combine", "mean"], "--combine 'mean'"),
        (["--model", "RUN", "--data", "D/nope"], "folder not found"),
        (["--model", "RUN", "--data", "D"], "no image files found"),
    ],
)
def test_outliers_bad_input_is_one_line(
    synth_run: tuple[Path, Path], tmp_path: Path, args: list[str], pattern: str
) -> None:
    _, run = synth_run
    names = {"D": str(tmp_path), "RUN": str(run), "D/nope": str(tmp_path / "nope")}
    argv = ["outliers", *[names.get(a, a) for a in args], "--out", str(tmp_path / "o.csv")]
    _one_line_error(runner.invoke(app, argv), pattern)


def test_demo_runs_the_whole_pipeline_and_tells_the_shortcut_story(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--device", "cpu"])  # 10 epochs
    assert result.exit_code == 0, result.output
    html = out / "report" / "report.html"
    assert f"Report: {html}" in result.output
    for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7"):
        assert step in result.output
    facts = json.loads((out / "report" / "report.json").read_text())
    evaluation = facts["outliers"]["evaluation"]
    assert evaluation["types"]["uniform noise"]["auroc"] > 0.9
    # Calibrated on held-out faces drawn like the screened ones (0.20 on the validation faces).
    assert evaluation["false_flag_rate"] <= 0.10, evaluation["false_flag_rate"]

    # The story the report's headline tells: the plain classifier takes the skin-tone shortcut
    # (its worst group at least 10 points below the best) and the default closes at least half
    # of that gap without reading skin tone.
    def cells(audit: str) -> dict[str, float]:
        rows = json.loads((out / audit / "audit.json").read_text())["by_group"]
        return {
            r["group"]: r["value"]
            for r in rows
            if r["metric"] == "accuracy" and r["attribute"] == "skin_tone & glasses"
        }

    plain, debiased = cells("baseline-audit"), cells("audit")
    gap = max(plain.values()) - min(plain.values())
    assert gap >= 0.10, plain
    assert facts["baseline_headline"]["worst_group_accuracy"] == pytest.approx(min(plain.values()))
    assert facts["headline"]["worst_group_accuracy"] >= min(plain.values()) + gap / 2, debiased
    # The third stage: the plain classifier repaired with 25 labelled faces per cell
    repaired = cells("repaired-audit")
    assert min(repaired.values()) >= min(plain.values()) + 0.10, repaired
    assert "-> plain + repair (25 labels per cell)" in result.output
    # A rerun reuses the data and the trained runs.
    again = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "1", "--device", "cpu"])
    assert again.exit_code == 0 and "2/7" not in again.output


def test_report_of_a_missing_audit_is_one_line(synth_run, tmp_path: Path) -> None:
    _, run = synth_run
    result = runner.invoke(app, ["report", str(run), "--audit", str(tmp_path)])
    _one_line_error(result, "not an audit folder (audit.json missing)")


def test_version_and_short_help() -> None:
    import debias

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"debias {debias.__version__}"
    result = runner.invoke(app, ["audit", "-h"])
    assert result.exit_code == 0 and "--fail-on" in result.output


def test_audit_json_summary_and_ci_gate(tmp_path: Path) -> None:
    # Group b is wrong 40% of the time, group a 5%: a significant four-fifths failure
    rng = np.random.default_rng(0)
    group = np.repeat(["a", "b"], 300)
    y = rng.integers(0, 2, 600)
    wrong = rng.random(600) < np.where(group == "b", 0.4, 0.05)
    csv = tmp_path / "p.csv"
    pd.DataFrame({"y_true": y, "y_pred": np.where(wrong, 1 - y, y), "g": group}).to_csv(
        csv, index=False
    )
    base = ["audit", "--predictions", str(csv), "--bootstrap", "200"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert summary["failing_significant"] >= 1 and not summary["gate_failed"]
    assert all(Path(f).is_file() for f in summary["files"])
    assert str(tmp_path / "a" / "audit.json") in summary["files"]
    gated = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--fail-on", "significant"])
    assert gated.exit_code == 3, gated.output
    assert "Audit gate failed" in gated.stderr
    fair = pd.DataFrame({"y_true": y, "y_pred": y, "g": group})  # no errors: nothing fails
    fair.to_csv(csv, index=False)
    passed = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--fail-on", "any"])
    assert passed.exit_code == 0, passed.output
    _one_line_error(runner.invoke(app, [*base, "--fail-on", "maybe"]), "--fail-on 'maybe'")


def test_existing_audit_is_kept_unless_overwrite_and_piped_output_is_whole(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    group = np.repeat(["a_very_long_group_name_that_a_terminal_would_cut", "b"], 300)
    y = rng.integers(0, 2, 600)
    wrong = rng.random(600) < np.where(group == "b", 0.4, 0.05)
    csv = tmp_path / "p.csv"
    frame = pd.DataFrame({"y_true": y, "y_pred": np.where(wrong, 1 - y, y), "g": group})
    frame.to_csv(csv, index=False)
    out = tmp_path / "a"
    base = ["audit", "--predictions", str(csv), "--bootstrap", "200", "--out", str(out)]
    first = runner.invoke(app, [*base, "--correction", "holm"])
    assert first.exit_code == 0, first.output
    assert "significant after Holm's correction" in first.output
    # Not a terminal: no line is wrapped at 80 columns, no cell is cut with an ellipsis.
    assert "…" not in first.output
    assert any(len(line) > 80 and "a_very_long_group_name" in line
               for line in first.output.splitlines())  # fmt: skip
    assert "Wrote " in first.output and "predictions.csv" in first.output
    before = (out / "audit.json").read_bytes()
    again = runner.invoke(app, base)
    _one_line_error(again, "already holds a debias audit. Pass --overwrite")
    assert (out / "audit.json").read_bytes() == before
    replaced = runner.invoke(app, ["--quiet", *base, "--overwrite"])
    assert replaced.exit_code == 0 and replaced.stdout == "", replaced.output
    # The report of that audit is about the CSV: named after it, refused for another model.
    report = runner.invoke(app, ["report", "--audit", str(out), "--out", str(tmp_path / "r")])
    assert report.exit_code == 0, report.output
    facts = json.loads((tmp_path / "r" / "report.json").read_text())
    assert facts["subject"]["kind"] == "predictions" and facts["name"] == "p"
    other = tmp_path / "other.csv"
    other.write_text("y_true,y_pred,g\n1,1,a\n")
    refused = runner.invoke(
        app, ["report", "--model", str(other), "--audit", str(out), "--out", str(tmp_path / "s")]
    )
    _one_line_error(refused, "is an audit of")
