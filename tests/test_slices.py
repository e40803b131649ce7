"""Label-free slice discovery finds a planted failing subgroup without being told the groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from debias.fairness.audit import AuditOptions
from debias.jobs.audit import AuditConfig, write_audit
from debias.slices import _composition, density_deciles, find_slices


def test_planted_subgroup_is_the_top_slice(synth_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = synth_run
    honest = write_audit(AuditConfig(model=str(run), data=str(data), out=str(tmp_path / "a")))
    # Plant a classifier that is wrong on every dark-skinned face, right elsewhere as before.
    planted = honest.predictions.copy()
    dark = (planted["skin_tone"] == "dark").to_numpy()
    planted.loc[dark, "y_pred"] = "not_face"
    planted = planted.drop(columns=["skin_tone", "glasses"])  # slices must not see the groups
    planted["secret"] = np.where(dark, "dark", "other")
    csv = data / "planted.csv"
    planted.to_csv(csv, index=False)
    report = write_audit(
        AuditConfig(
            predictions=str(csv),
            options=AuditOptions(groups=["secret"]),
            embed_with=str(run),
            out=str(tmp_path / "b"),
        )
    )
    # The group audit flags it ...
    acc = report.result.disparities.set_index(["group", "metric"])
    assert acc.loc[("dark", "accuracy"), "flag"] == "fail"
    # ... and the clusters, formed from latents alone, rank the one holding it first.
    clusters = report.slices[report.slices.kind == "cluster"]
    slice_of = report.predictions["latent_slice"].astype(str).to_numpy()
    holding = pd.Series(slice_of[dark]).value_counts()
    top = clusters.iloc[0]
    assert top["slice"] == holding.index[0]
    share = holding.iloc[0] / top["n"]
    assert share >= 3 * dark.mean()  # the top slice is enriched for the planted group
    assert "secret=dark" in top["composition"]
    # Example images were written, failures first.
    assert (tmp_path / "b" / top["example_grid"]).is_file()
    assert planted.loc[top["examples"][0] == planted["path"], "y_pred"].iloc[0] == "not_face"


def test_density_deciles_split_evenly_rarest_first() -> None:
    log_density = np.random.default_rng(0).normal(size=1000)
    deciles = density_deciles(log_density)
    assert np.bincount(deciles)[1:].tolist() == [100] * 10
    assert log_density[deciles == 1].max() < log_density[deciles == 10].min()


def test_fewer_slices_when_the_data_cannot_fill_them() -> None:
    embedding = np.random.default_rng(0).normal(size=(50, 4))
    assert len(set(find_slices(embedding, 8, min_size=30, seed=0))) == 1
    two = np.concatenate([embedding, embedding + 20])
    labels = find_slices(two, 8, min_size=40, seed=0)
    assert len(set(labels)) == 2 and len(set(labels[:50])) == 1


def test_composition_leaves_out_a_group_that_is_the_label() -> None:
    table = pd.DataFrame(
        {
            "y_true": ["male"] * 6 + ["female"] * 4,
            "gender": ["male"] * 6 + ["female"] * 4,
            "race": ["Black"] * 3 + ["White"] * 7,
        }
    )
    text = _composition(table, np.arange(3), ["gender", "race"])
    assert text == "label=male 100% (60% overall); race=Black 100% (30% overall)"
