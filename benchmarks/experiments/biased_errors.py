"""Probe (issue 14, stop 19): are a *bias-amplified* model's errors purer than a plain one's?

Error feedback takes the faces a plain model gets wrong after 3 epochs. A plain model has learnt
some of the real signal by then, so its errors mix the shortcut's exceptions with hard faces of
the majority. Learning from Failure (Nam et al. 2020) trains its bias model with the generalised
cross-entropy (GCE, Zhang & Sabuncu 2018), whose gradient is the cross-entropy's times p^q: it
leans on what it already gets right, so it learns the easiest cue (the shortcut) and ignores
the rest. A model that predicts by the shortcut alone gets every majority face right and every
exception wrong, so its errors should be the exceptions, not the hard faces. DENEB (Ahn & Yun
2022) scores by the entropy of the prediction instead of the loss: a mislabeled face is predicted
confidently (the other class), a conflicting one should be uncertain.

Trains a classifier-only DB-VAE encoder (no VAE loss) with CE or GCE(q) on the training split,
the project's augmentation, batch and learning rate (constant), and after each epoch prints the
share of the draws each cell would get if half of each class's draws went by a score (the error
indicator, the entropy, its 4th power, 1 - p(true class)) and half were uniform:

    SHARED_DATA=../shared/data python benchmarks/experiments/biased_errors.py utk-age 0 1 0.7 3
    # task, seed, threads, q (0 = cross-entropy), epochs
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from error_probes import probe_data, probe_model, train_epoch

from debias.encode import encode

task, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
q, epochs = float(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
data, train_idx, cells = probe_data(task, seed)
y = data.y[train_idx]
model, opt, rng, aug = probe_model(data, seed)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if q == 0:
        return F.cross_entropy(logits, target)
    p = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    return ((1 - p.clamp_min(1e-6) ** q) / q).mean()  # GCE: CE's gradient times p^q


for epoch in range(epochs):
    order = train_idx[torch.randperm(len(train_idx), generator=rng).numpy()]
    train_epoch(model, opt, data, order, aug, loss_fn)
    _, probs = encode(model, data.images, train_idx, device=torch.device("cpu"))
    p_true = probs[np.arange(len(y)), y].numpy()
    wrong = p_true < 0.5
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).numpy()
    print(f"epoch {epoch + 1}: {wrong.sum()} errors of {len(y)}")
    rules = {
        "errors": np.where(wrong, 1.0, 0.0),
        "entropy": entropy,
        "entropy^4": entropy**4,
        "1-p": 1 - p_true,
    }
    for name, score in rules.items():
        # each class: half of its draws by the rule's score, half uniform (as share 0.5)
        w = np.zeros(len(y))
        for k in np.unique(y):
            m = y == k
            w[m] = (0.5 * score[m] / score[m].sum() + 0.5 / m.sum()) * m.mean()
        print(
            f"  {name:10s} "
            + "  ".join(f"{c}: {w[cells == c].sum():.3f}" for c in sorted(set(cells)))
        )
