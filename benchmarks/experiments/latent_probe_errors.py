"""Probe (issue 14, stop 21): is a linear model on the VAE's latent means a bias-only model?

The VAE's latent space is shaped by reconstruction: it holds what makes faces look different
(gender, skin, light, pose) more than the subtle cue a class may need. A linear classifier on
the latent means, cross-fitted so that it cannot memorise, may then predict by the shortcut and
little else, and its mistakes be the shortcut's exceptions — purer than the CNN's own errors,
which are 30-37% exceptions on `utk-age` (`error-set-purity.md`).

Trains the project's default for E epochs (E = 3 is when error feedback freezes its set), then
prints, for the CNN's errors, a cross-fitted logistic regression on the latent means, and one on
the 512-d hidden layer, the errors' cells and the share of the draws each cell would get if half
of each class's draws went uniformly to the errors and half uniformly to the class:

    SHARED_DATA=../shared/data OUT=/tmp/lp \
        python benchmarks/experiments/latent_probe_errors.py utk-age 0 1 3
    # task, seed, threads, epochs
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch
from error_probes import D, head_inputs, probe_data
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from debias import TrainConfig, load_model, train

task, seed, threads, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
run = Path(os.environ.get("OUT", "/tmp/lp")) / f"{task}-s{seed}-e{epochs}"
if not (run / "config.json").exists():
    train(
        TrainConfig(
            labels=str(D / f"{task}-train.csv"),
            out=str(run),
            epochs=epochs,
            seed=seed,
            groups=["race", "gender"],
            augment=os.environ.get("AUGMENT", "1") != "0",  # AUGMENT=0: no flip, jitter, shift
        )
    )
data, rows, cells = probe_data(task, seed)
y = data.y[rows]
model, _ = load_model(run)
H, L, M = head_inputs(model, data, rows)


def shares(wrong: np.ndarray) -> str:
    w = np.zeros(len(y))
    for k in np.unique(y):
        m = y == k
        w[m] = 0.5 * m.mean() / m.sum()
        if (m & wrong).any():
            w[m & wrong] += 0.5 * m.mean() / (m & wrong).sum()
    return "  ".join(
        f"{c}: {(wrong & (cells == c)).sum()}/{(cells == c).sum()} -> {w[cells == c].sum():.3f}"
        for c in sorted(set(cells))
    )


print(f"cnn        {int((L.argmax(1).numpy() != y).sum()):5d}  {shares(L.argmax(1).numpy() != y)}")
for name, F in (("latent", M), ("hidden", H)):
    F = (F - F.mean(0)) / (F.std(0) + 1e-6)
    for C in (0.001, 0.01, 0.1):
        p = cross_val_predict(
            LogisticRegression(C=C, max_iter=3000, class_weight="balanced"),
            F,
            y,
            cv=5,
            method="predict_proba",
        )
        wrong = p.argmax(1) != y
        print(f"{name} C={C:<5} {int(wrong.sum()):5d}  {shares(wrong)}", flush=True)
