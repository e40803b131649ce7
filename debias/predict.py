"""Where audited predictions come from: a debias run, a model file, or a CSV.

Every source ends as the same table: one row per image with ``y_true``, ``y_pred``, optionally
``score`` (the positive class's probability) and ``path``, and the group columns. Model files are
inspected before loading: a Python pickle is refused outright (unpickling runs arbitrary code); a
``torch.export`` program (``.pt2``, what this torch recommends) loads only when its archive holds
no pickled objects, and with every tensor load forced to ``weights_only``; TorchScript loads
through ``torch.jit.load`` (TorchScript's own restricted format) and ONNX through onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from debias import errors
from debias.data.layouts import check_filled, read_csv_table, relative_paths
from debias.model import preprocess
from debias.runfolder import CONFIG, load_model

# A classifier maps uint8 images (B, 3, S, S) to class probabilities (B, C).
Classifier = Callable[[torch.Tensor], torch.Tensor]

ZIP_MAGIC = b"PK\x03\x04"  # TorchScript archives (and torch.save files) are zip files
PICKLE_PROTOCOL_OPCODE = 0x80  # pickles of protocol 2 and later start with PROTO

# Column names accepted in a predictions CSV, ours first, then Aequitas's.
TRUE_COLUMNS = ("y_true", "label_value", "label")
PRED_COLUMNS = ("y_pred", "prediction")
SCORE_COLUMNS = ("score",)
PREDICTION_RESERVED = (*TRUE_COLUMNS, *PRED_COLUMNS, *SCORE_COLUMNS, "path", "split")
# Columns an audit adds to predictions.csv: class probabilities and latent facts, never groups.
DERIVED_PREFIXES = ("p_", "latent_")


def is_attribute(column: str) -> bool:
    """Return whether a predictions-table column can be a group (not a label, score or derived)."""
    return column not in PREDICTION_RESERVED and not column.startswith(DERIVED_PREFIXES)


@dataclass
class ModelFile:
    """A classifier loaded from disk, with what it needs to be fed.

    Attributes
    ----------
    predict : Classifier
        uint8 images ``(B, 3, S, S)`` to probabilities ``(B, C)``.
    classes : list of str or None
        Class names in output order, when the file knows them (a debias run does).
    image_size : int or None
        Input side the model requires, when the file says (a run, an ONNX file with fixed sizes).
    kind : str
        ``debias-run``, ``torch-export``, ``torchscript`` or ``onnx``.
    """

    predict: Classifier
    classes: list[str] | None
    image_size: int | None
    kind: str


def load_classifier(
    path: str | os.PathLike[str],
    *,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    device: torch.device | None = None,
) -> ModelFile:
    """Load a debias run folder, a TorchScript file or an ONNX file as a classifier.

    Parameters
    ----------
    path : path-like
        A run folder (with ``config.json``), a ``torch.export`` program (``.pt2``), a
        TorchScript archive (``.pt``/``.pth``) or an ``.onnx`` file.
    mean, std : sequence of float
        Per-channel normalisation of external models: inputs are ``(x / 255 - mean) / std``.
        A debias run uses its own preprocessing and ignores these.
    device : torch.device, optional
        Where a TorchScript or debias model runs (default CPU).

    Returns
    -------
    ModelFile

    Raises
    ------
    RunError
        When the file is missing, a pickle, a program holding pickles, or no model format.
    """
    path = Path(path)
    device = device or torch.device("cpu")
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise errors.RunError(errors.RUN_MISSING.format(path=path, missing=CONFIG))
        model, config = load_model(path)
        model = model.to(device)

        @torch.no_grad()
        def run_predict(x: torch.Tensor) -> torch.Tensor:
            return model.predict_proba(preprocess(x.to(device))).cpu()

        return ModelFile(
            run_predict,
            list(config["data"]["classes"]),
            int(config["train"]["model"]["image_size"]),
            "debias-run",
        )
    if not path.is_file():
        raise errors.RunError(errors.NO_SUCH_FILE.format(path=path))
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] and head[0] == PICKLE_PROTOCOL_OPCODE:
        raise errors.RunError(errors.PICKLED_MODEL.format(path=path))
    normalise = normaliser(mean, std)
    if head == ZIP_MAGIC and is_export_archive(path):
        return _load_export(path, normalise, device)
    if head == ZIP_MAGIC:
        return _load_torchscript(path, normalise, device)
    return _load_onnx(path, normalise)


def module_classifier(
    module: torch.nn.Module,
    *,
    classes: Sequence[str] | None = None,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    device: torch.device | None = None,
) -> ModelFile:
    """Wrap an in-memory ``torch.nn.Module`` as a classifier, fed as a model file would be.

    Inputs are ``(x / 255 - mean) / std``; outputs may be logits or probabilities, ``(B, C)`` or
    one column (:func:`_output`). The module is put in eval mode and is not copied.
    """
    device = device or torch.device("cpu")
    normalise = normaliser(mean, std)
    module.eval()
    name = Path(type(module).__name__)

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return _output(_call(module, normalise(x).to(device), name), name).cpu()

    return ModelFile(predict, list(classes) if classes else None, None, "module")


def normaliser(
    mean: Sequence[float], std: Sequence[float]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return an external model's feed: uint8 ``(B, 3, S, S)`` to ``(x / 255 - mean) / std``."""
    shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    scale = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return lambda x: (x.float() / 255.0 - shift) / scale


def check_outputs(probabilities: np.ndarray, model_classes: Sequence[str], source: str) -> None:
    """Raise RunError unless the model gave one probability per named class."""
    if probabilities.shape[1] != len(model_classes):
        raise errors.RunError(
            errors.MODEL_OUTPUT.format(
                path=source,
                shape=tuple(probabilities.shape),
                expected=f"(N, {len(model_classes)}) for classes {', '.join(model_classes)}",
            )
        )


def is_export_archive(path: Path) -> bool:
    """Whether a zip file is a ``torch.export.save`` archive (its ``archive_format`` says pt2)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "archive_format"]
            return bool(names) and archive.read(names[0]).strip() == b"pt2"
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def _pickled_parts(archive: zipfile.ZipFile) -> list[str]:
    """Parts of a pt2 archive that torch would unpickle: pickled weights and custom objects."""
    found = []
    for name in archive.namelist():
        folder, _, base = name.rpartition("/")
        if base.endswith(("_weights_config.json", "_constants_config.json")):
            entries = json.loads(archive.read(name)).get("config", {})
            for fqn, entry in entries.items():
                # Plain tensors are raw bytes; anything else (pickled tensors, script or opaque
                # objects) goes through pickle.
                if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(
                    ("weight_", "tensor_")
                ):
                    found.append(fqn)
        elif base.endswith(".pt") and ("/data/weights" in f"/{folder}" or "/constants" in folder):
            found.append(base)  # the legacy layout: one torch.save file of every weight
    return found


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """Force every ``torch.load`` inside the block to ``weights_only=True``, whatever it asks."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)}
    saved["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_program(path: Path) -> Any:
    """Load a ``torch.export`` archive, refusing one that holds anything torch would unpickle.

    Returns the ``ExportedProgram``; a repair writes its weights back and saves it again.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = _pickled_parts(archive)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise errors.RunError(errors.NOT_A_MODEL.format(path=path, reason=str(exc)[:160])) from None
    if pickled:
        what = ", ".join(pickled[:3]) + (
            f" and {len(pickled) - 3} more" if len(pickled) > 3 else ""
        )
        raise errors.RunError(errors.UNSAFE_PROGRAM.format(path=path, what=what))
    try:
        with _weights_only(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for archives it cannot read
        raise errors.RunError(errors.NOT_A_MODEL.format(path=path, reason=_reason(exc))) from None


def _load_export(
    path: Path, normalise: Callable[[torch.Tensor], torch.Tensor], device: torch.device
) -> ModelFile:
    program = load_program(path)
    try:
        module = program.module()
        if device.type != "cpu":
            module = module.to(device)
    except Exception as exc:  # torch raises many types for programs it cannot run
        raise errors.RunError(errors.NOT_A_MODEL.format(path=path, reason=_reason(exc))) from None

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return _output(_call(module, normalise(x).to(device), path), path).cpu()

    return ModelFile(predict, None, export_side(program), "torch-export")


def export_side(program: Any) -> int | None:
    """Return the image side a program was exported with, if its example input says."""
    try:
        args = program.example_inputs[0]
        shape = tuple(args[0].shape)
    except (AttributeError, IndexError, TypeError):
        return None
    return int(shape[-1]) if len(shape) == 4 else None


def _call(module: Callable[[Any], Any], x: Any, path: Path) -> Any:
    """Run an external model on a batch; its failure is one line about the input it was fed."""
    try:
        return module(x)
    except Exception as exc:  # a model can raise anything on a wrong input
        raise errors.RunError(
            errors.MODEL_FAILED.format(path=path, shape=tuple(x.shape), reason=_reason(exc))
        ) from None


def _reason(exc: BaseException) -> str:
    """Return an exception's first line, short enough for a one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _load_torchscript(
    path: Path, normalise: Callable[[torch.Tensor], torch.Tensor], device: torch.device
) -> ModelFile:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but remains the format most models ship in.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError and others for non-TorchScript zips
        raise errors.RunError(errors.NOT_A_MODEL.format(path=path, reason=_reason(exc))) from None
    module.eval()

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return _output(_call(module, normalise(x).to(device), path), path).cpu()

    return ModelFile(predict, None, None, "torchscript")


def _load_onnx(path: Path, normalise: Callable[[torch.Tensor], torch.Tensor]) -> ModelFile:
    try:
        import onnxruntime
    except ImportError:
        raise errors.RunError(errors.NO_ONNXRUNTIME.format(path=path)) from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise errors.RunError(errors.NOT_A_MODEL.format(path=path, reason=_reason(exc))) from None
    spec = session.get_inputs()[0]
    side = spec.shape[-1] if len(spec.shape) == 4 and isinstance(spec.shape[-1], int) else None

    def predict(x: torch.Tensor) -> torch.Tensor:
        batch = normalise(x).numpy()
        out = _call(lambda b: session.run(None, {spec.name: b})[0], batch, path)
        return _output(torch.from_numpy(np.asarray(out, dtype=np.float32)), path)

    return ModelFile(predict, None, side, "onnx")


def _output(out: torch.Tensor | tuple | list, path: Path) -> torch.Tensor:
    """Probabilities from a model's output: logits or probabilities, (B, C) or one column."""
    if isinstance(out, tuple | list):
        out = out[0]  # models that return (logits, extras) put the logits first
    out = out.float()
    if out.ndim == 2 and out.shape[1] == 1 or out.ndim == 1:
        p = out.reshape(-1)
        if not (p.min() >= 0 and p.max() <= 1):
            p = torch.sigmoid(p)
        return torch.stack([1 - p, p], dim=1)  # one output is the second class's probability
    if out.ndim != 2:
        raise errors.RunError(
            errors.MODEL_OUTPUT.format(path=path, shape=tuple(out.shape), expected="(B, C)")
        )
    sums = out.sum(dim=1)
    is_prob = bool(out.min() >= 0) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3))
    return out if is_prob else torch.softmax(out, dim=1)


def predict_images(
    model: ModelFile,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    on_advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, C)`` of uint8 images ``(N, 3, S, S)``, in batches."""
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        out.append(model.predict(x).numpy())
        if on_advance is not None:
            on_advance(len(x))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def predictions_table(
    probabilities: np.ndarray,
    model_classes: Sequence[str],
    frame: pd.DataFrame,
    data_classes: Sequence[str],
    source: str,
) -> pd.DataFrame:
    """Build the predictions table of images scored by a model.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(N, C)`` in the order of ``model_classes``.
    model_classes : sequence of str
        The model's class names in output order.
    frame : pandas.DataFrame
        The data's manifest: ``path``, ``label`` and attribute columns, one row per image.
    data_classes : sequence of str
        The data's classes; each must be one of the model's.
    source : str
        The model, for messages.
    """
    check_outputs(probabilities, model_classes, source)
    unknown = sorted(set(data_classes) - set(model_classes))
    if unknown:
        raise errors.DataError(
            errors.CLASS_MISMATCH.format(
                source=source, unknown=", ".join(unknown), classes=", ".join(model_classes)
            )
        )
    out = frame.drop(columns=["label"]).copy()
    out.insert(1, "y_true", frame["label"].to_numpy())
    out.insert(2, "y_pred", np.asarray(model_classes, dtype=object)[probabilities.argmax(1)])
    for c, name in enumerate(model_classes):
        out[f"p_{name}"] = probabilities[:, c]
    return out


def read_predictions_csv(
    path: str | os.PathLike[str],
    *,
    threshold: float = 0.5,
    pos_label: str | None = None,
    classes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a predictions CSV into a table with ``y_true`` and ``y_pred``.

    Accepted columns: ``y_true`` (or Aequitas's ``label_value``, or ``label``), and ``y_pred`` (or
    ``prediction``) or a ``score`` thresholded at ``threshold`` for a binary target; everything else
    is kept as attributes. A ``path`` column is resolved against the CSV's folder. A predicted
    class that never occurs in ``y_true`` is taken for a typo unless ``classes`` lists it.

    Raises
    ------
    DataError
        On a missing column, an empty label, or a score that is not a number.
    """
    path = Path(path)
    frame = read_csv_table(path)
    columns = ", ".join(frame.columns)
    true_col = next((c for c in TRUE_COLUMNS if c in frame.columns), None)
    if true_col is None:
        raise errors.DataError(
            errors.MISSING_COLUMN.format(
                path=path,
                column="y_true",
                columns=columns,
                fix="Add the true labels as y_true (or label_value).",
            )
        )
    pred_col = next((c for c in PRED_COLUMNS if c in frame.columns), None)
    score_col = next((c for c in SCORE_COLUMNS if c in frame.columns), None)
    if pred_col is None and score_col is None:
        raise errors.DataError(
            errors.MISSING_COLUMN.format(
                path=path,
                column="y_pred",
                columns=columns,
                fix="Add the predicted labels as y_pred, or scores as score with threshold=.",
            )
        )
    if not len(frame):
        raise errors.DataError(
            errors.EMPTY_CSV.format(path=path, fix="Add one row per audited image.")
        )
    check_filled(frame, true_col, path)
    out = frame.rename(columns={true_col: "y_true"})
    if pred_col is not None:
        check_filled(frame, pred_col, path)
        out = out.rename(columns={pred_col: "y_pred"})
        _check_predicted_classes(out, path, classes)
    else:
        out = out.rename(columns={score_col: "score"})
        out["y_pred"] = _threshold(out, path, threshold, pos_label)
    if "path" in out.columns:
        out["path"] = relative_paths(path, out["path"])
    return out


def _check_predicted_classes(out: pd.DataFrame, path: Path, classes: Sequence[str] | None) -> None:
    """Refuse a predicted class that is no true class (a typo) unless ``classes`` lists it."""
    known = set(out["y_true"]) | set(classes or [])
    unknown = sorted(set(out["y_pred"]) - known)
    if unknown:
        row = int(out.index[out["y_pred"] == unknown[0]][0])
        raise errors.DataError(
            errors.UNKNOWN_PREDICTION.format(
                path=path,
                row=row + 2,
                value=unknown[0],
                classes=", ".join(sorted(set(out["y_true"]))[:10]),
            )
        )


def _threshold(frame: pd.DataFrame, path: Path, threshold: float, pos_label: str | None) -> list:
    """Binary predictions from scores: the positive class where score >= threshold."""
    from debias.classes import positive_class

    check_filled(frame, "score", path)
    score = pd.to_numeric(frame["score"], errors="coerce")
    outside = score.isna() | (score < 0) | (score > 1)
    if outside.any():
        row = int(outside.idxmax())
        raise errors.DataError(
            errors.BAD_SCORE.format(path=path, row=row + 2, value=frame["score"][row])
        )
    classes = sorted(frame["y_true"].unique().tolist())
    if len(classes) == 1:
        classes = sorted({classes[0], "0" if classes[0] == "1" else "1"})
    if len(classes) != 2:
        raise errors.DataError(
            errors.SCORE_NOT_BINARY.format(
                path=path, n=len(classes), classes=", ".join(classes[:5])
            )
        )
    positive = positive_class(classes, pos_label)
    negative = next(c for c in classes if c != positive)
    return [positive if s >= threshold else negative for s in score]
