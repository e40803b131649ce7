"""The latent-histogram resampler: rare latents get more weight, stably, per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debias import LatentHistogram, effective_sample_size


def _planted(
    n: int = 2000, k: int = 10, rare: int = 40, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal latents with a small cluster far out on every dimension; two classes."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, k, generator=g)
    mu[:rare] += 3.5
    y = torch.zeros(n, dtype=torch.long)
    y[n // 2 :] = 1
    return mu, y


@pytest.mark.parametrize("combine", ["product", "max"])
def test_planted_rare_cluster_gets_more_weight(combine: str) -> None:
    mu, y = _planted()
    w = LatentHistogram(combine=combine).fit(mu, y).weights_
    assert w[:40].mean() > 3 * w[40:1000].mean()


@pytest.mark.parametrize("combine", ["product", "max"])
def test_class_balance_is_preserved(combine: str) -> None:
    mu, y = _planted()
    y[1000:1500] = 2  # three classes of sizes 1000, 500, 500
    w = LatentHistogram(combine=combine).fit(mu, y).weights_
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    for c, share in ((0, 0.5), (1, 0.25), (2, 0.25)):
        assert float(w[y == c].sum()) == pytest.approx(share, rel=1e-9)


def test_histograms_match_numpy() -> None:
    mu, y = _planted(n=500, k=5)
    h = LatentHistogram(bins=7, alpha=0.0 + 1e-9).fit(mu, torch.zeros(500, dtype=torch.long))
    for dim in range(5):
        counts, _ = np.histogram(mu[:, dim].numpy(), bins=7)
        freq = (counts / 500 + 1e-9) / (counts / 500 + 1e-9).sum()
        assert np.allclose(h.log_prob_[0, dim].exp().numpy(), freq, atol=1e-9)


def test_product_rule_matches_direct_formula() -> None:
    mu, y = _planted(n=300, k=4)
    zeros = torch.zeros(300, dtype=torch.long)
    h = LatentHistogram(bins=5, alpha=0.01).fit(mu, zeros)
    expected = np.ones(300)
    for dim in range(4):
        counts, edges = np.histogram(mu[:, dim].numpy(), bins=5)
        q = counts / 300 + 0.01
        q = q / q.sum()
        idx = np.clip(np.digitize(mu[:, dim].numpy(), edges[1:-1]), 0, 4)
        expected *= 1 / q[idx]
    expected /= expected.sum()
    assert np.allclose(h.weights_.numpy(), expected, rtol=1e-5)


def test_effective_sample_size() -> None:
    assert effective_sample_size(torch.ones(50)) == pytest.approx(50)
    assert effective_sample_size(torch.tensor([1.0, 0, 0, 0])) == pytest.approx(1)
    assert effective_sample_size(torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)
    mu, y = _planted()
    h = LatentHistogram().fit(mu, y)
    # Kish's formula computed independently, on the fitted weights and per class
    w, labels = h.weights_.numpy(), y.numpy()
    assert h.ess_ == pytest.approx(w.sum() ** 2 / np.square(w).sum(), rel=1e-9)
    assert 1 < h.ess_ < len(w)  # the planted rare cluster makes the weights non-uniform
    for c in (0, 1):
        wc = w[labels == c]
        expected = wc.sum() ** 2 / np.square(wc).sum() / len(wc)
        assert h.ess_by_class_[c] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("combine", ["product", "max"])
@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 1.0])
def test_stable_at_100_dims_and_tiny_alpha(combine: str, alpha: float) -> None:
    mu, y = _planted(n=3000, k=100)
    mu[5] = 50.0  # an extreme outlier on every dimension
    h = LatentHistogram(bins=10, alpha=alpha, combine=combine).fit(mu, y)
    w = h.weights_
    assert torch.isfinite(w).all() and (w > 0).all()
    assert float(w.sum()) == pytest.approx(1.0)
    assert torch.isfinite(h.log_density_).all()


def test_ess_fraction_tempers_the_product_rule() -> None:
    mu, y = _planted(n=3000, k=100)
    raw = LatentHistogram(alpha=1e-3).fit(mu, y)
    assert max(raw.ess_by_class_.values()) < 0.05  # the raw product collapses at 100 dims
    tempered = LatentHistogram(alpha=1e-3, ess_fraction=0.5).fit(mu, y)
    for c in (0, 1):
        assert tempered.ess_by_class_[c] == pytest.approx(0.5, abs=0.01)
        assert 0 < tempered.power_[c] < 1
    w = tempered.weights_
    assert w[:40].mean() > 3 * w[40:1500].mean()  # and still favours the rare cluster


def test_score_samples_ranks_rare_points_lower() -> None:
    mu, y = _planted()
    h = LatentHistogram().fit(mu, y)
    assert torch.allclose(h.score_samples(mu, y), h.log_density_)
    new = torch.cat([torch.zeros(1, 10), torch.full((1, 10), 3.5)])
    scores = h.score_samples(new, torch.zeros(2, dtype=torch.long))
    assert scores[0] > scores[1]


def test_constant_dimension_does_not_break() -> None:
    mu, y = _planted(n=200, k=3)
    mu[:, 1] = 0.5
    h = LatentHistogram().fit(mu, y)
    assert torch.isfinite(h.weights_).all()


def test_unfitted_raises() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        LatentHistogram().score_samples(torch.zeros(1, 2), torch.zeros(1))


def test_principal_axes_find_a_rare_cluster_on_correlated_dimensions() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2000, 3, generator=g)
    mixing = torch.randn(3, 40, generator=g)
    mu = base @ mixing + 0.05 * torch.randn(2000, 40, generator=g)  # 40 correlated dims
    mu[:30] += 3 * mixing[0]  # a rare cluster along one hidden factor
    h = LatentHistogram(n_components=3).fit(mu)
    assert h.axes_.shape == (1, 40, 3) and h.lo_.shape == (1, 3)
    w = h.weights_
    assert w[:30].mean() > 3 * w[30:].mean()
    assert torch.allclose(h.score_samples(mu, torch.zeros(2000)), h.log_density_, atol=1e-4)
