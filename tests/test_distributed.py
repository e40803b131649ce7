"""torchrun with two CPU processes (gloo): same weights, disjoint shares of one draw, one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from debias import load_model, write_synthetic
from debias.data import load_data
from debias.model import preprocess

HERE = Path(__file__).parent


def test_two_processes_share_weights_and_split_the_draw(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "data", n_faces=150, n_non_faces=150, size=32, seed=3)
    run = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(HERE / "ddp_worker.py"),
            str(tmp_path / "data"),
            str(run),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]

    for epoch in range(2):
        # Every rank fitted the same histograms from the gathered latents: the same weights ...
        assert ranks[0]["weights"][epoch] == ranks[1]["weights"][epoch]
        # ... and drew the same sample with them; each trained on its own half of it.
        draw = ranks[0]["draws"][epoch]
        assert draw == ranks[1]["draws"][epoch]
        share = len(draw) // 2
        assert ranks[0]["trained"][epoch] == draw[:share]
        assert ranks[1]["trained"][epoch] == draw[share:]
    # The learnable-errors filter's three trial epochs gave every rank rank 0's probabilities
    assert len(ranks[0]["trials"]) == 3 and ranks[0]["trials"] == ranks[1]["trials"]
    resampled = np.asarray(ranks[0]["weights"][1])
    assert resampled.std() > 0  # epoch 2 is the debiased one, not uniform

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["processes"] for m in metrics] == [2, 2]
    assert not list(run.glob("cache*.npy"))  # each rank cleaned up its decode cache

    model, _ = load_model(run)  # weights_only load of rank 0's checkpoint
    data = load_data(tmp_path / "data", image_size=32)
    with torch.no_grad():
        probs = model.predict_proba(preprocess(torch.from_numpy(data.images)))
    assert probs.shape == (300, 2) and torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(1), torch.ones(300), atol=1e-5)
