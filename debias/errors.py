"""The error family the library raises; the CLI turns each into one line and a non-zero exit.

Messages are named constants so tests can match them and users see the same wording everywhere.
Every message names the thing, the problem and the fix.
"""

from __future__ import annotations


class DebiasError(Exception):
    """Base class of every error the library raises on purpose."""


class DataError(DebiasError):
    """The data given (a folder, a CSV, an image) cannot be used as it is."""


class ConfigError(DebiasError):
    """An option or a combination of options is invalid."""


def check_option(ok: bool, name: str, value: object, problem: str, fix: str) -> None:
    """Raise ConfigError naming the parameter, its value, the problem and the fix, unless ``ok``.

    The message names the Python parameter (``image_size=15``); the command line shows its flag
    (``--image-size 15``) instead.
    """
    if not ok:
        raise ConfigError(BAD_OPTION.format(option=name, value=value, problem=problem, fix=fix))


class RunError(DebiasError):
    """A run folder or a checkpoint is missing, incomplete or not safe to load."""


NO_SUCH_DIR = "{path}: folder not found. Pass an existing folder of images with {option}."
NOT_A_DIR = "{path}: not a folder. Pass a folder of images with data=, or a CSV with labels=."
NO_SUCH_FILE = "{path}: file not found. Check the path."
UNKNOWN_LAYOUT = (
    "{path}: no known data layout found. Accepted layouts: class folders (DIR/<class>/*.jpg), "
    "a labels CSV (DIR/labels.csv or labels=FILE with columns path,label), UTKFace file names "
    "(age_gender_race_*.jpg), CelebA (img_align_celeba/ + list_attr_celeba.txt or .csv; flat, in "
    "Img/ + Anno/, or Kaggle's layout)."
)
NO_IMAGES = "{path}: no readable images found ({skipped} unreadable). Add images ({exts}) to it."
ONE_CLASS = (
    "{path}: only one class ({name!r}) found; a classifier needs at least two. "
    "Add images of another class or choose another target=."
)
MISSING_COLUMN = "{path}: column {column!r} not found (columns: {columns}). {fix}"
BAD_TARGET = "{path}: target={target!r} is not available for this layout. Choose one of: {choices}."
PATH_ESCAPES = (
    "{path}: row {row} has path {value!r}, which points outside {root}. "
    "Use paths relative to the CSV's folder that stay inside it."
)
DUPLICATE_ROW = (
    "{path}: row {row} lists {value!r} again (first at row {first}); a repeated image would count "
    "twice. Remove the repeated rows."
)
EMPTY_LABEL = (
    "{path}: {count} row(s) have an empty {column!r} (first: row {row}). "
    "Fill them in or remove those rows."
)
EMPTY_CSV = "{path}: has a header but no rows. {fix}"
BAD_CSV = (
    "{path}: cannot be read as a CSV ({reason}). Save it as comma-separated text with a header row."
)
UNREADABLE_STRICT = (
    "{path}: {reason}. {count} file(s) could not be used; drop strict=True to skip them "
    "(they are listed in skipped.csv), or fix or remove them."
)
BAD_CELEBA = (
    "{path}: not a CelebA {what} file ({reason}). Use the file as CelebA ships it (.txt, or "
    "Kaggle's .csv)."
)
UNKNOWN_GROUP = (
    "groups={group!r} is not a column of the data (columns: {columns}). Choose from those."
)

BAD_DEVICE = (
    "device={device!r} is not a device this machine has ({reason}). Use auto, cpu{available}."
)
BAD_OPTION = "{option}={value!r}: {problem}. {fix}"
# Options the run would silently ignore (debias.weighting.check_options_read)
UNREAD_WITH_BALANCE = (
    "{options}: not used with balance_groups= (it draws by the groups). Drop {them}, or leave "
    "out balance_groups=."
)
UNREAD_WITH_BASELINE = (
    "{options}: not used with baseline=True (the plain classifier draws uniformly). Drop {them}, "
    "or leave out baseline=True."
)
UNREAD_WITH_RARITY = (
    "{options}: not used with weighting={weighting} (it keeps no error set). Drop {them}, or "
    "pass weighting=errors+{weighting}."
)
NO_VALIDATION_TO_SELECT = (
    "select={rule}: chooses the epoch by validation accuracy, and {data} has no validation "
    "images. Pass a val_fraction= above 0 (e.g. 0.1), or leave select= out."
)
WEIGHTS_UNREADABLE = (
    "{path}: not usable as the backbone's weights ({reason}). Pass a torchvision state dict of "
    "the same architecture, saved with torch.save(model.state_dict(), path)."
)
NO_LAST_LINEAR = (
    "{path}: no {what} found, so there is no last linear layer to refit. Export a classifier "
    "whose logits come from a linear layer (nn.Linear)."
)
NO_ONNX = (
    "{path}: repairing an ONNX file needs the onnx package. Install it: pip install 'debias[onnx]'."
)
REPAIR_NEEDS = (
    "A repair needs {missing}: the model to repair and a labels CSV of a few faces with their "
    "class and group columns."
)
EMPTY_REPAIR_CELLS = (
    "{n} class x group cell(s) of the labelled faces have no face ({cells}): a repair balances "
    "every cell and cannot judge one it never sees. Label faces of those cells, or pass "
    "allow_empty_cells=True to repair without them."
)
SMALL_REPAIR_CELLS = (
    "Warning: cells with fewer than {min} labelled faces are too small to judge: {cells}. Their "
    "cross-validated accuracy is a rough estimate; label more faces of them."
)
UNKNOWN_METHOD = (
    "method {kind!r}: not a method this version of debias can rebuild (a method of your own, or "
    "one from a newer version). Pass the method again: resume(..., method=...) or "
    "TrainConfig(method=...)."
)
ERROR_EPOCH_TOO_LATE = (
    "error_epoch={epoch}: the error set is frozen after epoch {epoch}, and the run has "
    "{epochs} epochs, so it would never be used. Pass an error_epoch= below epochs=."
)
POSITIVE_CLASS = (
    "vae_on=positive needs to know which class the VAE models, and the classes are {classes}. "
    "Pass positive_class=NAME, or vae_on=all."
)

RUN_MISSING = (
    "{path}: not a debias run folder ({missing} missing). "
    "Pass the out= folder of a `debias train` run."
)
RUN_FINISHED = (
    "{path}: this run already finished all {epochs} epochs. Pass a larger epochs= to train further."
)
RUN_NOT_FOUND = "{path}: folder not found. Pass the out= folder of a `debias train` run."
RUN_NEVER_STARTED = (
    "{path}: a training run was stopped here while it read its data, before it saved anything "
    "to resume from. Train again with the same out=."
)
RUN_UNFINISHED = (
    "{path}: training has not finished ({missing} missing: it was stopped or is still running). "
    "Finish it with: debias train --resume {path}"
)
NO_CHECKPOINT_YET = (
    "{path}: training stopped before its first epoch ended (no checkpoint.pt yet). "
    "Finish it with: debias train --resume {path}"
)
RUN_IS_FILE = "{path}: is a file, not a run folder. Pass the out= folder of a `debias train` run."
UNSAFE_CHECKPOINT = (
    "{path}: refused to load: it holds Python objects a plain weights file does not ({reason}), "
    "and loading them could run code. Only load checkpoints debias wrote."
)
DAMAGED_CHECKPOINT = (
    "{path}: damaged or cut short (not a complete torch.save file). Train again into a new "
    "out=, or restore the run folder from a copy."
)
RUN_MISMATCH = (
    "{path}: its checkpoint does not fit its config.json ({reason}); the folder mixes two runs. "
    "Train again into a new out=."
)
RESUME_OPTIONS = (
    "resume= takes the configuration saved in {path}/config.json; only epochs=, device=, lr= "
    "and where the data is (data=, labels=) may change. Drop {options}."
)

PICKLED_MODEL = (
    "{path}: is a Python pickle (a torch.save of a whole model?); debias never unpickles files "
    "because that can run arbitrary code. Export the model with torch.export.save "
    "(see the README), as TorchScript (torch.jit.save) or as ONNX (torch.onnx.export)."
)
NOT_A_MODEL = (
    "{path}: not a torch.export, TorchScript or ONNX model ({reason}). Pass a debias run folder, "
    "a .pt2 file (torch.export.save), a TorchScript file (torch.jit.save) or an .onnx file."
)
UNSAFE_PROGRAM = (
    "{path}: this torch.export program stores {what} as Python pickles, and debias never "
    "unpickles files because that can run arbitrary code. Export it again with plain tensor "
    "weights (torch.export.save of a model whose parameters and buffers are tensors)."
)
MODEL_FAILED = (
    "{path}: the model failed on a batch of inputs of shape {shape} ({reason}). Check "
    "image_size= (the side it was trained at) and mean=/std=; a torch.export program needs "
    "a dynamic batch dimension (see the README)."
)
NO_ONNXRUNTIME = (
    "{path}: ONNX models need onnxruntime, which is not installed. "
    "Install it with: pip install 'debias[onnx]'."
)
MODEL_OUTPUT = (
    "{path}: the model's output has shape {shape}, expected {expected}. Pass classes= with the "
    "class names in the model's output order, and check image_size=, mean= and std=."
)
CLASS_MISMATCH = (
    "{source}: the data has class(es) {unknown} that the model does not predict (its classes: "
    "{classes}). Pass classes= with the model's class names in output order, or target=."
)
EMPTY_GROUP = (
    "{path}: group column {column!r} is empty in every row. Fill it in, or leave it out of groups=."
)
NO_GROUPS = (
    "{path}: no group column to audit by (columns: {columns}; a column is used when it has 2 "
    "to 20 distinct values). Pass groups=COLUMN,... naming attribute columns, or embed_with="
    "RUN for label-free slices alone."
)

# Training
TORCHRUN_OUT = "Training under torchrun needs a run folder every process agrees on. Pass out=RUN."
RUN_EXISTS = "{path}: already holds a run. Pass resume={path} to continue it, or a new out= folder."
RESUME_CLASSES = (
    "{path}: the data now has classes {now}, the checkpoint {checkpoint}. "
    "Resume with the data the run started with."
)
LOSS_NOT_FINITE = (
    "{path}: the loss became {loss} in epoch {epoch}. The last good checkpoint is kept; resume "
    "with a lower learning rate: debias train --resume {path} --lr {lr}"
)
DATA_CHANGED = (
    "{path}: the data in {data} changed since the run started (files added, removed, resized or "
    "relabelled). Resume with the data the run started with, or pass allow_changed_data=True to go "
    "on with the data as it is now."
)

# Audit and report
FEATURES_LENGTH = (
    "sensitive_features has {n_features} rows but there are {n} predictions. "
    "Give one row of features per prediction."
)
UNKNOWN_CLASS = (
    "{what} has the value {value!r}, which is not one of the classes ({classes}). "
    "Use the same class names for true and predicted labels."
)
NOT_AN_AUDIT = (
    "{path}: not an audit folder (audit.json missing). "
    "Pass the out= folder of a `debias audit` run."
)
UNKNOWN_PREDICTION = (
    "{path}: row {row} predicts {value!r}, which is not a value of y_true ({classes}). Use the "
    "same class names in both columns, or pass classes= listing every class."
)
BAD_SCORE = (
    "{path}: row {row} has score {value!r}, which is not a number between 0 and 1. Scores must "
    "be the positive class's probability (apply a sigmoid to logits first)."
)
SCORE_NOT_BINARY = (
    "{path}: a score column needs a binary target, but y_true has {n} classes ({classes}). "
    "Give predicted labels as y_pred instead."
)
MODEL_OR_PREDICTIONS = (
    "Pass either model= (a run folder, TorchScript or ONNX file) with data=, "
    "or predictions=FILE.csv."
)
MODEL_NEEDS_DATA = "model= needs images to predict on. Pass data=FOLDER or labels=FILE."

# Inputs in general
NO_DATA = "No data given. Pass data=FOLDER or labels=FILE."
BAD_SYNTH_OPTIONS = (
    "task= must be detect or glasses, faces= and non_faces= from 1 to 1,000,000, and "
    "dark_fraction= and shortcut= in [0, 1]."
)

# Outliers
OUTLIERS_MISMATCH = (
    "{csv}: does not match {json} (they come from different runs of debias outliers; one was "
    "stopped between the two files). Run debias outliers again."
)
NO_VALIDATION_FACES = (
    "{path}: the run has no validation faces to calibrate on. "
    "Train it with val_fraction= above 0 (the default is 0.1)."
)
RUN_IMAGES_GONE = (
    "{path}: {count} of the run's own images cannot be read any more (first: {first}). "
    "Put the training data back where it was."
)
CALIBRATION_UNREADABLE = (
    "{path}: {count} calibration image(s) cannot be read (first: {first}). Remove or replace "
    "them: every calibration image must be a face like the ones you screen."
)
TOO_FEW_CALIBRATION = (
    "{path}: {n} calibration images cannot flag as few as {rate:g} of inliers. Give at least "
    "{needed} (a few hundred or more for a steady rate)."
)
GROUPS_NEED_CSV = (
    "calibration_groups={column}: {what} must be a CSV with a '{column}' column (a face is "
    "judged by its own group's threshold, read from that column, never guessed). Pass "
    "{option} as a CSV with path and {column}, or drop calibration_groups=."
)
SMALL_CALIBRATION_GROUPS = (
    "{groups}: too few calibration faces to calibrate a {rate:g} false-flag rate on their own "
    "(each needs at least {needed}; a few hundred give a steady rate). Their faces are judged by "
    "the threshold of all calibration faces"
)
NO_IMAGE_FILES = "{path}: no image files found. Point {option} at a folder of images (any depth)."

# Files and the environment
DAMAGED_FILE = "{path}: {problem}. {fix}"
OUT_IS_DIR = "{path}: is a folder, but a file goes here. Pass a file path, or remove the folder."
OUT_IS_FILE = "{path}: is a file, but a folder goes here. Pass another out=, or remove the file."
AUDIT_NOT_OF_MODEL = (
    "{audit}: is an audit of {audited}, not of {model} ({why}). Pass the audit of {model} "
    "(debias audit --model {model} --data IMAGES --out A), or leave out --model to report on "
    "what was audited."
)
REPORT_NEEDS_AUDIT = (
    "{path}: a report about a model file needs its audit. Run debias audit --model {path} "
    "--data IMAGES --out A, then debias report --audit A."
)
REPORT_NEEDS_SUBJECT = (
    "Nothing to report on. Pass audit=A (a debias audit folder), model=RUN (a debias run "
    "folder), or both."
)
BASELINE_NEEDS_AUDIT = (
    "{path}: a baseline that is not a debias run needs its audit. Audit it on the same images "
    "(debias audit --model {path} ... --out B), then pass baseline_audit=B."
)
NOT_SAME_IMAGES = (
    "{audit} and {baseline_audit}: were not audited on the same images ({why}). Audit both "
    "models with the same data=/labels= and options, or leave out baseline_audit=."
)
NOT_A_FILE = "{path}: is a folder, not a file. Pass the file inside it."
LOCKED = (
    "{path}: another debias process is writing it ({holder}). "
    "Wait for it to finish, or pass another out=."
)
BEING_WRITTEN = (
    "{path}: another debias process is writing it ({holder}). Wait for it to finish, then run "
    "this command again."
)
OUT_FOREIGN = (
    "{path}: holds files that are not {what} (no {marker}), and writing there would replace "
    "them. Pass a new or empty out= folder."
)
OUT_EXISTS = "{path}: already holds {what}. Pass overwrite=True to replace it, or another out=."
DISK_FULL = "{path}: the disk is full. Free some space on it, or pass an out= on another disk."
READ_ONLY = "{path}: the file system is read-only. Pass an out= on a writable disk."
NO_PERMISSION = (
    "{path}: permission denied. Pass a path you can {access}, or change the permissions."
)
OS_PROBLEM = "{path}: {reason}. Check the path and the disk, then run the command again."
OUT_OF_MEMORY = (
    "Out of memory ({reason}). Lower what sizes the work (batch_size=, image_size=, hidden=, "
    "latent_dim=, bootstrap= or chunk_size=), or free memory."
)
BUG = (
    "debias stopped on an unexpected {kind}: {reason}. This is a bug in debias; please report "
    "it with the command you ran (set DEBIAS_DEBUG=1 to see where it happened)."
)


def environment_message(exc: BaseException) -> str | None:
    """One line for an error of the machine rather than of debias (disk, permissions, memory).

    Returns None for anything else.
    """
    import errno  # here, not at the top: this module is otherwise only names and messages

    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY.format(reason="the machine ran out")
    if isinstance(exc, RuntimeError) and any(
        s in str(exc) for s in ("can't allocate memory", "out of memory", "not enough memory")
    ):
        return OUT_OF_MEMORY.format(reason=str(exc).splitlines()[0][:160])
    if not isinstance(exc, OSError):
        return None
    path = exc.filename or "a file"
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return DISK_FULL.format(path=path)
    if exc.errno == errno.EROFS:
        return READ_ONLY.format(path=path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return NO_PERMISSION.format(path=path, access="read and write")
    if exc.errno == errno.EEXIST or exc.errno == errno.ENOTDIR:
        return OUT_IS_FILE.format(path=path)
    if exc.errno == errno.EISDIR:
        return NOT_A_FILE.format(path=path)
    return OS_PROBLEM.format(path=path, reason=exc.strerror or exc)
