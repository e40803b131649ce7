"""The command line: one-line errors with a non-zero exit, and the real executable end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_ARGS
from typer.testing import CliRunner

from cli.main import app

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


def test_resume_rejects_other_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--lr", "0.1"])
    _one_line_error(result, "only --epochs and --device may change")


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
    bad = subprocess.run(
        [exe, "train", "--data", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'missing'}: folder not found. "
        "Pass an existing folder of images with --data."
    ]
