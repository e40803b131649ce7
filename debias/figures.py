"""The report's figures: matplotlib charts and image grids, as PNG bytes (no files, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: figures only ever become PNG bytes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

BLUE, ORANGE, GREY = "#3b6ea5", "#d9822b", "#8a8a8a"


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def group_bars(rows: pd.DataFrame, title: str, reference: float | None = None) -> bytes:
    """Horizontal bars of accuracy per group with CI whiskers; rows: group, value, ci_low/high."""
    rows = rows.sort_values("value")
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(rows) + 1.0))
    y = np.arange(len(rows))
    low = (rows["value"] - rows["ci_low"]).clip(lower=0).fillna(0)
    high = (rows["ci_high"] - rows["value"]).clip(lower=0).fillna(0)
    colours = [BLUE if j else GREY for j in rows.get("judged", [True] * len(rows))]
    ax.barh(y, rows["value"], xerr=[low, high], color=colours, capsize=3)
    ax.set_yticks(y, [str(g) for g in rows["group"]])
    if reference is not None:
        ax.axvline(reference, color=ORANGE, linestyle="--", linewidth=1, label="overall")
        ax.legend(loc="lower right", fontsize=8)
    lo = max(0.0, float(np.nanmin(rows["ci_low"].fillna(rows["value"]))) - 0.05)
    ax.set_xlim(lo, 1.0)
    ax.set_xlabel("accuracy (95% CI)")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def training_curves(runs: dict[str, list[dict]]) -> bytes:
    """Loss and validation accuracy per epoch, one line per run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for (name, metrics), colour in zip(runs.items(), (BLUE, ORANGE, GREY), strict=False):
        epochs = [m["epoch"] for m in metrics]
        left.plot(epochs, [m["train_classification"] for m in metrics], color=colour, label=name)
        val = [m.get("val_acc") for m in metrics]
        if any(v is not None for v in val):
            right.plot(epochs, val, color=colour, marker="o", label=name)
    left.set(title="classification loss (train)", xlabel="epoch")
    right.set(title="validation accuracy", xlabel="epoch")
    for ax in (left, right):
        ax.legend(fontsize=8)
    return _png(fig)


def ess_curve(metrics: list[dict]) -> bytes:
    """Effective sample size per epoch as a share of each class."""
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    epochs = [m["epoch"] for m in metrics]
    classes = sorted({c for m in metrics for c in m.get("ess_by_class", {})})
    for c, colour in zip(classes, (BLUE, ORANGE, GREY), strict=False):
        ax.plot(epochs, [m["ess_by_class"].get(c) for m in metrics], color=colour, label=c)
    ax.set(title="effective sample size / class size", xlabel="epoch", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return _png(fig)


def weight_histogram(weights: np.ndarray) -> bytes:
    """Distribution of the final sampling weights, relative to uniform."""
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    relative = weights * len(weights)
    ax.hist(relative, bins=40, color=BLUE)
    ax.set_yscale("log")
    ax.set(title="sampling weight (1 = uniform)", xlabel="weight x N", ylabel="images")
    return _png(fig)


def image_row(images: Sequence[np.ndarray], size: int = 64) -> bytes:
    """Lay out a row of uint8 images ``(3, S, S)`` as one PNG (empty when there are none)."""
    if not len(images):
        return b""
    tiles = [
        np.asarray(Image.fromarray(im.transpose(1, 2, 0)).resize((size, size))) for im in images
    ]
    gap = np.full((size, 2, 3), 255, np.uint8)
    row = np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(row).save(buffer, format="PNG")
    return buffer.getvalue()
