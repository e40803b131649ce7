"""Prototype (issue 14): retrain with exp(-gamma p_true) weights from a finished plain run.

gamma is set so that the plain run's training errors get TARGET of each class's weight:

    SHARED_DATA=../shared/data OUT=/tmp/afr python benchmarks/experiments/late_errors_stage2.py \
        utk-age 0 1 0.5 t50    # task, seed, threads, target, tag (after late_errors_afr.py)
"""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import debias.training as training
from debias import TrainConfig, load_data, load_model, train
from debias.encode import encode
from debias.weighting import EpochWeights

task, seed, threads, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
tag = sys.argv[5] if len(sys.argv) > 5 else f"t{target}"
torch.set_num_threads(threads)
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/afr"))
groups = ["race", "gender"]
run = OUT / Path(f"runs/{task}-erm-s{seed}")
model, cfg = load_model(run)
data = load_data(labels=str(D / f"{task}-train.csv"), groups=groups, image_size=64)
rows = training.split_indices(data, 0.1, seed)[0]
_, probs = encode(model, data.images, rows, device=torch.device("cpu"))
y = torch.as_tensor(data.y[rows])
p = probs[torch.arange(len(y)), y].double()
wrong = probs.argmax(1) != y


def weights(gamma):
    w = torch.exp(-gamma * p)
    for c in y.unique():
        m = y == c
        w[m] = w[m] / w[m].sum() / len(y.unique())
    return w


def err_mass(gamma):
    w = weights(gamma)
    return float(np.mean([float(w[(y == c) & wrong].sum() / w[y == c].sum()) for c in y.unique()]))


lo, hi = 0.0, 200.0
for _ in range(60):
    mid = (lo + hi) / 2
    (lo, hi) = (mid, hi) if err_mass(mid) < target else (lo, mid)
gamma = (lo + hi) / 2
w = weights(gamma)
frame = data.frame.iloc[rows]
if task == "utk-age":
    minority = ((frame["label"] == "young") & (frame["gender"] == "male")) | (
        (frame["label"] == "old") & (frame["gender"] == "female")
    )
    share = float(w[torch.from_numpy(minority.to_numpy())].sum())
else:
    share = {
        r: float(w[torch.from_numpy((frame["race"] == r).to_numpy())].sum())
        for r in sorted(set(frame["race"]))
    }
print(
    "gamma",
    gamma,
    "err mass",
    err_mass(gamma),
    "errors",
    int(wrong.sum()),
    "share",
    share,
    flush=True,
)


class Fixed:
    def epoch_weights(self, view):
        return EpochWeights((w / w.sum()).float(), True)

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


out = OUT / Path(f"runs/{task}-{tag}-s{seed}")
shutil.rmtree(out, ignore_errors=True)
real = training.weighting_for
training.weighting_for = lambda c: Fixed()
try:
    result = train(
        TrainConfig(
            labels=str(D / f"{task}-train.csv"),
            out=str(out),
            epochs=12,
            seed=seed,
            groups=groups,
            baseline=True,
        )
    )
finally:
    training.weighting_for = real
test = load_data(labels=str(D / f"{task}-test.csv"), groups=groups, image_size=64)
_, tp = encode(result.model, test.images, np.arange(len(test)), device=torch.device("cpu"))
pred = np.array(result.data.classes)[tp.argmax(1).numpy()]
ok = pred == test.frame["label"].to_numpy()
f = test.frame
faces = f["race"].astype(str) != ""
cells = (
    (f["label"].astype(str) if task == "utk-age" else f["race"].astype(str))
    + "|"
    + f["gender"].astype(str)
)
per = {c: float(ok[faces & (cells == c)].mean()) for c in sorted(set(cells[faces]))}
print(
    "RESULT",
    task,
    seed,
    tag,
    "worst",
    min(per.values()),
    "mean",
    np.mean(list(per.values())),
    per,
    flush=True,
)
json.dump(
    {"gamma": gamma, "share": share, "per": per}, open(OUT / f"{task}-{tag}-s{seed}.json", "w")
)
shutil.rmtree(out, ignore_errors=True)
