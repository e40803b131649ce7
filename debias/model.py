"""The debiasing VAE (DB-VAE) of Amini et al., AIES 2019: classifier and VAE share one encoder.

The encoder maps an image to class logits and the mean and log-variance of a latent Gaussian; the
decoder reconstructs the image from a sample of it. The classifier learns the task from every
image; the VAE (only on the images it models) learns the latent distribution whose rare regions
the resampler upweights. Read top to bottom: encoder, decoder, the model, then its loss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from debias.backbones import get_backbone
from debias.config import ModelConfig, Recon


def preprocess(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Turn uint8 images ``(B, 3, S, S)`` into the float ``[0, 1]`` input of the model.

    Training, the latent pass for resampling, evaluation, prediction and outlier scoring all go
    through this one function, so latents are never computed on differently scaled images than
    training sees. With ``size``, images of another side are resized (bilinear, antialiased), so
    any audited or screened image set can be fed to the model.
    """
    x = images.float().div_(255.0)  # (B, 3, S, S)
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )  # (B, 3, size, size)
    return x


def _deconv_block(c_in: int, c_out: int, k: int, last: bool = False) -> list[nn.Module]:
    deconv = nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=k // 2, output_padding=1)
    return [deconv] if last else [deconv, nn.ReLU()]


class Encoder(nn.Module):
    """A registered backbone (:mod:`debias.backbones`) and one linear head on its ``hidden`` tap.

    The head outputs ``num_classes + 2 * latent_dim`` numbers per image: logits, latent means
    and log-variances.
    """

    def __init__(self, num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = get_backbone(cfg)
        self.head = nn.Linear(self.backbone.out_features, num_classes + 2 * cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the backbone's taps of preprocessed images and ``head``, ``(B, C + 2K)``."""
        taps = self.backbone(x)  # pooled (B, P), hidden (B, H)
        return {**taps, "head": self.head(taps["hidden"])}


# Checkpoints written before the backbone seam held the 4-conv encoder as one Sequential
# ``encoder.features``: layers 0-12 (the convolutions and the flatten), 13-14 (dense, ReLU), 15
# (the head). Their keys are renamed on load, so every run folder written since still loads.
_OLD_KEY = re.compile(r"^(.*)encoder\.features\.(\d+)\.(.*)$")


def _new_key(key: str) -> str:
    match = _OLD_KEY.match(key)
    if match is None:
        return key
    prefix, index, rest = match.group(1), int(match.group(2)), match.group(3)
    if index <= 12:
        return f"{prefix}encoder.backbone.conv.{index}.{rest}"
    if index <= 14:
        return f"{prefix}encoder.backbone.dense.{index - 13}.{rest}"
    return f"{prefix}encoder.head.{rest}"


def _rename_old_keys(state: dict[str, torch.Tensor], *_: object) -> None:
    for key in [k for k in state if _OLD_KEY.match(k)]:
        state[_new_key(key)] = state.pop(key)


class Decoder(nn.Module):
    """Latent ``(B, K)`` to an image ``(B, 3, S, S)`` in ``[0, 1]``, whatever the encoder.

    The mirror of the 4-conv encoder; it reads only the latent, so it serves any backbone.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        f, self.side = cfg.filters, cfg.image_size // 16
        self.f = f
        self.fc = nn.Sequential(nn.Linear(cfg.latent_dim, 6 * f * self.side * self.side), nn.ReLU())
        self.deconv = nn.Sequential(
            *_deconv_block(6 * f, 4 * f, 3),
            *_deconv_block(4 * f, 2 * f, 3),
            *_deconv_block(2 * f, f, 5),
            *_deconv_block(f, 3, 5, last=True),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents into images."""
        h = self.fc(z).view(-1, 6 * self.f, self.side, self.side)  # (B, 6f, S/16, S/16)
        return torch.sigmoid(self.deconv(h))  # (B, 3, S, S)


@dataclass
class Output:
    """What one forward pass returns."""

    logits: torch.Tensor  # (B, C)
    mu: torch.Tensor  # (B, K)
    logvar: torch.Tensor  # (B, K)
    recon: torch.Tensor  # (B', 3, S, S): the decoded images only
    decoded: torch.Tensor | None = None  # (B,) bool: which images were decoded; None = all


@dataclass
class Loss:
    """The loss terms, each per sample ``(B,)``, and the scalar that is minimised."""

    total: torch.Tensor  # ()
    classification: torch.Tensor  # (B,)
    reconstruction: torch.Tensor  # (B,)
    kl: torch.Tensor  # (B,)
    vae_mask: torch.Tensor  # (B,)


class DBVAE(nn.Module):
    """Classifier and VAE with one shared encoder.

    Parameters
    ----------
    num_classes : int
        Number of classes (2 for binary tasks; cross-entropy over the logits either way).
    cfg : ModelConfig
        Sizes of the network.
    """

    def __init__(self, num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_classes, self.cfg = num_classes, cfg
        self.encoder = Encoder(num_classes, cfg)
        self.decoder = Decoder(cfg)
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return every named tap of preprocessed images ``x``.

        ``pooled`` ``(B, P)`` and ``hidden`` ``(B, H)`` from the backbone, then ``logits``
        ``(B, C)``, ``mu`` and ``logvar`` ``(B, K)`` from the head. The outlier detector, the
        audit's embeddings and a last-layer repair read these names, never the layers.
        """
        taps = self.encoder(x)
        h = taps.pop("head")  # (B, C + 2K)
        c, k = self.num_classes, self.cfg.latent_dim
        return {**taps, "logits": h[:, :c], "mu": h[:, c : c + k], "logvar": h[:, c + k :]}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits, mu, logvar)`` for preprocessed images ``x``."""
        taps = self.taps(x)
        return taps["logits"], taps["mu"], taps["logvar"]  # (B, C), (B, K), (B, K)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample ``z = mu + sigma * eps`` with ``sigma = exp(logvar / 2)``.

        ``logvar`` is a log-variance here and in the KL term alike; using ``exp(logvar)`` as the
        standard deviation (a known bug of the reference code) would make the two disagree.
        """
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps  # (B, K)

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        decode: torch.Tensor | None = None,
    ) -> Output:
        """Encode, sample a latent, decode; ``generator`` makes the sample repeatable.

        ``decode`` (bool ``(B,)``) limits the decoder to those images. The VAE loss uses only the
        reconstructions of the images the VAE models, so decoding the others (the non-faces of
        a detection task, most of its data) is wasted work.
        """
        logits, mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)  # (B, K)
        recon = self.decoder(z if decode is None else z[decode])
        return Output(logits, mu, logvar, recon, decode)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)`` for preprocessed images (no decoder pass)."""
        return torch.softmax(self.encode(x)[0].float(), dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mu, exp(logvar)) from the N(0, I) prior, per sample: ``(B,)``.

    The VAE loss and the outlier detector's ``kl`` component both use this one formula.
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar).sum(dim=1)  # (B,)


def dbvae_loss(
    out: Output,
    x: torch.Tensor,
    y: torch.Tensor,
    vae_mask: torch.Tensor,
    *,
    kl_weight: float,
    recon: Recon = "l1",
    use_vae: bool = True,
) -> Loss:
    """DB-VAE loss: cross-entropy on every sample plus the VAE loss on the masked samples.

    Every term is kept per sample with shape ``(B,)`` before the mean, so no ``(B, 1) + (B,)``
    broadcast can turn the batch mean into a ``(B, B)`` one.

    Parameters
    ----------
    out : Output
        The model's forward pass on ``x``.
    x : torch.Tensor
        Preprocessed images ``(B, 3, S, S)``.
    y : torch.Tensor
        Class indices ``(B,)``.
    vae_mask : torch.Tensor
        1.0 where the VAE models the sample (e.g. faces only), else 0.0, shape ``(B,)``.
    kl_weight : float
        Weight of the KL divergence in the VAE loss.
    recon : {"l1", "l2"}
        Reconstruction error, averaged over pixels.
    use_vae : bool
        False trains the plain classifier (the baseline): the VAE terms are reported, not used.

    Returns
    -------
    Loss
    """
    ce = F.cross_entropy(out.logits.float(), y, reduction="none")  # (B,)
    target = x if out.decoded is None else x[out.decoded]
    diff = out.recon.float() - target.float()
    rec = (diff.abs() if recon == "l1" else diff.square()).mean(dim=(1, 2, 3))  # (B',)
    if out.decoded is not None:  # images not decoded have no reconstruction error: 0
        rec = torch.zeros(len(x), device=rec.device, dtype=rec.dtype).masked_scatter(
            out.decoded, rec
        )  # (B,)
    kl = kl_divergence(out.mu, out.logvar)  # (B,)
    vae = rec + kl_weight * kl  # (B,)
    per_sample = ce + vae_mask * vae if use_vae else ce  # (B,)
    return Loss(per_sample.mean(), ce, rec, kl, vae_mask)
