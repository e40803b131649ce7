"""Run by test_distributed.py under torchrun: train, and record what this rank drew and saw.

It wraps three functions of debias.train (a spy, not a stub: training runs unchanged) and writes
``rank<R>.json`` beside the run: each epoch's weights, full weighted draw and the rows this rank
trained on.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from debias import ModelConfig, TrainConfig

# the module, not the train function that debias/__init__ exports under the same name
training = importlib.import_module("debias.train")

BATCH = 16  # the latent and validation passes use EVAL_BATCH, so this tells training apart

record: dict[str, list] = {"weights": [], "draws": [], "trained": []}
draw_epoch, batches, epoch_weights = training.draw_epoch, training.batches, training._epoch_weights


def spy_draw(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201, D103
    drawn = draw_epoch(*args, **kwargs)
    record["draws"].append(drawn.tolist())
    record["trained"].append([])
    return drawn


def spy_batches(images, idx, size):  # noqa: ANN001, ANN201, D103
    for chunk, x in batches(images, idx, size):
        if size == BATCH:
            record["trained"][-1].extend(chunk.tolist())
        yield chunk, x


def spy_weights(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201, D103
    weights, resampled = epoch_weights(*args, **kwargs)
    record["weights"].append(weights.tolist())
    return weights, resampled


training.draw_epoch, training.batches, training._epoch_weights = spy_draw, spy_batches, spy_weights
data, out = sys.argv[1], Path(sys.argv[2])
training.train(
    TrainConfig(
        data=data,
        out=str(out),
        epochs=2,
        batch_size=BATCH,
        device="cpu",
        model=ModelConfig(image_size=32, latent_dim=8, filters=4, hidden=32),
    )
)
(out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
