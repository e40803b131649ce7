"""Prototype (issue 14, stop 20): judge learnability per latent cluster of errors, not per face.

`--error-filter learnable` keeps an error face when training on the other fold of errors raised
its true-class probability more than uniform training did. One face's gain is noisy (stop 19's
probe); a group's members should share it. Here each class's errors are clustered (k-means, K
clusters, on their standardised latent means) and a whole cluster is kept when its members' mean
gain is above 0. Trains and scores through `benchmarks/utk.py`'s `run_one` (so the numbers pair
with its plain-classifier results of the same seed) and writes its result JSON beside them:

    SHARED_DATA=../shared/data OUT=/tmp/bench14 K=8 \
        python benchmarks/experiments/cluster_learnable.py utk-age 0 1
    # task, seed, threads
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: utk.py and sections.py
import utk  # noqa: E402

import debias.weighting as weighting  # noqa: E402

task, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
D = os.environ.get("SHARED_DATA", "../shared/data")
OUT = Path(os.environ.get("OUT", "/tmp/bench14"))
K = int(os.environ.get("K", "8"))
method = f"cluster{K}"
utk.METHODS[method] = utk.Method(
    f"learnable errors judged per k-means cluster (K={K})", {"error_filter": "learnable"}
)
views: list[weighting.EpochView] = []
epoch_weights = weighting.ErrorFeedback.epoch_weights


def seeing(self: weighting.ErrorFeedback, view: weighting.EpochView) -> weighting.EpochWeights:
    views.append(view)
    return epoch_weights(self, view)


def clustered(errors: np.ndarray, y: np.ndarray, trial, seed: int) -> np.ndarray:
    gain = weighting.learnability(errors, y, trial, seed)
    mu = views[-1].encode_all()[0].numpy()
    keep = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = np.flatnonzero(errors & (y == c))
        if len(rows) < 2 * K:
            keep[rows] = gain[rows] > 0
            continue
        z = (mu[rows] - mu[rows].mean(0)) / (mu[rows].std(0) + 1e-6)
        labels = KMeans(K, n_init=4, random_state=seed).fit_predict(z)
        for k in range(K):
            members = rows[labels == k]
            keep[members] = np.nanmean(gain[members]) > 0
    print(f"{errors.sum()} errors, {(gain > 0).sum()} with gain > 0, {keep.sum()} kept", flush=True)
    return keep


weighting.ErrorFeedback.epoch_weights = seeing
weighting.learnable_errors = clustered
command = f"K={K} python benchmarks/experiments/cluster_learnable.py {task} {seed} {threads}"
record = utk.run_one(D, task, method, seed, 12, str(OUT), threads, command)
path = OUT / "results" / task / method / f"seed{seed}.json"
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(record, indent=2))
print(f"{task} {method} seed {seed}: mean {record['mean']:.3f} worst {record['worst']:.3f}")
