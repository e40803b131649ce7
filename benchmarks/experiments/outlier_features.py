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
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import outliers as bench  # noqa: E402  (benchmarks/outliers.py: the same outlier sets)

from debias import outliers as O  # noqa: E402
from debias import runfolder  # noqa: E402
from debias.data import decode_images  # noqa: E402
from debias.jobs.outliers import OutlierConfig, fit_detector  # noqa: E402

O.MIRROR = False  # as recorded: before the views were averaged over mirror images
from debias.model import preprocess  # noqa: E402

torch.set_num_threads(1)
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
rows = []
for variant, (names, fold) in variants.items():
    cal = [calibration[c] for c in names]
    two, folded = [sides[c] for c in names], [c in fold for c in names]
    _, threshold = O.calibrate(cal, "min", 0.05, two, folded)
    inlier = O.combined_scores(cal, [inliers[c] for c in names], "min", two, folded)
    row = {"variant": variant}
    for name, scores in outliers.items():
        outlier = O.combined_scores(cal, [scores[c] for c in names], "min", two, folded)
        y = np.r_[np.zeros(len(inlier)), np.ones(len(outlier))]
        row[name] = round(roc_auc_score(y, np.r_[inlier, outlier]), 3)
    for race in sorted(set(races)):
        row[race] = round(float((inlier[races == race] > threshold).mean()), 3)
    rows.append(row)
print(f"{task} seed {seed}")
print(pd.DataFrame(rows).set_index("variant").to_string())
