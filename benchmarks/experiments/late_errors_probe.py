"""Are an ERM model's training errors a coherent subpopulation (predictable from its features)?"""

import os
from pathlib import Path

import numpy as np
import torch
from error_probes import head_inputs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

import debias.training as training
from debias import load_data, load_model

torch.set_num_threads(2)
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/afr"))
for task in ("utk-age", "utk-gender"):
    for seed in (0, 1, 2):
        model, cfg = load_model(OUT / f"runs/{task}-erm-s{seed}")
        data = load_data(
            labels=str(D / f"{task}-train.csv"), groups=["race", "gender"], image_size=64
        )
        rows = training.split_indices(data, 0.1, seed)[0]
        H, L, M = head_inputs(model, data, rows)
        y = data.y[rows]
        wrong = L.argmax(1).numpy() != y
        out = []
        for name, F in (("latent", M), ("hidden", H)):
            aucs = []
            for c in np.unique(y):
                m = y == c
                if wrong[m].sum() < 10:
                    continue
                p = cross_val_predict(
                    LogisticRegression(C=0.1, max_iter=2000),
                    F[m],
                    wrong[m],
                    cv=5,
                    method="predict_proba",
                )[:, 1]
                aucs.append(roc_auc_score(wrong[m], p))
            out.append(f"{name} {np.mean(aucs):.3f}")
        print(task, seed, "errors", int(wrong.sum()), " ".join(out), flush=True)
