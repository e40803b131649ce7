"""An audit folder's names and its inputs: what ``debias audit`` writes and a report reads.

The audit job (:mod:`debias.jobs.audit`) writes the folder; :mod:`debias.facts` reads it. Both
take the file names and :class:`AuditConfig` from here, so reading an audit never imports the
job that makes one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from debias import errors
from debias.errors import check_option
from debias.fairness.audit import AuditOptions

AUDIT_FILE = "audit.json"  # written last into the set; what marks a folder as an audit
AUDIT_WHAT = "a debias audit"
PREDICTIONS = "predictions.csv"  # the audited predictions: a report pairs two audits by them


@dataclass
class AuditConfig:
    """The inputs of the ``debias audit`` job; saved in ``audit.json`` with its results.

    Attributes
    ----------
    model : str or None
        What to audit: a debias run folder, a TorchScript file or an ONNX file (with ``data``) ...
    predictions : str or None
        ... or a CSV of predictions already made (``y_true``, ``y_pred`` or ``score``, groups).
    data, labels, target : str or None
        The audited images and their labels and groups, in any layout ``debias train`` reads.
    split : str or None
        Audit only this split of a data set with a partition (CelebA: ``test``).
    image_size : int or None
        Input side of an external model (default: what the file says, else 64).
    mean, std : list of float or None
        Per-channel input normalisation of an external model (default 0 and 1).
    classes : list of str or None
        An external model's class names in output order (default: the data's, sorted).
    embed_with : str or None
        A DB-VAE run whose encoder embeds the images for label-free slices (default: ``model``
        when it is a run).
    threshold : float
        Decision threshold on a predictions CSV's ``score``.
    device : str
        Where models run: auto, cpu, cuda, mps.
    out : str or None
        Output folder (default ``reports/audit-<date-time>``).
    overwrite : bool
        Replace an existing audit at ``out`` (otherwise refused before any work).
    options : AuditOptions
        How the statistics are computed (groups, intervals, the four-fifths rule, slices).
    """

    model: str | None = None
    predictions: str | None = None
    data: str | None = None
    labels: str | None = None
    target: str | None = None
    split: str | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None
    embed_with: str | None = None
    threshold: float = 0.5
    device: str = "auto"
    out: str | None = None
    overwrite: bool = False
    options: AuditOptions = field(default_factory=AuditOptions)

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range option."""
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise errors.ConfigError(
                    errors.BAD_OPTION.format(
                        option=name,
                        value=",".join(map(str, value)),
                        problem="needs three numbers (R,G,B)"
                        + (", all > 0" if name == "std" else ""),
                        fix="Use e.g. 0.485,0.456,0.406 and 0.229,0.224,0.225.",
                    )
                )
        for name in ("mean", "std"):
            value = getattr(self, name)
            check_option(
                value is None or all(math.isfinite(v) for v in value),
                name,
                value,
                "must be finite numbers",
                "Use e.g. 0.485,0.456,0.406 and 0.229,0.224,0.225.",
            )
        check_option(
            self.image_size is None or 8 <= self.image_size <= 4096,
            "image_size",
            self.image_size,
            "out of range",
            "Use 8 to 4096, the size the model was trained at",
        )
        check_option(
            0 < self.threshold < 1,
            "threshold",
            self.threshold,
            "out of range",
            "Use a probability strictly between 0 and 1, such as 0.5",
        )
        self.options.validate()

    def to_dict(self) -> dict[str, Any]:
        """Return the inputs and options as plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditConfig:
        """Rebuild from :meth:`to_dict` output (``audit.json``'s ``config``)."""
        d = dict(d)
        options = AuditOptions(**d.pop("options", {}))
        return cls(**d, options=options)
