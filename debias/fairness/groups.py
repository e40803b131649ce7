"""Group columns: which columns of a frame make evaluation groups, and checking the ones named.

Pure (a frame in, names out), shared by the data loaders, the audit and the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from debias import errors

# Attribute columns with more distinct values than this (age, file ids) are carried, not grouped.
MAX_GROUP_VALUES = 20
# Columns of a manifest that are never groups.
RESERVED = ("path", "label", "split")


def suitable_groups(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Return the ``columns`` with 2 to MAX_GROUP_VALUES distinct non-empty values."""
    out = []
    for column in columns:
        values = frame[column].astype(str)
        n = values[values != ""].nunique()
        if 2 <= n <= MAX_GROUP_VALUES:
            out.append(column)
    return out


def check_groups(frame: pd.DataFrame, groups: Sequence[str]) -> list[str]:
    """Return ``groups`` as a list, or raise DataError naming the attribute columns there are."""
    attributes = [c for c in frame.columns if c not in RESERVED]
    for g in groups:
        if g not in attributes:
            raise errors.DataError(
                errors.UNKNOWN_GROUP.format(group=g, columns=", ".join(attributes) or "none")
            )
    return list(groups)
