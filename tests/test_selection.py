"""Label-free model selection: the scores, the kept epoch, and a run that keeps it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

import debias.training as training
from debias import train
from debias.errors import ConfigError
from debias.progress import SilentListener
from debias.runfolder import load_checkpoint, load_model
from debias.selection import EpochSelection, worst_class_accuracy, worst_cluster_accuracy
from debias.training import resume


def test_the_worst_cluster_finds_a_latent_group_the_model_fails() -> None:
    """A class holds a tight latent cluster of 30 faces the model gets wrong; the class as a
    whole is 90% right, the cluster 10%: only clustering the latents sees that."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(600, 8))
    y = np.repeat([0, 1], 300)
    mu[:30] += 6.0  # the group, far out on every dimension
    correct = np.ones(600, bool)
    correct[:27] = False  # the model fails the group
    correct[rng.choice(np.arange(30, 300), 3, replace=False)] = False
    assert worst_class_accuracy(y, correct) == pytest.approx(0.9)
    assert worst_cluster_accuracy(mu, y, correct) == pytest.approx(0.1)
    # Fewer than MIN_CLUSTER faces a class: the class is scored whole.
    few = np.array([True] * 3 + [False] * 12)
    assert worst_cluster_accuracy(mu[:15], np.zeros(15, int), few) == pytest.approx(0.2)


def test_the_selection_keeps_the_best_epoch_and_the_later_of_a_tie() -> None:
    model = torch.nn.Linear(2, 1)
    selection = EpochSelection("worst-class")
    for epoch, score in enumerate([0.5, 0.8, 0.7, 0.8, 0.6]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        selection.update(epoch, {"val_worst_class": score, "val_worst_cluster": 1.0}, model)
    assert (selection.epoch_, selection.score_) == (3, 0.8)
    assert torch.equal(selection.weights_["weight"], torch.full((1, 2), 3.0))
    last = EpochSelection("last")
    last.update(0, {"val_worst_class": 0.9}, model)
    assert last.weights_ is None


def test_a_run_keeps_the_selected_epoch_through_a_kill_and_resume(
    labels_dir, tmp_path, monkeypatch
) -> None:
    # Planted scores: epoch 2 (of 3) is the best, so the run's model must be epoch 2's weights.
    planted = iter([0.4, 0.9, 0.6])
    real = training.validation_scores

    def scores(*args):  # noqa: ANN202
        return {**real(*args), "val_worst_class": next(planted)}

    monkeypatch.setattr(training, "validation_scores", scores)

    class StopAfterEpoch2(SilentListener):
        def epoch_end(self, metrics: dict) -> None:
            if metrics["epoch"] == 2:  # the checkpoint of epoch 2 is written: a kill here
                raise KeyboardInterrupt

    config = tiny_config(
        data=str(labels_dir), out=str(tmp_path / "r"), epochs=3, select="worst-class"
    )
    with pytest.raises(KeyboardInterrupt):
        train(config, listener=StopAfterEpoch2())
    epoch2 = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]
    resume(tmp_path / "r")
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert [m["kept_epoch"] for m in metrics] == [1, 2, 2]
    model, _ = load_model(tmp_path / "r")
    for name, value in model.state_dict().items():
        assert torch.equal(value, epoch2[name]), name
    last = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]  # what a resume continues
    assert any(not torch.equal(last[k], epoch2[k]) for k in epoch2)


def test_selection_without_validation_images_is_refused(labels_dir, tmp_path) -> None:
    config = tiny_config(
        data=str(labels_dir), out=str(tmp_path / "r"), val_fraction=0.0, select="worst-cluster"
    )
    with pytest.raises(ConfigError, match="select=worst-cluster: chooses the epoch by"):
        train(config)
    assert not (tmp_path / "r").exists()  # refused before anything is kept
