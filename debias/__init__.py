"""debias: fair face classifiers without group labels, with the debiasing VAE (DB-VAE)."""

__version__ = "0.1.0"

from debias.audit import AuditConfig, AuditResult, audit  # noqa: E402
from debias.audit_run import AuditReport, run_audit  # noqa: E402
from debias.config import ModelConfig, TrainConfig  # noqa: E402
from debias.data import FaceData, load_data, write_synthetic  # noqa: E402
from debias.errors import ConfigError, DataError, DebiasError, RunError  # noqa: E402
from debias.model import DBVAE, dbvae_loss, preprocess  # noqa: E402
from debias.resample import LatentHistogram, effective_sample_size  # noqa: E402
from debias.run import load_model  # noqa: E402
from debias.train import TrainResult, resume, train  # noqa: E402

__all__ = [
    "AuditConfig",
    "AuditReport",
    "AuditResult",
    "DBVAE",
    "ConfigError",
    "DataError",
    "DebiasError",
    "FaceData",
    "LatentHistogram",
    "ModelConfig",
    "RunError",
    "TrainConfig",
    "TrainResult",
    "audit",
    "dbvae_loss",
    "effective_sample_size",
    "load_data",
    "load_model",
    "preprocess",
    "resume",
    "run_audit",
    "train",
    "write_synthetic",
]
