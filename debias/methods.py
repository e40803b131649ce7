"""Debiasing methods by name: the one place a method's name becomes a method, and back.

A method is an object (:mod:`debias.weighting`): ``Uniform()``, ``GroupBalanced(columns)``,
``LatentRarity(density=LatentHistogram(...) | LatentMixture(...))``,
``ErrorFeedback(identify_epoch, share, within=...)``. A Python user passes one to
:func:`debias.train` (``method=``) or sets ``TrainConfig.method``. The command line names one
with ``--weighting`` and tunes it with flat options (``--bins``, ``--error-share``, ...):
:func:`from_options` is the only code that reads those, :data:`WEIGHTINGS` the only table of
names. A run saves its method as a nested dict in ``config.json`` (:func:`to_dict`) and is read
back by :func:`from_dict`, which builds only the classes registered here (never an arbitrary
import from a file): a run folder is untrusted input.

Adding a method: write its class (``epoch_weights``, ``state_dict``, ``load_state_dict``,
``validate``, ``describe``) with :func:`register` on it, and add its name to :data:`WEIGHTINGS`
if the command line should offer it (``docs/extending.md``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from debias import errors
from debias.config import TrainConfig
from debias.mixture import LatentMixture
from debias.resample import LatentHistogram
from debias.weighting import ErrorFeedback, GroupBalanced, LatentRarity, Uniform, Weighting

# Class name -> class, for from_dict: what config.json may name.
KINDS: dict[str, type] = {}


def register(cls: type) -> type:
    """Let :func:`from_dict` rebuild ``cls`` from a saved run (use as a class decorator)."""
    KINDS[cls.__name__] = cls
    return cls


for _cls in (Uniform, GroupBalanced, LatentRarity, ErrorFeedback, LatentHistogram, LatentMixture):
    register(_cls)


def _histogram(config: TrainConfig) -> LatentHistogram:
    return LatentHistogram(
        bins=config.bins,
        alpha=config.alpha,
        combine=config.combine,
        ess_fraction=config.ess_fraction or None,
        n_components=config.density_components,
    )


def _mixture(config: TrainConfig) -> LatentMixture:
    return LatentMixture(ess_fraction=config.ess_fraction or None, seed=config.seed)


def _errors(config: TrainConfig, within: Weighting) -> ErrorFeedback:
    learnable = config.error_filter == "learnable"
    return ErrorFeedback(config.error_epoch, config.error_share, within, learnable, config.seed)


def _rarity(config: TrainConfig, density: Callable[[TrainConfig], Any]) -> LatentRarity:
    return LatentRarity(density(config), config.warmup_epochs)


# --weighting NAME -> the method the run's flat options build.
WEIGHTINGS: dict[str, Callable[[TrainConfig], Weighting]] = {
    "rarity": lambda c: _rarity(c, _histogram),
    "mixture": lambda c: _rarity(c, _mixture),
    "errors": lambda c: _errors(c, Uniform()),
    "errors+rarity": lambda c: _errors(c, _rarity(c, _histogram)),
    "errors+mixture": lambda c: _errors(c, _rarity(c, _mixture)),
}


def from_options(config: TrainConfig) -> Weighting:
    """Return the method a run's flat options name (``--balance-groups``, ``--baseline``, ...)."""
    if config.balance_groups:
        return GroupBalanced(list(config.balance_groups))
    if config.baseline:
        return Uniform()
    return WEIGHTINGS[config.weighting](config)


def method_of(config: TrainConfig) -> Weighting:
    """Return the run's method: ``config.method`` when set, else what its options name."""
    return config.method if config.method is not None else from_options(config)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Return the ``train`` section of ``config.json``: the options and the method, nested.

    The method is saved whether it was given as an object or named by the flat options.
    """
    return {**config.to_dict(), "method": to_dict(method_of(config))}


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a run's settings and method from :func:`config_to_dict` output.

    Runs saved before methods were objects have no ``method``: their options name it.
    """
    config = TrainConfig.from_dict(d)
    if d.get("method") is not None:
        config = dataclasses.replace(config, method=from_dict(d["method"]))
    return config


def histogram_of(config: TrainConfig) -> LatentHistogram:
    """Return the (unfitted) latent histogram a run scores images by (samples.csv, density.pt).

    The run's method's own histogram when it draws by one; otherwise (the plain classifier, the
    oracle, a joint density) the histogram the run's options describe.
    """
    method = method_of(config)
    inner = method.within if isinstance(method, ErrorFeedback) else method
    if isinstance(inner, LatentRarity) and isinstance(inner.density, LatentHistogram):
        return copy.deepcopy(inner.density)
    return _histogram(config)


def to_dict(method: Any) -> Any:
    """Return ``method`` (and the methods and densities inside it) as JSON-able dicts.

    Parameters are read as scikit-learn reads them: a dataclass's fields, or else the keyword
    parameters of ``__init__``; learned state (names ending in ``_``) is left out. An object of
    an unregistered class is saved by its class name alone: the run records it, but a resume
    must be given the method again.
    """
    if isinstance(method, list | tuple):
        return [to_dict(v) for v in method]
    if not hasattr(method, "__dict__") or isinstance(method, type):
        return method
    if dataclasses.is_dataclass(method):
        names = [f.name for f in dataclasses.fields(method)]
    else:
        names = [p for p in inspect.signature(type(method).__init__).parameters if p != "self"]
    if isinstance(method, Unrebuildable):
        return {"kind": method.kind, "registered": False}
    if type(method).__name__ not in KINDS:
        return {"kind": type(method).__name__, "registered": False}
    params = {n: to_dict(getattr(method, n)) for n in names if not n.endswith("_")}
    return {"kind": type(method).__name__, **params}


def from_dict(d: dict[str, Any]) -> Weighting:
    """Rebuild a method saved by :func:`to_dict`.

    A kind this version does not know (a method of the user's own, or a newer one) comes back
    as :class:`Unrebuildable`: the run's model card can still name it, a resume cannot draw.
    """
    return _build(d)


@dataclasses.dataclass
class Unrebuildable:
    """A saved method this version cannot rebuild: it names itself, and refuses to draw."""

    kind: str

    def epoch_weights(self, view: Any) -> Any:  # noqa: D102
        raise errors.ConfigError(errors.UNKNOWN_METHOD.format(kind=self.kind))

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.epoch_weights(None)

    def describe(self, epochs: int) -> str:  # noqa: D102
        return f"a method of the user's own ({self.kind})"


def _build(value: Any) -> Any:
    if isinstance(value, list):
        return [_build(v) for v in value]
    if not isinstance(value, dict) or "kind" not in value:
        return value
    kind = value["kind"]
    cls = KINDS.get(kind)
    if cls is None or value.get("registered") is False:
        return Unrebuildable(kind)
    try:
        return cls(**{k: _build(v) for k, v in value.items() if k != "kind"})
    except TypeError:  # parameters of another version: the run still names its method
        return Unrebuildable(kind)


# The options only ErrorFeedback reads.
ERROR_OPTIONS = ("error_epoch", "error_share", "error_filter")


def check_options_read(config: TrainConfig, given: set[str]) -> None:
    """Refuse options the user gave that the run's method would silently ignore.

    A dataclass cannot tell a default from a value the user typed, so the command line calls
    this with the options it was given: ``--baseline --error-share 0.5`` is refused, not run as
    the plain classifier with the share dropped; so is an ``--error-epoch`` the run never reaches.
    Which options are read follows from the method :func:`from_options` picks.

    Parameters
    ----------
    config : TrainConfig
        The run's settings.
    given : set of str
        Names of the TrainConfig fields the user set.

    Raises
    ------
    ConfigError
        Naming the unread options, what overrides them and the fix.
    """
    method = from_options(config)  # cheap: no method computes anything before its first epoch
    if isinstance(method, ErrorFeedback):
        if "error_epoch" in given and method.unreached(config.epochs):
            raise errors.ConfigError(
                errors.ERROR_EPOCH_TOO_LATE.format(epoch=config.error_epoch, epochs=config.epochs)
            )
        return
    # --weighting picks between rarity and error feedback; group balancing and the baseline
    # read neither
    unread = ERROR_OPTIONS if isinstance(method, LatentRarity) else ("weighting", *ERROR_OPTIONS)
    if not (found := _given(unread, given)):
        return
    if isinstance(method, GroupBalanced):
        raise errors.ConfigError(errors.UNREAD_WITH_BALANCE.format(**found))
    if isinstance(method, Uniform):
        raise errors.ConfigError(errors.UNREAD_WITH_BASELINE.format(**found))
    raise errors.ConfigError(errors.UNREAD_WITH_RARITY.format(weighting=config.weighting, **found))


def error_feedback_unreached(config: TrainConfig) -> bool:
    """Whether a run asks for error feedback but ends before its error set is taken.

    Such a run draws uniformly throughout (``ErrorFeedback`` waits ``identify_epoch`` plain
    epochs): a quick ``--epochs 2`` try of the default. Its model card must not claim error
    feedback, and the command line says how to reach it (resume with more epochs).
    """
    method = method_of(config)
    return isinstance(method, ErrorFeedback) and method.unreached(config.epochs)


def describe(method: Any, epochs: int) -> str:
    """Return the model card's words for how a run of ``epochs`` epochs drew with ``method``."""
    if hasattr(method, "describe"):
        return method.describe(epochs)
    return f"a method of the user's own ({type(method).__name__})"


def _given(names: tuple[str, ...], given: set[str]) -> dict[str, str]:
    """Return the message's fields for those of ``names`` the user gave; empty if none."""
    found = [name + "=" for name in names if name in given]
    if not found:
        return {}
    return {"options": ", ".join(found), "them": "it" if len(found) == 1 else "them"}
