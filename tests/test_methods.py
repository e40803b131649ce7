"""Methods are objects: passed to train, saved in config.json, rebuilt on resume, described."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from debias import methods, train
from debias.errors import ConfigError
from debias.facts import _weighting_words
from debias.mixture import LatentMixture
from debias.resample import LatentHistogram
from debias.training import resume
from debias.weighting import EpochView, EpochWeights, ErrorFeedback, LatentRarity, Uniform


# The example of docs/extending.md: a new method is this class and its one registry line.
@methods.register
@dataclass
class ClassShare:
    """Uniform within each class, with class 0 drawn ``share`` of the time."""

    share: float = 0.5

    def epoch_weights(self, view: EpochView) -> EpochWeights:
        first = view.y == 0
        w = np.where(first, self.share / first.sum(), (1 - self.share) / (~first).sum())
        return EpochWeights(torch.from_numpy(w).float(), resampled=True)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def validate(self) -> None:
        if not 0 < self.share < 1:
            raise ConfigError(f"share={self.share!r}: must be in (0, 1). Pass e.g. 0.5.")

    def describe(self, epochs: int) -> str:
        return f"uniform draws with class 0 at {self.share:.0%}"


def test_a_new_method_trains_is_saved_and_resumes(labels_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = train(tiny_config(data=str(labels_dir), out=str(out), epochs=1), method=ClassShare(0.8))
    samples = pd.read_csv(out / "samples.csv").query("split == 'train'")
    drawn = samples.groupby("label")["sampling_weight"].sum()
    assert drawn.iloc[0] == pytest.approx(0.8, abs=1e-5)  # the method drew, not the default
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["method"] == {"kind": "ClassShare", "share": 0.8}
    assert _weighting_words(saved) == "uniform draws with class 0 at 80%"
    again = resume(out, epochs=2)  # rebuilt from config.json, not passed again
    assert again.config.method == ClassShare(0.8) and len(again.metrics) == 2
    assert run.config.method == ClassShare(0.8)
    with pytest.raises(ConfigError, match="share=1.5"):
        train(tiny_config(data=str(labels_dir), out=str(tmp_path / "bad")), method=ClassShare(1.5))


@pytest.mark.parametrize("name", sorted(methods.WEIGHTINGS))
def test_every_named_method_survives_config_json(name: str) -> None:
    config = tiny_config(weighting=name, error_share=0.3, bins=7, seed=4)
    method = methods.from_options(config)
    saved = json.loads(json.dumps(methods.to_dict(method)))
    rebuilt = methods.from_dict(saved)
    assert type(rebuilt) is type(method) and methods.to_dict(rebuilt) == saved
    assert saved["kind"] in ("LatentRarity", "ErrorFeedback")


def test_the_options_decode_to_the_method_they_name() -> None:
    method = methods.from_options(tiny_config(weighting="errors+mixture", seed=3))
    assert isinstance(method, ErrorFeedback) and method.seed == 3
    assert isinstance(method.within, LatentRarity)
    assert isinstance(method.within.density, LatentMixture) and method.within.density.seed == 3
    rarity = methods.from_options(tiny_config(weighting="rarity", bins=7, ess_fraction=0))
    assert isinstance(rarity.density, LatentHistogram)
    assert (rarity.density.bins, rarity.density.ess_fraction) == (7, None)
    oracle = methods.from_options(tiny_config(baseline=True, balance_groups=["race"]))
    assert oracle.columns == ["race"]


def test_a_method_of_your_own_is_named_but_not_rebuilt() -> None:
    class Mine(Uniform):
        pass

    saved = methods.to_dict(Mine())
    assert saved == {"kind": "Mine", "registered": False}
    rebuilt = methods.from_dict(saved)
    assert methods.describe(rebuilt, 3) == "a method of the user's own (Mine)"
    with pytest.raises(ConfigError, match="method 'Mine': not a method this version"):
        rebuilt.epoch_weights(None)


def test_a_method_names_its_own_parameter() -> None:
    with pytest.raises(ConfigError, match=r"^share=1.0: must be in \(0, 1\)"):
        ErrorFeedback(share=1.0).validate()
    with pytest.raises(ConfigError, match=r"^bins=0: must be a whole number"):
        LatentRarity(LatentHistogram(bins=0)).validate()
    with pytest.raises(ConfigError, match=r"^n_axes=0"):
        ErrorFeedback(within=LatentRarity(LatentMixture(n_axes=0))).validate()


def test_a_run_never_writes_what_it_learned_into_the_callers_method(
    labels_dir: Path, tmp_path: Path
) -> None:
    method = ErrorFeedback(identify_epoch=1)
    train(tiny_config(data=str(labels_dir), out=str(tmp_path / "a"), epochs=2), method=method)
    assert method.errors_ is None  # a second run with the same object starts afresh
