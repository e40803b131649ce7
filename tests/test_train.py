"""Training end to end on small real image folders: the run folder, resume, devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_ARGS, tiny_config

from debias import (
    ConfigError,
    DataError,
    LatentHistogram,
    ModelConfig,
    RunError,
    TrainConfig,
    load_model,
    resume,
    runfolder,
    train,
    write_synthetic,
)
from debias.data import load_data
from debias.device import select_device
from debias.encode import encode
from debias.model import preprocess
from debias.runfolder import load_checkpoint
from debias.weighting import group_balanced_weights


def test_run_folder_is_self_describing(labels_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(
        tiny_config(
            data=str(labels_dir), out=str(out), epochs=2, warmup_epochs=1, weighting="rarity"
        )
    )
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "samples.csv",
        "skipped.csv",
        "density.pt",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["classes"] == ["a", "b"]
    assert config["data"]["group_columns"] == ["skin"]
    assert config["train"]["model"]["latent_dim"] == 8
    assert TrainConfig.from_dict(config["train"]).epochs == 2

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["resampled"] for m in metrics] == [False, True]  # one warm-up epoch
    assert metrics[0]["ess_fraction"] == pytest.approx(1.0)
    assert 0 < metrics[1]["ess_fraction"] < 1
    assert set(metrics[1]["val_acc_by_group"]["skin"]) <= {"dark", "light"}
    assert 0 < metrics[0]["lr"] < 5e-4 and metrics[1]["lr"] == pytest.approx(0, abs=1e-12)  # cosine
    assert result.metrics == metrics

    samples = pd.read_csv(out / "samples.csv")
    assert len(samples) == 48
    assert samples["split"].value_counts().to_dict() == {"train": 38, "val": 10}
    train_rows = samples[samples["split"] == "train"]
    assert train_rows["sampling_weight"].sum() == pytest.approx(1.0)
    assert samples["latent_log_density"].notna().all()
    assert {"path", "label", "skin", "age"} <= set(samples.columns)

    # The saved density scores images like the class-free histogram of the training latents.
    density = runfolder.load_density(out)
    model = load_model(out)[0]
    mu, _ = encode(model, result.data.images, np.arange(48), device=torch.device("cpu"))
    train_mask = (samples["split"] == "train").to_numpy()
    refit = LatentHistogram(bins=10, alpha=1e-3).fit(mu[torch.tensor(train_mask)])
    zeros = torch.zeros(48, dtype=torch.long)
    torch.testing.assert_close(density.score_samples(mu, zeros), refit.score_samples(mu, zeros))


def test_model_loads_and_predicts(labels_dir: Path, tmp_path: Path) -> None:
    # 12 epochs of 5 steps: enough updates for BatchNorm's running statistics to settle.
    result = train(
        tiny_config(
            data=str(labels_dir), out=str(tmp_path / "run"), epochs=12, batch_size=8, lr=3e-3
        )
    )
    model, config = load_model(tmp_path / "run")
    data = load_data(labels_dir, image_size=16)
    probs = model.predict_proba(preprocess(torch.from_numpy(data.images)))
    accuracy = (probs.argmax(1).numpy() == data.y).mean()
    assert accuracy >= 0.9  # the two classes differ by a bright square
    assert result.metrics[-1]["train_acc"] >= 0.8


def test_baseline_samples_uniformly(labels_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain"
    result = train(tiny_config(data=str(labels_dir), out=str(out), baseline=True))
    assert all(
        not m["resampled"] and m["ess_fraction"] == pytest.approx(1.0) for m in result.metrics
    )
    assert all(m["train_reconstruction"] > 0 for m in result.metrics)  # reported, not trained on
    samples = pd.read_csv(out / "samples.csv")
    assert samples.loc[samples["split"] == "train", "sampling_weight"].nunique() == 1


def test_unreadable_files_are_listed_and_skipped(class_folders: Path, tmp_path: Path) -> None:
    (class_folders / "face" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "run"
    train(tiny_config(data=str(class_folders), out=str(out), epochs=1))
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["path"].str.endswith("broken.jpg").tolist() == [True]
    assert len(pd.read_csv(out / "samples.csv")) == 40


def test_partition_without_validation_folder(split_class_folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(data=str(split_class_folders), out=str(out), epochs=1))
    samples = pd.read_csv(out / "samples.csv")
    # test/ is held out; the validation split is drawn from train/, stratified (20% of 16 a class).
    assert len(samples) == 32 and not samples["path"].str.contains("/test/").any()
    assert samples.groupby("split")["label"].value_counts().to_dict() == {
        ("train", "face"): 13,
        ("train", "not_face"): 13,
        ("val", "face"): 3,
        ("val", "not_face"): 3,
    }


def test_vae_models_faces_only_for_detection(
    class_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import debias.training as training

    seen = []  # (classes, VAE mask, reconstruction error) of every training batch

    def spy(out, x, y, vae_mask, **kwargs):  # noqa: ANN001, ANN003, ANN202
        loss = real(out, x, y, vae_mask, **kwargs)
        seen.append((y.clone(), vae_mask.clone(), loss.reconstruction.detach().clone()))
        return loss

    real = training.dbvae_loss
    monkeypatch.setattr(training, "dbvae_loss", spy)
    result = train(tiny_config(data=str(class_folders), out=str(tmp_path / "r"), epochs=1))
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data"]["positive_class"] == "face"
    face = result.data.classes.index("face")
    y = torch.cat([s[0] for s in seen])
    mask = torch.cat([s[1] for s in seen])
    recon = torch.cat([s[2] for s in seen])
    assert 0 < (y == face).sum() < len(y)  # both classes were trained on
    assert torch.equal(mask, (y == face).float())  # the VAE loss covers faces only
    assert (recon[y != face] == 0).all() and (recon[y == face] > 0).all()  # only faces decoded


def test_vae_on_positive_needs_a_positive_class(labels_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"positive_class="):
        train(tiny_config(data=str(labels_dir), out=str(tmp_path / "r"), vae_on="positive"))
    result = train(
        tiny_config(
            data=str(labels_dir),
            out=str(tmp_path / "s"),
            vae_on="positive",
            positive_class="a",
            epochs=1,
        )
    )
    assert result.metrics[0]["train_kl"] > 0


def test_an_existing_run_is_not_overwritten(labels_dir: Path, tmp_path: Path) -> None:
    train(tiny_config(data=str(labels_dir), out=str(tmp_path / "r"), epochs=1))
    with pytest.raises(RunError, match=r"already holds a run. Pass resume="):
        train(tiny_config(data=str(labels_dir), out=str(tmp_path / "r"), epochs=1))
    with pytest.raises(RunError, match=r"already finished all 1 epochs"):
        resume(tmp_path / "r")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("epochs", 0, "epochs"),
        ("bins", -1, "bins"),
        ("alpha", 0.0, "alpha"),
        ("combine", "sum", "combine"),
        ("device", "tpu", "device"),
        ("precision", "float16", "precision"),
        ("error_filter", "noisy", "error_filter="),
    ],
)
def test_invalid_options(
    labels_dir: Path, tmp_path: Path, field: str, value: object, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        train(tiny_config(data=str(labels_dir), out=str(tmp_path / "r"), **{field: value}))


def test_an_error_filter_needs_an_error_set(labels_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data=str(labels_dir), out=str(tmp_path / "r"), error_filter="learnable")
    config.weighting = "rarity"
    with pytest.raises(ConfigError, match=r"error_filter.*weighting=rarity takes none"):
        train(config)


@pytest.mark.parametrize("setting", [{"baseline": True}, {"balance_groups": ["skin"]}])
def test_an_error_filter_is_refused_where_no_error_set_is_drawn(
    labels_dir: Path, tmp_path: Path, setting: dict
) -> None:
    config = tiny_config(data=str(labels_dir), out=str(tmp_path / "r"), error_filter="learnable")
    for name, value in setting.items():
        setattr(config, name, value)
    with pytest.raises(ConfigError, match=r"error_filter=.*draw without one"):
        train(config)
    assert not (tmp_path / "r").exists()


def test_image_size_must_suit_the_encoder(labels_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data=str(labels_dir), out=str(tmp_path / "r"))
    config.model.image_size = 40
    with pytest.raises(ConfigError, match=r"multiple of 16"):
        train(config)


def test_same_seed_same_weights(labels_dir: Path, tmp_path: Path) -> None:
    a = train(tiny_config(data=str(labels_dir), out=str(tmp_path / "a"), seed=3))
    b = train(tiny_config(data=str(labels_dir), out=str(tmp_path / "b"), seed=3))
    c = train(tiny_config(data=str(labels_dir), out=str(tmp_path / "c"), seed=4))
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bfloat16_precision_trains_and_differs_from_float32(
    labels_dir: Path, tmp_path: Path
) -> None:
    runs = {
        p: train(tiny_config(data=str(labels_dir), out=str(tmp_path / p), precision=p))
        for p in ("float32", "bfloat16")
    }
    half = runs["bfloat16"].model.state_dict()
    assert all(torch.isfinite(v).all() for v in half.values() if v.is_floating_point())
    assert all(v.dtype != torch.bfloat16 for v in half.values())  # weights stay float32
    full = runs["float32"].model.state_dict()
    assert not all(torch.equal(full[k], half[k]) for k in full)  # autocast was really on
    assert (
        json.loads((tmp_path / "bfloat16" / "config.json").read_text())["train"]["precision"]
        == "bfloat16"
    )


def test_rare_faces_get_higher_sampling_weight(tmp_path: Path) -> None:
    """On the skewed synthetic set, the label-free resampler upweights rare dark-skinned faces."""
    write_synthetic(tmp_path / "synth", n_faces=800, n_non_faces=300, dark_fraction=0.1, size=32)
    out = tmp_path / "run"
    config = tiny_config(
        data=str(tmp_path / "synth"), out=str(out), epochs=8, warmup_epochs=1, batch_size=32
    )
    config.model = ModelConfig(image_size=32, latent_dim=16, filters=8, hidden=64)
    train(config)
    samples = pd.read_csv(out / "samples.csv")
    faces = samples[(samples["label"] == "face") & (samples["split"] == "train")]
    by_tone = faces.groupby("skin_tone")["sampling_weight"].mean()
    assert by_tone["dark"] > 2 * by_tone["light"]
    density = faces.groupby("skin_tone")["latent_log_density"].mean()
    assert density["dark"] < density["light"]


def _debias() -> list[str]:
    return [str(Path(sys.executable).parent / "debias")]


def test_resume_after_sigkill_equals_uninterrupted(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "synth", n_faces=300, n_non_faces=300, size=32, seed=1)
    args = [
        "train",
        "--data",
        str(tmp_path / "synth"),
        "--epochs",
        "8",
        "--image-size",
        "32",
        *TINY_ARGS,
        "--seed",
        "5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(
        _debias() + args + ["--out", str(whole)], check=True, env=env, capture_output=True
    )

    proc = subprocess.Popen(
        _debias() + args + ["--out", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = cut / "metrics.jsonl"
    rng = np.random.default_rng()
    target_epoch = int(rng.integers(1, 4))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= target_epoch:
            time.sleep(float(rng.uniform(0, 0.2)))  # land somewhere inside the next epoch
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(cut / "checkpoint.pt")["epoch"]
    assert killed_at < 8, "the run finished before it could be killed"
    # Whatever the kill interrupted, the files in place are whole (writes are temp + rename).
    assert all(json.loads(line)["epoch"] <= killed_at for line in metrics.read_text().splitlines())

    done = subprocess.run(
        _debias() + ["train", "--resume", str(cut)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    a = load_checkpoint(whole / "checkpoint.pt")
    b = load_checkpoint(cut / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lines = [json.loads(x)["epoch"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(1, 9))


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto").type == "cuda"
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"only 1 CUDA device"):
        select_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto").type == "cpu"
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match=r"device='cuda' .*\(no cuda device available\)"):
        select_device("cuda")
    with pytest.raises(ConfigError, match=r"unknown device name"):
        select_device("gpu9")


def test_group_balanced_weights_equalise_cells_within_each_class() -> None:
    frame = pd.DataFrame({"race": ["w"] * 8 + ["b"] * 2 + ["w"] * 4 + ["b"] * 4 + [""] * 2})
    y = np.array([0] * 10 + [1] * 10)
    w = group_balanced_weights(frame, ["race"], y).numpy()
    assert w.sum() == pytest.approx(1.0)
    assert w[:10].sum() == pytest.approx(0.5) and w[10:].sum() == pytest.approx(0.5)
    assert w[:8].sum() == pytest.approx(w[8:10].sum())  # white and black cells of class 0 equal
    assert w[10:14].sum() == pytest.approx(w[14:18].sum()) == pytest.approx(w[18:].sum())


def test_oracle_run_reads_the_group_column(labels_dir: Path, tmp_path: Path) -> None:
    result = train(
        tiny_config(
            data=str(labels_dir),
            out=str(tmp_path / "o"),
            baseline=True,
            balance_groups=["skin"],
            epochs=1,
        )
    )
    assert result.metrics[0]["resampled"] and result.metrics[0]["ess_fraction"] < 1
    # samples.csv holds the weights the epoch drew by: each skin tone weighs the same per class
    samples = pd.read_csv(tmp_path / "o" / "samples.csv")
    train_rows = samples[samples["split"] == "train"]
    cells = train_rows.groupby(["label", "skin"])["sampling_weight"].sum()
    assert len(cells["a"]) == 2  # class a holds both skin tones (the rare dark ones too)
    for label in ("a", "b"):
        assert cells[label].to_numpy() == pytest.approx(cells[label].iloc[0])
        assert cells[label].sum() == pytest.approx((train_rows["label"] == label).mean())
    with pytest.raises(DataError, match=r"groups='tone' is not a column"):
        train(tiny_config(data=str(labels_dir), out=str(tmp_path / "p"), balance_groups=["tone"]))


def test_classes_the_vae_does_not_model_are_sampled_uniformly(
    class_folders: Path, tmp_path: Path
) -> None:
    # The latent histograms weight only the faces (error feedback weights every class).
    out = tmp_path / "r"
    train(tiny_config(data=str(class_folders), out=str(out), epochs=1, weighting="rarity"))
    samples = pd.read_csv(out / "samples.csv")
    rows = samples[samples["split"] == "train"]
    non_faces = rows.loc[rows["label"] == "not_face", "sampling_weight"]
    faces = rows.loc[rows["label"] == "face", "sampling_weight"]
    assert non_faces.nunique() == 1 and faces.nunique() > 1
    assert non_faces.sum() == pytest.approx(len(non_faces) / len(rows))
    assert faces.sum() == pytest.approx(len(faces) / len(rows))


def test_samples_csv_records_the_weights_the_last_epoch_drew_by(
    labels_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import debias.training as training

    drawn = []
    real = training.draw_epoch

    def spy(weights, train_idx, n, generator):  # noqa: ANN001, ANN202
        drawn.append(weights.clone())
        return real(weights, train_idx, n, generator)

    monkeypatch.setattr(training, "draw_epoch", spy)
    out = tmp_path / "run"
    train(tiny_config(data=str(labels_dir), out=str(out), epochs=3, weighting="rarity"))
    samples = pd.read_csv(out / "samples.csv")
    recorded = samples.loc[samples["split"] == "train", "sampling_weight"].to_numpy()
    assert len(drawn) == 3 and not torch.allclose(drawn[-1], drawn[-2])  # weights change
    np.testing.assert_allclose(recorded, drawn[-1].double().numpy(), rtol=1e-6)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(
    labels_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import debias.training as training
    from debias import DebiasError

    real, calls = training.dbvae_loss, {"n": 0}
    steps_per_epoch = 3  # 38 training images in batches of 16

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > steps_per_epoch:  # the second epoch's first step
            return dataclasses.replace(loss, total=loss.total * float("nan"))
        return loss

    monkeypatch.setattr(training, "dbvae_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(DebiasError, match=r"the loss became nan in epoch 2.*--resume"):
        train(tiny_config(data=str(labels_dir), out=str(out), epochs=3))
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "synth", n_faces=200, n_non_faces=200, size=32, seed=2)
    out = tmp_path / "run"
    # Far more epochs than can finish before the signal, even on a loaded machine.
    args = ["train", "--data", str(tmp_path / "synth"), "--epochs", "1000", "--image-size", "32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _debias() + args + [*TINY_ARGS, "--out", str(out)],
        env=env,
        # A test run started in the background by a non-interactive shell inherits an ignored
        # SIGINT, and Python then installs no handler: give the child the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip().splitlines() == [f"Interrupted. Resume with: debias train --resume {out}"]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] < 1000


def test_permission_denied_and_a_class_with_one_image(
    class_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from debias.data import decode as decode_module

    for extra in (class_folders / "not_face").glob("*.jpg"):
        if extra.name != "000.jpg":
            extra.unlink()  # not_face keeps one image
    real_open = Image.open

    def guarded(path, *args, **kwargs):
        if str(path).endswith("003.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(decode_module.Image, "open", guarded)
    data = load_data(class_folders, image_size=16)
    assert [(Path(p).name, r) for p, r in data.skipped] == [("003.png", "permission denied")]
    assert np.bincount(data.y).tolist() == [19, 1]
    result = train(tiny_config(data=str(class_folders), epochs=1, out=str(tmp_path / "run")))
    assert result.metrics[0]["epoch"] == 1
