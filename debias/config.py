"""The configuration of a run: one dataclass per concern, saved as ``config.json`` with the run.

CLI options map one-to-one onto these fields. Each default says why it was chosen.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from debias.errors import check_option

Combine = Literal["product", "max"]  # how per-dimension densities combine (debias.resample)
# The registry's names (debias.backbones.BACKBONES; a test keeps the two equal)
BackboneName = Literal["conv4", "resnet18"]
VaeOn = Literal["auto", "all", "positive"]
Recon = Literal["l1", "l2"]
LrSchedule = Literal["constant", "cosine"]
Precision = Literal["auto", "float32", "bfloat16"]
WeightingName = Literal["rarity", "mixture", "errors", "errors+rarity", "errors+mixture"]
ErrorFilter = Literal["none", "learnable"]
Select = Literal["last", "worst-class", "worst-cluster", "worst-group"]


@dataclass
class ModelConfig:
    """Shape of the DB-VAE; the number of classes comes from the data."""

    image_size: int = 64  # the lab's and the benchmark's resolution; must be a multiple of 16
    latent_dim: int = 100  # the lab's latent size
    filters: int = 12  # the lab's 4-conv encoder: 12/24/48/72 filters
    hidden: int = 512  # the lab's dense layer before the heads
    # The encoder (debias/backbones.py): the lab's 4-conv network, or torchvision's resnet18
    backbone: BackboneName = "conv4"
    weights: str | None = None  # a local state dict for the backbone (torchvision's layout)

    def validate(self) -> None:
        """Raise ConfigError for sizes the architecture cannot take."""
        check_option(
            self.backbone in BackboneName.__args__,
            "backbone",
            self.backbone,
            "unknown backbone",
            f"Use one of {', '.join(BackboneName.__args__)}.",
        )
        check_option(
            self.weights is None or self.backbone != "conv4",
            "weights",
            self.weights,
            "the conv4 backbone takes no pretrained weights",
            "Pass backbone=resnet18, or leave weights= out.",
        )
        check_option(
            self.image_size >= 16 and self.image_size % 16 == 0,
            "image_size",
            self.image_size,
            "the encoder halves the image four times",
            "Use a multiple of 16 (e.g. 64).",
        )
        for name in ("latent_dim", "filters", "hidden"):
            _positive(name, getattr(self, name))
        # Far beyond any face classifier of this design: a typo, not a model (and a traceback
        # from the allocator otherwise)
        for name, most in (("image_size", 512), ("latent_dim", 4096), ("filters", 512)):
            _at_most(name, getattr(self, name), most)
        _at_most("hidden", self.hidden, 16384)


@dataclass
class TrainConfig:
    """Everything that defines a training run besides the data's own content.

    Examples
    --------
    >>> from debias import TrainConfig, train
    >>> run = train(TrainConfig(data="faces/", epochs=5, out="runs/x"))  # doctest: +SKIP
    """

    # Data
    data: str | None = None  # a folder in one of the accepted layouts
    labels: str | None = (
        None  # a labels CSV anywhere (paths relative to it); overrides data/labels.csv
    )
    target: str | None = None  # label column / UTKFace field / CelebA attribute
    groups: list[str] | None = None  # evaluation groups; default: attributes with 2-20 values
    strict: bool = False  # skipping unreadable files is the default: real folders have a few
    out: str | None = None  # run folder; default runs/<date-time>
    # A labels CSV of a few group-labelled faces (training faces or others): the run ends by
    # refitting its last layer on group-balanced draws of them (debias/refit.py), kept only if
    # it beats the layer as it was by cross-validation on those faces
    group_labels: str | None = None
    repair_groups: list[str] | None = None  # their group columns; default: those with 2-20 values

    # Method
    baseline: bool = False  # plain classifier: no VAE loss, uniform sampling
    # Resample so each group combination weighs the same within its class. It reads group labels:
    # for users who have them, and for the oracle the label-free DB-VAE is benchmarked against.
    balance_groups: list[str] | None = None
    # How each epoch's draws are weighted (debias/weighting.py): "rarity" is the DB-VAE's latent
    # histograms; "mixture" a joint density (Gaussian mixtures, debias/mixture.py); "errors"
    # gives what an early plain model gets wrong a share of each class's draws; "errors+rarity"
    # and "errors+mixture" spread both parts of each class by latent rarity. errors+rarity at
    # a share of 0.25 was ahead of rarity alone on utk-gender and utk-age (within noise, 5
    # seeds) without costing utk-detect (benchmarks/RESULTS.md, sections five-seeds, label-free);
    # the mixture drew like the histograms (benchmarks/experiments/joint-density-and-selection.md).
    weighting: WeightingName = "errors+rarity"
    # plain epochs before the error set is frozen: the shortcut is learnt by then, the errors not
    # yet memorised (2 and 5 were no better on utk-age; benchmarks/experiments/error-feedback.md)
    error_epoch: int = 3
    # share of each class's draws its error set gets: 0.5 gains 12 points on utk-age's shortcut
    # but costs 2.8 points of mean accuracy on utk-gender (5 seeds), where errors are hard faces
    # and make race predict gender; 0.8 loses 12 points of utk-gender's worst cell
    error_share: float = 0.25
    # "learnable" keeps only the errors that training on the other errors teaches (a shortcut's
    # exceptions teach each other, noise does not): three trial epochs of a model copy, once. Not
    # the default: over it +1.2 worst-cell points on utk-age, -1.7 on utk-gender, and a
    # detector's Black-male recall -0.7 (benchmarks/RESULTS.md, section learnable)
    error_filter: ErrorFilter = "none"
    vae_on: VaeOn = "auto"  # auto: "positive" when a class is called "face" (detection), else "all"
    positive_class: str | None = None  # the class the VAE models with vae_on="positive"
    kl_weight: float = 5e-4  # the lab's value: a weak KL keeps latents informative
    recon: Recon = "l1"  # the lab's L1 reconstruction
    bins: int = 10  # the lab's histogram bins per latent dimension
    alpha: float = 1e-3  # the lab's smoothing: keeps empty bins from getting infinite weight
    combine: Combine = "product"  # the paper's rule (in log space); "max" is the lab's
    # temperature so each class keeps this effective sample share; 0 or None turns it off
    ess_fraction: float | None = 0.5
    warmup_epochs: int = 1  # uniform sampling until the latents mean something
    density_components: int | None = None  # histogram this many principal axes, not raw dims

    # Optimisation
    epochs: int = 10
    # Which epoch's weights the run keeps (debias/selection.py): the last (the cosine schedule's
    # least noisy), or the best by a label-free validation score — the worst class's accuracy,
    # or the worst over latent clusters of each class. Those picks fall inside the validation
    # noise: worst-class kept epoch 3 of 6 on a utk-detect seed and lost 2.3 points of a cell's
    # recall (benchmarks/experiments/joint-density-and-selection.md)
    # With group_labels the run keeps the epoch with the best worst (class x group) accuracy on
    # half of those faces ("worst-group", what debiasing papers select by), and repairs on the
    # other half, unless another rule is named here
    select: Select = "last"
    batch_size: int = 32  # the lab's batch
    lr: float = 5e-4  # the lab's Adam step
    lr_schedule: LrSchedule = "cosine"  # decay to 0 by the last step: a less noisy final model
    augment: bool = (
        True  # flip, colour jitter, +-4 px shift: upweighted rare faces are not memorised
    )
    val_fraction: float = 0.1  # stratified by class; a data set's own val partition wins
    seed: int = 0
    device: str = "auto"  # cuda, then mps, then cpu
    # auto: float16 mixed precision on CUDA, float32 elsewhere; bfloat16 mixed precision runs
    # convolutions on the CPU's bfloat16 units where it has them (benchmarks/RESULTS.md)
    precision: Precision = "auto"
    num_workers: int = 0  # decoding processes (0 decodes in this process)

    model: ModelConfig = field(default_factory=ModelConfig)
    # The debiasing method as an object (debias.weighting, debias.methods): when set it wins over
    # the flat options above (baseline, balance_groups, weighting and their tuning), which are
    # the command line's way to name one
    method: Any = None

    def validate(self) -> None:
        """Raise ConfigError for values no run can use."""
        self.model.validate()
        self._validate_training()
        self._validate_method()
        self._validate_choices()
        self._validate_group_labels()

    def _validate_training(self) -> None:
        """Check the data split, the optimiser and the machine."""
        for name in ("epochs", "batch_size"):
            _positive(name, getattr(self, name))
        for name, most in (("epochs", 100_000), ("batch_size", 65_536)):
            _at_most(name, getattr(self, name), most)
        _finite_positive("lr", self.lr)
        check_option(
            isinstance(self.seed, int) and 0 <= self.seed < 2**32,
            "seed",
            self.seed,
            "must be a whole number from 0 to 2^32-1",
            "Pass e.g. 0.",
        )
        check_option(
            isinstance(self.num_workers, int) and 0 <= self.num_workers <= 256,
            "num_workers",
            self.num_workers,
            "must be a whole number from 0 (decode in this process) to 256",
            "Pass 0, or about the number of cores.",
        )
        check_option(
            isinstance(self.kl_weight, int | float) and 0 <= self.kl_weight < math.inf,
            "kl_weight",
            self.kl_weight,
            "must be finite and not negative",
            "Pass 0 or a positive number.",
        )
        check_option(
            0 <= self.val_fraction < 1,
            "val_fraction",
            self.val_fraction,
            "must be in [0, 1)",
            "Pass e.g. 0.1.",
        )

    def _validate_method(self) -> None:
        """Check the method object, or the flat options that name one and tune it."""
        if self.method is not None:
            getattr(self.method, "validate", lambda: None)()
        _positive("bins", self.bins)
        _at_most("bins", self.bins, 10_000)
        _finite_positive("alpha", self.alpha)
        check_option(
            self.ess_fraction is None or 0 <= self.ess_fraction <= 1,
            "ess_fraction",
            self.ess_fraction,
            "must be in [0, 1]",
            "Pass e.g. 0.5, or 0 to use alpha alone.",
        )
        check_option(
            0 < self.error_share < 1,
            "error_share",
            self.error_share,
            "must be in (0, 1)",
            "Pass e.g. 0.5.",
        )
        check_option(
            isinstance(self.error_epoch, int) and self.error_epoch >= 1,
            "error_epoch",
            self.error_epoch,
            "must be a whole number above 0",
            "Pass e.g. 2.",
        )
        check_option(
            self.error_filter == "none" or self.weighting.startswith("errors"),
            "error_filter",
            self.error_filter,
            f"filters the error set, and weighting={self.weighting} takes none",
            "Pass weighting=errors+rarity (or errors), or leave error_filter= out.",
        )
        check_option(
            self.error_filter == "none" or not (self.baseline or self.balance_groups),
            "error_filter",
            self.error_filter,
            "filters the error set, and baseline=True and balance_groups= draw without one",
            "Leave error_filter= out, or baseline=True and balance_groups=.",
        )
        check_option(
            self.warmup_epochs >= 0,
            "warmup_epochs",
            self.warmup_epochs,
            "must not be negative",
            "Pass 0 or more.",
        )

    def _validate_group_labels(self) -> None:
        """Check that worst-group selection has the group labels it reads."""
        check_option(
            self.select != "worst-group" or self.group_labels is not None,
            "select",
            self.select,
            "reads the group labels of group_labels=, and none were given",
            "Pass group_labels=CSV of a few group-labelled faces, or another select=.",
        )

    def _validate_choices(self) -> None:
        """Check every option with a fixed set of values."""
        for name, allowed in (
            ("combine", Combine),
            ("weighting", WeightingName),
            ("error_filter", ErrorFilter),
            ("select", Select),
            ("vae_on", VaeOn),
            ("recon", Recon),
            ("lr_schedule", LrSchedule),
            ("precision", Precision),
        ):
            value = getattr(self, name)
            check_option(
                value in allowed.__args__,
                name,
                value,
                "unknown choice",
                f"Use one of {', '.join(allowed.__args__)}.",
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a plain JSON-able dict without ``method`` (``methods.config_to_dict`` adds it)."""
        d = dataclasses.asdict(dataclasses.replace(self, method=None))
        del d["method"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output, ignoring keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        model_known = {f.name for f in dataclasses.fields(ModelConfig)}
        model = ModelConfig(**{k: v for k, v in d.pop("model", {}).items() if k in model_known})
        d.pop("method", None)  # an object: debias.methods.config_from_dict rebuilds it
        return cls(**d, model=model)


def _at_most(name: str, value: int, most: int) -> None:
    check_option(value <= most, name, value, f"must be at most {most}", "Pass a smaller number.")


def _finite_positive(name: str, value: float) -> None:
    check_option(
        isinstance(value, int | float) and 0 < value < math.inf,
        name,
        value,
        "must be a finite number above 0",
        "Pass a positive number such as 5e-4.",
    )


def _positive(name: str, value: int) -> None:
    check_option(
        isinstance(value, int) and value > 0,
        name,
        value,
        "must be a whole number above 0",
        "Pass e.g. 10.",
    )
