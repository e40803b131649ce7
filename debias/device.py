"""Pick the device to train on: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

from debias import errors


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Parameters
    ----------
    name : str
        The requested device.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        For an unknown name or a device this machine does not have.
    """
    cuda, mps = torch.cuda.is_available(), _mps_available()
    available = (", cuda" if cuda else "") + (", mps" if mps else "")
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise errors.ConfigError(
            errors.BAD_DEVICE.format(device=name, reason="unknown device name", available=available)
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and cuda:
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise errors.ConfigError(
                errors.BAD_DEVICE.format(
                    device=name,
                    reason=f"only {torch.cuda.device_count()} CUDA device(s)",
                    available=available,
                )
            )
        return device
    if device.type == "mps" and mps:
        return device
    raise errors.ConfigError(
        errors.BAD_DEVICE.format(
            device=name, reason=f"no {device.type} device available", available=available
        )
    )


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())
