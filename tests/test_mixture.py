"""The joint latent density: a rare combination of common values gets more weight."""

from __future__ import annotations

import pytest
import torch

from debias.mixture import LatentMixture
from debias.resample import LatentHistogram


def _shortcut(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two factors, each half +1 and half -1, that agree in 95% of rows; 8 noise dimensions.

    The 5% whose factors disagree are a shortcut's exceptions: common along every dimension,
    rare only in the combination (a young man where youth goes with women).
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    b = torch.where(torch.rand(n, generator=g) < 0.95, a, -a)
    mu = torch.cat([torch.stack([a, b], 1).float(), torch.zeros(n, 8)], 1)
    mu += 0.3 * torch.randn(n, 10, generator=g)
    return mu, (a != b)


def test_a_rare_combination_of_common_values_gets_more_weight() -> None:
    mu, exception = _shortcut()
    share = float(exception.float().mean())
    joint = LatentMixture(n_mixture=4, n_axes=4).fit(mu).weights_
    assert float(joint[exception].sum()) > 2 * share  # 2.7x at ESS 0.5
    # The per-dimension histograms see each value as common: the exceptions keep their share.
    marginal = LatentHistogram(ess_fraction=0.5).fit(mu).weights_
    assert float(marginal[exception].sum()) < 1.5 * share


def test_each_class_keeps_its_share_and_its_effective_sample_size() -> None:
    mu, _ = _shortcut()
    y = torch.zeros(len(mu), dtype=torch.long)
    y[1500:] = 1
    mixture = LatentMixture(n_mixture=4, n_axes=4, ess_fraction=0.5).fit(mu, y)
    assert float(mixture.weights_.sum()) == pytest.approx(1.0)
    assert float(mixture.weights_[y == 1].sum()) == pytest.approx(0.25)
    assert all(ess >= 0.5 - 1e-6 for ess in mixture.ess_by_class_.values())
    assert torch.equal(mixture.weights_, LatentMixture(n_mixture=4, n_axes=4).fit(mu, y).weights_)


def test_a_class_too_small_for_a_mixture_is_drawn_uniformly() -> None:
    mu, _ = _shortcut(n=200)
    y = torch.zeros(200, dtype=torch.long)
    y[:5] = 1  # five rows: no Gaussian can be fitted to them
    w = LatentMixture().fit(mu, y).weights_
    assert torch.allclose(w[:5], torch.full((5,), 1 / 200, dtype=w.dtype))
    assert not torch.isnan(w).any()
