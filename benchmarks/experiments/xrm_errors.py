"""Probe (issue 14, stop 21): are the cross-mistakes of XRM's twins purer than a model's errors?

XRM (Pezeshki et al., ICML 2024, "Discovering environments with XRM") trains two twins, each on
a random half of the training set, with a class-balanced loss. After every step each face's
label is flipped to the *other* twin's (held-out) prediction with probability 2p - 1 (binary;
p the held-out twin's top probability), so each twin echoes what a model that has not seen the
face predicts. A shortcut is what generalises across halves; a face's own features are not, so
the flips push both twins toward the shortcut and away from memorising. A face is then a
"cross-mistake" if either twin's prediction (on the original label) is wrong; XRM uses (class,
cross-mistake) as groups.

Error feedback's set is 30-37% shortcut-breaking faces on `utk-age` (`error-set-purity.md`);
this prints, after each epoch of the twins, how many cross-mistakes there are, which cells
they hold, and the share of the draws each cell would get if half of each class's draws went
uniformly to the cross-mistakes and half uniformly to the class (what `error_share=0.5` does):

    SHARED_DATA=../shared/data python benchmarks/experiments/xrm_errors.py utk-age 0 1 6
    # task, seed, threads, epochs
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from error_probes import probe_data, probe_model

from debias.augment import augment
from debias.encode import batches, encode
from debias.model import preprocess
from debias.training import TrainConfig

task, seed, threads, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
data, train_idx, cells = probe_data(task, seed)
y0 = data.y[train_idx]
n_classes = len(data.classes)
twin_a, opt_a, rng, aug = probe_model(data, seed)
twin_b, opt_b, _, _ = probe_model(data, seed + 1000)
half = torch.rand(len(train_idx), generator=rng).numpy() < 0.5  # True: twin a holds the face in
labels = y0.copy()  # the labels the twins train on; flipped as they go
position = {row: i for i, row in enumerate(train_idx)}


def balanced_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each class present, summed (XRM's loss)."""
    losses = F.cross_entropy(logits, target, reduction="none")
    return sum(losses[target == k].mean() for k in target.unique())


def report(epoch: int) -> None:
    preds = []
    for twin in (twin_a, twin_b):
        _, probs = encode(twin, data.images, train_idx, device=torch.device("cpu"))
        preds.append(probs.argmax(1).numpy())
    mistake = (preds[0] != y0) | (preds[1] != y0)
    held_out = np.where(half, preds[1], preds[0]) != y0
    flipped = (labels != y0).sum()
    print(
        f"epoch {epoch}: {mistake.sum()} cross-mistakes, {held_out.sum()} held-out mistakes, "
        f"{flipped} labels flipped, of {len(y0)}"
    )
    for name, wrong in (("cross", mistake), ("held-out", held_out)):
        w = np.zeros(len(y0))
        for k in np.unique(y0):
            m = y0 == k
            e = m & wrong
            w[m] = 0.5 * m.mean() / m.sum()
            if e.any():
                w[e] += 0.5 * m.mean() / e.sum()
        counts = "  ".join(
            f"{c}: {(wrong & (cells == c)).sum()}/{(cells == c).sum()} -> {w[cells == c].sum():.3f}"
            for c in sorted(set(cells))
        )
        print(f"  {name:8s} {counts}")


for epoch in range(1, epochs + 1):
    twin_a.train()
    twin_b.train()
    order = train_idx[torch.randperm(len(train_idx), generator=rng).numpy()]
    for chunk, x in batches(data.images, order, TrainConfig.batch_size):
        at = np.array([position[r] for r in chunk])
        x = augment(preprocess(x), aug)
        target = torch.from_numpy(labels[at])
        mine = torch.from_numpy(half[at])
        logits_a = twin_a.encode(x)[0]
        logits_b = twin_b.encode(x)[0]
        loss = 0.0
        if mine.any():
            loss = loss + balanced_ce(logits_a[mine], target[mine])
        if (~mine).any():
            loss = loss + balanced_ce(logits_b[~mine], target[~mine])
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss.backward()
        opt_a.step()
        opt_b.step()
        with torch.no_grad():  # flip to the held-out twin's prediction with prob (p - 1/K)K/(K-1)
            held_out = torch.where(mine[:, None], logits_b, logits_a).softmax(1)
            p, guess = held_out.max(1)
            flip = torch.bernoulli((p - 1 / n_classes) * n_classes / (n_classes - 1), generator=rng)
            labels[at] = np.where(flip.numpy() > 0, guess.numpy(), labels[at])
    report(epoch)
