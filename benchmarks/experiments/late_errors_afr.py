"""Prototype (issue 14): AFR-style last-layer retraining on an ERM run's training features.

Stop 20 added the learnability filter at the head (the end of the file; late-errors.md).

    SHARED_DATA=../shared/data OUT=/tmp/afr python benchmarks/experiments/late_errors_afr.py \
        utk-age 0 1    # task, seed, threads; trains the plain run first if OUT has none
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

import debias.training as training
from debias import TrainConfig, load_data, load_model, train
from debias.model import preprocess

task, seed = sys.argv[1], int(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
torch.set_num_threads(threads)
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/afr"))
run = OUT / Path(f"runs/{task}-erm-s{seed}")
groups = ["race", "gender"]
if not (run / "samples.csv").is_file():
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    train(
        TrainConfig(
            labels=str(D / f"{task}-train.csv"),
            out=str(run),
            epochs=12,
            seed=seed,
            groups=groups,
            baseline=True,
        )
    )
model, cfg = load_model(run)
model.eval()
data = load_data(labels=str(D / f"{task}-train.csv"), groups=groups, image_size=64)
test = load_data(labels=str(D / f"{task}-test.csv"), groups=groups, image_size=64)
tr, va = training.split_indices(data, 0.1, seed)[:2]


@torch.no_grad()
def feats(images):
    out_f, out_l = [], []
    for s in range(0, len(images), 512):
        x = preprocess(torch.from_numpy(images[s : s + 512]))
        h = model.encoder.features[:-1](x)
        out_f.append(h)
        out_l.append(model.encoder.features[-1](h)[:, : model.num_classes])
    return torch.cat(out_f), torch.cat(out_l)


Ftr, Ltr = feats(data.images[tr])
Fva, Lva = feats(data.images[va])
Fte, Lte = feats(test.images)
classes = list(cfg["data"]["classes"])
ytr = torch.as_tensor(data.y[tr])
yva = torch.as_tensor(data.y[va])
yte = torch.as_tensor([classes.index(v) for v in test.frame["label"]])
W0 = model.encoder.features[-1].weight[: model.num_classes].detach().clone()
b0 = model.encoder.features[-1].bias[: model.num_classes].detach().clone()
ptrue = torch.softmax(Ltr, 1)[torch.arange(len(ytr)), ytr]


def cells(frame):
    if task == "utk-age":
        return frame["label"].astype(str) + "|" + frame["gender"].astype(str)
    return frame["race"].astype(str) + "|" + frame["gender"].astype(str)


tc = cells(test.frame).to_numpy()
faces = (test.frame["race"].astype(str) != "").to_numpy()


def score(logits):
    pred = logits.argmax(1).numpy()
    ok = pred == yte.numpy()
    per = {c: ok[faces & (tc == c)].mean() for c in sorted(set(tc[faces]))}
    return min(per.values()), float(np.mean(list(per.values()))), per


def retrain(weights, reg=0.0, steps=300, lr=0.05):
    W = W0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.Adam([W, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(Ftr @ W.T + b, ytr, reduction="none") * weights
        ).sum()
        loss = loss + reg * ((W - W0) ** 2).sum()
        loss.backward()
        opt.step()
    return W.detach(), b.detach()


out = {"erm": score(Lte)[:2]}
print(
    "erm",
    out["erm"],
    "train acc",
    float((Ltr.argmax(1) == ytr).float().mean()),
    "train errors",
    int((Ltr.argmax(1) != ytr).sum()),
)
trc = cells(data.frame.iloc[tr]).to_numpy()
minority = np.array([c in ("young|male", "old|female") for c in trc]) if task == "utk-age" else None
for gamma in [0, 2, 4, 8, 16, 32, 64]:
    w = torch.exp(-gamma * ptrue)
    for c in range(len(classes)):  # class-balanced: each class half of the mass
        m = ytr == c
        w[m] = w[m] / w[m].sum() / len(classes)
    ess = float(1 / (w**2).sum() / len(w))
    share = float(w[torch.from_numpy(minority)].sum()) if minority is not None else None
    for reg in [0.0]:
        W, b = retrain(w, reg)
        worst, mean, per = score(Fte @ W.T + b)
        va_pred = (Fva @ W.T + b).argmax(1)
        worst_class_val = min(
            float((va_pred[yva == c] == c).float().mean()) for c in range(len(classes))
        )
        print(
            f"gamma {gamma:>3} reg {reg} ess {ess:.3f} minority share {share} "
            f"test worst {worst:.3f} mean {mean:.3f} val worst-class {worst_class_val:.3f}",
            {k: round(v, 3) for k, v in per.items()},
        )
        out[f"g{gamma}"] = (worst, mean, worst_class_val, share)


def retrain_and_report(label: str, key: str, w: torch.Tensor, share: float) -> None:
    """Retrain the head with weights ``w``, print the test cells and keep them in ``out``."""
    msh = float(w[torch.from_numpy(minority)].sum()) if minority is not None else None
    W, b = retrain(w)
    worst, mean, per = score(Fte @ W.T + b)
    print(
        f"{label} share {share} minority share {msh} test worst {worst:.3f} mean {mean:.3f}",
        {k: round(v, 3) for k, v in per.items()},
    )
    out[f"{key}{share}"] = (worst, mean, msh)


wrong = Ltr.argmax(1) != ytr
for share in [0.3, 0.5, 0.7]:
    w = torch.zeros(len(ytr))
    for c in range(len(classes)):
        m = ytr == c
        e, r = m & wrong, m & ~wrong
        if e.sum() == 0:
            w[m] = 1.0 / m.sum() / len(classes)
            continue
        w[e] = share / e.sum() / len(classes)
        w[r] = (1 - share) / r.sum() / len(classes)
    retrain_and_report("errors", "e", w, share)


# Stop 20: keep only the late errors that teach each other, judged by the last layer itself.
# Trials retrain the head (from the run's) with one fold of each class's errors at half of the
# class's weight and the other fold left out, or with uniform weights (the control); a held-out
# error is kept if its true-class probability rises more than under the control. Then the kept
# errors get the share.
def head_probs(weights):
    W, b = retrain(weights)
    return torch.softmax(Ftr @ W.T + b, 1)[torch.arange(len(ytr)), ytr]


def shared(part, share):
    """Weights: within each class ``part`` gets ``share``, the rest of the class the remainder."""
    w = torch.zeros(len(ytr))
    for c in range(len(classes)):
        m = ytr == c
        e, r = m & part, m & ~part & ~left_out
        if e.sum() == 0 or r.sum() == 0:
            w[m & ~left_out] = 1.0 / (m & ~left_out).sum() / len(classes)
            continue
        w[e] = share / e.sum() / len(classes)
        w[r] = (1 - share) / r.sum() / len(classes)
    return w


fold = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, len(ytr))).bool()
left_out = torch.zeros(len(ytr), dtype=torch.bool)
control = head_probs(shared(torch.zeros(len(ytr), dtype=torch.bool), 0.5))
keep = torch.zeros(len(ytr), dtype=torch.bool)
for f in (False, True):
    left_out = wrong & (fold != f)
    taught = head_probs(shared(wrong & (fold == f), 0.5))
    keep[left_out] = (taught > control)[left_out]
left_out = torch.zeros(len(ytr), dtype=torch.bool)
kept_minority = int((keep & torch.from_numpy(minority)).sum()) if minority is not None else None
print(f"late errors {int(wrong.sum())}, kept {int(keep.sum())} (shortcut-breaking {kept_minority})")
for share in [0.3, 0.5, 0.7]:
    retrain_and_report("kept errors", "k", shared(keep, share), share)
json.dump(out, open(OUT / f"{task}-s{seed}.json", "w"))
