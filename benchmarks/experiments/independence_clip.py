"""Probe (issue 14, stop 21): does error feedback create a new shortcut on `utk-gender`?

At half of each class's draws (`--error-share 0.5`) the cells that lose most on `utk-gender`
are Black men (-5.7 points) and Asian women (-5.1) — the other gender of the cells the error set
over-represents (Black women, Asian men). Upweighting one class's errors makes whatever they
share (here the race) predict that class in the draws: a new shortcut. On `utk-age` the same
effect is the cure: the errors of "old" are women, those of "young" men, so the draws weaken the
gender shortcut the data holds.

The label-free rule tested here: the weights may move each latent cluster's class mix toward
the overall class mix (independence of cluster and class) but never further from it than the
data has it. Clusters are k-means (on all training faces, classes together) on the standardised
latent means after 3 epochs of the default (the runs of `latent_probe_errors.py`). Prints, for
half of each class's draws uniformly on the CNN's errors (the "breaking share" of
`error-set-purity.md`), before and after the clip, each cell's share of the draws and, on
`utk-gender`, the share of each race's draws that are women:

    SHARED_DATA=../shared/data OUT=/tmp/lp python benchmarks/experiments/independence_clip.py \
        utk-gender 0 3    # task, seed, epochs of the run to read
"""

import os
import sys
from pathlib import Path

import numpy as np
from error_probes import head_inputs, probe_data
from scipy.optimize import minimize
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from debias import load_model

task, seed, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = Path(os.environ.get("OUT", "/tmp/lp")) / f"{task}-s{seed}-e{epochs}"
data, rows, cells = probe_data(task, seed)
y = data.y[rows]
model, _ = load_model(run)
hidden, logits, M = head_inputs(model, data, rows)
wrong = logits.argmax(1).numpy() != y
if os.environ.get("FEATURES") == "hidden":  # the 512-d layer before the heads
    M = hidden
M = (M - M.mean(0)) / (M.std(0) + 1e-6)
classes = np.unique(y)
prior = np.array([(y == k).mean() for k in classes])


def error_weights() -> np.ndarray:
    w = np.zeros(len(y))
    for k in classes:
        m = y == k
        w[m] = 0.5 * m.mean() / m.sum()
        w[m & wrong] += 0.5 * m.mean() / (m & wrong).sum()
    return w


def clip(w: np.ndarray, cluster: np.ndarray, rounds: int = 5) -> np.ndarray:
    """Keep every cluster's weighted class mix no further from ``prior`` than its data mix."""
    w = w.copy()
    for _ in range(rounds):
        for c in np.unique(cluster):
            at = cluster == c
            data_mix = np.array([(y[at] == k).mean() for k in classes])
            mass = np.array([w[at & (y == k)].sum() for k in classes])
            mix = mass / mass.sum()
            bound = np.abs(data_mix - prior)
            target = prior + np.clip(mix - prior, -bound, bound)
            target /= target.sum()
            for i, k in enumerate(classes):
                if mass[i] > 0:
                    w[at & (y == k)] *= target[i] * mass.sum() / mass[i]
        for i, k in enumerate(classes):  # every class keeps its share of the draws
            w[y == k] *= prior[i] / w[y == k].sum()
    return w


def show(name: str, w: np.ndarray) -> None:
    shares = "  ".join(f"{c}: {w[cells == c].sum():.3f}" for c in sorted(set(cells)))
    print(f"{name:14s} {shares}")
    if task != "utk-age":
        race = np.array([c.split(" ")[0] for c in cells])
        female = np.char.endswith(cells.astype(str), "female")
        women = "  ".join(
            f"{r}: {w[(race == r) & female].sum() / w[race == r].sum():.2f}"
            for r in sorted(set(race))
        )
        print(f"{'':14s} women's share of each race's draws: {women}")


print(f"{int(wrong.sum())} errors of {len(y)}")
show("uniform", np.full(len(y), 1 / len(y)))
w = error_weights()
show("errors 0.5", w)
for k in (8, 16, 32):
    cluster = KMeans(k, n_init=4, random_state=seed).fit_predict(M)
    show(f"clipped K={k}", clip(w, cluster))


def dual(lam: np.ndarray, xm: np.ndarray, base: np.ndarray) -> tuple[float, np.ndarray]:
    """Entropy balancing's dual objective and gradient; at its minimum the tilted mean is 0."""
    e = base * np.exp(xm @ lam)
    return float(np.log(e.sum())), (e[:, None] * xm).sum(0) / e.sum()


def tilt(w: np.ndarray, dims: int) -> np.ndarray:
    """Tilt each class's weights so its mean latent, off the class axis, stays the data's.

    The class axis is the difference of the two classes' mean latents in the data (binary
    tasks). Error feedback may move faces along it (that is what a shortcut's exceptions do to
    the class means: they weaken the association), but a shift off it is an association the data
    did not have. Entropy balancing (Hainmueller 2012): w_i exp(lambda . x_i), lambda solving the
    convex dual, on the top ``dims`` principal axes of the latent means off the class axis.
    """
    axis = M[y == classes[1]].mean(0) - M[y == classes[0]].mean(0)
    axis /= np.linalg.norm(axis)
    off = M - np.outer(M @ axis, axis)
    off = off - off.mean(0)
    _, _, vt = np.linalg.svd(off, full_matrices=False)
    x = off @ vt[:dims].T
    out = w.copy()
    for k in classes:
        m = y == k
        xm, base = x[m] - x[m].mean(0), w[m] / w[m].sum()  # target: the data's class mean
        lam = minimize(dual, np.zeros(dims), args=(xm, base), jac=True, method="BFGS").x
        t = base * np.exp(xm @ lam)
        out[m] = t / t.sum() * w[m].sum()
    return out


for dims in (5, 10, 20):
    show(f"tilted d={dims}", tilt(w, dims))

if task != "utk-age":  # can any neighbourhood rule see race? Its share among each face's 50-NN
    race = np.array([c.split(" ")[0] for c in cells])
    _, near = NearestNeighbors(n_neighbors=51).fit(M).kneighbors(M)
    for c in sorted(set(cells)):
        at = cells == c
        print(
            f"{c:14s} same race among 50 nearest: {(race[near[at, 1:]] == c.split()[0]).mean():.2f}"
        )
