"""Output files written all at once: a temp file beside the destination, renamed into place.

A kill at any instant leaves the previous file or the new one, never a half-written one. CSV
cells that a spreadsheet would run as formulas are quoted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

# Cells starting with these are formulas to a spreadsheet; prefixing a quote makes them text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(fh)`` into a temp file beside it, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, default=str).encode()))


def _neutralize(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write a CSV atomically, with text cells that a spreadsheet would run as formulas quoted."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(_neutralize)
    atomic_write(path, lambda fh: safe.to_csv(fh, index=False))


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda fh: fh.write(text.encode()))
