"""Probe (issue 14, stop 20): can a trial epoch choose the error share without group labels?

Every error-set rule met one trade-off: `utk-age` wants a large share for the epoch-3 errors (its
shortcut's exceptions), `utk-gender` a small one (its errors are hard faces). A label-free
choice per task would need a validation signal that moves the same way. Pseudo-groups from the
model itself: the validation faces the epoch-3 model gets wrong and those it gets right, per
class. A copy of the model trains one more epoch with the training errors at each share; the
candidate signal is its worst pseudo-group accuracy on validation (JTT/BAM-style selection,
with the model's own errors in place of group labels). Printed beside it, for judging only, the
copy's worst true cell on validation (read from the labels; a probe, not a method).

    SHARED_DATA=../shared/data python benchmarks/experiments/share_selection.py utk-age 0 1
    # task, seed, threads
"""

import copy
import sys

import numpy as np
import torch
from error_probes import probe_data, train_epoch

from debias import TrainConfig
from debias.encode import encode
from debias.model import DBVAE
from debias.training import split_indices
from debias.weighting import error_balanced

task, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
cpu = torch.device("cpu")
config = TrainConfig()
data, train_idx, _ = probe_data(task, seed)
_, val_idx = split_indices(data, config.val_fraction, seed)
y, y_val = data.y[train_idx], data.y[val_idx]
frame = data.frame.iloc[val_idx]
first = frame.label if task == "utk-age" else frame.race
val_cells = (first.astype(str) + " " + frame.gender.astype(str)).to_numpy()
torch.manual_seed(seed)
model = DBVAE(len(data.classes), config.model)
opt = torch.optim.Adam(model.parameters(), lr=config.lr)
gen = torch.Generator().manual_seed(seed)


def draw(weights: torch.Tensor) -> np.ndarray:
    return train_idx[torch.multinomial(weights.double(), len(y), True, generator=gen).numpy()]


def predictions(m: DBVAE, idx: np.ndarray) -> np.ndarray:
    return encode(m, data.images, idx, device=cpu)[1].argmax(1).numpy()


for _ in range(3):
    train_epoch(model, opt, data, draw(torch.full((len(y),), 1.0 / len(y))), gen)
errors = predictions(model, train_idx) != y
val_wrong = predictions(model, val_idx) != y_val
pseudo = np.char.add(y_val.astype(str), np.where(val_wrong, " wrong", " right"))
print(f"{task} seed {seed}: {errors.sum()} training errors, {val_wrong.sum()} validation errors")
for share in (0.0, 0.25, 0.5, 0.75):
    copied = copy.deepcopy(model)
    o = torch.optim.Adam(copied.parameters(), lr=config.lr)
    o.load_state_dict(copy.deepcopy(opt.state_dict()))  # copied: loading shares the moments
    uniform = torch.ones(len(y), dtype=torch.float64)
    weights = error_balanced(uniform, errors, y, share) if share else uniform / len(y)
    train_epoch(copied, o, data, draw(weights), gen)
    ok = predictions(copied, val_idx) == y_val
    by_pseudo = {g: ok[pseudo == g].mean() for g in sorted(set(pseudo))}
    by_cell = {c: ok[val_cells == c].mean() for c in sorted(set(val_cells))}
    print(
        f"  share {share:.2f}: val acc {ok.mean():.3f}, worst pseudo-group "
        f"{min(by_pseudo.values()):.3f} ({', '.join(f'{k} {v:.2f}' for k, v in by_pseudo.items())})"
        f"; worst true cell {min(by_cell.values()):.3f}",
        flush=True,
    )
