"""Prototype (issue 17, stop 17): mirrored training faces in the views' reference set too.

The kept detector averages each face view over the image and its mirror image, but the hidden
layer's mean and covariance and the conv map's neighbour bank hold the training faces unmirrored;
training flips faces, so the model's face distribution includes their mirror images. This adds
them to both references and prints AUROC for scene crops and the largest occlusion and the
validation-calibrated false-flag rate per race, before and after:

    python benchmarks/experiments/outlier_mirror_bank.py utk-gender 0   # task, seed
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

sys.path.insert(0, "benchmarks")
import outliers as bench

from debias import outliers as O
from debias import runfolder
from debias.data import decode_images
from debias.jobs.outliers import OutlierConfig, fit_detector

torch.set_num_threads(1)
DATA = Path("../shared/data")
task, seed = sys.argv[1], int(sys.argv[2])
run = Path(f"benchmarks/out/outliers/runs/{task}-seed{seed}")
det = fit_detector(run, OutlierConfig(model=str(run), data=".", device="cpu"))
samples = runfolder.read_samples(run)
train = decode_images(samples.loc[samples.split == "train", "path"].tolist(), 64)[0]
val = decode_images(samples.loc[samples.split == "val", "path"].tolist(), 64)[0]
test = pd.read_csv(DATA / f"{task}-test.csv", keep_default_na=False)
rows = test[test.label != "not_face"]
faces = decode_images([str(DATA / p) for p in rows.path], 64)[0]
races = rows.race.to_numpy()
sets = bench.outlier_sets(DATA, task, faces, seed)
sets = {n: sets[n] for n in ("scene crops", "occlusion s3")}


def evaluate(tag):
    cal, inl = det.score_components(val), det.score_components(faces)
    outs = {n: det.score_components(v) for n, v in sets.items()}
    names = det.components_
    two = [O.TWO_SIDED[c] for c in names]
    fold = list(det._fold)
    c = [cal[n] for n in names]
    _, thr = O.calibrate(c, "min", 0.05, two, fold)
    i = O.combined_scores(c, [inl[n] for n in names], "min", two, fold)
    row = [tag]
    for n, sc in outs.items():
        o = O.combined_scores(c, [sc[k] for k in names], "min", two, fold)
        row.append(
            f"{n} {roc_auc_score(np.r_[np.zeros(len(i)), np.ones(len(o))], np.r_[i, o]):.4f}"
        )
    row.append(" ".join(f"{r} {(i[races == r] > thr).mean():.3f}" for r in sorted(set(races))))
    print(task, seed, *row, flush=True)


evaluate("mirror average (kept)")
_, _, f = O.raw_scores(det.model, train, positive=None, device=torch.device("cpu"), mirror=True)
hidden = np.concatenate(list(f["hidden_features"]))
det.hidden_stats_ = (hidden.mean(0), LedoitWolf().fit(hidden).precision_)
det.conv_bank_ = O._unit(torch.from_numpy(np.concatenate(list(f["conv_lof"]))))
own, _ = O._neighbours(det.conv_bank_, det.conv_bank_, O.NEIGHBOURS, skip_self=True)
det.conv_radius_ = own[:, -1]
evaluate("+ mirrored training faces in the reference")
