"""The ``debias`` command line: parse options, call one library function, show progress.

Every command runs inside ``_errors()``: a ``DebiasError``, an error of the machine (disk full,
read-only, permissions, memory) and, as a last resort, a bug each become one ``Error: ...`` line
on stderr and exit code 1 (``DEBIAS_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

import debias
from debias import distributed, errors
from debias.config import ModelConfig, TrainConfig
from debias.data import write_shortcut_synthetic, write_synthetic
from debias.fairness.audit import AuditOptions
from debias.files import json_text
from debias.jobs.audit import AuditConfig, write_audit
from debias.jobs.demo import write_demo
from debias.jobs.outliers import OutlierConfig, write_outliers
from debias.jobs.repair import RepairConfig, write_repair
from debias.jobs.report import ReportConfig, write_report
from debias.methods import check_options_read, error_feedback_unreached
from debias.training import resume as resume_run
from debias.training import train as train_run
from debias_cli.options import Flag, Row, Toggle, with_options
from debias_cli.progress import RichListener
from debias_cli.tables import show_audit, show_outliers

app = typer.Typer(
    help="Fair face classifiers without group labels: the debiasing VAE (DB-VAE).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals hold faces and sensitive attributes
    add_completion=False,
)
data_app = typer.Typer(help="Data sets: make the synthetic demo set.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Exit code of `debias audit --fail-on` when the gate trips: distinct from 1 (an error), so a CI
# job can tell "the model failed the audit" from "the audit could not run".
GATE_FAILED = 3


def _version(value: bool) -> None:
    if value:
        console.print(f"debias {debias.__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback(context_settings={"help_option_names": ["-h", "--help"]})
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version.", metavar=""
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print nothing but errors (and --json); the exit code tells.",
            metavar="",
        ),
    ] = False,
) -> None:
    """Fair face classifiers without group labels: the debiasing VAE (DB-VAE)."""
    # Set on every call (tests run many commands in one process); torchrun's other ranks stay quiet.
    console.quiet = quiet or distributed.from_env().rank > 0


def _console(stderr: bool = False, quiet: bool = False) -> Console:
    """Return a console that never cuts or wraps numbers when its output is a file or a pipe."""
    probe = Console(stderr=stderr)
    # Not a terminal: rich would wrap at 80 columns and cut table cells; lines stay whole.
    width = None if probe.is_terminal else 10_000
    return Console(stderr=stderr, quiet=quiet, width=width)


# Under torchrun only rank 0 shows progress and results; every rank still reports errors.
console = _console()
err_console = _console(stderr=True)


MAX_SYNTH = 1_000_000  # images per class: more is a typo, and hours of drawing


def _fail(message: str) -> None:
    if os.environ.get("DEBIAS_DEBUG"):
        raise
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


@contextmanager
def _errors(resume_hint: Path | None = None) -> Iterator[None]:
    try:
        yield
    except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
        raise
    except errors.DebiasError as exc:
        _fail(as_flags(str(exc)))
    except Exception as exc:
        # The machine's errors are the user's to fix; anything else is ours, still one line
        message = errors.environment_message(exc) or errors.BUG.format(
            kind=type(exc).__name__, reason=str(exc).splitlines()[0][:200] if str(exc) else "-"
        )
        _fail(message)
    except KeyboardInterrupt:
        resumable = resume_hint is not None and (resume_hint / "config.json").is_file()
        hint = f" Resume with: debias train --resume {resume_hint}" if resumable else ""
        err_console.print(f"Interrupted.{hint}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


# A Python parameter in a library message: ``image_size=15``, ``strict=True``, ``out=`` (bare)
_PARAMETER = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)=(True\b)?")


def as_flags(message: str) -> str:
    """Rewrite the Python parameters a library message names as this command line's flags.

    The library speaks in parameters (``image_size=15``, ``strict=True``); a command-line user
    reads flags (``--image-size 15``, ``--strict``). Names that are no option of any command
    (``race=White`` in a reference) are left as they are.
    """
    flags = _flag_table()

    def flag(match: re.Match[str]) -> str:
        name = flags.get(match.group(1))
        if name is None:
            return match.group(0)
        rest = message[match.end() :]
        if match.group(2) or not rest or rest[0].isspace() or rest[0] in ",.;:)":
            return name
        return name if _PARAMETER.match(rest[1:]) and rest[0] == "/" else name + " "

    return _PARAMETER.sub(flag, message)


def _flag_table() -> dict[str, str]:
    """Python parameter -> flag, read from every command's options: the one table of names."""
    table: dict[str, str] = {}
    callbacks = [c.callback for c in app.registered_commands]
    callbacks += [
        c.callback for g in app.registered_groups for c in g.typer_instance.registered_commands
    ]
    for callback in callbacks:
        hints = typing.get_type_hints(callback, include_extras=True)
        for name, parameter in inspect.signature(callback).parameters.items():
            annotation = hints.get(name, parameter.annotation)  # a built signature has objects
            # In Annotated, typer takes a first positional "--flag" as the option's default
            decls = [
                d
                for info in getattr(annotation, "__metadata__", ())
                for d in (getattr(info, "default", None), *(getattr(info, "param_decls", ()) or ()))
                if isinstance(d, str)
            ]
            long = next((d.split("/")[0] for d in decls if d.startswith("--")), None)
            table.setdefault(name, long or "--" + name.replace("_", "-"))
    return table


# Options that several commands declare alike.
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an existing output set at --out.",
        rich_help_panel="Output",
        metavar="",
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.",
        rich_help_panel="Machine",
    ),
]


TRAIN_OPTIONS = {
    "data": Row(Path, "Data", "Folder: class folders, labels.csv, UTKFace names or CelebA."),
    "labels": Row(Path, "Data", "Labels CSV (path,label,...); paths relative to the CSV's folder."),
    "target": Row(
        str, "Data", "Label: CSV column, UTKFace gender|race|age-bucket, or CelebA attribute."
    ),
    "groups": Row(
        str, "Data", "Comma-separated attribute columns to evaluate by (default: all suitable)."
    ),
    "group_labels": Row(
        Path,
        "Data",
        "A labels CSV of a few group-labelled faces: the run ends with its last layer refit on "
        "them (kept only if it helps).",
    ),
    "repair_groups": Row(str, "Data", "Group columns of --group-labels (default: all suitable)."),
    "out": Row(Path, "Output", "Run folder (default runs/<date-time>)."),
    "resume": Row(
        Path,
        "Output",
        "Finish the run in this folder (only --epochs, --device, --lr and a moved "
        "--data/--labels may change).",
    ),
    "allow_changed_data": Row(
        Flag,
        "Output",
        "With --resume: go on although the data's files changed since the run started.",
    ),
    "baseline": Row(Flag, "Method", "Train the plain classifier instead."),
    "balance_groups": Row(
        str, "Method", "Resample by these group columns instead (reads group labels; the oracle)."
    ),
    "strict": Row(Flag, "Data", "Fail on unreadable files instead of skipping."),
    "epochs": Row(int, "Training", "Passes over the training images."),
    "select": Row(
        str,
        "Training",
        "Which epoch the run keeps: last, worst-class (the best lowest per-class "
        "validation accuracy), worst-cluster (the best lowest accuracy over latent "
        "clusters of each class), or worst-group (with --group-labels, their default: the best "
        "lowest class x group accuracy on half of those faces).",
    ),
    "batch_size": Row(int, "Training", "Images per optimisation step."),
    "lr": Row(float, "Training", "Peak learning rate (Adam)."),
    "lr_schedule": Row(str, "Training", "cosine or constant."),
    "latent_dim": Row(int, "Model", "Dimensions of the VAE's latent space."),
    "image_size": Row(int, "Model", "Side in pixels (multiple of 16)."),
    "filters": Row(int, "Model", "Filters of the first conv layer."),
    "hidden": Row(int, "Model", "Width of the dense layer."),
    "backbone": Row(
        str, "Model", "The encoder: conv4 (the lab's 4-conv network) or resnet18 (torchvision)."
    ),
    "weights": Row(
        Path, "Model", "A local torchvision state dict for the backbone (nothing is downloaded)."
    ),
    "alpha": Row(float, "Method", "Histogram smoothing."),
    "bins": Row(int, "Method", "Histogram bins per latent dimension."),
    "combine": Row(str, "Method", "product (paper) or max (lab)."),
    "ess_fraction": Row(
        float, "Method", "Keep this effective sample share per class (0 turns it off)."
    ),
    "weighting": Row(
        str,
        "Method",
        "How each epoch's draws are weighted: rarity (the DB-VAE's latent histograms), "
        "mixture (a joint latent density), errors (what an early plain model gets wrong "
        "gets --error-share of its class), errors+rarity or errors+mixture.",
    ),
    "error_epoch": Row(int, "Method", "Epochs of plain training before the error set is frozen."),
    "error_share": Row(float, "Method", "Share of each class's draws its error set gets."),
    "error_filter": Row(
        str,
        "Method",
        "none, or learnable: keep only the errors that training on the other errors "
        "teaches (a shortcut's exceptions teach each other, noise does not; 3 trial "
        "epochs).",
    ),
    "warmup_epochs": Row(int, "Method", "Epochs of uniform sampling before resampling starts."),
    "density_components": Row(
        int,
        "Method",
        "Histogram this many principal axes of the latents instead of every dimension.",
    ),
    "kl_weight": Row(float, "Model", "Weight of the VAE's KL term in the loss."),
    "recon": Row(str, "Model", "Reconstruction error: l1 or l2."),
    "vae_on": Row(str, "Method", "auto, all or positive."),
    "positive_class": Row(str, "Method", "The class the VAE models with --vae-on positive."),
    "augment": Row(Toggle, "Training", "Flip, colour jitter and +-4 px shifts while training."),
    "precision": Row(
        str,
        "Training",
        "auto (float16 mixed precision on CUDA, else float32), float32 or bfloat16.",
    ),
    "val_fraction": Row(float, "Data", "Share of the images held out for validation."),
    "seed": Row(int, "Training", "Seed of the split, the initialisation and the sampling."),
    "device": Row(str, "Machine", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    "num_workers": Row(int, "Machine", "Image decoding processes."),
}


@app.command()
@with_options(TRAIN_OPTIONS, TrainConfig, ModelConfig)
def train(**options: Any) -> None:
    """Train a debiased classifier (DB-VAE), or the plain baseline, into a run folder."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    resume = given.get("resume")
    with _errors(resume_hint=resume or given.get("out")):
        if resume is not None:
            result = _resume_from_cli(resume, given)
        else:
            if "data" not in given and "labels" not in given:
                raise errors.ConfigError(errors.NO_DATA)
            config = _config_from(given)
            check_options_read(config, set(given))
            with RichListener(console) as listener:
                result = train_run(config, listener=listener)
    if result.metrics:  # a torchrun worker has none: rank 0 reports the run
        _print_run(result)


def _resume_from_cli(resume: Path, given: dict[str, Any]) -> Any:
    """Continue the run at ``resume``; refuse options a resume cannot change."""
    may_change = {"resume", "epochs", "device", "lr", "data", "labels", "allow_changed_data"}
    extra = sorted(set(given) - may_change)
    if extra:
        raise errors.ConfigError(
            errors.RESUME_OPTIONS.format(path=resume, options=", ".join(o + "=" for o in extra))
        )
    with RichListener(console) as listener:
        return resume_run(
            resume,
            epochs=given.get("epochs"),
            device=given.get("device"),
            lr=given.get("lr"),
            data=str(given["data"]) if "data" in given else None,
            labels=str(given["labels"]) if "labels" in given else None,
            allow_changed_data=bool(given.get("allow_changed_data")),
            listener=listener,
        )


def _print_run(result: Any) -> None:
    """Say where the run is, how to continue a run too short to debias, and what was skipped."""
    last = result.metrics[-1]
    console.print(
        f"Run saved to {result.run_dir}  (train acc {last['train_acc']:.3f}"
        + (f", val acc {last['val_acc']:.3f}" if last.get("val_acc") is not None else "")
        + ")"
    )
    ran = result.config
    if error_feedback_unreached(ran):
        console.print(
            f"Note: error feedback starts after epoch {ran.error_epoch} and this run had "
            f"{ran.epochs}, so it drew uniformly. To debias it, continue it: debias train "
            f"--resume {result.run_dir} --epochs {max(TrainConfig.epochs, ran.error_epoch + 1)}",
            markup=False,
            highlight=False,
        )
    if result.data.skipped:
        console.print(
            f"{len(result.data.skipped)} unreadable file(s) skipped; all are listed in "
            f"{result.run_dir / 'skipped.csv'}:",
            markup=False,
            highlight=False,
        )
        for path, reason in result.data.skipped[:3]:
            console.print(f"  {path}: {reason}", markup=False, highlight=False)


def _config_from(given: dict[str, object]) -> TrainConfig:
    """Defaults of TrainConfig/ModelConfig, overridden by the options the user gave."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    values = dict(given)
    for key in ("data", "labels", "out", "weights", "group_labels"):
        if key in values:
            values[key] = str(values[key])
    for key in ("groups", "balance_groups", "repair_groups"):
        if key in values:
            values[key] = [g.strip() for g in str(values[key]).split(",") if g.strip()]
    # Every option is a field of one of the two configs: tests/test_messages.py checks it.
    model = ModelConfig(**{k: v for k, v in values.items() if k in model_fields})
    return TrainConfig(**{k: v for k, v in values.items() if k in train_fields}, model=model)


def _split_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


def _floats(option: str, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise errors.ConfigError(
            errors.BAD_OPTION.format(
                option=option,
                value=value,
                problem="not comma-separated numbers",
                fix="Use e.g. 0.485,0.456,0.406.",
            )
        ) from None


def _references(value: str | None, groups: list[str] | None) -> dict[str, str]:
    """``race=White,gender=male`` (or a bare ``White`` with a single group) as a dict."""
    out: dict[str, str] = {}
    for part in _split_list(value) or []:
        attribute, sep, group = part.partition("=")
        if not sep:
            if not groups or len(groups) != 1:
                raise errors.ConfigError(
                    errors.BAD_OPTION.format(
                        option="reference",
                        value=part,
                        problem="does not say which attribute it is a group of",
                        fix="Write it as ATTRIBUTE=GROUP, e.g. race=White.",
                    )
                )
            attribute, group = groups[0], part
        out[attribute.strip()] = group.strip()
    return out


AUDIT_OPTIONS = {
    "model": Row(Path, "What to audit", "Classifier to audit: a debias run folder, a .pt2 program, "
                 "TorchScript or ONNX file."),
    "predictions": Row(Path, "What to audit", "Or a CSV of predictions: y_true, y_pred (or score "
                       "+ --threshold), groups."),
    "data": TRAIN_OPTIONS["data"],
    "labels": TRAIN_OPTIONS["labels"],
    "target": TRAIN_OPTIONS["target"],
    "groups": TRAIN_OPTIONS["groups"],
    "split": Row(str, "Data", "Audit only this split (train/val/test) of a partition."),
    "image_size": Row(int, "External model", "Input side of an external model (default 64)."),
    "mean": Row(str, "External model", "External model input mean per channel, e.g. "
                "0.485,0.456,0.406."),
    "std": Row(str, "External model", "External model input std per channel, e.g. "
               "0.229,0.224,0.225."),
    "classes": Row(str, "External model", "Class names: an external model's output order, or all "
                   "classes a CSV may predict."),
    "embed_with": Row(Path, "Slices", "DB-VAE run whose latents find slices (default: --model if "
                      "a run)."),
    "threshold": Row(float, "External model", "Decision threshold on a CSV's score column."),
    "reference": Row(str, "Statistics", "Reference group per attribute, e.g. race=White (default: "
                     "largest)."),
    "bootstrap": Row(int, "Statistics", "Bootstrap replicates for confidence intervals (0: none)."),
    "ci": Row(float, "Statistics", "Confidence level."),
    "tau": Row(float, "Statistics", "Four-fifths rule: fair iff tau <= ratio <= 1/tau."),
    "min_group_size": Row(int, "Statistics", "Smaller groups are reported as too small to judge."),
    "pos_label": Row(str, "Statistics", "Positive class of a binary target."),
    "slices": Row(int, "Slices", "Latent clusters for label-free slice discovery."),
    "seed": Row(int, "Statistics", "Seed of the bootstrap and the clustering."),
    "device": TRAIN_OPTIONS["device"],
    "correction": Row(str, "Statistics", "Multiple-comparison correction of significance: none, "
                      "or holm (Holm's step-down over every judged disparity)."),
    "out": Row(Path, "Output", "Output folder (default reports/audit-<date-time>)."),
    "overwrite": Row(Flag, "Output", "Replace an existing output set at --out."),
    "fail_on": Row(str, "Output", "Exit with code 3 when the audit finds four-fifths failures: "
                   "'significant' (difference significant, see --correction), 'any', or 'none' "
                   "(the default)."),
    "json_summary": Row(Flag, "Output", "Print a machine-readable summary on stdout, not tables.",
                        "--json"),
}  # fmt: skip
AUDIT_PATHS = ("model", "predictions", "data", "labels", "embed_with", "out")


@app.command()
@with_options(AUDIT_OPTIONS, AuditConfig, AuditOptions)
def audit(**options: Any) -> None:
    """Audit a classifier per group and intersection, with confidence intervals and slices."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    fail_on, json_summary = given.pop("fail_on", "none"), given.pop("json_summary", False)
    with _errors():
        config = _audit_config(given)
        if fail_on not in ("none", "any", "significant"):
            raise errors.ConfigError(
                errors.BAD_OPTION.format(
                    option="fail_on",
                    value=fail_on,
                    problem="unknown choice",
                    fix="Use significant, any or none.",
                )
            )
        with RichListener(err_console if json_summary else console) as listener:
            report = write_audit(config, listener=listener)
    _finish_audit(report, fail_on, json_summary)


def _audit_config(given: dict[str, Any]) -> AuditConfig:
    """Return the audit's config from the options given (paths as text, lists split)."""
    values = {k: str(v) if k in AUDIT_PATHS else v for k, v in given.items()}
    groups = _split_list(values.pop("groups", None))
    for key in ("mean", "std"):
        values[key] = _floats(key, values.get(key))
    values["classes"] = _split_list(values.get("classes"))
    option_names = {f.name for f in dataclasses.fields(AuditOptions)}
    options = {k: values.pop(k) for k in list(values) if k in option_names}
    options["reference"] = _references(options.get("reference"), groups)
    return AuditConfig(**values, options=AuditOptions(groups=groups or [], **options))


def _finish_audit(report: Any, fail_on: str, json_summary: bool) -> None:
    """Print the audit (tables, or JSON on stdout) and exit 3 when the gate trips."""
    gate = report.result.failing(significant=fail_on == "significant")
    if json_summary:
        summary = {
            "out": str(report.out),
            "files": sorted(str(p) for p in report.out.rglob("*") if p.is_file()),
            "n": report.result.n,
            "summary": report.result.summary(),
            "failing": len(report.result.failing()),
            "failing_significant": len(report.result.failing(significant=True)),
            "fail_on": fail_on,
            "gate_failed": fail_on != "none" and len(gate) > 0,
        }
        print(json_text(summary))
    else:
        show_audit(console, report)
    if fail_on != "none" and len(gate):
        if not json_summary:
            err_console.print(
                f"Audit gate failed: {len(gate)} {'significant ' * (fail_on == 'significant')}"
                f"four-fifths failure(s) (--fail-on {fail_on}); exit code {GATE_FAILED}.",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(GATE_FAILED)


OUTLIER_OPTIONS = {
    "model": Row(Path, "Inputs", "The debias run folder whose faces are the norm.", required=True),
    "data": Row(Path, "Inputs", "Folder of images to score (any depth, no labels needed)."),
    "paths": Row(Path, "Inputs", "Or a CSV whose 'path' column lists the images."),
    "labels": Row(Path, "Inputs", "Old name of --paths.", hidden=True),
    "calibration": Row(
        Path,
        "Calibration",
        "Folder or CSV of faces like the ones you screen, to calibrate the false-flag rate on "
        "(default: the run's validation faces).",
    ),
    "eval_labels": Row(
        Path,
        "Calibration",
        "CSV of path,type (inlier or the outlier type): report AUROC/AUPR per type.",
    ),
    "calibration_groups": Row(
        str,
        "Calibration",
        "A column of the --calibration and --paths CSVs (e.g. race): calibrate each group on "
        "its own faces, so each group's false-flag rate is at the target.",
    ),
    "calibration_clusters": Row(
        int,
        "Calibration",
        "Without group labels: calibrate per k-means cluster of the latent means (0: off).",
    ),
    "contamination": Row(
        float, "Calibration", "Target share of inliers flagged (false-flag rate)."
    ),
    "rare_fraction": Row(
        float, "Calibration", "Share of validation faces the rarity flag calls rare."
    ),
    "combine": Row(str, "Calibration", "min or fisher: how component p-values combine."),
    "out": Row(
        Path, "Output", "CSV to write (default reports/outliers-<date-time>.csv); JSON beside."
    ),
    "overwrite": Row(Flag, "Output", "Replace a scan already at --out."),
    "chunk_size": Row(int, "Output", "Images decoded and scored at a time."),
    "device": Row(str, "Machine", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
}


@app.command()
@with_options(OUTLIER_OPTIONS, OutlierConfig)
def outliers(**options: Any) -> None:
    """Flag inputs unlike the run's training faces (and, separately, rare but valid faces)."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    with _errors():
        if "labels" in given:  # the old name of paths
            given.setdefault("paths", given.pop("labels"))
        for key in ("model", "data", "paths", "calibration", "eval_labels", "out"):
            if key in given:
                given[key] = str(given[key])
        with RichListener(console) as listener:
            report = write_outliers(OutlierConfig(**given), listener=listener)
    show_outliers(console, report)


REPORT_OPTIONS = {
    "run": Row(Path, "Arguments", "Same as --model (kept for older scripts).", argument=True),
    "model": Row(
        Path,
        "Inputs",
        "What the report is about: a debias run folder, or the model file the audit audited "
        "(its SHA-256 is checked). Default: what --audit audited.",
    ),
    "audit": Row(Path, "Inputs", "An audit folder of the model (debias audit --out)."),
    "baseline": Row(Path, "Inputs", "A plain-classifier run to compare with."),
    "baseline_audit": Row(
        Path,
        "Inputs",
        "An audit of the baseline on the same images (default for a baseline run: the report "
        "audits it with the audit's options). Alone, it names the baseline.",
    ),
    "outliers": Row(Path, "Inputs", "An outliers.csv written by debias outliers."),
    "name": Row(str, "Output", "Report name (default: the model's file or folder name)."),
    "out": Row(Path, "Output", "Output folder (default reports/<name>)."),
    "overwrite": Row(Flag, "Output", "Replace a report already at --out."),
}


@app.command()
@with_options(REPORT_OPTIONS, ReportConfig)
def report(**options: Any) -> None:
    """Write a fairness report (HTML, JSON, Markdown) about any audited classifier."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    with _errors():
        run = given.pop("run", None)
        if run and given.get("model", run) != run:
            raise errors.ConfigError(
                errors.BAD_OPTION.format(
                    option="model",
                    value=given["model"],
                    problem=f"differs from the positional {run}",
                    fix="Pass the model once, as model=.",
                )
            )
        given.setdefault("model", run)
        config = ReportConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in given.items()})
        with RichListener(console) as listener:
            html = write_report(config, listener=listener)
    console.print(
        f"Report: {html} (report.json and report.md beside it)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


REPAIR_OPTIONS = {
    "model": Row(
        Path, "Inputs", "A debias run folder, a torch.export program (.pt2) or an ONNX file."
    ),
    "labels": Row(
        Path, "Inputs", "Group-labelled faces: a labels CSV (path, label, group columns)."
    ),
    "groups": Row(
        str, "Inputs", "Comma-separated group columns; every class x group cell is balanced."
    ),
    "target": Row(str, "Inputs", "The class column of the labels (default label)."),
    "eval_labels": Row(
        Path, "Inputs", "Other labelled faces: audit the model before and after on them."
    ),
    "image_size": Row(int, "Model file", "Input side of a model file (default: its own, else 64)."),
    "mean": Row(
        str, "Model file", "Per-channel mean the model file expects, e.g. 0.485,0.456,0.406."
    ),
    "std": Row(
        str, "Model file", "Per-channel std the model file expects, e.g. 0.229,0.224,0.225."
    ),
    "classes": Row(str, "Model file", "The model file's class names in output order."),
    "allow_empty_cells": Row(
        Flag, "Inputs", "Repair although a class has no labelled face of some group."
    ),
    "out": Row(Path, "Output", "Output folder (default reports/repair-<model name>)."),
    "overwrite": Row(Flag, "Output", "Replace a repair already at --out."),
    "seed": Row(int, "Output", "Seed of the cross-validation folds and the balanced draws."),
}


@app.command()
@with_options(REPAIR_OPTIONS, RepairConfig)
def repair(**options: Any) -> None:
    """Refit a classifier's last layer on a few group-labelled faces; keep it only if it helps."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    with _errors():
        if "model" not in given or "labels" not in given:
            raise errors.ConfigError(errors.REPAIR_NEEDS.format(missing="model= and labels="))
        for key in ("model", "labels", "out", "eval_labels"):
            given[key] = str(given[key]) if key in given else None
        given["groups"] = _split_list(given.get("groups")) or []
        given["classes"] = _split_list(given.get("classes"))
        given["mean"], given["std"] = (
            _floats("mean", given.get("mean")),
            _floats("std", given.get("std")),
        )
        with RichListener(console) as listener:
            report = write_repair(RepairConfig(**given), listener=listener)
    _print_repair(report)


def _print_repair(report: Any) -> None:
    s = report.summary
    for warning in s["warnings"]:
        console.print(warning, markup=False, highlight=False, soft_wrap=True)
    old = "-" if s["worst_cell_old"] is None else f"{s['worst_cell_old']:.3f}"
    verdict = (
        f"Repaired: the new last layer's worst cell {s['cv_worst_cell_new']:.3f} "
        f"(cross-validated on the {s['labelled']} labelled faces: an estimate) against {old} "
        f"for the layer as it was; C={s['C']}."
        if s["repaired"]
        else f"Kept the model as it was: the refit layer's cross-validated worst cell "
        f"{s['cv_worst_cell_new']:.3f} is not above the old layer's {old} on the same faces."
    )
    console.print(verdict, markup=False, highlight=False, soft_wrap=True)
    if "evaluation" in s:
        e = s["evaluation"]
        console.print(
            f"On {e['labels']}: worst group accuracy {e['worst_group_accuracy_before']:.3f} -> "
            f"{e['worst_group_accuracy_after']:.3f}; the paired change with intervals is in "
            f"{report.out / e['report']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"Model: {report.model_path}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, runs and report.")] = Path(
        "reports/demo"
    ),
    epochs: Annotated[int, typer.Option(help="Training epochs of both models.")] = 10,
    device: DeviceOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the data and both models.")] = 0,
) -> None:
    """Synthetic faces -> baseline + DB-VAE -> audit -> outliers -> report, nothing to download."""
    with _errors():
        with RichListener(console) as listener:
            html = write_demo(
                out,
                epochs=epochs,
                device=device or "auto",
                seed=seed,
                listener=listener,
                say=lambda text: listener.progress.console.print(text, highlight=False),
            )
    console.print(f"Report: {html}", highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"Open it in a browser: {html.resolve().as_uri()}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set into.")],
    task: Annotated[
        str,
        typer.Option(
            help="detect: faces vs non-faces, skewed by skin tone; glasses: glasses or not, with "
            "skin tone as a shortcut (the demo's task)."
        ),
    ] = "detect",
    faces: Annotated[int, typer.Option(help="Number of face images.")] = 1200,
    non_faces: Annotated[int, typer.Option(help="Number of non-face images (detect).")] = 1200,
    dark_fraction: Annotated[
        float, typer.Option(help="Share of faces with dark skin (detect).")
    ] = 0.1,
    shortcut: Annotated[
        float,
        typer.Option(help="Share of faces whose skin tone gives the answer away (glasses)."),
    ] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the drawing.")] = 0,
) -> None:
    """Write a synthetic data set (class folders + labels.csv): nothing to download."""
    with _errors():
        shares_ok = 0 <= dark_fraction <= 1 and 0 <= shortcut <= 1
        counts_ok = 1 <= faces <= MAX_SYNTH and 1 <= non_faces <= MAX_SYNTH
        if task not in ("detect", "glasses") or not counts_ok or not shares_ok:
            raise errors.ConfigError(errors.BAD_SYNTH_OPTIONS)
        if task == "glasses":
            labels = write_shortcut_synthetic(out, n_faces=faces, shortcut=shortcut, seed=seed)
            count = faces
        else:
            labels = write_synthetic(
                out, n_faces=faces, n_non_faces=non_faces, dark_fraction=dark_fraction, seed=seed
            )
            count = faces + non_faces
    console.print(f"Wrote {count} images and {labels}")


def main() -> None:
    """Entry point of the ``debias`` executable."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    app()


if __name__ == "__main__":
    sys.exit(main())
