"""Rich progress bars for the library's progress events (the library itself never prints).

On a terminal each phase is a live bar; piped into a file or a CI log, bars would arrive as one
frozen frame, so each phase and each epoch is one plain line instead.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column


class RichListener:
    """Draws each phase (decode, epochs) as a progress bar with running statistics and ETA."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description:>11}"),
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            # A finished bar shows how long it took, not a remaining time of 0:00:00.
            TimeRemainingColumn(elapsed_when_finished=True),
            # The statistics take what width is left and are cut with an ellipsis, so on an
            # 80-column terminal the bar, the count and the ETA stay whole.
            TextColumn(
                "{task.fields[stats]}",
                table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"),
            ),
            console=console,
            expand=True,
        )
        self.task: Any = None
        self.live = console.is_terminal

    def __enter__(self) -> RichListener:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def phase(self, name: str, total: int) -> None:
        """Add a progress bar for a new phase (one plain line when not on a terminal)."""
        self.task = self.progress.add_task(name, total=total, stats="")
        if not self.live:
            self._line(f"{name}: {total}")

    def advance(self, n: int = 1, **fields: float) -> None:
        """Advance the current bar and show the running statistics."""
        stats = " ".join(f"{k} {v:.3f}" for k, v in fields.items())
        self.progress.update(self.task, advance=n, stats=stats)

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        """Replace the running statistics with the epoch's summary."""
        val = metrics.get("val_acc")
        stats = (
            f"loss {metrics['train_loss']:.3f} acc {metrics['train_acc']:.3f} val {val:.3f} "
            if val is not None
            else ""
        ) + f"ess {metrics['ess_fraction']:.0%} {metrics['images_per_s']:.0f} img/s"
        self.progress.update(self.task, stats=stats)
        if not self.live:
            self._line(f"epoch {metrics.get('epoch', '')}: {stats}")

    def note(self, text: str) -> None:
        """Print a job's one-line message above the bars."""
        self._line(text)

    def _line(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
