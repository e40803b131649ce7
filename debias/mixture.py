"""A joint latent density: per class, a Gaussian mixture on the whitened top principal axes.

The DB-VAE's histograms (:mod:`debias.resample`) treat the latent dimensions as independent, so
a face is rare only if it is rare along some single dimension. A face can be common along every
axis and rare in their combination: a young man in a training set where youth goes with women
is neither unusually young nor unusually male. A mixture of full-covariance Gaussians sees
combinations (GEORGE, Sohoni et al. 2020, clusters the features for the same reason). The
latent means of each class are centred, projected on their top ``n_axes`` principal axes and
whitened (the mixture then fits a few well-conditioned directions instead of 100 noisy ones),
and a row's weight is the inverse of its mixture density, tempered like the histograms' so each
class keeps ``ess_fraction`` of its size as effective sample size.

Pure tensors in, tensors out; the mixture is scikit-learn's, fitted in float64 on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from debias import errors
from debias.resample import class_weights, effective_sample_size


class LatentMixture:
    """Per-class Gaussian mixtures of whitened latent means, and the weights they imply.

    Parameters
    ----------
    n_mixture : int
        Gaussians per class (fewer when a class has too few rows to fit them).
    n_axes : int
        Principal axes of each class's latent means the mixture sees, whitened.
    ess_fraction : float or None
        If set, each class's log-weights are tempered so the class keeps at least this share of
        its size as effective sample size (as :class:`debias.resample.LatentHistogram`).
    seed : int
        Seeds the mixture's initialisation: the same latents give the same weights.

    Attributes
    ----------
    classes_ : torch.Tensor
        Class indices seen in ``fit``.
    weights_ : torch.Tensor
        Sampling probability of each fitted row, ``(N,)``, summing to 1; each class keeps its
        share of the rows.
    log_density_ : torch.Tensor
        Mixture log-density of each fitted row within its class, on the whitened axes, ``(N,)``.
    power_ : dict of int to float
        Temperature power used per class (1.0 when no tempering was needed).
    ess_ : float
        Effective sample size of ``weights_``.
    ess_by_class_ : dict of int to float
        ESS of each class's weights as a fraction of its size.

    Examples
    --------
    >>> mu = torch.randn(500, 16); y = torch.zeros(500, dtype=torch.long)
    >>> w = LatentMixture(n_mixture=4, n_axes=4).fit(mu, y).weights_
    >>> round(float(w.sum()), 6)
    1.0
    """

    def __init__(
        self,
        *,
        n_mixture: int = 8,
        n_axes: int = 10,
        ess_fraction: float | None = 0.5,
        seed: int = 0,
    ) -> None:
        self.n_mixture = n_mixture
        self.n_axes = n_axes
        self.ess_fraction = ess_fraction
        self.seed = seed

    def validate(self) -> None:
        """Raise ConfigError for parameters no fit can use."""
        for name in ("n_mixture", "n_axes"):
            value = getattr(self, name)
            errors.check_option(isinstance(value, int) and value > 0, name, value,
                                   "must be a whole number above 0", "Pass e.g. 8.")  # fmt: skip
        ess = self.ess_fraction
        errors.check_option(ess is None or 0 <= ess <= 1, "ess_fraction", ess,
                               "must be in [0, 1]", "Pass e.g. 0.5, or None.")  # fmt: skip

    def fit(self, mu: torch.Tensor, y: torch.Tensor | None = None) -> LatentMixture:
        """Fit a mixture per class to latent means ``mu`` ``(N, K)`` of classes ``y`` ``(N,)``."""
        z = mu.detach().double().cpu()
        y = torch.zeros(len(z), dtype=torch.long) if y is None else y.long().cpu()
        self.classes_ = torch.unique(y)
        n = len(z)
        weights = torch.zeros(n, dtype=torch.float64)
        log_density = torch.zeros(n, dtype=torch.float64)
        self.power_, self.ess_by_class_ = {}, {}
        for c in self.classes_.tolist():
            members = (y == c).nonzero().squeeze(1)
            density = self._class_log_density(z[members])  # (Nc,)
            log_density[members] = density
            weights[members], self.power_[c], self.ess_by_class_[c] = class_weights(
                -density, self.ess_fraction, len(members) / n
            )
        self.weights_ = weights.to(mu.device)
        self.log_density_ = log_density.to(mu.device)
        self.ess_ = effective_sample_size(weights)
        return self

    def _class_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """Mixture log-density ``(Nc,)`` of one class's latent means ``z`` ``(Nc, K)``."""
        k = min(self.n_mixture, len(z) // 10)  # ten rows a Gaussian at least, or no mixture
        if k < 1 or len(z) < 3:
            return torch.zeros(len(z), dtype=torch.float64)  # too few rows: all alike
        centred = z - z.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(Nc, K), K)
        axes = min(self.n_axes, int((s > s[0] * 1e-6).sum()))  # drop constant directions
        # whitened: unit variance along each kept axis, so no axis dominates by its scale
        white = centred @ vh[:axes].T / (s[:axes] / (len(z) - 1) ** 0.5)  # (Nc, axes)
        mixture = GaussianMixture(
            n_components=k, covariance_type="full", reg_covar=1e-3, random_state=self.seed
        )
        x = white.numpy()
        return torch.from_numpy(np.asarray(mixture.fit(x).score_samples(x), dtype=np.float64))
