"""Probe (issue 14, stop 19): which of an early model's errors does training on the *others* fix?

The epoch-3 error set mixes a shortcut's exceptions (a group: what one young man teaches about
young men holds for the next) with hard and mislabeled faces (each wrong in its own way). Split
each class's errors in two folds; train the epoch-3 model one more epoch with one fold given half
of its class's draws and the other fold left out; see which held-out errors it now gets right.
Errors that generalise to each other should be the group, the ones that stay wrong the noise.

A control copy trains the same epoch with uniform draws, so a face's gain is its true-class
logit after the other fold's training minus after the control's (training on anything moves
faces near the boundary). Prints, per cell, the errors' mean p(true class) before, after the
control and after the other fold, the median gain, and, for errors kept at gain > 0, 0.5 and 1,
the share of the draws each cell would get with the kept errors at half of each class's draws;
saves the arrays to ``$OUT/learnable-<task>-s<seed>.npz``:

    SHARED_DATA=../shared/data python benchmarks/experiments/learnable_errors.py utk-age 0 1
    # task, seed, threads
"""

import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch
from error_probes import probe_data, probe_model, train_epoch

from debias import TrainConfig
from debias.encode import encode
from debias.training import split_indices

task, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
FINE_EPOCHS = float(os.environ.get("FINE_EPOCHS", "1"))
torch.set_num_threads(threads)
cpu = torch.device("cpu")
config = TrainConfig()
data, train_idx, cells = probe_data(task, seed)
y = data.y[train_idx]
model, opt, rng, aug = probe_model(data, seed)


def run_epoch(model, opt, weights: np.ndarray, n: int) -> None:
    draw = torch.multinomial(torch.from_numpy(weights), n, replacement=True, generator=rng)
    train_epoch(model, opt, data, train_idx[draw.numpy()], aug)


def p_true(model) -> np.ndarray:
    _, probs = encode(model, data.images, train_idx, device=cpu)
    return probs[np.arange(len(y)), y].numpy()


def balanced(part: np.ndarray, rest: np.ndarray, share: float = 0.5) -> np.ndarray:
    """Weights: within each class ``part`` gets ``share`` of the draws, ``rest`` the remainder."""
    w = np.zeros(len(y))
    for k in np.unique(y):
        m = y == k
        a, b = m & part, m & rest
        w[a] = share / max(a.sum(), 1) * m.mean()
        w[b] = (1 - share) / max(b.sum(), 1) * m.mean()
    return w / w.sum()


uniform = np.full(len(y), 1.0 / len(y))
for _ in range(3):
    run_epoch(model, opt, uniform, len(y))
before = p_true(model)
wrong = before < 0.5
fold = np.random.default_rng(seed).integers(0, 2, len(y))
_, val_idx = split_indices(data, config.val_fraction, seed)


def fine_tuned(weights: np.ndarray):
    m = copy.deepcopy(model)
    o = torch.optim.Adam(m.parameters(), lr=config.lr)
    # As measured in stop 19: loading keeps the moment tensors shared, so each copy's steps
    # also moved the original's Adam moments (the library's trial epochs copy them first).
    o.load_state_dict(opt.state_dict())
    run_epoch(m, o, weights, int(FINE_EPOCHS * len(y)))
    _, vp = encode(m, data.images, val_idx, device=cpu)
    return p_true(m), float((vp.argmax(1).numpy() == data.y[val_idx]).mean())


control, val_control = fine_tuned(uniform)
after, val_after = before.copy(), []
for f in (0, 1):
    p, v = fine_tuned(balanced(wrong & (fold == f), ~wrong))
    held = wrong & (fold != f)
    after[held] = p[held]
    val_after.append(v)
print(
    f"{task} seed {seed}: {wrong.sum()} errors; val acc control {val_control:.3f},"
    f" fold-upweighted {np.mean(val_after):.3f}"
)


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-4, 1 - 1e-4) / np.clip(1 - p, 1e-4, 1))


gain = logit(after) - logit(control)
print(
    "  held-out errors: fixed by control",
    int((control[wrong] >= 0.5).sum()),
    "by the other fold",
    int((after[wrong] >= 0.5).sum()),
)
for c in sorted(set(cells)):
    e = wrong & (cells == c)
    if e.sum():
        print(
            f"  {c:16s} errors {e.sum():4d}  p before {before[e].mean():.2f}"
            f"  control {control[e].mean():.2f}  other-fold {after[e].mean():.2f}"
            f"  logit gain {np.median(gain[e]):+.2f}"
            f"  fixed control {(control[e] >= 0.5).mean():.2f}"
            f" other {(after[e] >= 0.5).mean():.2f}"
        )
OUT = Path(os.environ.get("OUT", "/tmp/be"))
np.savez(
    OUT / f"learnable-{task}-s{seed}.npz",
    before=before,
    control=control,
    after=after,
    y=y,
    cells=cells,
    wrong=wrong,
)
for t in (0.0, 0.5, 1.0):
    kept = wrong & (gain > t)
    w = balanced(kept, ~wrong)
    print(
        f"  gain > {t}: {kept.sum()} kept  "
        + "  ".join(
            f"{c}: {(kept & (cells == c)).sum()} ({w[cells == c].sum():.3f})"
            for c in sorted(set(cells))
        )
    )
