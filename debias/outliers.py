"""Outlier scores from a DB-VAE: which inputs are unlike the faces the model was trained on.

Each image gets component scores. Combined into the outlier flag:

- ``hidden_features``, ``conv_lof`` and ``reconstruction_ratio``: three views of "is this a
  face?". The squared Mahalanobis distance of the encoder's dense hidden layer to the training
  faces' (Lee et al., 2018); how far the last convolution block's whole activation map,
  L2-normalised, lies from its 10 nearest training faces' maps, relative to how far those faces
  lie from theirs (a local outlier factor, Breunig et al., 2000, on deep features as in Sun et
  al., 2022: faces are aligned, so their maps share a layout that scenes lack; the plain k-th
  neighbour distance caught scene crops as well but flagged faces of groups rare in training more
  often, as sparse regions have far neighbours — Black faces on utk-gender 0.154 against 0.097,
  one seed); and the log of the reconstruction error over that of a generic image model, the
  image averaged to 4 x 4 pixels and blown up again (a likelihood ratio against a background
  model, Ren et al., 2019, correcting for input complexity, Serra et al., 2020: a busy scene is
  hard to reconstruct for any model, a face only for a face model that does not know it). Their
  p-values are first combined by Fisher's method into one: they are three views of one question,
  and the minimum would dilute each. They are what an attribute classifier (gender, age), with no
  face class, has to tell a street scene from a face;
- ``not_face``: 1 - p(positive class), for detection models only;
- ``sharpness`` and ``blockiness``: two pixel statistics (log mean absolute Laplacian; log ratio
  of the gradients across 8-pixel block edges to those elsewhere). A face VAE's latent space is
  nearly blind to blur and compression, which make faces look *more* typical to it;
- ``density``: minus the histogram log-density of the latent mean, plus a penalty for every bin
  width outside the training range. This is *rarity*, reported as its own flag and not combined:
  rare but valid faces are exactly what debiasing upweights; they are not errors;
- ``reconstruction``, ``mahalanobis`` (of the latent mean; Ledoit-Wolf covariance) and ``kl``
  (the posterior's KL term): the latent model's own scores, reported by
  :meth:`LatentOutlierDetector.score_components` but not combined. Beside the face views they
  only diluted the minimum (benchmarks/experiments/outlier-features.md), and the reconstruction
  error alone is what alibi-detect's OutlierVAE and pyod's VAE score: the benchmarks' baseline.

Raw scores are never added up (a likelihood can rank some out-of-distribution data as more likely
than the training data). Each component is turned into a conformal p-value against the run's
held-out validation faces — two-sided for the reconstruction ratio and the pixel statistics,
because an input can be atypical by being too easy to reconstruct (a blurred face reconstructs
better than a sharp one: the typicality argument of Nalisnick et al., 2019). The p-values are
combined (the three face views folded into one first; then the minimum, or Fisher's method) and
the combination is itself calibrated on the validation faces: an input is an outlier when its
combined p-value is at most ``contamination``, which flags that share of inliers (in expectation,
for inputs exchangeable with the validation faces).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf

from debias.encode import encoded_batches, eval_mode
from debias.model import DBVAE, kl_divergence
from debias.resample import LatentHistogram

PValueCombine = Literal["fisher", "min"]
# Whether each component is judged on both tails (True) or the upper one only.
TWO_SIDED = {
    "reconstruction": True,
    "mahalanobis": True,
    "kl": True,
    "not_face": False,  # looking more like a face than the faces is no anomaly
    "hidden_features": False,  # a distance: being near the faces' mean is no anomaly
    "conv_lof": False,
    "reconstruction_ratio": True,
    "sharpness": True,
    "blockiness": True,
}
RARITY = "density"
CLUSTER = "latent_cluster"  # the k-means cluster a face is calibrated in, with calibration_clusters
JPEG_BLOCK = 8


def pixel_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Sharpness and JPEG blockiness of uint8 images ``(N, 3, S, S)``, in logs.

    Sharpness is the mean absolute Laplacian of the grey image (blur lowers it, noise raises it).
    Blockiness is the mean absolute gradient across the edges of JPEG's 8x8 blocks over the mean
    gradient elsewhere (heavy compression raises it).
    """
    out: dict[str, list[np.ndarray]] = {"sharpness": [], "blockiness": []}
    for start in range(0, len(images), 1024):
        x = np.asarray(images[start : start + 1024], dtype=np.float32).mean(axis=1)  # (B, S, S)
        lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2]
        lap -= x[:, 1:-1, 2:]
        out["sharpness"].append(np.log(np.abs(lap).mean(axis=(1, 2)) + 1e-3))
        across_cols = np.abs(np.diff(x, axis=2))  # (B, S, S-1): between columns j and j+1
        across_rows = np.abs(np.diff(x, axis=1))  # (B, S-1, S)
        edge_c = np.arange(across_cols.shape[2]) % JPEG_BLOCK == JPEG_BLOCK - 1
        edge_r = np.arange(across_rows.shape[1]) % JPEG_BLOCK == JPEG_BLOCK - 1
        at = across_cols[:, :, edge_c].mean(axis=(1, 2)) + across_rows[:, edge_r].mean(axis=(1, 2))
        off = across_cols[:, :, ~edge_c].mean(axis=(1, 2))
        off += across_rows[:, ~edge_r].mean(axis=(1, 2))
        out["blockiness"].append(np.log((at + 1e-3) / (off + 1e-3)))
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


# The three views of "is this a face?", Fisher-combined into one p-value (module docstring); the
# first two read the encoder's layers.
FACE_EVIDENCE = ("hidden_features", "conv_lof", "reconstruction_ratio")
FEATURES = ("hidden_features", "conv_lof")
NEIGHBOURS = 10  # conv_lof's k: 50 measured alike (scene crops 0.988 and 0.987, utk-age seed 1)
LOW_RES = 4  # side of the generic model's image: a face's layout, none of its features
# Score the face evidence on each image and its mirror image and average: scene crops 0.988 -> 0.990
# (utk-age) and 0.987 -> 0.988 (utk-gender), 3 seeds (benchmarks/experiments/outlier-features.md);
# the training faces' mirror images join the views' reference too (LatentOutlierDetector.fit)
MIRROR = True


# Each feature view's tap (DBVAE.taps): the hidden layer, and the last conv block's map as the
# dense layer sees it
FEATURE_TAPS = {"hidden_features": "hidden", "conv_lof": "pooled"}


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ``(N, D)`` scaled to unit length (float32)."""
    return torch.nn.functional.normalize(x.float(), dim=1)


def _neighbours(
    x: torch.Tensor, bank: torch.Tensor, k: int, skip_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices ``(N, k)`` of each unit row of ``x`` to its k nearest in ``bank``.

    For unit vectors the distance is ``sqrt(2 - 2 cos)``, so the k largest cosines suffice; rows
    go in chunks to keep the ``(chunk, len(bank))`` similarity matrix small. With ``skip_self``
    (``x`` is ``bank``) each row's nearest, itself, is left out.
    """
    k = min(k, len(bank) - int(skip_self))
    if k < 1:  # a bank of one face has no other neighbour: call it at distance 0
        return torch.zeros(len(x), 1), torch.zeros(len(x), 1, dtype=torch.long)
    distances, indices = [torch.zeros(0, k)], [torch.zeros(0, k, dtype=torch.long)]
    for chunk in x.split(1024):
        cos, index = torch.topk(chunk @ bank.T, k + int(skip_self), dim=1)  # (B, k[+1])
        cos, index = cos[:, int(skip_self) :], index[:, int(skip_self) :]
        distances.append(torch.sqrt(torch.clamp(2.0 - 2.0 * cos, min=0.0)))
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def local_outlier_factor(
    x: torch.Tensor, bank: torch.Tensor, radius: torch.Tensor, k: int = NEIGHBOURS
) -> np.ndarray:
    """Distance ``(N,)`` of each unit row of ``x`` to its k-th nearest in ``bank``, relative.

    Divided by the mean of those neighbours' own k-th neighbour distances ``radius`` ``(M,)``
    for a bank ``(M, D)`` (a simplified local outlier factor, Breunig et al., 2000): a face in a
    sparse region of the training faces — one of a group rare in training — is no anomaly for
    being far from the rest.
    """
    distance, index = _neighbours(x, bank, k)  # (N, k), (N, k)
    return (distance[:, -1] / radius[index].mean(dim=1).clamp(min=1e-12)).double().numpy()


def _low_res_error(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error ``(B,)`` of ``x`` ``(B, 3, S, S)`` averaged to LOW_RES px and back."""
    small = torch.nn.functional.adaptive_avg_pool2d(x, LOW_RES)  # (B, 3, LOW_RES, LOW_RES)
    back = torch.nn.functional.interpolate(
        small, size=x.shape[-2:], mode="bilinear", align_corners=False
    )  # (B, 3, S, S)
    return (back - x).abs().mean(dim=(1, 2, 3))


def _reconstruction_errors(
    model: DBVAE, x: torch.Tensor, mu: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction error ``(B,)`` of ``x`` ``(B, 3, S, S)`` and its log ratio to LOW_RES's."""
    error = (model.decoder(mu) - x).abs().mean(dim=(1, 2, 3)).float()  # (B,)
    ratio = torch.log(error + 1e-4) - torch.log(_low_res_error(x.float()) + 1e-4)  # (B,)
    return error, ratio


@torch.no_grad()
def raw_scores(
    model: DBVAE,
    images: np.ndarray,
    *,
    positive: int | None,
    device: torch.device,
    mirror: bool = False,
    reconstruct: bool = True,
    on_advance: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Per-image reconstruction, KL and 1 - p(positive) scores, latent means and features.

    Returns the scores (with ``reconstruction_ratio``), the latent means ``(N, K)`` and the
    encoder's intermediate features per layer of :data:`FEATURES`, ``(V, N, D)`` each, read by
    forward hooks in the same pass: V = 1, or with ``mirror`` V = 2, the second view being each
    image's mirror image (training flips faces, so a face's mirror is as much a face), whose
    reconstruction ratio is averaged into ``reconstruction_ratio``. Without ``reconstruct`` the
    decoder does not run and the two reconstruction scores are left out: fitting needs only the
    latents and features, and decoding is most of the pass. The model runs in eval mode and is
    left in the mode it was in.
    """
    out: dict[str, list[np.ndarray]] = {
        "reconstruction": [], "reconstruction_ratio": [], "kl": [], "not_face": []
    }  # fmt: skip
    mus = [np.zeros((0, model.cfg.latent_dim), np.float32)]
    views = 2 if mirror else 1
    features: dict[str, list[list[np.ndarray]]] = {
        name: [[] for _ in range(views)] for name in FEATURES
    }
    with eval_mode(model):
        for x, taps in encoded_batches(model, images, None, device, on_advance):
            seen = [(x, taps)]  # each view's images and taps
            if mirror:
                flipped = x.flip(3)
                seen.append((flipped, model.taps(flipped)))
            for view, (_, view_taps) in enumerate(seen):
                for name, tap in FEATURE_TAPS.items():
                    features[name][view].append(view_taps[tap].float().cpu().numpy())
            if reconstruct:
                errors = [_reconstruction_errors(model, v, t["mu"]) for v, t in seen]
                out["reconstruction"].append(errors[0][0].cpu().numpy())
                ratio = torch.stack([r for _, r in errors]).mean(0)  # (B,)
                out["reconstruction_ratio"].append(ratio.cpu().numpy())
            mu = taps["mu"]
            out["kl"].append(kl_divergence(mu, taps["logvar"]).cpu().numpy())
            if positive is not None:
                p = torch.softmax(taps["logits"].float(), dim=1)[:, positive]
                out["not_face"].append((1.0 - p).cpu().numpy())
            mus.append(mu.float().cpu().numpy())
    scores = {k: np.concatenate(v).astype(np.float64) for k, v in out.items() if v}
    feats = {
        k: np.stack([np.concatenate(view) for view in v])
        if v[0]
        else np.zeros((views, 0, 0), np.float32)
        for k, v in features.items()
    }
    return scores, np.concatenate(mus), feats


# Calibration scores above this quantile estimate the exponential tail beyond the largest one.
TAIL_QUANTILE = 0.9


def p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values ``(1 + #{calibration >= s}) / (n + 1)`` of new scores.

    See :func:`log_p_values`, which this exponentiates.
    """
    return np.exp(log_p_values(calibration, scores))


def log_p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Log conformal p-values of new scores (in logs: far-out scores would underflow to 0).

    Beyond the largest calibration score every p-value would be the same ``1 / (n + 1)``, which
    ties all clear outliers; there the p-value keeps falling along an exponential tail fitted to
    the top tenth of the calibration scores (a generalised Pareto tail of shape 0), so scores far
    out still rank. Within the calibration range, and so at any threshold it can calibrate, the
    p-value is exactly the conformal one.
    """
    ordered = np.sort(calibration)
    n = len(ordered)
    at_least = n - np.searchsorted(ordered, scores, side="left")
    log_p = np.log1p(at_least) - np.log(n + 1.0)
    if n:
        top = ordered[int(np.floor(TAIL_QUANTILE * (n - 1))) :]
        scale = max(float(np.mean(top - top[0])), 1e-12)
        beyond = scores > ordered[-1]
        log_p[beyond] = -(scores[beyond] - ordered[-1]) / scale - np.log(n + 1.0)
    return log_p


def sided_log_p_values(calibration: np.ndarray, scores: np.ndarray, two_sided: bool) -> np.ndarray:
    """Log p-values of new scores: upper tail, or both tails (twice the smaller, at most 1)."""
    upper = log_p_values(calibration, scores)
    if not two_sided:
        return upper
    lower = log_p_values(-calibration, -scores)
    return np.minimum(np.log(2.0) + np.minimum(upper, lower), 0.0)


def _leave_one_out_sided(calibration: np.ndarray, two_sided: bool) -> np.ndarray:
    upper = _leave_one_out_log_p_values(calibration)
    if not two_sided:
        return upper
    lower = _leave_one_out_log_p_values(-calibration)
    return np.minimum(np.log(2.0) + np.minimum(upper, lower), 0.0)


def _leave_one_out_log_p_values(calibration: np.ndarray) -> np.ndarray:
    """Log p-values of the calibration scores themselves, each against all the others.

    Each is ``(1 + #{others >= s}) / (n + 1)``: on the same grid as a new score's p-value against
    all n (:func:`log_p_values`), as if the new score were one more calibration score. With the
    denominator n instead, a new inlier tied with the calibration threshold's p-value would land
    just beyond it and be flagged: at n = 645 that flagged 5.7% of inliers for a 5% target.
    The top score falls on the tail, as a new score above every calibration score would.
    """
    n = len(calibration)
    ordered = np.sort(calibration)
    at_least = n - np.searchsorted(ordered, calibration, side="left")  # includes itself
    log_p = np.log(at_least / (n + 1.0))
    if n >= 2:
        top = int(np.argmax(calibration))
        others = np.delete(calibration, top)
        log_p[top] = log_p_values(others, calibration[top : top + 1])[0] + np.log(n / (n + 1.0))
    return log_p


def _combine(log_p: np.ndarray, how: PValueCombine, n_calibration: int) -> np.ndarray:
    """Return the combined statistic of log p-values ``(N, M)``; higher = more anomalous.

    The minimum of conformal p-values takes few distinct values, and a threshold on such a
    statistic cannot flag part of a tie: with six two-sided components and 645 calibration
    faces, 3.7% of inliers were flagged for a 5% target. Ties are broken by the mean log p-value,
    squeezed into half the smallest gap between p-values on the conformal grid
    (``log(1 + 1/n)``), so the ranking by the minimum is kept.
    """
    if how == "fisher":
        return -2.0 * log_p.sum(axis=1)
    mean = -log_p.mean(axis=1)
    gap = 0.5 * np.log1p(1.0 / max(n_calibration, 1))
    return -log_p.min(axis=1) + gap * mean / (1.0 + mean)


def _evidence_statistic(log_p: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Fisher's statistic ``-sum log p`` ``(N,)`` over the ``fold`` columns of ``(N, M)``."""
    return -log_p[:, fold].sum(axis=1)


def _folded(log_p: np.ndarray, fold: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """Replace the ``fold`` columns of log p-values ``(N, M)`` by one: their Fisher p-value.

    The statistic's p-value is conformal, like every component's: against the calibration faces'
    statistics ``reference``, or with None (the calibration faces themselves) each against the
    others. Fisher's chi-square would assume independent p-values; these are not.
    """
    if not fold.any():
        return log_p
    statistic = _evidence_statistic(log_p, fold)
    if reference is None:
        one = _leave_one_out_log_p_values(statistic)
    else:
        one = log_p_values(reference, statistic)
    return np.column_stack([one, log_p[:, ~fold]])  # (N, M - fold.sum() + 1)


def calibrate(
    components: list[np.ndarray],
    combine: PValueCombine,
    contamination: float,
    two_sided: list[bool] | None = None,
    fold: list[bool] | None = None,
) -> tuple[np.ndarray, float]:
    """Score calibration inliers and find the threshold that flags ``contamination`` of them.

    Parameters
    ----------
    components : list of numpy.ndarray
        Each component's scores on the same calibration inliers.
    combine : {"fisher", "min"}
    contamination : float
    two_sided : list of bool, optional
        Per component, whether both tails count (default: upper tail only).
    fold : list of bool, optional
        Components whose p-values are first combined into one by Fisher's method (default none).

    Returns
    -------
    decision_scores : numpy.ndarray
        Each calibration inlier's combined score, from leave-one-out p-values.
    threshold : float
        New combined scores above it have a combined p-value at most ``contamination``;
        ``inf`` when there are too few calibration inliers to flag that few.
    """
    sides = two_sided or [False] * len(components)
    loo = np.stack([_leave_one_out_sided(c, s) for c, s in zip(components, sides, strict=True)], 1)
    loo = _folded(loo, np.asarray(fold or [False] * len(components), dtype=bool), None)
    scores = _combine(loo, combine, len(loo))
    # p = (1 + #{scores >= s}) / (n + 1) <= contamination  <=>  at most k scores are >= s.
    k = int(np.floor(contamination * (len(scores) + 1))) - 1
    ordered = np.sort(scores)[::-1]
    return scores, float(ordered[k]) if 0 <= k < len(ordered) else float("inf")


def combined_scores(
    calibration: list[np.ndarray],
    components: list[np.ndarray],
    combine: PValueCombine,
    two_sided: list[bool],
    fold: list[bool] | None = None,
) -> np.ndarray:
    """Combine new inputs' component scores on the scale of :func:`calibrate`'s threshold.

    Parameters
    ----------
    calibration : list of numpy.ndarray
        Each component's scores on the calibration inliers, as given to :func:`calibrate`.
    components : list of numpy.ndarray
        The same components' scores on the new inputs.
    combine : {"fisher", "min"}
    two_sided : list of bool
        Per component, whether both tails count.
    fold : list of bool, optional
        Components whose p-values are first combined into one by Fisher's method.

    Returns
    -------
    numpy.ndarray
        ``(N,)``; higher = more anomalous.
    """
    sides = zip(calibration, components, two_sided, strict=True)
    log_p = np.stack([sided_log_p_values(c, s, t) for c, s, t in sides], axis=1)  # (N, M)
    folding = np.asarray(fold or [False] * len(components), dtype=bool)
    reference = None
    if folding.any():
        # the calibration faces' own statistics, each from its p-values against the others
        own = zip(calibration, two_sided, strict=True)
        loo = np.stack([_leave_one_out_sided(c, t) for c, t in own], axis=1)  # (n, M)
        reference = _evidence_statistic(loo, folding)
    return _combine(_folded(log_p, folding, reference), combine, len(calibration[0]))


@dataclass
class Calibration:
    """What judges a new input: calibration faces' scores and the threshold they give.

    Attributes
    ----------
    scores : dict of str to numpy.ndarray
        Each component's (and rarity's) scores on the calibration faces.
    decision_scores : numpy.ndarray
        Their combined scores (leave-one-out).
    threshold : float
        New combined scores above it are outliers (``inf``: too few faces to flag so few).
    """

    scores: dict[str, np.ndarray]
    decision_scores: np.ndarray
    threshold: float

    @property
    def n(self) -> int:
        """Number of calibration faces."""
        return len(self.decision_scores)


def faces_needed(contamination: float) -> int:
    """Calibration faces a threshold needs to flag ``contamination`` of inliers at all.

    A conformal p-value is at least ``1 / (n + 1)``, so it can reach the target only when
    ``n + 1 >= 1 / contamination``.
    """
    return int(np.ceil(1.0 / contamination - 1e-9)) - 1


def _mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``x`` ``(N, D)`` to ``mean``."""
    centred = x.astype(np.float64) - mean
    return np.einsum("nk,kl,nl->n", centred, precision, centred)


class LatentOutlierDetector:
    """Outlier detector on a DB-VAE's latent space, following pyod's contract.

    Parameters
    ----------
    model : DBVAE
        A trained model (from :func:`debias.load_model`).
    contamination : float
        Target share of inliers flagged (the false-flag rate), calibrated on held-out inliers.
    rare_fraction : float
        Share of calibration faces that the rarity flag marks as rare.
    combine : {"min", "fisher"}
        How component p-values combine: the smallest p-value or Fisher's ``-2 Σ log p``.
    positive : int or None
        Index of the positive class of a detection model (adds the ``not_face`` component).
    density : LatentHistogram or None
        The fitted class-free latent density of the training faces (a run's ``density.pt``);
        None fits one on ``X`` with ``bins`` and ``alpha``.
    bins, alpha : int, float
        Histogram of the rarity score when ``density`` is None (as in the resampler).
    calibration_clusters : int
        When positive and ``fit`` is given no calibration groups: calibrate per cluster of the
        latent means (k-means with this many clusters, fitted on the training faces), a
        label-free version of group-conditional calibration.
    calibration_fraction : float
        Share of ``X`` held out to calibrate on when ``fit`` is given no calibration images.
    random_state : int
        Seed of that hold-out split.
    device : torch.device, optional
        Where the model runs.

    Attributes
    ----------
    components_ : list of str
        Components combined into the outlier score.
    mean_, precision_ : numpy.ndarray
        Mean and shrunk inverse covariance of the training latents.
    hidden_stats_ : tuple of numpy.ndarray
        The same for the encoder's hidden layer, over the training faces and (with
        :data:`MIRROR`) their mirror images.
    conv_bank_ : torch.Tensor
        The training faces' last conv maps, flattened and L2-normalised, ``(V N, D)``: with
        :data:`MIRROR` (V = 2) the mirror images' maps follow the faces'.
    conv_radius_ : torch.Tensor
        Each of those maps' distance to its NEIGHBOURS-th nearest other map, ``(V N,)``.
    histogram_ : LatentHistogram
        Latent density of the training faces.
    calibration_ : dict of str to numpy.ndarray
        Each component's (and rarity's) scores on the calibration faces.
    decision_scores_ : numpy.ndarray
        Combined scores of the calibration faces (leave-one-out), higher = more anomalous.
    threshold_ : float
        Combined scores above this are outliers (``inf`` when too few calibration faces exist to
        flag as few as ``contamination``).
    labels_ : numpy.ndarray
        0/1 outlier labels of the calibration faces.
    n_calibration_ : int
        Number of calibration faces.
    group_calibration_ : dict of str to Calibration
        With calibration groups (``fit(..., calibration_groups=...)``): each group's own
        calibration (Mondrian conformal): a face of that group is judged against the group's
        faces only, so each group's false-flag rate is at the target. Groups with too few faces
        are left out (:attr:`small_groups_`) and their faces are judged by the pooled threshold.
    small_groups_ : dict of str to int
        Calibration groups too small to calibrate at ``contamination``, with their size.

    Notes
    -----
    ``decision_function`` follows pyod: higher means more anomalous (scikit-learn's sign is the
    opposite); ``predict`` returns 0/1 labels; :meth:`score_table` returns every score.
    """

    def __init__(
        self,
        model: DBVAE,
        *,
        contamination: float = 0.05,
        rare_fraction: float = 0.05,
        combine: PValueCombine = "min",
        positive: int | None = None,
        density: LatentHistogram | None = None,
        bins: int = 10,
        alpha: float = 1e-3,
        calibration_clusters: int = 0,
        calibration_fraction: float = 0.2,
        random_state: int = 0,
        device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.contamination = contamination
        self.rare_fraction = rare_fraction
        self.combine = combine
        self.positive = positive
        self.density = density
        self.bins = bins
        self.alpha = alpha
        self.calibration_clusters = calibration_clusters
        self.calibration_fraction = calibration_fraction
        self.random_state = random_state
        self.device = device

    def fit(
        self,
        X: np.ndarray,
        y: None = None,
        *,
        calibration: np.ndarray | None = None,
        calibration_groups: Sequence[str] | None = None,
        on_advance: Callable[[int], None] | None = None,
    ) -> LatentOutlierDetector:
        """Fit the latent statistics on training faces ``X``; calibrate on held-out inliers.

        Parameters
        ----------
        X : numpy.ndarray
            uint8 training faces ``(N, 3, S, S)``.
        y : None
            Ignored (pyod's signature).
        calibration : numpy.ndarray, optional
            uint8 inlier faces to calibrate the false-flag rate on, drawn like the inputs to be
            screened. Default: ``calibration_fraction`` of ``X``, held out from fitting.
        calibration_groups : sequence of str, optional
            Each calibration face's group ('' if unknown): each group is calibrated on its own
            faces (Mondrian conformal), and a face given its group is judged by its threshold.
        on_advance : callable, optional
            Progress hook, called with the number of images of each batch.

        Returns
        -------
        LatentOutlierDetector
            ``self``.
        """
        if calibration is None:
            order = np.random.default_rng(self.random_state).permutation(len(X))
            n_cal = int(round(self.calibration_fraction * len(X)))
            calibration, X = X[np.sort(order[:n_cal])], X[np.sort(order[n_cal:])]
        device = self.device or torch.device("cpu")
        _, mu_train, features = raw_scores(
            self.model,
            X,
            positive=None,
            device=device,
            mirror=MIRROR,
            reconstruct=False,
            on_advance=on_advance,
        )
        self._fit_reference(mu_train, features)
        # The folded face evidence and the pixel statistics, and a detection model's face class
        # beside them. The latent components only dilute the minimum next to the evidence (scene
        # crops on utk-gender: 0.984 without them, 0.974 with mahalanobis and kl; occlusion s3 on
        # utk-detect 0.984 and 0.974 without, 0.949 and 0.946 with them and no evidence, seeds 0
        # and 1; benchmarks/experiments/outlier-features.md)
        face_class = ["not_face"] if self.positive is not None else []
        self.components_ = [*face_class, *FACE_EVIDENCE, "sharpness", "blockiness"]
        self.clusters_ = None
        if self.calibration_clusters > 0 and calibration_groups is None:
            self.clusters_ = KMeans(
                self.calibration_clusters, n_init=4, random_state=self.random_state
            ).fit(mu_train)
        scores = self.score_components(calibration, on_advance=on_advance)
        return self.fit_calibration(scores, calibration_groups)

    def _fit_reference(self, mu_train: np.ndarray, features: dict[str, np.ndarray]) -> None:
        """Fit what new faces are compared with: the training faces' latents and feature views."""
        self.mean_ = mu_train.mean(axis=0)
        self.precision_ = LedoitWolf().fit(mu_train).precision_
        # The views' reference holds the training faces and their mirror images, as training saw
        # them (V N rows): scene crops 0.9885 -> 0.9906 on utk-gender, 3 seeds; Black faces'
        # validation-calibrated false-flag rate 0.079 -> 0.069 (outlier-features.md)
        hidden = np.concatenate(list(features["hidden_features"]))  # (V N, D)
        self.hidden_stats_ = (hidden.mean(axis=0), LedoitWolf().fit(hidden).precision_)
        self.conv_bank_ = _unit(torch.from_numpy(np.concatenate(list(features["conv_lof"]))))
        own, _ = _neighbours(self.conv_bank_, self.conv_bank_, NEIGHBOURS, skip_self=True)
        self.conv_radius_ = own[:, -1]  # (V N,)
        self.histogram_ = self.density or LatentHistogram(bins=self.bins, alpha=self.alpha).fit(
            torch.from_numpy(mu_train)
        )

    def fit_calibration(
        self, scores: dict[str, np.ndarray], groups: Sequence[str] | None = None
    ) -> LatentOutlierDetector:
        """Calibrate the fitted detector again, on other inliers' component scores.

        ``fit`` ends with this; calling it on its own re-draws the calibration faces without
        scoring them again (the benchmark averages the realised rate over many such draws).

        Parameters
        ----------
        scores : dict of str to numpy.ndarray
            :meth:`score_components` of the calibration faces.
        groups : sequence of str, optional
            Each calibration face's group, as ``fit``'s ``calibration_groups``.

        Returns
        -------
        LatentOutlierDetector
            ``self``, calibrated.
        """
        self.calibration_ = scores
        if groups is None and getattr(self, "clusters_", None) is not None:
            groups = scores[CLUSTER]
        self.n_calibration_ = len(scores[RARITY])
        pooled = self._calibrate(self.calibration_)
        self.decision_scores_, self.threshold_ = pooled.decision_scores, pooled.threshold
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        self.group_calibration_: dict[str, Calibration] = {}
        self.small_groups_: dict[str, int] = {}
        if groups is not None:
            names = np.asarray(groups, dtype=object).astype(str)
            for name in sorted(set(names) - {""}):
                members = names == name
                if members.sum() < faces_needed(self.contamination):
                    self.small_groups_[name] = int(members.sum())
                    continue
                own = {c: v[members] for c, v in self.calibration_.items()}
                self.group_calibration_[name] = self._calibrate(own)
        return self

    @property
    def _fold(self) -> np.ndarray:
        """Which of :attr:`components_` are Fisher-combined first (the face evidence)."""
        return np.array([c in FACE_EVIDENCE for c in self.components_], dtype=bool)

    def _calibrate(self, scores: dict[str, np.ndarray]) -> Calibration:
        decision, threshold = calibrate(
            [scores[c] for c in self.components_],
            self.combine,
            self.contamination,
            [TWO_SIDED[c] for c in self.components_],
            list(self._fold),
        )
        return Calibration(scores, decision, threshold)

    def score_components(
        self, images: np.ndarray, on_advance: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Raw component and rarity scores of ``images`` (each: higher = more anomalous)."""
        scores, mu, features = raw_scores(
            self.model,
            images,
            positive=self.positive,
            device=self.device or torch.device("cpu"),
            mirror=MIRROR,
            on_advance=on_advance,
        )
        scores["mahalanobis"] = _mahalanobis(mu, self.mean_, self.precision_)
        # Each view's score averaged over the image and its mirror image (V views)
        hidden = [_mahalanobis(view, *self.hidden_stats_) for view in features["hidden_features"]]
        scores["hidden_features"] = np.mean(hidden, axis=0)
        conv = [
            local_outlier_factor(_unit(torch.from_numpy(view)), self.conv_bank_, self.conv_radius_)
            for view in features["conv_lof"]
        ]
        scores["conv_lof"] = np.mean(conv, axis=0)
        scores.update(pixel_statistics(images))
        scores[RARITY] = self._rarity(mu)
        if getattr(self, "clusters_", None) is not None:
            scores[CLUSTER] = np.char.add("cluster ", (self.clusters_.predict(mu) + 1).astype(str))
        return scores

    def _rarity(self, mu: np.ndarray) -> np.ndarray:
        """Minus the histogram log-density, plus one empty bin's cost per bin width out of range."""
        h = self.histogram_
        m = torch.from_numpy(mu).float()
        inside = -h.score_samples(m, torch.zeros(len(m), dtype=torch.long)).numpy()
        # The histogram's own axes: the raw dimensions, or its principal axes.
        z = ((m - h.center_[0]) @ h.axes_[0]).numpy()  # (N, K')
        lo, hi = h.lo_[0].numpy(), h.hi_[0].numpy()
        width = np.maximum((hi - lo) / h.bins, 1e-12)
        outside = (np.maximum(lo - z, 0) + np.maximum(z - hi, 0)) / width  # (N, K') bin widths
        empty_bin_cost = -h.log_prob_[0].min(dim=1).values.numpy()  # (K',)
        return inside + (outside * empty_bin_cost).sum(axis=1)

    def decision_function(self, X: np.ndarray, groups: Sequence[str] | None = None) -> np.ndarray:
        """Return the combined outlier score ``(N,)`` of images ``X``; higher = more anomalous.

        With ``groups`` (one per image), a face of a calibrated group is scored against its
        group's calibration faces.
        """
        return self.combine_scores(self.score_components(X), groups)

    def predict(self, X: np.ndarray, groups: Sequence[str] | None = None) -> np.ndarray:
        """Return 0/1 outlier labels ``(N,)`` of images ``X`` (1 = outlier), as pyod does."""
        table = self.table_from_scores(self.score_components(X), groups)
        return table["is_outlier"].to_numpy().astype(np.int64)

    def combine_scores(
        self, scores: dict[str, np.ndarray], groups: Sequence[str] | None = None
    ) -> np.ndarray:
        """Return the combined score of component scores from :meth:`score_components`."""
        combined = np.empty(len(scores[RARITY]))
        groups = scores.get(CLUSTER) if groups is None else groups
        for _, calibration, rows in self._judges(groups, len(combined)):
            combined[rows] = self._combined(calibration, {c: v[rows] for c, v in scores.items()})
        return combined

    def _combined(self, calibration: Calibration, scores: dict[str, np.ndarray]) -> np.ndarray:
        return combined_scores(
            [calibration.scores[c] for c in self.components_],
            [scores[c] for c in self.components_],
            self.combine,
            [TWO_SIDED[c] for c in self.components_],
            list(self._fold),
        )

    def _judges(
        self, groups: Sequence[str] | None, n: int
    ) -> list[tuple[str, Calibration, np.ndarray]]:
        """Return which calibration judges which rows, named ('' = the pooled one).

        Each calibrated group judges its own rows; every other row is judged by the pooled one.
        """
        pooled = Calibration(self.calibration_, self.decision_scores_, self.threshold_)
        if groups is None or not getattr(self, "group_calibration_", None):
            return [("", pooled, np.arange(n))]
        names = np.asarray(groups, dtype=object).astype(str)
        out = []
        for name, calibration in self.group_calibration_.items():
            rows = np.flatnonzero(names == name)
            if len(rows):
                out.append((name, calibration, rows))
        rest = np.flatnonzero(~np.isin(names, list(self.group_calibration_)))
        if len(rest):
            out.append(("", pooled, rest))
        return out

    def score_table(
        self,
        X: np.ndarray,
        groups: Sequence[str] | None = None,
        on_advance: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """Per image of ``X``: every component, the combined score, its p-value and the flags."""
        return self.table_from_scores(self.score_components(X, on_advance=on_advance), groups)

    @property
    def table_columns(self) -> list[str]:
        """The columns of :meth:`score_table`, in order."""
        flags = ["combined", "p_value", "is_outlier", "calibrated_on", "rare_p_value", "is_rare"]
        return [*self.components_, RARITY, *flags]

    def table_from_scores(
        self, scores: dict[str, np.ndarray], groups: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Build the :meth:`score_table` table from :meth:`score_components` output.

        ``calibrated_on`` names the calibration group that judged each row ('' = all faces).
        """
        n = len(scores[RARITY])
        groups = scores.get(CLUSTER) if groups is None else groups
        combined, p = np.empty(n), np.empty(n)
        flagged, judge = np.zeros(n, dtype=bool), np.full(n, "", dtype=object)
        for name, calibration, rows in self._judges(groups, n):
            part = self._combined(calibration, {c: v[rows] for c, v in scores.items()})
            combined[rows] = part
            p[rows] = p_values(calibration.decision_scores, part)
            flagged[rows] = part > calibration.threshold
            judge[rows] = name
        rare_p = p_values(self.calibration_[RARITY], scores[RARITY])
        out = pd.DataFrame({c: scores[c] for c in [*self.components_, RARITY]})
        out["combined"] = combined
        out["p_value"] = p
        out["is_outlier"] = flagged
        out["calibrated_on"] = judge
        out["rare_p_value"] = rare_p
        out["is_rare"] = rare_p <= self.rare_fraction
        return out[self.table_columns]
