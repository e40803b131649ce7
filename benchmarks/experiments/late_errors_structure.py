"""Prototype (issue 14): are a finished plain model's errors a coherent group, seen from outside it?

Predicts each class's training errors (cross-fitted logistic regression on 50 whitened principal
axes) from representations the model's last layer does not define: the image at 16 x 16 pixels,
and the mean- and std-pooled channels of each conv block; the hidden layer is the circular
reference. Prints the AUROC, the share of the draws a shortcut-breaking face (utk-age) or an
Asian face (utk-gender) would get with weights proportional to the predicted error, and their
effective sample share:

    SHARED_DATA=../shared/data OUT=/tmp/afr python benchmarks/experiments/late_errors_structure.py
    # after late_errors_afr.py has trained OUT/runs/<task>-erm-s<seed> for seeds 0-2
"""

import os
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import debias.training as training
from debias import load_data, load_model
from debias.model import preprocess

torch.set_num_threads(2)
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/afr"))
BLOCKS = {5: "conv2", 8: "conv3", 11: "conv4"}  # encoder layer index after each block's BatchNorm


@torch.no_grad()
def representations(model, images):
    reps = {"pixels": [], **{name: [] for name in BLOCKS.values()}, "hidden": []}
    logits = []
    for s in range(0, len(images), 512):
        x = preprocess(torch.from_numpy(images[s : s + 512]))
        reps["pixels"].append(torch.nn.functional.avg_pool2d(x, 4).flatten(1))
        h = x
        for i, layer in enumerate(model.encoder.features):
            h = layer(h)
            if i in BLOCKS:
                reps[BLOCKS[i]].append(torch.cat([h.mean((2, 3)), h.std((2, 3))], 1))
            if i == len(model.encoder.features) - 2:
                reps["hidden"].append(h)
        logits.append(h[:, : model.num_classes])
    return {k: torch.cat(v).numpy() for k, v in reps.items()}, torch.cat(logits)


for task in ("utk-age", "utk-gender"):
    data = load_data(labels=str(D / f"{task}-train.csv"), groups=["race", "gender"], image_size=64)
    for seed in (0, 1, 2):
        model, _ = load_model(OUT / f"runs/{task}-erm-s{seed}")
        model.eval()
        rows = training.split_indices(data, 0.1, seed)[0]
        reps, logits = representations(model, data.images[rows])
        y = data.y[rows]
        wrong = logits.argmax(1).numpy() != y
        frame = data.frame.iloc[rows]
        if task == "utk-age":
            young_men = (frame["label"] == "young") & (frame["gender"] == "male")
            group = (
                young_men | ((frame["label"] == "old") & (frame["gender"] == "female"))
            ).to_numpy()
        else:
            group = (frame["race"] == "Asian").to_numpy()
        line = [
            f"{task} seed {seed}: {int(wrong.sum())} errors, {group[wrong].mean():.2f} in group"
        ]
        for name, X in reps.items():
            q, aucs = np.zeros(len(y)), []
            for c in np.unique(y):
                m = y == c
                probe = make_pipeline(
                    StandardScaler(),
                    PCA(min(50, X.shape[1] - 1), whiten=True, random_state=0),
                    LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced"),
                )
                q[m] = cross_val_predict(probe, X[m], wrong[m], cv=5, method="predict_proba")[:, 1]
                aucs.append(roc_auc_score(wrong[m], q[m]))
            w = np.zeros(len(y))
            for c in np.unique(y):
                w[y == c] = q[y == c] / q[y == c].sum() / len(np.unique(y))
            ess = 1 / (len(y) * (w**2).sum())
            line.append(
                f"{name} AUROC {np.mean(aucs):.3f} group share {w[group].sum():.3f} ESS {ess:.2f}"
            )
        print(" | ".join(line), flush=True)
