"""How numbers are shown to people: the terminal tables and the report format them alike."""

from __future__ import annotations

from typing import Any

MISSING = "–"  # an undefined or missing number


def number(value: Any, digits: int = 3) -> str:
    """Format a number; missing, undefined (NaN) or non-numeric values show as a dash."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return MISSING
    return MISSING if x != x else f"{x:.{digits}f}"


def interval(low: Any, high: Any, digits: int = 3) -> str:
    """Format an interval as ``low–high``; empty when either end is undefined."""
    ends = [number(low, digits), number(high, digits)]
    return "" if MISSING in ends else "–".join(ends)
