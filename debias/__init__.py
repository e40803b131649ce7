"""debias: fair face classifiers without group labels, with the debiasing VAE (DB-VAE).

The package's public names. The library (training, weighting, the audit's statistics, the
outlier detector) and the jobs behind the ``debias`` commands (``debias.jobs``) are imported on
first use, so reading a run folder or rendering a report never imports the training loop.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "AuditConfig": "debias.auditfolder",
    "AuditOptions": "debias.fairness.audit",
    "AuditReport": "debias.jobs.audit",
    "AuditResult": "debias.fairness.audit",
    "ConfigError": "debias.errors",
    "DataError": "debias.errors",
    "DBVAE": "debias.model",
    "DebiasError": "debias.errors",
    "FaceData": "debias.data",
    "LatentHistogram": "debias.resample",
    "LatentMixture": "debias.mixture",
    "LatentRarity": "debias.weighting",
    "ErrorFeedback": "debias.weighting",
    "GroupBalanced": "debias.weighting",
    "Uniform": "debias.weighting",
    "LatentOutlierDetector": "debias.outliers",
    "ModelConfig": "debias.config",
    "RunError": "debias.errors",
    "TrainConfig": "debias.config",
    "TrainResult": "debias.training",
    "audit": "debias.fairness.audit",
    "audit_model": "debias.model_audit",
    "dbvae_loss": "debias.model",
    "effective_sample_size": "debias.resample",
    "load_data": "debias.data",
    "load_model": "debias.runfolder",
    "preprocess": "debias.model",
    "report_predictions": "debias.jobs.report",
    "repair": "debias.refit",
    "LastLayerRepair": "debias.lastlayer",
    "RepairResult": "debias.refit",
    "resume": "debias.training",
    "train": "debias.training",
    "write_audit": "debias.jobs.audit",
    "write_synthetic": "debias.data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'debias' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
