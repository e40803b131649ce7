"""The weighting methods behind the training loop's one seam (pure: arrays in, weights out)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from debias import train
from debias.progress import SilentListener
from debias.runfolder import load_checkpoint, save_checkpoint
from debias.training import resume
from debias.weighting import (
    EpochView,
    ErrorFeedback,
    Uniform,
    error_balanced,
    weighting_for,
)


def _view(epoch: int, y: np.ndarray, probs: np.ndarray, calls: list) -> EpochView:
    def encoder(rows: np.ndarray):  # noqa: ANN202
        calls.append(len(rows))
        return torch.zeros(len(rows), 2), torch.from_numpy(probs[rows]).float()

    return EpochView(
        epoch=epoch,
        y=y,
        modelled=np.ones(len(y), bool),
        frame=pd.DataFrame(index=range(len(y))),
        encoder=encoder,
    )


def test_error_balanced_gives_the_error_set_its_share_within_each_class() -> None:
    y = np.array([0] * 10 + [1] * 30)
    errors = np.zeros(40, bool)
    errors[[0, 1, 10]] = True  # 2 of class 0, 1 of class 1
    inner = torch.ones(40)
    inner[2] = 3.0  # a correct class-0 row that the inner weighting favours
    w = error_balanced(inner, errors, y, share=0.5).double()
    assert w.sum() == pytest.approx(1.0)
    assert w[:10].sum() == pytest.approx(0.25) and w[10:].sum() == pytest.approx(0.75)
    assert w[[0, 1]].sum() == pytest.approx(0.125) and w[10] == pytest.approx(0.375)
    # inside the correct part of class 0 the inner weights' proportions are kept
    assert w[2] / w[3] == pytest.approx(3.0)


def test_a_class_without_errors_keeps_the_inner_weights() -> None:
    y = np.array([0] * 4 + [1] * 4)
    errors = np.array([True, False, False, False] + [False] * 4)
    inner = torch.tensor([1.0, 1, 1, 1, 1, 2, 3, 4])
    w = error_balanced(inner, errors, y, share=0.5).double()
    assert w[4:].sum() == pytest.approx(0.5)
    assert (w[4:] / w[4]).tolist() == pytest.approx([1, 2, 3, 4])


def test_error_feedback_freezes_the_early_models_errors() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([[0.9, 0.1]] * 3 + [[0.2, 0.8]] + [[0.1, 0.9]] * 4)  # row 3 is wrong
    method, calls = ErrorFeedback(identify_epoch=2, share=0.5, within=Uniform()), []
    first = method.epoch_weights(_view(0, y, probs, calls))
    assert not first.resampled and calls == []  # plain training: nothing encoded
    later = method.epoch_weights(_view(2, y, probs, calls))
    assert later.resampled and calls == [8]  # one pass for the errors and the rarity inside
    assert later.weights[3] == pytest.approx(0.25)  # half of class 0's half
    # the error set is frozen: an epoch where the model is right everywhere changes nothing
    right = np.array([[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4)
    again = method.epoch_weights(_view(3, y, right, calls))
    assert calls == [8] and torch.equal(again.weights, later.weights)
    restored = ErrorFeedback(identify_epoch=2, share=0.5)
    restored.load_state_dict(method.state_dict())
    np.testing.assert_array_equal(restored.errors_, method.errors_)


def test_weighting_for_reads_the_config() -> None:
    errors = weighting_for(tiny_config(weighting="errors+rarity", error_epoch=3, error_share=0.3))
    assert isinstance(errors, ErrorFeedback)
    assert (errors.identify_epoch, errors.share) == (3, 0.3)
    assert type(errors.within).__name__ == "LatentRarity"
    assert isinstance(weighting_for(tiny_config(baseline=True, weighting="errors")), Uniform)


def test_error_feedback_run_resumes_with_its_frozen_error_set(labels_dir, tmp_path) -> None:
    config = dict(
        data=str(labels_dir), weighting="errors", error_epoch=1, error_share=0.5, epochs=3
    )
    whole = train(tiny_config(out=str(tmp_path / "whole"), **config))
    assert [m["resampled"] for m in whole.metrics] == [False, True, True]
    errors = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["weighting"]["errors"]
    assert errors.dtype == torch.bool and len(errors) == 38

    class StopAfterEpoch2(SilentListener):
        def epoch_end(self, metrics: dict) -> None:
            if metrics["epoch"] == 2:  # the checkpoint of epoch 2 is written: a kill here
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(out=str(tmp_path / "cut"), **config), listener=StopAfterEpoch2())
    # The resumed run must draw by the checkpoint's error set, not one it works out anew: plant
    # one no model would produce (the first four training rows of each class).
    path = tmp_path / "cut" / "checkpoint.pt"
    state = load_checkpoint(path)
    y = pd.read_csv(tmp_path / "whole" / "samples.csv").query("split == 'train'")["label"]
    planted = torch.from_numpy((y.groupby(y).cumcount() < 4).to_numpy())
    state["weighting"]["errors"] = planted
    save_checkpoint(path, state)
    resume(tmp_path / "cut")
    samples = pd.read_csv(tmp_path / "cut" / "samples.csv").query("split == 'train'")
    weight = samples["sampling_weight"].to_numpy()
    for label in ("a", "b"):
        members = (samples["label"] == label).to_numpy()
        share = weight[members & planted.numpy()].sum() / weight[members].sum()
        assert share == pytest.approx(0.5)  # the planted error set got its share


def test_an_epoch_encodes_its_rows_once_however_many_methods_ask() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.1, 0.9]])
    calls: list = []
    view = _view(0, y, probs, calls)
    view.modelled = np.array([True, False, True, True])
    mu_all, _ = view.encode_all()
    mu_modelled, probs_modelled = view.encode_modelled()
    view.encode_all()
    assert calls == [4]
    assert torch.equal(mu_modelled, mu_all[[0, 2, 3]])
    assert torch.equal(probs_modelled, torch.from_numpy(probs[[0, 2, 3]]).float())
