"""Prototype (issue 14, stop 18): average the plain model and the error-upweighted retrain.

`late_errors_select.py` trains, per task and seed, the plain classifier and a retrain from
scratch whose training errors get 0.75 of each class's weight, and finds no label-free rule to
keep one. An ensemble needs no rule: predict with (1 - w) p_plain + w p_retrain (the same 2x
cost). This prints each mixture's worst test cell and mean of cells, to see whether mixing
trades the shortcut task against `utk-gender` better than either model's weighting does:

    SHARED_DATA=../shared/data OUT=/tmp/sel python benchmarks/experiments/late_errors_ensemble.py \
        utk-age 0 2    # task, then the seeds whose two runs late_errors_select.py finished
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch

from debias import load_data, load_model
from debias.model import preprocess

torch.set_num_threads(1)
task, seeds = sys.argv[1], [int(s) for s in sys.argv[2:]]
D = Path(os.environ.get("SHARED_DATA", "../shared/data"))
OUT = Path(os.environ.get("OUT", "/tmp/sel"))
MIXTURES = (0.0, 0.25, 0.5, 0.75, 1.0)  # w, the retrain's share of the averaged probabilities


@torch.no_grad()
def probabilities(run: Path, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Class probabilities ``(N, C)`` of a run's model, and its class names."""
    model, config = load_model(run)
    model.eval()
    batches = [torch.from_numpy(images[s : s + 512]) for s in range(0, len(images), 512)]
    p = [torch.softmax(model.encode(preprocess(x))[0].float(), 1) for x in batches]
    return torch.cat(p).numpy(), config["data"]["classes"]


test = load_data(labels=str(D / f"{task}-test.csv"), groups=["race", "gender"], image_size=64)
f = test.frame
faces = (f.race.astype(str) != "").to_numpy()
cell = (f.label if task == "utk-age" else f.race).astype(str) + " " + f.gender.astype(str)
cell = cell.to_numpy()
for seed in seeds:
    plain, classes = probabilities(OUT / f"runs/{task}-erm-s{seed}", test.images)
    retrain, _ = probabilities(OUT / f"runs/{task}-retrain-s{seed}", test.images)
    verdicts = []
    for w in MIXTURES:
        predicted = np.asarray(classes)[((1 - w) * plain + w * retrain).argmax(1)]
        ok = predicted == f.label.to_numpy()
        per = [ok[faces & (cell == c)].mean() for c in sorted(set(cell[faces]))]
        verdicts.append(f"w {w:.2f}: worst {min(per):.3f} mean {np.mean(per):.3f}")
    print(f"{task} seed {seed} | " + " | ".join(verdicts), flush=True)
