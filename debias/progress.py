"""Progress listening: the library reports progress through a listener and knows no terminal.

Training, decoding, auditing and outlier scoring call a :class:`Listener`; the CLI draws its
events as progress bars (``cli/progress.py``), and library users pass nothing
(:class:`SilentListener`).
"""

from __future__ import annotations

from typing import Any, Protocol


class Listener(Protocol):
    """Progress events; the CLI draws them as progress bars. Every method is optional."""

    def phase(self, name: str, total: int) -> None:
        """Start a phase (decode, epoch N, ...) of ``total`` steps."""

    def advance(self, n: int = 1, **fields: float) -> None:
        """``n`` steps done; ``fields`` are running statistics (loss, acc, ess)."""

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        """Receive a finished epoch's ``metrics.jsonl`` record."""

    def note(self, text: str) -> None:
        """Tell the user one line about what a job is doing (a step it takes on its own)."""


class SilentListener:
    """A listener that shows nothing (library use, tests, benchmarks)."""

    def phase(self, name: str, total: int) -> None:  # noqa: D102
        pass

    def advance(self, n: int = 1, **fields: float) -> None:  # noqa: D102
        pass

    def epoch_end(self, metrics: dict[str, Any]) -> None:  # noqa: D102
        pass

    def note(self, text: str) -> None:  # noqa: D102
        pass
