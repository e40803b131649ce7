"""The latent-histogram resampler of the DB-VAE: rare latent regions get sampled more often.

Per class, each latent dimension gets a histogram of the latent means; a sample's weight is
W(x) ∝ ∏_i 1 / (Q_i(z_i) + α) (the paper's product rule, computed in log space) or the lab's
per-dimension maximum of the normalised 1 / (Q_i(z_i) + α). Weights are computed per class and
scaled so each class keeps its share of the data: resampling never changes the class balance.
Pure tensors in, tensors out: no I/O, no devices beyond the input's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from debias import errors
from debias.config import Combine


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size ``(Σw)² / Σw²`` of non-negative weights."""
    w = weights.double()
    return float(w.sum() ** 2 / w.square().sum())


# Rows handled at a time: the (rows, K) temporaries stay in cache instead of costing gigabytes at
# a million samples (benchmarks/resample.py).
CHUNK = 16_384


def _bin_codes(mu: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Each value's bin, offset by ``bins`` per dimension: indices into a flat ``(K * bins)``."""
    scale = bins / (hi - lo).clamp_min(1e-12)  # a constant dimension puts everything in bin 0
    offsets = torch.arange(mu.shape[1], device=mu.device, dtype=mu.dtype) * bins
    return (mu - lo).mul_(scale).floor_().clamp_(0, bins - 1).add_(offsets).long()  # (N, K)


class _Rows:
    """Rows ``members`` of ``mu``, projected onto ``basis``, handed out CHUNK rows at a time.

    A class's rows are never copied out whole: at a million samples the copy (and its page
    faults) cost more than the histogram itself.
    """

    def __init__(
        self, mu: torch.Tensor, members: torch.Tensor, center: torch.Tensor, basis: torch.Tensor
    ) -> None:
        self.mu, self.members, self.center, self.basis = mu, members, center, basis
        self.all = len(members) == len(mu)  # members is then 0..N-1: slice, don't gather
        self.project = basis.shape[1] < basis.shape[0]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.members), CHUNK):
            if self.all:
                piece = self.mu[start : start + CHUNK]
            else:
                piece = self.mu.index_select(0, self.members[start : start + CHUNK])
            yield (piece - self.center) @ self.basis if self.project else piece


def _range(rows: _Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension minimum and maximum, ``(K,)`` each."""
    parts = [torch.aminmax(piece, dim=0) for piece in rows]
    return torch.stack([p[0] for p in parts]).amin(0), torch.stack([p[1] for p in parts]).amax(0)


def _bin_counts(rows: _Rows, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-dimension histogram counts: ``(K, bins)``, float64."""
    k = len(lo)
    counts = torch.zeros(k * bins, dtype=torch.float64, device=lo.device)
    for piece in rows:
        counts += torch.bincount(_bin_codes(piece, lo, hi, bins).view(-1), minlength=k * bins)
    return counts.view(k, bins)


def _lookup(
    rows: _Rows, lo: torch.Tensor, hi: torch.Tensor, summed: torch.Tensor, maxed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over dimensions k of ``summed[k, bin of row[k]]``, and max of ``maxed[k, ...]``.

    Tables are ``(K, bins)`` (``maxed`` may be empty); results ``(N,)`` float64. Looked up and
    reduced in float32 (half the memory traffic; a sum of 100 log-probabilities keeps about
    1e-7 relative precision).
    """
    flat_sum, flat_max = summed.reshape(-1).float(), maxed.reshape(-1).float()
    sums, maxes = [], []
    for piece in rows:
        codes = _bin_codes(piece, lo, hi, summed.shape[1])
        sums.append(torch.take(flat_sum, codes).sum(1))
        if len(flat_max):
            maxes.append(torch.take(flat_max, codes).amax(1))
    empty = torch.zeros(0, device=lo.device)
    return torch.cat([*sums, empty]).double(), torch.cat([*maxes, empty]).double()


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


def class_weights(
    log_w: torch.Tensor, ess_fraction: float | None, share: float
) -> tuple[torch.Tensor, float, float]:
    """One class's sampling weights from its rows' log-weights ``(Nc,)``.

    Tempered so the class keeps at least ``ess_fraction`` of its size as effective sample size,
    and scaled to sum to ``share`` (the class's share of all rows: resampling never changes the
    class balance). Returns the weights, the temperature power and the ESS as a fraction of the
    class's size. Both latent densities (histograms, :mod:`debias.mixture`) weight through it.
    """
    log_w, power = _temper(log_w, ess_fraction)
    w = log_w.exp()
    return w / w.sum() * share, power, effective_sample_size(w) / len(w)


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

    def validate(self) -> None:
        """Raise ConfigError for parameters no fit can use."""
        check = errors.check_option
        bins = self.bins
        check(isinstance(bins, int) and 0 < bins <= 10_000, "bins", bins,
              "must be a whole number from 1 to 10000", "Pass e.g. 10.")  # fmt: skip
        check(isinstance(self.alpha, int | float) and 0 < self.alpha < math.inf, "alpha",
              self.alpha, "must be a finite number above 0", "Pass e.g. 1e-3.")  # fmt: skip
        check(self.combine in Combine.__args__, "combine", self.combine, "unknown choice",
              f"Use one of {', '.join(Combine.__args__)}.")  # fmt: skip
        check(self.ess_fraction is None or 0 <= self.ess_fraction <= 1, "ess_fraction",
              self.ess_fraction, "must be in [0, 1]", "Pass e.g. 0.5, or None.")  # fmt: skip
        n = self.n_components
        check(n is None or (isinstance(n, int) and n > 0), "n_components", n,
              "must be a whole number above 0", "Pass e.g. 10, or None.")  # fmt: skip

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
            center, basis = self._axes(mu, members)
            m = _Rows(mu, members, center, basis)  # (Nc, K')
            c_lo, c_hi = _range(m)
            counts = _bin_counts(m, c_lo, c_hi, self.bins)  # (K', bins)
            q = counts / len(m) + self.alpha  # smoothed frequencies
            log_prob = (q / q.sum(dim=1, keepdim=True)).log()
            # The lab's max rule: max over k of 1/Q_k(z_k), each normalised by its sum over the
            # samples, which is Σ_bins count / Q: one more table, looked up in the same pass.
            log_norm = (counts * (-log_prob).exp()).sum(1, keepdim=True).log()
            max_table = -log_prob - log_norm if self.combine == "max" else log_prob[:0]
            density, max_w = _lookup(m, c_lo, c_hi, log_prob, max_table)  # (Nc,) each
            log_density[members] = density
            log_w = -density if self.combine == "product" else max_w
            weights[members], self.power_[c], self.ess_by_class_[c] = class_weights(
                log_w, self.ess_fraction, len(members) / n
            )
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

    def _axes(self, mu: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and projection ``(K, K')``: the identity, or the members' top principal axes."""
        k = mu.shape[1]
        if self.n_components is None or self.n_components >= min(k, len(members)):
            return torch.zeros(k, device=mu.device), torch.eye(k, device=mu.device)
        m = mu[members]
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
            rows = _Rows(mu, members, self.center_[row], self.axes_[row])
            table = self.log_prob_[row]
            out[members] = _lookup(rows, self.lo_[row], self.hi_[row], table, table[:0])[0]
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
