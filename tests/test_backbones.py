"""Backbones: registered encoders with named taps, old checkpoints, a ResNet-18 run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY_ARGS
from typer.testing import CliRunner

from debias import ModelConfig
from debias.backbones import BACKBONES, ResNet
from debias.data import write_synthetic
from debias.errors import ConfigError
from debias.model import DBVAE
from debias_cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_has_the_named_taps(backbone: str) -> None:
    cfg = ModelConfig(image_size=64, latent_dim=6, filters=4, hidden=32, backbone=backbone)
    model = DBVAE(3, cfg).eval()
    taps = model.taps(torch.rand(2, 3, 64, 64))
    width = model.encoder.backbone.out_features
    assert {k: tuple(v.shape) for k, v in taps.items() if k != "pooled"} == {
        "hidden": (2, width),
        "logits": (2, 3),
        "mu": (2, 6),
        "logvar": (2, 6),
    }
    assert taps["pooled"].shape[0] == 2
    logits, mu, logvar = model.encode(torch.rand(2, 3, 64, 64))
    assert model.decoder(mu).shape == (2, 3, 64, 64)  # the decoder reads the latent alone


def _old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys a checkpoint had before the seam: one Sequential encoder.features 0-15."""
    old = {}
    for key, value in state.items():
        key = key.replace("encoder.backbone.conv.", "encoder.features.")
        for i in (0, 1):
            key = key.replace(f"encoder.backbone.dense.{i}.", f"encoder.features.{13 + i}.")
        old[key.replace("encoder.head.", "encoder.features.15.")] = value
    return old


def test_a_checkpoint_from_before_the_seam_loads_with_the_same_outputs() -> None:
    cfg = ModelConfig(image_size=32, latent_dim=8, filters=4, hidden=32)
    torch.manual_seed(0)
    trained = DBVAE(2, cfg).eval()
    old = _old_layout(trained.state_dict())
    assert "encoder.features.15.weight" in old and "encoder.head.weight" not in old
    loaded = DBVAE(2, cfg).eval()
    loaded.load_state_dict(old)  # strict: every key renamed, none left over
    x = torch.rand(3, 3, 32, 32)
    for a, b in zip(trained.encode(x), loaded.encode(x), strict=True):
        assert torch.equal(a, b)


def test_resnet_starts_from_a_local_state_dict(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=7)
    torch.save(source.state_dict(), tmp_path / "r18.pt")
    net = ResNet(ModelConfig(backbone="resnet18", weights=str(tmp_path / "r18.pt")))
    assert torch.equal(net.net.conv1.weight, source.conv1.weight)
    assert torch.equal(net.net.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    fresh = ResNet(ModelConfig(backbone="resnet18"))
    assert not torch.equal(fresh.net.conv1.weight, source.conv1.weight)


def test_unusable_weights_are_one_line_naming_the_file(tmp_path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match=r"wrong.pt: not usable as the backbone's weights"):
        ResNet(ModelConfig(backbone="resnet18", weights=str(tmp_path / "wrong.pt")))
    with pytest.raises(ConfigError, match=r"^weights='nowhere.pt': no such file"):
        ResNet(ModelConfig(backbone="resnet18", weights="nowhere.pt"))
    with pytest.raises(ConfigError, match="unknown backbone"):
        ModelConfig(backbone="vgg").validate()


def test_a_resnet18_run_trains_audits_screens_and_reports(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "synth", n_faces=60, n_non_faces=40, dark_fraction=0.2, seed=0)
    data, run = str(tmp_path / "synth"), str(tmp_path / "run")
    steps = [
        ["train", "--data", data, "--out", run, "--epochs", "2", "--backbone", "resnet18"]
        + [*TINY_ARGS, "--image-size", "64"],
        ["audit", "--model", run, "--data", data, "--out", str(tmp_path / "audit")]
        + ["--bootstrap", "50"],
        ["outliers", "--model", run, "--data", data, "--out", str(tmp_path / "scan.csv")],
        ["report", "--model", run, "--audit", str(tmp_path / "audit")]
        + ["--out", str(tmp_path / "report")],
    ]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["model"]["backbone"] == "resnet18"
    assert (tmp_path / "scan.csv").is_file()
    assert "report.html" in {p.name for p in (tmp_path / "report").iterdir()}


def test_the_config_names_exactly_the_registered_backbones() -> None:
    from debias.config import BackboneName

    assert set(BackboneName.__args__) == set(BACKBONES)
