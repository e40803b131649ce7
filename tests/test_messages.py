"""Every user-facing message is a named constant; every config field is a CLI option.

Messages live in ``debias/errors.py`` so tests can match them and users read the same words
everywhere; options map one-to-one onto config fields, so nothing set on the command line is
silently dropped and nothing in a config is out of the user's reach.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from debias import errors, train
from debias.auditfolder import AuditConfig
from debias.config import ModelConfig, TrainConfig
from debias.fairness.audit import AuditOptions
from debias.jobs.outliers import OutlierConfig
from debias.jobs.repair import RepairConfig
from debias.jobs.report import ReportConfig
from debias_cli import main as cli
from debias_cli.main import as_flags

ROOT = Path(__file__).resolve().parents[1]
ERROR_CLASSES = {"DebiasError", "DataError", "ConfigError", "RunError"}


def _is_named_message(node: ast.expr) -> bool:
    """``errors.NAME`` or ``errors.NAME.format(...)`` (``NAME`` inside errors.py itself)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "format":
            node = node.func.value
    if isinstance(node, ast.Name):  # errors.py's own helpers (check_option) use its constants
        return node.id.isupper()
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "errors"
        and node.attr.isupper()
    )


def _inline_messages() -> list[str]:
    found = []
    for path in [*(ROOT / "debias").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = (
                node.func.attr
                if isinstance(node.func, ast.Attribute)
                else getattr(node.func, "id", "")
            )
            if name in ERROR_CLASSES and node.args and not _is_named_message(node.args[0]):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_error_message_is_a_named_constant() -> None:
    assert _inline_messages() == []


def test_the_check_finds_an_inline_message(tmp_path: Path) -> None:
    inline = ast.parse('raise errors.DataError(f"{path}: broken. Fix it.")').body[0]
    named = ast.parse("raise errors.DataError(errors.NO_SUCH_FILE.format(path=p))").body[0]
    assert not _is_named_message(inline.exc.args[0])
    assert _is_named_message(named.exc.args[0])


def _option_names(command) -> set[str]:  # noqa: ANN001
    return set(inspect.signature(command).parameters)


# Config fields the command line deliberately does not set, with the reason.
HIDDEN = {
    ("train", "out"): "set by --out, which is also the --resume folder",
    ("train", "model"): "the ModelConfig's fields are options of their own",
    ("train", "method"): "a method object (Python API); the CLI names one by --weighting & co.",
    ("audit", "options"): "the AuditOptions' fields are options of their own",
    ("outliers", "components"): "filled in by the job: what was combined",
}
# Options that are not fields of the command's config, with the reason.
NOT_FIELDS = {
    ("train", "resume"): "the run folder to continue",
    ("train", "allow_changed_data"): "a decision about one resume, not part of the run",
    ("audit", "fail_on"): "how the command exits, not how the audit is computed",
    ("audit", "json_summary"): "how the command prints, not how the audit is computed",
    ("outliers", "labels"): "the old name of --paths, kept for older scripts",
    ("report", "run"): "the positional form of --model, kept for older scripts",
}


@pytest.mark.parametrize(
    ("command", "configs"),
    [
        ("train", [TrainConfig, ModelConfig]),
        ("audit", [AuditConfig, AuditOptions]),
        ("outliers", [OutlierConfig]),
        ("report", [ReportConfig]),
        ("repair", [RepairConfig]),
    ],
)
def test_cli_options_and_config_fields_match(command: str, configs: list[type]) -> None:
    fields = {f.name for c in configs for f in dataclasses.fields(c)}
    options = _option_names(getattr(cli, command))
    hidden = {field for (cmd, field) in HIDDEN if cmd == command}
    extra = {option for (cmd, option) in NOT_FIELDS if cmd == command}
    assert fields - hidden - options == set(), "config fields without a CLI option"
    assert options - fields - extra == set(), "CLI options without a config field"


def _flags_outside_commands(text: str) -> list[str]:
    """The ``--flags`` a message names, other than inside a ``debias <command> ...`` to run."""
    commands = re.compile(
        r"debias (?:train|audit|outliers|report|demo|data)\b[^.]*(?:\.\.\.[^.]*)?"
    )
    return re.findall(r"--[a-z][a-z-]*", commands.sub("", text))


def test_library_messages_name_parameters_not_flags() -> None:
    named = {
        name: value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, str)
    }
    assert {name: _flags_outside_commands(v) for name, v in named.items() if
            _flags_outside_commands(v)} == {}  # fmt: skip


def test_the_same_mistake_reads_as_a_parameter_in_python_and_a_flag_in_the_cli(
    labels_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(errors.DataError) as caught:
        train(tiny_config(data=str(labels_dir), out=str(tmp_path / "a"), groups=["tone"]))
    assert str(caught.value).startswith("groups='tone' is not a column")
    assert "--" not in str(caught.value)
    with pytest.raises(errors.ConfigError, match=r"^image_size=15: ") as caught:
        train(tiny_config(data=str(labels_dir), model=ModelConfig(image_size=15)))
    cli_run = CliRunner().invoke(
        cli.app,
        ["train", "--data", str(labels_dir), "--groups", "tone", "--out", str(tmp_path / "b")],
    )
    assert cli_run.exit_code == 1
    assert "Error: --groups 'tone' is not a column" in cli_run.output
    assert "groups=" not in cli_run.output
    size = CliRunner().invoke(cli.app, ["train", "--data", str(labels_dir), "--image-size", "15"])
    assert "Error: --image-size 15: " in size.output and "image_size=" not in size.output
    strict = as_flags("3 file(s) could not be used; drop strict=True, or pass out=. mean=/std=")
    assert strict == "3 file(s) could not be used; drop --strict, or pass --out. --mean/--std"
