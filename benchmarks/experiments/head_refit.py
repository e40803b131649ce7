"""Probe (issue 14, stop 20): refit a finished run's last layer on its own training features.

`late_errors_afr.py`'s gamma 0 row — the run's head retrained, class-balanced, on the eval-mode
features of its training faces, nothing upweighted — beat the plain classifier's worst cell on
`utk-age`. This checks that over more seeds, for the plain classifier and for the default, on
both attribute tasks: the run is trained (or reused) at 12 epochs, its head refitted by
full-batch Adam (lr 0.05, 300 steps, from the run's head; only class labels are read), and the
test cells scored before and after.

    SHARED_DATA=../shared/data OUT=/tmp/afr python benchmarks/experiments/head_refit.py \\
        utk-age 0 1 default    # task, seed, threads, method (erm or default)
"""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from debias import TrainConfig, load_data, load_model, train
from debias.model import preprocess
from debias.training import split_indices

task, seed, threads, method = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/afr"))
run = OUT / f"runs/{task}-{method}-s{seed}"  # late_errors_afr.py's plain runs are reused
groups = ["race", "gender"]
if not (run / "samples.csv").is_file():
    shutil.rmtree(run, ignore_errors=True)
    train(
        TrainConfig(
            labels=str(D / f"{task}-train.csv"), out=str(run), epochs=12, seed=seed,
            groups=groups, baseline=method == "erm",
        )
    )  # fmt: skip
model, saved = load_model(run)
model.eval()
data = load_data(labels=str(D / f"{task}-train.csv"), groups=groups, image_size=64)
test = load_data(labels=str(D / f"{task}-test.csv"), groups=groups, image_size=64)
train_idx, _ = split_indices(data, TrainConfig().val_fraction, seed)
head = model.encoder.features[-1]  # (C + 2K) outputs: the class logits come first
C = model.num_classes


@torch.no_grad()
def features(images: np.ndarray) -> torch.Tensor:
    """The eval-mode inputs of the last layer, ``(N, hidden)``."""
    parts = [
        model.encoder.features[:-1](preprocess(torch.from_numpy(images[s : s + 512])))
        for s in range(0, len(images), 512)
    ]
    return torch.cat(parts)


F_train, F_test = features(data.images[train_idx]), features(test.images)
y = torch.from_numpy(data.y[train_idx])
W = head.weight[:C].detach().clone().requires_grad_(True)
b = head.bias[:C].detach().clone().requires_grad_(True)
weight = 1.0 / torch.bincount(y).float()[y]  # every class the same mass
opt = torch.optim.Adam([W, b], lr=0.05)
for _ in range(300):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(F_train @ W.T + b, y, reduction="none") * weight
    (loss.sum() / weight.sum()).backward()
    opt.step()

classes = list(saved["data"]["classes"])
truth = np.array([classes.index(v) for v in test.frame["label"]])
faces = (test.frame["race"].astype(str) != "").to_numpy()
first = test.frame.label if task == "utk-age" else test.frame.race
cells = (first.astype(str) + " " + test.frame.gender.astype(str)).to_numpy()


def score(logits: torch.Tensor) -> dict:
    ok = logits.argmax(1).numpy() == truth
    per = {c: float(ok[faces & (cells == c)].mean()) for c in sorted(set(cells[faces]))}
    return {"worst": min(per.values()), "mean": float(np.mean(list(per.values()))), "cells": per}


with torch.no_grad():
    before = score(F_test @ head.weight[:C].T + head.bias[:C])
    after = score(F_test @ W.T + b)
result = {"task": task, "seed": seed, "method": method, "before": before, "after": after}
(OUT / f"refit-{task}-{method}-s{seed}.json").write_text(json.dumps(result, indent=1))
print(
    f"{task} {method} seed {seed}: worst {before['worst']:.3f} -> {after['worst']:.3f}, "
    f"mean {before['mean']:.3f} -> {after['mean']:.3f}",
    flush=True,
)
