"""Prototype (issue 17): which views of "is this a face?" an attribute run's detector combines.

On a run cached by `benchmarks/outliers.py` (train it there first), scores the task's held-out
faces, the scene crops and the largest occlusion, and prints for each variant the AUROC of the
combined score and the false-flag rate per race at the 5% target, calibrated on the run's
validation faces:

    python benchmarks/experiments/outlier_features.py utk-gender 1   # task, seed

Variants: the minimum over every component before this issue's change (latent components,
pooled conv channels, hidden layer, pixel statistics); the three views in the minimum unfolded;
and the three views Fisher-combined first with, as the conv view, the residual off the faces'
100 principal axes, the plain k-th neighbour distance, or the local outlier factor (k = 10, 50);
and the last with the classifier's energy or maximum softmax probability folded in too.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prototype import cached_run, judge  # noqa: E402

from debias import outliers as O  # noqa: E402
from debias.model import preprocess  # noqa: E402

O.MIRROR = False  # as recorded: before the views were averaged over mirror images
torch.set_num_threads(1)
task, seed = sys.argv[1], int(sys.argv[2])
cached = cached_run(task, seed, keep=("scene crops", "occlusion s3"))
detector, faces, races, sets = cached.detector, cached.faces, cached.races, cached.sets
model = detector.model.eval()
train, val = cached.split("train"), cached.split("val")


@torch.no_grad()
def conv_maps(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last conv block's map, flattened ``(N, D)``, and its channels mean/std-pooled."""
    flat, pooled = [], []
    flatten = [i for i, m in enumerate(model.encoder.features) if isinstance(m, torch.nn.Flatten)]
    for s in range(0, len(images), 512):
        h = preprocess(torch.from_numpy(images[s : s + 512]))
        for layer in model.encoder.features[: flatten[0]]:
            h = layer(h)
        flat.append(h.flatten(1))
        pooled.append(torch.cat([h.flatten(2).mean(2), h.flatten(2).std(2)], 1))
    return torch.cat(flat).numpy(), torch.cat(pooled).numpy()


train_flat, train_pooled = conv_maps(train)
pooled_stats = (train_pooled.mean(0), LedoitWolf().fit(train_pooled).precision_)
pca = PCA(100, svd_solver="randomized", random_state=0).fit(train_flat)
bank = O._unit(torch.from_numpy(train_flat))
radius = {k: O._neighbours(bank, bank, k, skip_self=True)[0][:, -1] for k in (10, 50)}


def extra(images: np.ndarray) -> dict[str, np.ndarray]:
    flat, pooled = conv_maps(images)
    centred = flat - pca.mean_
    residual = centred - (centred @ pca.components_.T) @ pca.components_
    out = {
        "conv_pooled": O._mahalanobis(pooled, *pooled_stats),
        "conv_residual": (residual**2).sum(1),
    }
    for k in (10, 50):
        distance, index = O._neighbours(O._unit(torch.from_numpy(flat)), bank, k)
        out[f"conv_knn{k}"] = distance[:, -1].double().numpy()
        out[f"conv_lof{k}"] = (distance[:, -1] / radius[k][index].mean(1)).double().numpy()
    return out


@torch.no_grad()
def confidence(images: np.ndarray) -> dict[str, np.ndarray]:
    """The classifier's own OOD scores: energy (Liu et al., 2020) and max softmax, negated."""
    energy, top = [], []
    for s in range(0, len(images), 512):
        x = preprocess(torch.from_numpy(images[s : s + 512]))
        logits = model.encoder(x)[:, : model.num_classes]
        energy.append(-torch.logsumexp(logits, 1))
        top.append(-torch.softmax(logits, 1).max(1).values)
    return {"energy": torch.cat(energy).double().numpy(), "msp": torch.cat(top).double().numpy()}


def scored(images: np.ndarray) -> dict[str, np.ndarray]:
    return {**detector.score_components(images), **extra(images), **confidence(images)}


sides = {**O.TWO_SIDED, **{c: False for c in [*extra(faces[:20]), "energy", "msp"]}}
views = ["hidden_features", "reconstruction_ratio"]
pixels = ["sharpness", "blockiness"]
variants = {
    "before: min over all": (
        ["reconstruction", "mahalanobis", "kl", "conv_pooled", "hidden_features", *pixels],
        [],
    ),
    "three views, unfolded": ([*views, "conv_lof10", *pixels], []),
    "folded, conv residual": ([*views, "conv_residual", *pixels], [*views, "conv_residual"]),
    "folded, conv kNN k=10": ([*views, "conv_knn10", *pixels], [*views, "conv_knn10"]),
    "folded, conv kNN k=50": ([*views, "conv_knn50", *pixels], [*views, "conv_knn50"]),
    "folded, conv LOF k=10": ([*views, "conv_lof10", *pixels], [*views, "conv_lof10"]),
    "folded, conv LOF k=50": ([*views, "conv_lof50", *pixels], [*views, "conv_lof50"]),
    "folded, LOF k=10 + energy": (
        [*views, "conv_lof10", "energy", *pixels],
        [*views, "conv_lof10", "energy"],
    ),
    "folded, LOF k=10 + max softmax": (
        [*views, "conv_lof10", "msp", *pixels],
        [*views, "conv_lof10", "msp"],
    ),
}
calibration, inliers = scored(val), scored(faces)
outliers = {name: scored(images) for name, images in sets.items()}
rows = [
    {"variant": variant, **judge(calibration, inliers, outliers, races, names, fold, sides)}
    for variant, (names, fold) in variants.items()
]
print(f"{task} seed {seed}")
print(pd.DataFrame(rows).set_index("variant").round(3).to_string())
