"""Last-layer repair (DFR): the estimator on planted features, then whole models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from debias import repair
from debias.errors import ConfigError, DataError
from debias.lastlayer import LastLayerRepair


def _shortcut_features(n: int, rng: np.random.Generator, agree: float) -> tuple[np.ndarray, ...]:
    """Feature 0 carries the class weakly, feature 1 the group strongly; ``agree`` of the rows
    have group == class (the shortcut), the rest break it."""
    y = rng.integers(0, 2, n)
    g = np.where(rng.random(n) < agree, y, 1 - y)
    X = np.c_[y + rng.normal(0, 0.7, n), 3.0 * g + rng.normal(0, 0.3, n), rng.normal(size=(n, 20))]
    return X, y, g


def _worst(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    return min(float((pred == y)[(y == a) & (g == b)].mean()) for a in (0, 1) for b in (0, 1))


# The layer a shortcut-taking model ends with: it reads the group feature only.
SHORTCUT_W = np.array([[0.0, -1.5] + [0.0] * 20, [0.0, 1.5] + [0.0] * 20])
SHORTCUT_B = np.array([2.25, -2.25])


def test_the_refit_layer_stops_reading_the_shortcut() -> None:
    rng = np.random.default_rng(0)
    X, y, g = _shortcut_features(4000, rng, agree=0.5)
    labelled = np.concatenate(
        [rng.choice(np.flatnonzero((y == a) & (g == b)), 40, replace=False) for a in (0, 1)
         for b in (0, 1)]
    )  # fmt: skip
    est = LastLayerRepair(n_draws=4, cv=4).fit(
        X[labelled], y[labelled], g[labelled], old_coef=SHORTCUT_W, old_intercept=SHORTCUT_B
    )
    assert est.old_worst_ == 0.0 and est.improved_
    assert est.cv_worst_ > 0.7
    test = np.setdiff1d(np.arange(4000), labelled)
    old = (X[test] @ SHORTCUT_W.T + SHORTCUT_B).argmax(1)
    assert _worst(old, y[test], g[test]) == 0.0
    assert _worst(est.predict(X[test]), y[test], g[test]) > 0.7  # on faces it never saw
    assert abs(est.coef_[1, 1] - est.coef_[0, 1]) < abs(est.coef_[1, 0] - est.coef_[0, 0])


def test_a_layer_that_cannot_be_beaten_is_kept() -> None:
    rng = np.random.default_rng(1)
    X, y, g = _shortcut_features(200, rng, agree=0.5)
    X[:, 0] = np.where(y == 1, 5.0, -5.0)  # the class is plain to see: the old layer is perfect
    perfect_w = np.zeros((2, 22))
    perfect_w[1, 0], perfect_w[0, 0] = 1.0, -1.0
    est = LastLayerRepair(n_draws=2, cv=3).fit(
        X, y, g, old_coef=perfect_w, old_intercept=np.zeros(2)
    )
    assert est.old_worst_ == 1.0
    assert not est.improved_  # equal is not above: the old layer stays


def test_bad_inputs_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match=r"^X="):
        LastLayerRepair().fit(np.zeros((3, 2)), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"^groups=.*single labelled example"):
        LastLayerRepair().fit(np.zeros((3, 2)), np.array([0, 1, 1]), np.array([0, 0, 0]))


class _Net(torch.nn.Module):
    """Reads the mean of each colour channel: red carries the class, green the group."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _images(y: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rng.integers(60, 120, size=(len(y), 3, 8, 8))
    x[:, 0] += (y * 30)[:, None, None] + rng.integers(-20, 20, size=(len(y), 1, 1))
    x[:, 1] += (g * 80)[:, None, None]
    return x.clip(0, 255).astype(np.uint8)


def _shortcut_net() -> _Net:
    net = _Net()
    with torch.no_grad():  # a model that took the shortcut: it reads green (the group) only
        net.fc.weight[:] = torch.tensor([[0.0, -20.0, 0.0], [0.0, 20.0, 0.0]])
        net.fc.bias[:] = torch.tensor([11.0, -11.0])
    return net


def test_repair_refits_a_modules_last_layer_and_leaves_the_original_alone() -> None:
    rng = np.random.default_rng(0)
    y, g = np.repeat([0, 1, 0, 1], 30), np.repeat([0, 0, 1, 1], 30)
    net = _shortcut_net()
    before = net.fc.weight.detach().clone()
    names = np.array(["young", "old"])[y]
    result = repair(net, _images(y, g, rng), names, {"gender": g}, classes=["young", "old"])
    assert result.repaired and result.estimator.old_worst_ == 0.0
    assert torch.equal(net.fc.weight, before)  # the caller's model is untouched
    y_new, g_new = rng.integers(0, 2, 2000), rng.integers(0, 2, 2000)
    with torch.no_grad():
        fresh = torch.from_numpy(_images(y_new, g_new, rng)).float() / 255
        old_pred = net(fresh).argmax(1).numpy()
        new_pred = result.model(fresh).argmax(1).numpy()
    assert _worst(old_pred, y_new, g_new) < 0.05
    assert _worst(new_pred, y_new, g_new) > 0.75
    summary = result.summary()
    assert summary["labelled"] == 120 and summary["worst_cell_old"] == 0.0
    assert {c["n"] for c in summary["cells"]} == {30}


def test_repair_keeps_a_model_it_cannot_improve() -> None:
    rng = np.random.default_rng(1)
    y, g = np.repeat([0, 1, 0, 1], 20), np.repeat([0, 0, 1, 1], 20)
    images = _images(y, g, rng)
    images[:, 0] = np.where(y == 1, 250, 10)[:, None, None]  # red alone tells the class apart
    net = _Net()
    with torch.no_grad():
        net.fc.weight[:] = torch.tensor([[-50.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
        net.fc.bias[:] = torch.tensor([25.0, -25.0])  # class 1 above half red
    result = repair(net, images, y.astype(str), pd.DataFrame({"g": g}), classes=["0", "1"])
    assert not result.repaired
    assert torch.equal(result.model.fc.weight, net.fc.weight)


def test_repair_refuses_an_empty_cell_unless_allowed() -> None:
    rng = np.random.default_rng(2)
    y, g = np.repeat([0, 1, 0], 20), np.repeat([0, 0, 1], 20)  # no class-1 face of group 1
    args = (_shortcut_net(), _images(y, g, rng), y.astype(str), {"g": g})
    with pytest.raises(DataError, match=r"1 class x group cell.*\(1 x 1\).*allow_empty_cells"):
        repair(*args, classes=["0", "1"])
    assert repair(*args, classes=["0", "1"], allow_empty_cells=True).estimator.cells_
    few = np.isin(np.arange(60), [0, 1, 2, 3, 4, 20, 21, 22, 23, 24])  # 5 per class in group 1
    small = repair(*args[:3], {"g": few.astype(int)}, classes=["0", "1"])
    assert any("fewer than 10" in w for w in small.warnings)
