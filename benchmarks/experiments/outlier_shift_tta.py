"""Prototype (issue 17, stop 17): average the face evidence over shifted copies too? (No.)

On top of the mirror average, each view is averaged over copies shifted by 2 px diagonally
(reflect-padded, as training's shifts are): 3 copies (none, +2/+2, -2/-2) or 5 (and +2/-2,
-2/+2). Prints AUROC for scene crops and the largest occlusion and the validation-calibrated
false-flag rate per race:

    python benchmarks/experiments/outlier_shift_tta.py utk-gender 0   # task, seed
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
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
val = decode_images(samples.loc[samples.split == "val", "path"].tolist(), 64)[0]
test = pd.read_csv(DATA / f"{task}-test.csv", keep_default_na=False)
rows = test[test.label != "not_face"]
faces = decode_images([str(DATA / p) for p in rows.path], 64)[0]
races = rows.race.to_numpy()
sets = bench.outlier_sets(DATA, task, faces, seed)
sets = {n: sets[n] for n in ("scene crops", "occlusion s3")}


def shifted(images, dy, dx):
    p = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    return np.ascontiguousarray(p[:, :, 4 + dy : 4 + dy + 64, 4 + dx : 4 + dx + 64])


SHIFTS = [(0, 0), (2, 2), (-2, -2), (2, -2), (-2, 2)]


def scored(images):
    per = [det.score_components(shifted(images, *s)) for s in SHIFTS]
    out = dict(per[0])
    for n_s in (3, 5):
        for c in O.FACE_EVIDENCE:
            out[f"{c}_s{n_s}"] = np.mean([p[c] for p in per[:n_s]], axis=0)
    return out


cal, inl = scored(val), scored(faces)
outs = {n: scored(v) for n, v in sets.items()}
for tag in ("", "_s3", "_s5"):
    names = [f"{c}{tag}" for c in O.FACE_EVIDENCE] + ["sharpness", "blockiness"]
    two = [O.TWO_SIDED[c] for c in O.FACE_EVIDENCE] + [True, True]
    fold = [True, True, True, False, False]
    c = [cal[n] for n in names]
    _, thr = O.calibrate(c, "min", 0.05, two, fold)
    i = O.combined_scores(c, [inl[n] for n in names], "min", two, fold)
    row = [tag or "mirror only"]
    for n, sc in outs.items():
        o = O.combined_scores(c, [sc[k] for k in names], "min", two, fold)
        row.append(
            f"{n} {roc_auc_score(np.r_[np.zeros(len(i)), np.ones(len(o))], np.r_[i, o]):.4f}"
        )
    row.append(" ".join(f"{r} {(i[races == r] > thr).mean():.3f}" for r in sorted(set(races))))
    print(task, seed, *row, flush=True)
