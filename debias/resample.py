"""The latent-histogram resampler of the DB-VAE: rare latent regions get sampled more often.

Per class, each latent dimension gets a histogram of the latent means; a sample's weight is
W(x) ∝ ∏_i 1 / (Q_i(z_i) + α) (the paper's product rule, computed in log space) or the lab's
per-dimension maximum of the normalised 1 / (Q_i(z_i) + α). Weights are computed per class and
scaled so each class keeps its share of the data: resampling never changes the class balance.
Pure tensors in, tensors out: no I/O, no devices beyond the input's.
"""

from __future__ import annotations

from typing import Literal

import torch

Combine = Literal["product", "max"]


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size ``(Σw)² / Σw²`` of non-negative weights."""
    w = weights.double()
    return float(w.sum() ** 2 / w.square().sum())


def _bin_index(mu: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    width = (hi - lo).clamp_min(1e-12)  # a constant dimension puts everything in bin 0
    idx = ((mu - lo) / width * bins).floor().long()  # (N, K)
    return idx.clamp_(0, bins - 1)


def _histogram_log_prob(idx: torch.Tensor, bins: int, alpha: float) -> torch.Tensor:
    """Log of the smoothed, normalised bin frequencies, ``(K, bins)``, all dimensions at once."""
    n, k = idx.shape
    flat = (idx + torch.arange(k, device=idx.device) * bins).reshape(-1)  # (N*K,)
    counts = torch.zeros(k * bins, dtype=torch.float64, device=idx.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    q = counts.view(k, bins) / n + alpha  # (K, bins)
    return (q / q.sum(dim=1, keepdim=True)).log()


def _gather(log_prob: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``log_prob[k, idx[n, k]]`` for every sample and dimension: ``(N, K)``."""
    return log_prob.gather(1, idx.T).T


def _temper(log_w: torch.Tensor, ess_fraction: float | None) -> tuple[torch.Tensor, float]:
    """Scale log-weights by the largest power in [0, 1] that keeps ESS >= ess_fraction * n."""
    log_w = log_w - log_w.max()
    if ess_fraction is None or effective_sample_size(log_w.exp()) >= ess_fraction * len(log_w):
        return log_w, 1.0
    low, high = 0.0, 1.0  # ESS falls as the power grows: bisect for the target
    for _ in range(40):
        mid = (low + high) / 2
        if effective_sample_size((mid * log_w).exp()) >= ess_fraction * len(log_w):
            low = mid
        else:
            high = mid
    return low * log_w, low


class LatentHistogram:
    """Per-class, per-dimension histograms of latent means, and the sampling weights they imply.

    Parameters
    ----------
    bins : int
        Histogram bins per latent dimension.
    alpha : float
        Smoothing added to every bin's frequency; larger means weights closer to uniform.
    combine : {"product", "max"}
        How dimensions combine: the paper's product of inverse densities (in log space) or the
        lab's per-dimension maximum.
    ess_fraction : float or None
        If set, the log-weights of each class are tempered (raised to a power in [0, 1]) so the
        class keeps at least this share of its size as effective sample size. Over 100 dimensions
        the raw product rule can collapse onto a handful of samples; this keeps it useful without
        hand-tuning ``alpha``.
    n_components : int or None
        If set, histogram the latent means' top principal components (per class) instead of the
        raw dimensions: fewer, decorrelated axes suit the product rule's independence assumption.

    Attributes
    ----------
    classes_ : torch.Tensor
        Class indices seen in ``fit``.
    lo_, hi_ : torch.Tensor
        Per-class histogram range, ``(n_classes, K')``.
    center_, axes_ : torch.Tensor
        Per-class centre ``(n_classes, K)`` and projection ``(n_classes, K, K')`` of the latents
        (zero and the identity unless ``n_components`` is set).
    log_prob_ : torch.Tensor
        Per-class log bin probabilities, ``(n_classes, K, bins)``.
    weights_ : torch.Tensor
        Sampling probability of each fitted sample, ``(N,)``, summing to 1.
    log_density_ : torch.Tensor
        Histogram log-density ``Σ_i log Q_i(z_i)`` of each fitted sample within its class, ``(N,)``.
    power_ : dict of int to float
        Temperature power used per class (1.0 when no tempering was needed).
    ess_ : float
        Effective sample size of ``weights_``.
    ess_by_class_ : dict of int to float
        ESS of each class's weights as a fraction of its size.

    Examples
    --------
    >>> mu = torch.randn(1000, 8); y = torch.zeros(1000, dtype=torch.long)
    >>> w = LatentHistogram(bins=10).fit(mu, y).weights_
    >>> float(w.sum())  # doctest: +ELLIPSIS
    1.0...
    """

    def __init__(
        self,
        *,
        bins: int = 10,
        alpha: float = 1e-3,
        combine: Combine = "product",
        ess_fraction: float | None = None,
        n_components: int | None = None,
    ) -> None:
        self.bins = bins
        self.alpha = alpha
        self.combine = combine
        self.ess_fraction = ess_fraction
        self.n_components = n_components

    def fit(self, mu: torch.Tensor, y: torch.Tensor | None = None) -> LatentHistogram:
        """Fit histograms to latent means ``mu`` ``(N, K)`` of classes ``y`` ``(N,)``."""
        mu = mu.detach().float()
        y = torch.zeros(len(mu), dtype=torch.long, device=mu.device) if y is None else y.long()
        self.classes_ = torch.unique(y)
        n = len(mu)
        lo, hi, log_probs, centers, axes = [], [], [], [], []
        weights = torch.zeros(n, dtype=torch.float64, device=mu.device)
        log_density = torch.zeros(n, dtype=torch.float64, device=mu.device)
        self.power_, self.ess_by_class_ = {}, {}
        for c in self.classes_.tolist():
            members = (y == c).nonzero().squeeze(1)
            m = mu[members]  # (Nc, K)
            center, basis = self._axes(m)
            m = (m - center) @ basis  # (Nc, K')
            c_lo, c_hi = m.min(dim=0).values, m.max(dim=0).values
            idx = _bin_index(m, c_lo, c_hi, self.bins)  # (Nc, K)
            log_prob = _histogram_log_prob(idx, self.bins, self.alpha)  # (K, bins)
            per_dim = _gather(log_prob, idx)  # (Nc, K)
            log_density[members] = per_dim.sum(dim=1)
            if self.combine == "product":
                log_w = -per_dim.sum(dim=1)  # (Nc,)
            else:
                inv = (-per_dim).exp()  # (Nc, K)
                log_w = (inv / inv.sum(dim=0, keepdim=True)).max(dim=1).values.log()
            log_w, power = _temper(log_w, self.ess_fraction)
            w = log_w.exp()
            self.power_[c] = power
            self.ess_by_class_[c] = effective_sample_size(w) / len(members)
            weights[members] = w / w.sum() * (len(members) / n)  # the class keeps its share
            lo.append(c_lo)
            hi.append(c_hi)
            log_probs.append(log_prob)
            centers.append(center)
            axes.append(basis)
        self.lo_, self.hi_ = torch.stack(lo), torch.stack(hi)
        self.center_, self.axes_ = torch.stack(centers), torch.stack(axes)
        self.log_prob_ = torch.stack(log_probs)
        self.weights_ = weights
        self.log_density_ = log_density
        self.ess_ = effective_sample_size(weights)
        return self

    def _axes(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and projection ``(K, K')``: the identity, or the top principal axes."""
        k = m.shape[1]
        if self.n_components is None or self.n_components >= min(k, len(m)):
            return torch.zeros(k, device=m.device), torch.eye(k, device=m.device)
        center = m.mean(dim=0)
        _, _, vh = torch.linalg.svd(m - center, full_matrices=False)  # vh: (min(N, K), K)
        return center, vh[: self.n_components].T

    def score_samples(self, mu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Histogram log-density ``(N,)`` of new latent means under their class's histograms.

        Values outside the fitted range fall into the first or last bin.
        """
        _check_is_fitted(self)
        mu = mu.detach().float()
        out = torch.empty(len(mu), dtype=torch.float64, device=mu.device)
        for row, c in enumerate(self.classes_.tolist()):
            members = (y == c).nonzero().squeeze(1)
            projected = (mu[members] - self.center_[row]) @ self.axes_[row]
            idx = _bin_index(projected, self.lo_[row], self.hi_[row], self.bins)
            out[members] = _gather(self.log_prob_[row], idx).sum(dim=1)
        return out

    def state(self) -> dict[str, object]:
        """Return parameters and fitted histograms as tensors and plain values, to save."""
        _check_is_fitted(self)
        return {
            "params": {
                "bins": self.bins,
                "alpha": self.alpha,
                "combine": self.combine,
                "ess_fraction": self.ess_fraction,
                "n_components": self.n_components,
            },
            **{name: getattr(self, name) for name in _FITTED},
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> LatentHistogram:
        """Rebuild a fitted histogram from :meth:`state` (scoring works; ``weights_`` is empty)."""
        est = cls(**state["params"])  # type: ignore[arg-type]
        for name in _FITTED:
            setattr(est, name, state[name])
        est.weights_ = torch.empty(0, dtype=torch.float64)
        return est


_FITTED = ("classes_", "lo_", "hi_", "center_", "axes_", "log_prob_")


def _check_is_fitted(est: LatentHistogram) -> None:
    if not hasattr(est, "weights_"):
        raise RuntimeError("This LatentHistogram is not fitted yet; call fit(mu, y) first.")
