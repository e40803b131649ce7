"""The positive class: one rule for which class of a binary task is "positive".

Training needs it to know which class the VAE models (faces, in detection); the audit needs it
for one-vs-rest rates (TPR, FPR, ...). Both use this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from debias.errors import check_option

# Class names that mean "positive" wherever they appear, first match wins.
POSITIVE_NAMES = ("1", "true", "True", "yes", "positive", "face")


def named_positive(classes: Sequence[str]) -> str | None:
    """Return the first class whose name means positive (see ``POSITIVE_NAMES``), else None."""
    return next((name for name in POSITIVE_NAMES if name in classes), None)


def positive_class(classes: Sequence[str], pos_label: str | None = None) -> str | None:
    """Return the positive class of a binary target, or None for multi-class.

    ``pos_label`` if given, else a class named as positive (:func:`named_positive`), else the
    second class in sorted order (scikit-learn's convention for binary labels).

    Raises
    ------
    ConfigError
        When ``pos_label`` is not one of ``classes``.
    """
    if pos_label is not None:
        fix = f"Choose one of: {', '.join(classes)}."
        check_option(pos_label in classes, "pos_label", pos_label, "not one of the classes", fix)
        return pos_label
    if len(classes) != 2:
        return None
    return named_positive(classes) or sorted(classes)[1]
