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


class RunError(DebiasError):
    """A run folder or a checkpoint is missing, incomplete or not safe to load."""


NO_SUCH_DIR = "{path}: folder not found. Pass an existing folder of images with {option}."
NOT_A_DIR = "{path}: not a folder. Pass a folder of images with --data, or a CSV with --labels."
NO_SUCH_FILE = "{path}: file not found. Check the path."
UNKNOWN_LAYOUT = (
    "{path}: no known data layout found. Accepted layouts: class folders (DIR/<class>/*.jpg), "
    "a labels CSV (DIR/labels.csv or --labels FILE with columns path,label), UTKFace file names "
    "(age_gender_race_*.jpg), CelebA (img_align_celeba/ + list_attr_celeba.txt or .csv; flat, in "
    "Img/ + Anno/, or Kaggle's layout)."
)
NO_IMAGES = "{path}: no readable images found ({skipped} unreadable). Add images ({exts}) to it."
ONE_CLASS = (
    "{path}: only one class ({name!r}) found; a classifier needs at least two. "
    "Add images of another class or choose another --target."
)
MISSING_COLUMN = "{path}: column {column!r} not found (columns: {columns}). {fix}"
BAD_TARGET = (
    "{path}: --target {target!r} is not available for this layout. Choose one of: {choices}."
)
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
BAD_CSV = (
    "{path}: cannot be read as a CSV ({reason}). Save it as comma-separated text with a header row."
)
UNREADABLE_STRICT = (
    "{path}: {reason}. {count} file(s) could not be used; drop --strict to skip them "
    "(they are listed in skipped.csv), or fix or remove them."
)
BAD_CELEBA = (
    "{path}: not a CelebA {what} file ({reason}). Use the file as CelebA ships it (.txt, or "
    "Kaggle's .csv)."
)
UNKNOWN_GROUP = (
    "--groups {group!r} is not a column of the data (columns: {columns}). Choose from those."
)

BAD_DEVICE = (
    "--device {device!r} is not a device this machine has ({reason}). Use auto, cpu{available}."
)
BAD_OPTION = "--{option} {value!r}: {problem}. {fix}"
POSITIVE_CLASS = (
    "--vae-on positive needs to know which class the VAE models, and the classes are {classes}. "
    "Pass --positive-class NAME, or --vae-on all."
)

RUN_MISSING = (
    "{path}: not a debias run folder ({missing} missing). "
    "Pass the --out folder of a `debias train` run."
)
RUN_FINISHED = (
    "{path}: this run already finished all {epochs} epochs. "
    "Pass a larger --epochs to train further."
)
UNSAFE_CHECKPOINT = (
    "{path}: refused to load: it is not a plain weights file ({reason}). "
    "Only load checkpoints written by debias from a source you trust."
)
RESUME_OPTIONS = (
    "--resume takes the configuration saved in {path}/config.json; only --epochs and --device "
    "may change. Drop {options}."
)

PICKLED_MODEL = (
    "{path}: is a Python pickle (a torch.save of a whole model?); debias never unpickles files "
    "because that can run arbitrary code. Export the model as TorchScript "
    "(torch.jit.save(torch.jit.trace(model, example), path)) or ONNX (torch.onnx.export)."
)
NOT_A_MODEL = (
    "{path}: not a TorchScript or ONNX model ({reason}). Pass a debias run folder, a TorchScript "
    "file (torch.jit.save) or an .onnx file."
)
NO_ONNXRUNTIME = (
    "{path}: ONNX models need onnxruntime, which is not installed. "
    "Install it with: pip install 'debias[onnx]'."
)
MODEL_OUTPUT = (
    "{path}: the model's output has shape {shape}, expected {expected}. Pass --classes with the "
    "class names in the model's output order, and check --image-size, --mean and --std."
)
CLASS_MISMATCH = (
    "{source}: the data has class(es) {unknown} that the model does not predict (its classes: "
    "{classes}). Pass --classes with the model's class names in output order, or --target."
)
EMPTY_GROUP = (
    "{path}: group column {column!r} is empty in every row. "
    "Fill it in, or leave it out of --groups."
)
NO_GROUPS = (
    "{path}: no group columns to audit by (columns: {columns}). Pass --groups COLUMN,... naming "
    "attribute columns of the data."
)
