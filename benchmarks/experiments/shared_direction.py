"""Probe (issue 14, stop 22): the errors' shared direction as an inferred attribute.

A model that takes a shortcut predicts the shortcut attribute: its prediction is wrong exactly
where class and attribute disagree. A linear model that predicts the model's *prediction* from
the latent means with the class given as a free covariate then learns what, beyond the class,
makes the model say one class or the other — on `utk-age` gender, the same direction for both
classes. Scored out of fold, every face gets a position on that direction; within each class the
faces furthest toward the other class form the inferred minority side. Unlike the error set it
also holds the exceptions the model got right, and it leaves out errors that share no direction
(light, pose) — so it may be purer. Balancing class x side makes the inferred attribute
independent of the class in the draws, which section 7 of `error-set-purity.md` found error
weights break on `utk-gender`.

Reads the 3-epoch default runs of `latent_probe_errors.py` and prints, for the CNN's errors and
for the side (same size as each class's errors), the cells' shares of the draws when half of each
class's draws go to the set, the within-class AUROC of the score for the shortcut's exceptions
(`utk-age`) and, on the other tasks, each race's share of women in the draws (results:
`error-set-purity.md`, section 8):

    SHARED_DATA=../shared/data OUT=/tmp/lp python benchmarks/experiments/shared_direction.py \
        utk-age 0 3    # task, seed, epochs of the run to read
"""

import os
import sys
from pathlib import Path

import numpy as np
from error_probes import head_inputs, probe_data
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from debias import load_model

task, seed, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = Path(os.environ.get("OUT", "/tmp/lp")) / f"{task}-s{seed}-e{epochs}"
data, rows, cells = probe_data(task, seed)
y = data.y[rows]
model, _ = load_model(run)
hidden, logits, means = head_inputs(model, data, rows)
pred = logits.argmax(1).numpy()
wrong = pred != y
classes = np.unique(y)
assert len(classes) == 2, "the probe is written for two classes"


def draws(side: np.ndarray, share: float = 0.5) -> np.ndarray:
    """Each class keeps its mass; ``share`` of it goes uniformly to the class's ``side``."""
    w = np.zeros(len(y))
    for k in classes:
        m = y == k
        w[m] = (1 - share) * m.mean() / m.sum()
        if (m & side).any():
            w[m & side] += share * m.mean() / (m & side).sum()
        else:
            w[m] += share * m.mean() / m.sum()
    return w


def show(name: str, side: np.ndarray, score: np.ndarray | None = None) -> None:
    w = draws(side)
    line = "  ".join(f"{c}: {w[cells == c].sum():.3f}" for c in sorted(set(cells)))
    if task == "utk-age":
        breaking = np.array([c in ("young male", "old female") for c in cells])
        if score is not None:
            auc = np.mean([roc_auc_score(breaking[y == k], score[y == k]) for k in classes])
            line += f"  auroc {auc:.3f}"
        line += f"  purity {breaking[side].mean():.2f}"
    else:
        race = np.array([c.split(" ")[0] for c in cells])
        women = np.array([c.endswith("female") for c in cells])
        line += "  women:" + " ".join(
            f"{r} {w[(race == r) & women].sum() / w[race == r].sum():.2f}"
            for r in sorted(set(race))
        )
    print(f"{name:22s} n={int(side.sum()):4d}  {line}", flush=True)


show("cnn errors", wrong, np.asarray(-logits.log_softmax(1)[np.arange(len(y)), y]))
for fname, F in (("latent", means), ("hidden", hidden)):
    F = (F - F.mean(0)) / (F.std(0) + 1e-6)
    # The class enters as a column scaled so that the penalty hardly touches its weight.
    X = np.column_stack([F, 30.0 * (y == classes[1])])
    for C in (0.001, 0.01, 0.1):
        p = cross_val_predict(
            LogisticRegression(C=C, max_iter=3000),
            X,
            pred == classes[1],
            cv=5,
            method="predict_proba",
        )[:, 1]
        toward_other = np.where(y == classes[1], 1 - p, p)  # p(model says the other class)
        side = np.zeros(len(y), bool)
        for k in classes:  # the same size as the class's errors
            at = np.flatnonzero(y == k)
            side[at[np.argsort(-toward_other[at])[: (wrong & (y == k)).sum()]]] = True
        show(f"{fname} C={C}", side, toward_other)
        show(f"{fname} C={C} p>0.5", toward_other > 0.5)
