"""Prototype (issue 17, stop 17): can an attribute run's detector close the last scene-crop gap?

The kept detector (hidden-layer Mahalanobis, conv-map local outlier factor and reconstruction
ratio Fisher-folded; then the minimum with sharpness and blockiness) scores scene crops at AUROC
0.988 (`utk-age`) and 0.987 (`utk-gender`) over 3 seeds, against a goal of 0.99. On a run cached
by `benchmarks/outliers.py`, this prints for each variant the AUROC for scene crops and the
heaviest occlusion and the false-flag rate per race at the 5% target (calibrated on the run's
validation faces):

    python benchmarks/experiments/outlier_scene_gap.py utk-gender 0   # task, seed

Variants: the kept one; a local outlier factor of the hidden layer added to the fold or in place
of its Mahalanobis distance; the latent Mahalanobis distance folded in; the conv view halfway
between the neighbour distance and the local outlier factor; and every view averaged over the
image and its mirror image (test-time flip).
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
from debias import runfolder  # noqa: E402
from debias.data import decode_images  # noqa: E402
from debias.jobs.outliers import OutlierConfig, fit_detector  # noqa: E402

O.MIRROR = False  # the kept detector as it was; this script mirrors the views itself

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
DATA = Path("../shared/data")
task, seed = sys.argv[1], int(sys.argv[2])
run = Path(f"benchmarks/out/outliers/runs/{task}-seed{seed}")
detector = fit_detector(run, OutlierConfig(model=str(run), data=".", device="cpu"))
model = detector.model.eval()
samples = runfolder.read_samples(run)
train = decode_images(samples.loc[samples.split == "train", "path"].tolist(), 64)[0]
val = decode_images(samples.loc[samples.split == "val", "path"].tolist(), 64)[0]
test = pd.read_csv(DATA / f"{task}-test.csv", keep_default_na=False)
faces_rows = test[test.label != "not_face"]
faces = decode_images([str(DATA / p) for p in faces_rows.path], 64)[0]
races = faces_rows.race.to_numpy()
sets = bench.outlier_sets(DATA, task, faces, seed)
sets = {name: sets[name] for name in ("scene crops", "occlusion s3")}


def features(images: np.ndarray) -> dict[str, torch.Tensor]:
    _, _, feats = O.raw_scores(model, images, positive=None, device=torch.device("cpu"))
    return {k: O._unit(torch.from_numpy(v[0])) for k, v in feats.items()}


bank = features(train)
radius = {k: O._neighbours(b, b, O.NEIGHBOURS, skip_self=True)[0][:, -1] for k, b in bank.items()}


def extra(images: np.ndarray) -> dict[str, np.ndarray]:
    feats = features(images)
    out = {
        "hidden_lof": O.local_outlier_factor(
            feats["hidden_features"], bank["hidden_features"], radius["hidden_features"]
        )
    }
    distance, index = O._neighbours(feats["conv_lof"], bank["conv_lof"], O.NEIGHBOURS)
    half = distance[:, -1] / radius["conv_lof"][index].mean(1).sqrt()
    out["conv_half_lof"] = half.double().numpy()
    return out


def scored(images: np.ndarray) -> dict[str, np.ndarray]:
    plain = {**detector.score_components(images), **extra(images)}
    mirrored = images[:, :, :, ::-1].copy()
    flip = {**detector.score_components(mirrored), **extra(mirrored)}
    for c in ("hidden_features", "conv_lof", "reconstruction_ratio", "hidden_lof", "conv_half_lof"):
        plain[f"{c}_tta"] = 0.5 * (plain[c] + flip[c])
    return plain


sides = {
    **O.TWO_SIDED,
    "hidden_lof": False,
    "conv_half_lof": False,
    "hidden_features_tta": False,
    "conv_lof_tta": False,
    "reconstruction_ratio_tta": True,
    "hidden_lof_tta": False,
}
kept = ["hidden_features", "conv_lof", "reconstruction_ratio"]
pixels = ["sharpness", "blockiness"]
tta = [f"{c}_tta" for c in kept]
variants = {
    "kept": kept,
    "+ hidden LOF": [*kept, "hidden_lof"],
    "hidden LOF for hidden Mahalanobis": ["hidden_lof", "conv_lof", "reconstruction_ratio"],
    "+ latent Mahalanobis": [*kept, "mahalanobis"],
    "conv: distance / sqrt(radius)": ["hidden_features", "conv_half_lof", "reconstruction_ratio"],
    "flip-averaged views": tta,
    "flip-averaged + hidden LOF": [*tta, "hidden_lof_tta"],
    "flip-averaged, conv: distance / sqrt(radius)": [
        "hidden_features_tta",
        "conv_half_lof_tta",
        "reconstruction_ratio_tta",
    ],
}
calibration, inliers = scored(val), scored(faces)
outliers = {name: scored(images) for name, images in sets.items()}
rows = []
for variant, fold in variants.items():
    names = [*fold, *pixels]
    cal = [calibration[c] for c in names]
    two, folded = [sides[c] for c in names], [c in fold for c in names]
    _, threshold = O.calibrate(cal, "min", 0.05, two, folded)
    inlier = O.combined_scores(cal, [inliers[c] for c in names], "min", two, folded)
    row = {"variant": variant}
    for name, scores in outliers.items():
        outlier = O.combined_scores(cal, [scores[c] for c in names], "min", two, folded)
        y = np.r_[np.zeros(len(inlier)), np.ones(len(outlier))]
        row[name] = round(roc_auc_score(y, np.r_[inlier, outlier]), 4)
    for race in sorted(set(races)):
        row[race] = round(float((inlier[races == race] > threshold).mean()), 3)
    rows.append(row)
print(f"{task} seed {seed}")
print(pd.DataFrame(rows).set_index("variant").to_string())
