"""Prototype (issue 17): a detection model's components — latent scores or the face views?

On a utk-detect run cached by `benchmarks/outliers.py`, prints the AUROC of each variant's
combined score and the false-flag rate per race (Asian, Black, Indian, White) at the 5% target,
calibrated on the run's validation faces:

    python benchmarks/experiments/outlier_detection_views.py 0   # seed
"""

import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prototype import cached_run, judge  # noqa: E402

from debias import outliers as O  # noqa: E402

O.MIRROR = False  # as recorded: before the views were averaged over mirror images
torch.set_num_threads(1)
seed = int(sys.argv[1])
keep = ("scene crops", "occlusion s2", "occlusion s3", "noise s1", "blur s2", "jpeg s1",
        "uniform noise")  # fmt: skip
cached = cached_run("utk-detect", seed, keep)
det, faces, races, sets = cached.detector, cached.faces, cached.races, cached.sets
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
rows = [
    {"variant": vn, **judge(cal, inl, outs, races, names, fold, O.TWO_SIDED)}
    for vn, (names, fold) in variants.items()
]
pd.set_option("display.width", 250)
print(pd.DataFrame(rows).set_index("variant").round(4).to_string())
