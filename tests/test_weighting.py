"""The weighting methods behind the training loop's one seam (pure: arrays in, weights out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

import debias.weighting as weighting
from debias import ModelConfig, train
from debias.data import write_shortcut_synthetic
from debias.methods import from_options
from debias.mixture import LatentMixture
from debias.progress import SilentListener
from debias.resample import LatentHistogram
from debias.runfolder import load_checkpoint, save_checkpoint
from debias.training import resume, split_indices
from debias.weighting import (
    EpochView,
    EpochWeights,
    ErrorFeedback,
    Uniform,
    error_balanced,
    learnable_errors,
    uniform,
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


def test_a_part_without_inner_weight_counts_as_absent() -> None:
    # A trial of learnable_errors leaves a fold out with zero inner weight; a class whose correct
    # part is all left out must not divide by zero (NaN weights stop the draw).
    y = np.array([0, 0, 0, 1, 1, 1])
    errors = np.array([True, True, False, True, False, False])
    inner = torch.tensor([1.0, 1, 0, 0, 0, 0])  # class 0's correct row and all of class 1 out
    w = error_balanced(inner, errors, y, share=0.25).double()
    assert torch.isfinite(w).all() and w.sum() == pytest.approx(1.0)
    assert w[:3].tolist() == pytest.approx([0.25, 0.25, 0.0])  # inner's weights, class share
    assert w[3:].tolist() == pytest.approx([1 / 6] * 3)  # left out whole: drawn uniformly


def test_learnable_errors_keeps_the_errors_that_teach_each_other() -> None:
    # Per class, 40 error rows form a group: a model learns each from the others' draws (the
    # true-class probability grows with the weight on the rest of the group). 4 error rows are
    # noise: nothing teaches them. 56 rows are right.
    y = np.repeat([0, 1], 100)
    group = np.zeros(200, bool)
    group[0:40] = group[100:140] = True
    noise = np.zeros(200, bool)
    noise[40:44] = noise[140:144] = True
    errors = group | noise
    trials: list[tuple[torch.Tensor, int]] = []

    def trial(weights: torch.Tensor, stream: int) -> torch.Tensor:
        trials.append((weights, stream))
        p = torch.full((200,), 0.3, dtype=torch.float64)
        for c in (0, 1):
            members = torch.from_numpy(group & (y == c))
            p[members] += weights[members].double().sum() - weights[members]  # the others' draws
        return _as_probs(p, y)

    keep = learnable_errors(errors, y, trial, seed=0)
    np.testing.assert_array_equal(keep, group)  # the group kept, the noise and the right rows not
    assert [stream for _, stream in trials] == [0, 1, 2]  # the control, then one trial per fold
    assert torch.equal(trials[0][0], uniform(200).weights)
    left_out = [(w == 0).numpy() for w, _ in trials[1:]]
    for out in left_out:  # each trial leaves out one fold of the errors, never a right row
        assert out.any() and not (out & ~errors).any()
    np.testing.assert_array_equal(left_out[0] | left_out[1], errors)  # the folds split the errors
    assert not (left_out[0] & left_out[1]).any()
    trials.clear()  # a model without errors costs no trial epochs
    assert not learnable_errors(np.zeros(200, bool), y, trial, seed=0).any() and trials == []


def _as_probs(p_true: torch.Tensor, y: np.ndarray) -> torch.Tensor:
    """Two-class probabilities ``(N, 2)`` that give each row's class ``p_true``."""
    probs = torch.empty(len(y), 2, dtype=torch.float64)
    rows = torch.arange(len(y))
    labels = torch.from_numpy(y)
    probs[rows, labels] = p_true
    probs[rows, 1 - labels] = 1 - p_true
    return probs


def test_the_learnable_filter_keeps_a_shortcuts_exceptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Glasses or not, with skin tone a shortcut for 95% of the faces: after two epochs a small
    # model gets most of the other 5% wrong, with some ordinary faces. Filtering must keep the
    # exceptions and drop most of the rest.
    labels = write_shortcut_synthetic(tmp_path / "glasses", n_faces=400, size=32, seed=0)
    seen: dict[str, np.ndarray] = {}

    def spy(errors: np.ndarray, *args: object) -> np.ndarray:
        seen["errors"] = errors.copy()
        seen["kept"] = learnable(errors, *args)
        return seen["kept"]

    learnable = weighting.learnable_errors
    monkeypatch.setattr(weighting, "learnable_errors", spy)
    config = tiny_config(
        labels=str(labels),
        out=str(tmp_path / "run"),
        epochs=3,
        error_epoch=2,
        error_filter="learnable",
        batch_size=32,
        val_fraction=0.1,
        model=ModelConfig(image_size=32, latent_dim=16, filters=8, hidden=64),
    )
    run = train(config)
    train_idx, _ = split_indices(run.data, config.val_fraction, config.seed)
    frame = run.data.frame.iloc[train_idx]
    breaking = ((frame.skin_tone == "dark") != (frame.glasses == "yes")).to_numpy()
    errors, kept = seen["errors"], seen["kept"]
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["weighting"]["errors"]
    np.testing.assert_array_equal(saved.numpy(), kept)  # the run drew by the kept set
    assert not (kept & ~errors).any()
    assert (errors & ~breaking).sum() >= 4  # ordinary faces among the errors to filter out
    assert (kept & breaking).sum() >= 0.75 * (errors & breaking).sum()
    assert (kept & ~breaking).sum() <= 0.5 * (errors & ~breaking).sum()


def test_a_trial_epoch_leaves_the_run_as_it_was(
    labels_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A method may train copies of the model before an epoch; the run itself must train exactly
    # as if it had not (same model, optimiser and random streams).
    config = dict(data=str(labels_dir), baseline=True, epochs=2)
    plain = train(tiny_config(out=str(tmp_path / "plain"), **config))
    tried: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Trying(Uniform):
        def epoch_weights(self, view: EpochView) -> EpochWeights:
            before = view.encode_all()[1]
            tried.append((before, view.trial(uniform(len(view.y)).weights, 0)))
            return super().epoch_weights(view)

    trying = train(tiny_config(out=str(tmp_path / "trying"), **config), method=Trying())
    a, b = plain.model.state_dict(), trying.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(tried) == 2
    for before, after in tried:  # probabilities of every training row, from a copy that learned
        assert after.shape == before.shape == (38, 2)
        assert not torch.allclose(after, before, atol=1e-3)


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


def test_the_options_name_the_method() -> None:
    errors = from_options(tiny_config(weighting="errors+rarity", error_epoch=3, error_share=0.3))
    assert isinstance(errors, ErrorFeedback)
    assert (errors.identify_epoch, errors.share) == (3, 0.3)
    assert type(errors.within).__name__ == "LatentRarity"
    assert isinstance(errors.within.density, LatentHistogram)
    assert isinstance(from_options(tiny_config(baseline=True, weighting="errors")), Uniform)
    joint = from_options(tiny_config(weighting="errors+mixture"))
    assert isinstance(joint, ErrorFeedback) and isinstance(joint.within.density, LatentMixture)
    assert isinstance(from_options(tiny_config(weighting="mixture")).density, LatentMixture)


def test_a_run_draws_by_the_joint_density_when_asked(labels_dir, tmp_path) -> None:
    run = train(tiny_config(data=str(labels_dir), out=str(tmp_path / "r"), weighting="mixture"))
    assert [m["resampled"] for m in run.metrics] == [True, True]  # warm-up 0 in tiny_config
    samples = pd.read_csv(tmp_path / "r" / "samples.csv").query("split == 'train'")
    weight = samples["sampling_weight"].to_numpy()
    assert weight.std() > 0.05 * weight.mean()  # not the uniform draw
    for label in ("a", "b"):  # each class keeps its share
        members = (samples["label"] == label).to_numpy()
        assert weight[members].sum() / weight.sum() == pytest.approx(members.mean())


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


def test_a_run_killed_during_its_trial_epochs_resumes_to_the_same_error_set(
    labels_dir: Path, tmp_path: Path
) -> None:
    config = dict(data=str(labels_dir), error_filter="learnable", error_epoch=1, epochs=3)
    whole = train(tiny_config(out=str(tmp_path / "whole"), **config))

    class KillInSecondTrial(SilentListener):
        def phase(self, name: str, total: int) -> None:
            if name == "trial epoch 2":
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(out=str(tmp_path / "cut"), **config), listener=KillInSecondTrial())
    resumed = resume(tmp_path / "cut")
    saved = [load_checkpoint(tmp_path / r / "checkpoint.pt") for r in ("whole", "cut")]
    errors = [s["weighting"]["errors"] for s in saved]
    assert errors[0] is not None and torch.equal(errors[0], errors[1])
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


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
