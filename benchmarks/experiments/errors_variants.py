"""Prototype (issue 14, stops 18-19): other uses of the epoch-3 error set.

Error feedback freezes the faces an epoch-3 plain model gets wrong and gives them a share of
their class's draws (``share50``: half, latent rarity within, as `errors+rarity`). On `utk-age`
those errors are partly the shortcut-breaking faces, a group a model can learn once it sees
enough of them; on `utk-gender` they are hard or mislabeled faces, and upweighting them costs
accuracy. Label-free ways to tell the two apart or soften the cost:

- ``release50``: noisy labels are learned late (co-teaching's small-loss criterion), so at epoch
  ``RELEASE`` the model classifies the error set again and the faces it still gets wrong go back
  to the rest;
- ``persist50``: only faces wrong after each of epochs 1, 2 and 3 (a transient boundary error
  flips between looks; a shortcut's exception stays wrong);
- ``mix50``: each error face in a batch is blended, with probability 1/2, with a face of its
  class outside the error set (intra-label mixup between inferred domains, as LISA, Yao et al.
  2022, does with domain labels): a young man blended with a young woman is still young but no
  longer says which gender goes with it, and a mislabeled face is diluted by a correct one.
- ``learn50``, ``learn25`` (stop 19): a group's members teach each other, noise does not. At
  epoch 3 copies of the model train one more epoch (classification loss only) with one random
  half of each class's error set at half of its draws and the other half left out, and once with
  uniform draws (the control); an error face is kept only if training on the *other* half raised
  its true-class logit more than the control did (``learnable_errors.py`` is the probe).

Prints the error set's composition per cell (before and after a release) and the run's worst
test cell and mean of cells:

    SHARED_DATA=../shared/data OUT=/tmp/rel python benchmarks/experiments/errors_variants.py \
        utk-age 0 1 release50    # task, seed, threads, variant (or plain)
"""

import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from error_probes import train_epoch

import debias.training as training
from debias import TrainConfig, load_data, load_model, train
from debias.encode import encode
from debias.model import preprocess
from debias.weighting import EpochView, EpochWeights, ErrorFeedback, error_balanced

task, seed, threads, variant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/rel"))
# A variant is a rule and the error set's share of its class's draws in percent (mix75), or
# plain: the plain classifier, to pair the others with.
rule, percent = variant.rstrip("0123456789"), variant[len(variant.rstrip("0123456789")) :]
RULES = ("share", "release", "persist", "mix", "learn")
if not (variant == "plain" or (rule in RULES and percent)):
    sys.exit(f"unknown variant {variant!r}")
SHARE = int(percent) / 100 if percent else 0.5
PERSIST = variant.startswith("persist")  # errors: wrong after 1, 2 and 3 epochs alike
RELEASE = 6 if variant.startswith("release") else None  # epoch of the second look
MIX = variant.startswith("mix")
LEARN = variant.startswith("learn")
groups = ["race", "gender"]
log: dict[str, dict[str, int]] = {}


def cell_names(frame) -> np.ndarray:
    first = frame.label if task == "utk-age" else frame.race
    return (first.astype(str) + " " + frame.gender.astype(str)).to_numpy()


held: dict[str, object] = {}  # the weighting, the training rows and the batch being trained


@dataclass
class VariedErrorFeedback(ErrorFeedback):
    """ErrorFeedback with PERSIST's filter, and a ``release`` of faces still classified wrong."""

    release: int | None = None
    persistent: np.ndarray | None = None

    def epoch_weights(self, view: EpochView) -> EpochWeights:
        held["weighting"] = self
        if PERSIST and 1 <= view.epoch < self.identify_epoch:
            wrong = view.encode_all()[1].argmax(1).numpy() != view.y
            self.persistent = wrong if self.persistent is None else self.persistent & wrong
        if PERSIST and view.epoch == self.identify_epoch and self.errors_ is None:
            self.errors_ = view.encode_all()[1].argmax(1).numpy() != view.y
            log["epoch 3 errors"] = count(view, self.errors_)
            self.errors_ &= self.persistent
        if LEARN and view.epoch == self.identify_epoch and self.errors_ is None:
            self.errors_ = view.encode_all()[1].argmax(1).numpy() != view.y
            log["epoch 3 errors"] = count(view, self.errors_)
            self.errors_ &= learnable(self.errors_, view.y)
        weights = super().epoch_weights(view)
        if self.errors_ is not None and "identified" not in log:
            log["identified"] = count(view, self.errors_)
        if self.release is not None and view.epoch == self.release:
            _, probs = view.encode_all()
            self.errors_ = self.errors_ & (probs.argmax(1).numpy() == view.y)
            log["kept"] = count(view, self.errors_)
            weights = super().epoch_weights(view)
        return weights


def learnable(wrong: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Error faces whose true-class logit rises more from training on the other errors."""
    s = held["setup"]
    gen = torch.Generator().manual_seed(seed + 1000)
    fold = np.random.default_rng(seed).integers(0, 2, len(y))

    def true_logit(weights: torch.Tensor) -> np.ndarray:
        model = copy.deepcopy(s.model)
        opt = torch.optim.Adam(model.parameters(), lr=s.scheduler.get_last_lr()[0])
        # As measured in stop 19: loading keeps the moment tensors shared, so each copy's steps
        # also moved the original's Adam moments (the library's trial epochs copy them first).
        opt.load_state_dict(s.optimizer.state_dict())
        draw = torch.multinomial(weights.double(), len(y), replacement=True, generator=gen).numpy()
        train_epoch(model, opt, s.data, s.train_idx[draw], gen, batch_size=s.config.batch_size)
        _, probs = encode(model, s.data.images, s.train_idx, device=s.device)
        p = probs[np.arange(len(y)), y].double().clamp(1e-4, 1 - 1e-4).numpy()
        return np.log(p / (1 - p))

    control = true_logit(torch.full((len(y),), 1.0 / len(y)))
    gain = np.zeros(len(y))
    for f in (0, 1):
        inner = torch.from_numpy((fold == f) | ~wrong).double()  # the other half left out
        logit = true_logit(error_balanced(inner, wrong & (fold == f), y, 0.5))
        held_out = wrong & (fold != f)
        gain[held_out] = logit[held_out] - control[held_out]
    return gain > 0


def count(view: EpochView, rows: np.ndarray) -> dict[str, int]:
    names, n = cell_names(view.frame)[rows], int(rows.sum())
    return {"all": n, **{c: int((names == c).sum()) for c in sorted(set(names))}}


def held_batches(images, idx, size):
    for chunk, x in batches(images, idx, size):
        held["chunk"] = chunk
        yield chunk, x


def held_view(s, epoch):
    held["train_idx"] = s.train_idx
    held["setup"] = s
    return epoch_view(s, epoch)


mix_rng = np.random.default_rng(seed)


def mixed(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """The augmented batch ``(B, 3, S, S)``, error faces blended with same-class other faces."""
    x = augment(x, rng)
    errors = held["weighting"].errors_
    if errors is None:
        return x
    position = np.full(int(held["train_idx"].max()) + 1, -1)
    position[held["train_idx"]] = np.arange(len(held["train_idx"]))
    chunk = held["chunk"]
    wrong, y = errors[position[chunk]], data_y[chunk]
    out = x.clone()
    for i in np.flatnonzero(wrong & (mix_rng.random(len(chunk)) < 0.5)):
        partners = np.flatnonzero(~wrong & (y == y[i]))
        if len(partners):
            lam = float(mix_rng.beta(2.0, 2.0))
            out[i] = lam * x[i] + (1.0 - lam) * x[mix_rng.choice(partners)]
    return out


run = OUT / f"runs/{task}-{variant}-s{seed}"
config = TrainConfig(
    labels=str(D / f"{task}-train.csv"), out=str(run), epochs=12, seed=seed, groups=groups,
    weighting="errors+rarity", error_share=SHARE, baseline=variant == "plain",
)  # fmt: skip
real = training.weighting_for
if variant != "plain":
    training.weighting_for = lambda c: VariedErrorFeedback(
        c.error_epoch, c.error_share, real(c).within, release=RELEASE
    )
data_y = load_data(labels=config.labels, groups=groups, image_size=64).y
batches, augment, epoch_view = training.batches, training.augment, training._epoch_view
if LEARN:
    training._epoch_view = held_view
if MIX:
    training.batches, training.augment, training._epoch_view = held_batches, mixed, held_view
shutil.rmtree(run, ignore_errors=True)
train(config)
training.weighting_for = real
training.batches, training.augment, training._epoch_view = batches, augment, epoch_view

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
