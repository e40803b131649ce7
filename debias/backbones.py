"""Backbones: the registered encoders a DB-VAE can be built on, each with named feature taps.

A backbone maps preprocessed images ``(B, 3, S, S)`` in ``[0, 1]`` to a dict of named taps,
the only way anything outside this module reads an encoder's inner layers:

- ``pooled``: the convolutional features as one vector per image ``(B, P)`` (the 4-conv
  network's last feature map flattened; a ResNet's global average pool);
- ``hidden``: the last hidden layer ``(B, H)``, the input of the heads (what the outlier
  detector's Mahalanobis view and a last-layer repair read).

The DB-VAE (:mod:`debias.model`) puts one linear head on ``hidden`` for the logits and the
latent, and adds ``logits``, ``mu`` and ``logvar`` to the taps. :func:`get_backbone` builds a
backbone by name from :data:`BACKBONES`, as torchvision's ``get_model`` does; nothing is
downloaded: pretrained weights come from a local file, read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from debias import errors
from debias.config import ModelConfig

Taps = dict[str, torch.Tensor]


def _conv_block(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    # The lab's order: convolution, ReLU, then BatchNorm.
    return [nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2), nn.ReLU(), nn.BatchNorm2d(c_out)]


class ConvNet(nn.Module):
    """The lab's 4-conv encoder (12/24/48/72 filters at the default width) and its dense layer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        f, side = cfg.filters, cfg.image_size // 16
        self.conv = nn.Sequential(
            *_conv_block(3, f, 5),
            *_conv_block(f, 2 * f, 5),
            *_conv_block(2 * f, 4 * f, 3),
            *_conv_block(4 * f, 6 * f, 3),
            nn.Flatten(),
        )
        self.dense = nn.Sequential(nn.Linear(6 * f * side * side, cfg.hidden), nn.ReLU())
        self.out_features = cfg.hidden

    def forward(self, x: torch.Tensor) -> Taps:
        """Return the ``pooled`` and ``hidden`` taps of preprocessed images ``x``."""
        pooled = self.conv(x)  # (B, 6f * S/16 * S/16)
        return {"pooled": pooled, "hidden": self.dense(pooled)}  # hidden: (B, H)


# ImageNet's channel statistics: torchvision's ResNet weights expect inputs normalised by them
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ResNet(nn.Module):
    """torchvision's ResNet-18 without its classifier: 512 pooled features, which are ``hidden``.

    Random initialisation, or ``cfg.weights``: a local torchvision state dict (its ``fc`` is
    dropped). Inputs are normalised by ImageNet's statistics inside the network, so a run's
    images go in as they do for any backbone.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        import torchvision  # only this backbone needs it: keep importing debias.model cheap

        net = torchvision.models.get_model("resnet18", weights=None)
        if cfg.weights is not None:
            state = _read_weights(cfg.weights, net)
            try:
                net.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # a tensor of another shape: another architecture
                reason = str(exc).splitlines()[-1].strip()
                raise errors.ConfigError(
                    errors.WEIGHTS_UNREADABLE.format(path=cfg.weights, reason=reason)
                ) from None
        net.fc = nn.Identity()
        self.net = net
        self.out_features = 512
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> Taps:
        """Return the ``pooled`` and ``hidden`` taps (the same 512 features) of images ``x``."""
        pooled = self.net((x - self.mean) / self.std)  # (B, 512)
        return {"pooled": pooled, "hidden": pooled}


def _read_weights(path: str, net: nn.Module) -> dict[str, torch.Tensor]:
    """Read a torchvision state dict from ``path`` (no pickled code), without its ``fc``."""
    file = Path(path)
    errors.check_option(
        file.is_file(),
        "weights",
        path,
        "no such file",
        "Pass the path of a torchvision state dict saved with torch.save.",
    )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickler raises many types for a file of another kind
        raise errors.ConfigError(errors.WEIGHTS_UNREADABLE.format(path=path, reason=exc)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise errors.ConfigError(
            errors.WEIGHTS_UNREADABLE.format(path=path, reason="not a state dict of tensors")
        )
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(set(net.state_dict()) - set(state) - {"fc.weight", "fc.bias"})
    if missing:
        reason = f"{len(missing)} of the network's tensors missing (e.g. {missing[0]})"
        raise errors.ConfigError(errors.WEIGHTS_UNREADABLE.format(path=path, reason=reason))
    return state


# name -> builder, as torchvision's get_model: ModelConfig.backbone picks one
BACKBONES: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "conv4": ConvNet,
    "resnet18": ResNet,
}


def get_backbone(cfg: ModelConfig) -> nn.Module:
    """Build the backbone ``cfg.backbone`` names; it has ``out_features`` and returns taps."""
    return BACKBONES[cfg.backbone](cfg)
