"""Probe (issue 14, stop 22): does a joint latent density see a shortcut's exceptions?

The histograms of the DB-VAE treat the 100 latent dimensions as independent; a young man in a
set where youth goes with women is rare only in a combination of dimensions. This prints each
cell's share of the draws under the histograms and under `debias.mixture.LatentMixture` (per
class, k Gaussians on the top `a` whitened principal axes) for a trained run's latent means, and
for the mixture on the 512-d hidden layer, next to the cells' share of the images. Reads the
default runs of `latent_probe_errors.py` (epoch 3, when error feedback freezes its set; epoch 12,
a finished run). Results: `joint-density-and-selection.md`.

    SHARED_DATA=../shared/data OUT=/tmp/lp python benchmarks/experiments/joint_density_probe.py \
        utk-age 0 3    # task, seed, epochs of the run to read
"""

import os
import sys
from pathlib import Path

import torch
from error_probes import head_inputs, probe_data

from debias import load_model
from debias.mixture import LatentMixture
from debias.resample import LatentHistogram

task, seed, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = Path(os.environ.get("OUT", "/tmp/lp")) / f"{task}-s{seed}-e{epochs}"
data, rows, cells = probe_data(task, seed)
y = torch.from_numpy(data.y[rows])
model, _ = load_model(run)
hidden, _, means = head_inputs(model, data, rows)


def show(name: str, w: torch.Tensor) -> None:
    w = w.numpy()
    shares = "  ".join(f"{c}: {w[cells == c].sum():.3f}" for c in sorted(set(cells)))
    print(f"{name:26s} {shares}", flush=True)


show("images", torch.full((len(y),), 1 / len(y)))
show(
    "histograms (ESS 0.5)",
    LatentHistogram(ess_fraction=0.5).fit(torch.from_numpy(means), y).weights_,
)
for k, a in ((4, 5), (8, 10), (16, 10), (8, 20)):
    mixture = LatentMixture(n_mixture=k, n_axes=a).fit(torch.from_numpy(means), y)
    show(f"mixture k={k} axes={a}", mixture.weights_)
show("mixture on hidden, k=8 a=10", LatentMixture().fit(torch.from_numpy(hidden), y).weights_)
