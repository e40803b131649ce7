"""Run by test_distributed.py under torchrun: train, and record what this rank drew and saw.

It wraps three functions of debias.training (a spy, not a stub: training runs unchanged) and writes
``rank<R>.json`` beside the run: each epoch's weights, full weighted draw and the rows this rank
trained on, and the probabilities each trial epoch of the learnable-errors filter returned.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import debias.training as training
from debias import ModelConfig, TrainConfig, methods

BATCH = 16  # the latent and validation passes use EVAL_BATCH, so this tells training apart

record: dict[str, list] = {"weights": [], "draws": [], "trained": [], "trials": []}
in_trial = [False]  # a trial epoch's draw and batches are not the epoch's
draw_epoch, batches = training.draw_epoch, training.batches


def spy_draw(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201, D103
    drawn = draw_epoch(*args, **kwargs)
    if in_trial[0]:
        return drawn
    record["draws"].append(drawn.tolist())
    record["trained"].append([])
    return drawn


def spy_batches(images, idx, size):  # noqa: ANN001, ANN201, D103
    for chunk, x in batches(images, idx, size):
        if size == BATCH and not in_trial[0]:
            record["trained"][-1].extend(chunk.tolist())
        yield chunk, x


class SpyWeighting:
    """The run's own weighting, recording the weights it gives each epoch."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner

    def epoch_weights(self, view):  # noqa: ANN001, ANN201, D102
        trial = view.trial

        def spied_trial(weights, stream):  # noqa: ANN001, ANN202
            in_trial[0] = True
            probs = trial(weights, stream)
            in_trial[0] = False
            record["trials"].append(probs.tolist())
            return probs

        view.trial = spied_trial
        weighted = self.inner.epoch_weights(view)
        record["weights"].append(weighted.weights.tolist())
        return weighted

    def state_dict(self):  # noqa: ANN201, D102
        return self.inner.state_dict()

    def load_state_dict(self, state):  # noqa: ANN001, D102
        self.inner.load_state_dict(state)


training.draw_epoch, training.batches = spy_draw, spy_batches
data, out = sys.argv[1], Path(sys.argv[2])
config = TrainConfig(
    data=data,
    out=str(out),
    epochs=2,
    error_epoch=1,  # the error set is taken before epoch 2, from probabilities every rank
    error_filter="learnable",  # ... and filtered by trial epochs every rank must agree on
    batch_size=BATCH,
    device="cpu",
    model=ModelConfig(image_size=32, latent_dim=8, filters=4, hidden=32),
)
# The run's own method, wrapped: passed as any method is, nothing in the library replaced
training.train(config, method=SpyWeighting(methods.from_options(config)))
(out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
