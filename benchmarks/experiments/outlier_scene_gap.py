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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prototype import cached_run, judge  # noqa: E402

from debias import outliers as O  # noqa: E402

O.MIRROR = False  # the kept detector as it was; this script mirrors the views itself
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
task, seed = sys.argv[1], int(sys.argv[2])
cached = cached_run(task, seed, keep=("scene crops", "occlusion s3"))
detector, faces, races, sets = cached.detector, cached.faces, cached.races, cached.sets
model = detector.model.eval()
train, val = cached.split("train"), cached.split("val")


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
    "conv_half_lof_tta": False,
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
rows = [
    {
        "variant": variant,
        **judge(calibration, inliers, outliers, races, [*fold, *pixels], fold, sides),
    }
    for variant, fold in variants.items()
]
print(f"{task} seed {seed}")
print(pd.DataFrame(rows).set_index("variant").round(4).to_string())
