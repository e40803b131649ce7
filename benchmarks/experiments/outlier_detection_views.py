"""Prototype (issue 17): a detection model's components — latent scores or the face views?

On a utk-detect run cached by `benchmarks/outliers.py`, prints the AUROC of each variant's
combined score and the false-flag rate per race (Asian, Black, Indian, White) at the 5% target,
calibrated on the run's validation faces:

    python benchmarks/experiments/outlier_detection_views.py 0   # seed
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import outliers as bench  # noqa: E402  (benchmarks/outliers.py: the same outlier sets)

from debias import outliers as O  # noqa: E402
from debias.data import decode_images  # noqa: E402
from debias.jobs.outliers import OutlierConfig, fit_detector  # noqa: E402

O.MIRROR = False  # as recorded: before the views were averaged over mirror images

torch.set_num_threads(1)
D = Path("../shared/data")
seed = int(sys.argv[1])
run = Path(f"benchmarks/out/outliers/runs/utk-detect-seed{seed}")
det = fit_detector(run, OutlierConfig(model=str(run), data=".", device="cpu"))
test = pd.read_csv(D / "utk-detect-test.csv", keep_default_na=False)
fr = test[test.label != "not_face"]
faces = decode_images([str(D / p) for p in fr.path], 64)[0]
races = fr.race.to_numpy()
sets = bench.outlier_sets(D, "utk-detect", faces, seed)
sets = {
    k: sets[k]
    for k in (
        "scene crops",
        "occlusion s2",
        "occlusion s3",
        "noise s1",
        "blur s2",
        "jpeg s1",
        "uniform noise",
    )
}
cal, inl = det.calibration_, det.score_components(faces)
outs = {k: det.score_components(v) for k, v in sets.items()}
views = ["hidden_features", "conv_lof", "reconstruction_ratio"]
base = ["reconstruction", "mahalanobis", "kl", "not_face", "sharpness", "blockiness"]
variants = {
    "before: latent components, no views": (base, []),
    "+views folded": (base + views, views),
    "kept: not_face, the views folded": (["not_face", *views, "sharpness", "blockiness"], views),
    "fold not_face with views": (
        ["not_face", *views, "sharpness", "blockiness"],
        ["not_face", *views],
    ),
    "fold not_face+views, +latent": (base + views, ["not_face", *views]),
}
rows = []
for vn, (names, fold) in variants.items():
    c = [cal[n] for n in names]
    two = [O.TWO_SIDED[n] for n in names]
    f = [n in fold for n in names]
    _, thr = O.calibrate(c, "min", 0.05, two, f)
    si = O.combined_scores(c, [inl[n] for n in names], "min", two, f)
    r = {"variant": vn}
    for k, sc in outs.items():
        so = O.combined_scores(c, [sc[n] for n in names], "min", two, f)
        r[k] = round(roc_auc_score(np.r_[np.zeros(len(si)), np.ones(len(so))], np.r_[si, so]), 4)
    r["ffr by race"] = " ".join(f"{(si[races == x] > thr).mean():.3f}" for x in sorted(set(races)))
    rows.append(r)
pd.set_option("display.width", 250)
print(pd.DataFrame(rows).set_index("variant").to_string())
