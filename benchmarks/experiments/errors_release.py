"""Prototype (issue 14, stop 18): release the error-set faces a model still cannot fit.

Error feedback freezes the faces an epoch-3 plain model gets wrong and gives them a share of
their class's draws. On `utk-age` those errors are partly the shortcut-breaking faces (a group a
model can learn once it sees enough of them); on `utk-gender` they are mostly hard or mislabeled
faces, and upweighting them costs accuracy. Noisy labels are learned late (the small-loss
criterion of co-teaching): so at ``RELEASE`` epochs the model, trained meanwhile on the
upweighted error set, classifies it again, and the error faces it still gets wrong go back to the
rest. Label-free; prints the error set's composition per test cell before and after the release,
and the run's worst test cell and mean of cells:

    SHARED_DATA=../shared/data OUT=/tmp/rel python benchmarks/experiments/errors_release.py \
        utk-age 0 1 release50    # task, seed, threads, variant (share50, release50, release25)
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import debias.training as training
from debias import TrainConfig, load_data, load_model, train
from debias.model import preprocess
from debias.weighting import EpochView, EpochWeights, ErrorFeedback

task, seed, threads, variant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/rel"))
SHARE = {"share50": 0.5, "release50": 0.5, "release25": 0.25}[variant]
RELEASE = None if variant.startswith("share") else 6  # epoch of the second look
groups = ["race", "gender"]
log: dict[str, dict[str, int]] = {}


def cell_names(frame) -> np.ndarray:
    first = frame.label if task == "utk-age" else frame.race
    return (first.astype(str) + " " + frame.gender.astype(str)).to_numpy()


@dataclass
class Releasing(ErrorFeedback):
    """ErrorFeedback whose error set drops, at ``release``, the faces still classified wrong."""

    release: int | None = None

    def epoch_weights(self, view: EpochView) -> EpochWeights:
        weights = super().epoch_weights(view)
        if self.errors_ is not None and "identified" not in log:
            log["identified"] = count(view, self.errors_)
        if self.release is not None and view.epoch == self.release:
            _, probs = view.encode_all()
            self.errors_ = self.errors_ & (probs.argmax(1).numpy() == view.y)
            log["kept"] = count(view, self.errors_)
            weights = super().epoch_weights(view)
        return weights


def count(view: EpochView, rows: np.ndarray) -> dict[str, int]:
    names, n = cell_names(view.frame)[rows], int(rows.sum())
    return {"all": n, **{c: int((names == c).sum()) for c in sorted(set(names))}}


run = OUT / f"runs/{task}-{variant}-s{seed}"
config = TrainConfig(
    labels=str(D / f"{task}-train.csv"), out=str(run), epochs=12, seed=seed, groups=groups,
    weighting="errors+rarity", error_share=SHARE,
)  # fmt: skip
real = training.weighting_for
training.weighting_for = lambda c: Releasing(
    c.error_epoch, c.error_share, real(c).within, release=RELEASE
)
shutil.rmtree(run, ignore_errors=True)
train(config)
training.weighting_for = real

model, saved = load_model(run)
model.eval()
test = load_data(labels=str(D / f"{task}-test.csv"), groups=groups, image_size=64)
with torch.no_grad():
    logits = torch.cat(
        [model.encode(preprocess(torch.from_numpy(test.images[s : s + 512])))[0]
         for s in range(0, len(test.images), 512)]
    )  # fmt: skip
ok = np.asarray(saved["data"]["classes"])[logits.argmax(1).numpy()] == test.frame.label.to_numpy()
faces = (test.frame.race.astype(str) != "").to_numpy()
names = cell_names(test.frame)
cells = {c: float(ok[faces & (names == c)].mean()) for c in sorted(set(names[faces]))}
result = {
    "task": task, "seed": seed, "variant": variant, "worst": min(cells.values()),
    "mean": float(np.mean(list(cells.values()))), "cells": cells, "error set": log,
}  # fmt: skip
print(json.dumps(result, indent=1), flush=True)
(OUT / f"{task}-{variant}-s{seed}.json").write_text(json.dumps(result, indent=1))
