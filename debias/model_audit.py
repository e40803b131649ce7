"""Audit an in-memory classifier over images: no model file, no image folder, no output folder.

``audit_model(module, images, y_true, sensitive_features=...)`` feeds uint8 images to a
``torch.nn.Module`` as the command line feeds a model file (pixels/255, then the given
normalisation), takes the most probable class and audits the predictions with
:func:`debias.fairness.audit.audit`. The Python API's answer to ``debias audit --model``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from debias.device import select_device
from debias.fairness.audit import AuditOptions, AuditResult, audit
from debias.predict import check_outputs, module_classifier, predict_images


def audit_model(
    module: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    y_true: Sequence[object],
    sensitive_features: object = None,
    *,
    classes: Sequence[str],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    options: AuditOptions | None = None,
    device: str = "auto",
    batch_size: int = 256,
) -> AuditResult:
    """Predict with a ``torch.nn.Module`` over images and audit its predictions per group.

    Parameters
    ----------
    module : torch.nn.Module
        Maps float images ``(B, 3, S, S)`` to logits or probabilities ``(B, C)`` (or one column
        for the second of two classes).
    images : numpy.ndarray or torch.Tensor
        uint8 images ``(N, 3, S, S)``, RGB.
    y_true : array-like
        True class name of each image.
    sensitive_features : array-like, Series, DataFrame or dict, optional
        Group attributes, as :func:`debias.fairness.audit.audit` takes them.
    classes : sequence of str
        Class names in the module's output order.
    mean, std : sequence of float
        Per-channel normalisation it was trained with: inputs are ``(x / 255 - mean) / std``.
    options : AuditOptions, optional
        How the statistics are computed.
    device : str
        Where the module runs: auto, cpu, cuda, mps (it is moved there).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    AuditResult

    Examples
    --------
    >>> import torch, numpy as np
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    >>> x = np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    >>> r = audit_model(net, x, ["a", "b"] * 20, {"g": ["u", "v"] * 20}, classes=["a", "b"],
    ...                 options=AuditOptions(bootstrap=0, min_group_size=5))
    >>> r.n
    40
    """
    target = select_device(device)
    module = module.to(target)
    classifier = module_classifier(module, classes=classes, mean=mean, std=std, device=target)
    pixels = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    probabilities = predict_images(classifier, pixels, batch_size=batch_size)
    names = [str(c) for c in classes]
    check_outputs(probabilities, names, type(module).__name__)
    y_pred = np.asarray(names, dtype=object)[probabilities.argmax(axis=1)]
    return audit(y_true, y_pred, sensitive_features, options, classes=names)
