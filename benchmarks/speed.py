"""Speed on one machine: training throughput against the lab's loop, FLOPs, resampler, memory.

Parts (all by default; ``--parts`` picks some):

- ``train``: ``debias train`` (the defaults, batch 32) against a faithful re-implementation of
  the MIT lab's training loop, on the same decoded ``utk-detect`` images, in the same process,
  alternating per seed. The lab's loop, as its notebook documents it: the same 4-conv DB-VAE
  (latent 100, 64 px; the bug-free model of ``debias.model``), batch 32, Adam 5e-4, before each
  epoch a full encoder pass over every training face (batches of 1024) and a numpy loop over the
  100 dimensions for the histograms (10 bins, smoothing 0.001, max rule), then per batch 16
  faces drawn by those probabilities (``np.random.choice`` without replacement) and 16 non-faces
  uniformly. Throughput is training images per second of epoch time (latent pass, histograms,
  sampling and steps; not decoding, validation or checkpoints), then test accuracy per race x
  gender cell of the faces and the false-positive rate on the test scene crops.
- ``flops``: FLOPs per image of a training step and of inference (torch's FlopCounterMode), this
  CPU's measured float32 / bfloat16 matrix-multiply peak, and the achieved FLOP/s of both loops.
- ``resample``: ``LatentHistogram`` weights for 10k, 100k and 1M samples x 100 dimensions (two
  classes; product and max rules; median of 3) against the lab's numpy loop.
- ``memory``: peak resident memory of ``debias train`` (1 epoch) on 10k and 100k synthetic
  images, against the size of the decoded uint8 cache.

    python benchmarks/speed.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sections import write_section  # benchmarks/ is on sys.path when run as a script
from torch.utils.flop_counter import FlopCounterMode

from debias import TrainConfig, train
from debias.config import ModelConfig
from debias.data import FaceData, load_data
from debias.encode import encode
from debias.model import DBVAE, dbvae_loss
from debias.resample import LatentHistogram

HERE = Path(__file__).parent
# debias train configurations compared with the lab's loop: TrainConfig overrides
DEBIAS = {
    "debias": {},
    "debias-b64": {"batch_size": 64},
    "debias-b256-bf16": {"batch_size": 256, "precision": "bfloat16"},
    # the step grows with the batch, as the lr must: 4x lr at 8x batch held utk-gender quality
    "debias-b256-bf16-lr": {"batch_size": 256, "precision": "bfloat16", "lr": 2e-3},
}
NAMES = {
    "lab": "the lab's loop (batch 32)",
    "debias": "`debias train` (defaults, batch 32)",
    "debias-b64": "`debias train --batch-size 64`",
    "debias-b256-bf16": "`debias train --batch-size 256 --precision bfloat16`",
    "debias-b256-bf16-lr": "`debias train --batch-size 256 --precision bfloat16 --lr 0.002`",
}
LAB_BATCH, LAB_LR, LAB_KL, LAB_BINS, LAB_SMOOTHING = 32, 5e-4, 5e-4, 10, 1e-3


# --- the lab's loop -------------------------------------------------------------------------


def lab_latent_mu(model: DBVAE, faces: np.ndarray, batch: int = 1024) -> np.ndarray:
    """The lab's get_latent_mu: encode every training face, in batches of 1024."""
    model.eval()
    mus = []
    with torch.no_grad():
        for start in range(0, len(faces), batch):
            x = torch.from_numpy(faces[start : start + batch]).float() / 255.0
            mus.append(model.encode(x)[1].numpy())
    model.train()
    return np.concatenate(mus)


def lab_probabilities(mu: np.ndarray) -> np.ndarray:
    """The lab's get_training_sample_probabilities: a numpy loop over dimensions, max rule."""
    p_all = np.zeros(len(mu))
    for i in range(mu.shape[1]):
        density, edges = np.histogram(mu[:, i], density=True, bins=LAB_BINS)
        edges[0], edges[-1] = -np.inf, np.inf
        idx = np.digitize(mu[:, i], edges)
        smoothed = density + LAB_SMOOTHING
        smoothed = smoothed / smoothed.sum()
        p = 1.0 / smoothed[idx - 1]
        p = p / p.sum()
        p_all = np.maximum(p, p_all)
    return p_all / p_all.sum()


def lab_train(data: FaceData, epochs: int, seed: int) -> tuple[DBVAE, float, int]:
    """Train with the lab's loop; return the model, epoch seconds and images trained on."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    face = data.classes.index("face")
    model = DBVAE(len(data.classes), ModelConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=LAB_LR)
    face_idx, other_idx = np.flatnonzero(data.y == face), np.flatnonzero(data.y != face)
    faces = data.images[face_idx]
    steps = len(data.y) // LAB_BATCH
    seconds = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        p_faces = lab_probabilities(lab_latent_mu(model, faces))
        for _ in range(steps):
            pos = rng.choice(face_idx, size=LAB_BATCH // 2, replace=False, p=p_faces)
            neg = rng.choice(other_idx, size=LAB_BATCH // 2, replace=False)
            idx = np.concatenate([pos, neg])
            x = torch.from_numpy(data.images[idx]).float() / 255.0
            y = torch.from_numpy(data.y[idx])
            out = model(x)
            loss = dbvae_loss(out, x, y, (y == face).float(), kl_weight=LAB_KL, recon="l1")
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
        seconds += time.perf_counter() - t0
    return model.eval(), seconds, epochs * steps * LAB_BATCH


def test_scores(model: DBVAE, test: FaceData) -> dict[str, Any]:
    """Recall per race x gender cell of the test faces, and the false-positive rate on crops."""
    _, probs = encode(model, test.images, np.arange(len(test.y)), device=torch.device("cpu"))
    correct = probs.argmax(1).numpy() == test.y
    is_face = test.y == test.classes.index("face")
    frame = test.frame[is_face]
    cells = (frame["race"] + " " + frame["gender"]).to_numpy()
    per_cell = {c: float(correct[is_face][cells == c].mean()) for c in sorted(set(cells))}
    return {
        "mean_cell": float(np.mean(list(per_cell.values()))),
        "worst_cell": float(min(per_cell.values())),
        "fpr": float(1 - correct[~is_face].mean()),
        "cells": per_cell,
    }


def part_train(args: argparse.Namespace) -> dict[str, Any]:
    data = load_data(labels=args.data / "utk-detect-train.csv", groups=["race", "gender"])
    test = load_data(labels=args.data / "utk-detect-test.csv", groups=["race", "gender"])
    rows = []
    for seed in range(args.seeds):
        # Alternate which goes first, so neither always runs on a cooler or warmer machine.
        order = ["lab", *DEBIAS] if seed % 2 == 0 else [*DEBIAS, "lab"]
        for method in order:
            if method == "lab":
                model, seconds, images = lab_train(data, args.epochs, seed)
            else:
                with tempfile.TemporaryDirectory() as run:
                    t0 = time.perf_counter()
                    result = train(
                        TrainConfig(
                            labels=str(args.data / "utk-detect-train.csv"),
                            groups=["race", "gender"],
                            epochs=args.epochs,
                            seed=seed,
                            device="cpu",
                            out=run,
                            **DEBIAS[method],
                        )
                    )
                    wall = time.perf_counter() - t0
                    n_train = json.loads((Path(run) / "config.json").read_text())["data"]["n_train"]
                model = result.model
                seconds = sum(r["seconds"] for r in result.metrics)
                images = args.epochs * n_train  # each epoch draws as many as there are
            row = {"method": method, "seed": seed, "seconds": seconds, "images": images}
            row["images_per_s"] = images / seconds
            if method != "lab":
                row["wall_seconds"] = wall
            row.update(test_scores(model, test))
            print(json.dumps({k: v for k, v in row.items() if k != "cells"}), flush=True)
            rows.append(row)
    return {"epochs": args.epochs, "n_train": len(data.y), "rows": rows}


# --- FLOPs and the hardware's peak ----------------------------------------------------------


def training_flops_per_image(
    decoded_share: float = 1.0, batch: int = LAB_BATCH
) -> tuple[float, float]:
    """FLOPs per image of one training step (forward + backward) and of inference.

    ``decoded_share`` of the batch goes through the decoder (debias decodes only faces).
    """
    model = DBVAE(2, ModelConfig())
    x = torch.rand(batch, 3, 64, 64)
    y = (torch.arange(batch) < round(decoded_share * batch)).long()
    decode = None if decoded_share == 1.0 else y > 0
    with FlopCounterMode(display=False) as counter:
        loss = dbvae_loss(model(x, decode=decode), x, y, y.float(), kl_weight=LAB_KL)
        loss.total.backward()
    train_flops = counter.get_total_flops() / batch
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode(x)
    return train_flops, counter.get_total_flops() / batch


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> float:
    """Best achieved FLOP/s of an n x n matrix multiply on this CPU."""
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def part_flops(args: argparse.Namespace) -> dict[str, Any]:
    train_flops, infer_flops = training_flops_per_image()
    labels = pd.read_csv(args.data / "utk-detect-train.csv")["label"]
    face_share = float((labels == "face").mean())  # debias keeps class shares when it resamples
    return {
        "face_share": face_share,
        "debias_train_flops_per_image": training_flops_per_image(face_share)[0],
        "train_flops_per_image": train_flops,
        "inference_flops_per_image": infer_flops,
        "peak_float32": matmul_peak(torch.float32),
        "peak_bfloat16": matmul_peak(torch.bfloat16),
    }


# --- the resampler --------------------------------------------------------------------------


def part_resample(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in (10_000, 100_000, 1_000_000):
        generator = torch.Generator().manual_seed(0)
        mu = torch.randn(n, 100, generator=generator) * torch.rand(100, generator=generator)
        y = (torch.rand(n, generator=generator) < 0.4).long()
        row: dict[str, Any] = {"n": n}
        for rule in ("product", "max"):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                LatentHistogram(combine=rule, ess_fraction=0.5).fit(mu, y)
                times.append(time.perf_counter() - t0)
            row[rule] = float(np.median(times))
        t0 = time.perf_counter()
        lab_probabilities(mu.numpy())  # one class, as the lab runs it on the faces
        row["lab_numpy_loop"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"rows": rows}


# --- memory ---------------------------------------------------------------------------------

MEMORY_CHILD = """
import json, resource, sys
from debias import TrainConfig, train
source = sys.argv[1]
where = {"labels": source} if source.endswith(".csv") else {"data": source}
train(TrainConfig(out=sys.argv[2], epochs=1, device="cpu", **where))
print(json.dumps({"max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _linked_copies(base: Path, copies: int) -> Path:
    """A labels CSV of ``copies`` x the base set under distinct names (hard links).

    Drawing 100k synthetic faces takes 15 minutes; links give as many distinct files to decode
    and hold, which is what memory depends on.
    """
    folder = base.parent / f"synthetic-{copies}x"
    labels = pd.read_csv(base / "labels.csv")
    if not (folder / "labels.csv").exists():
        frames = []
        for k in range(copies):
            copy = labels.copy()
            copy["path"] = [f"{k}/{p}" for p in labels["path"]]
            for rel, target in zip(copy["path"], labels["path"], strict=True):
                link = folder / rel
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.hardlink_to(base / target)
            frames.append(copy)
        pd.concat(frames).to_csv(folder / "labels.csv", index=False)
    return folder / "labels.csv"


def part_memory(args: argparse.Namespace) -> dict[str, Any]:
    from debias import write_synthetic

    rows = []
    base = Path(args.out) / "synthetic-10000"
    if not (base / "labels.csv").exists():
        write_synthetic(base, n_faces=5_000, n_non_faces=5_000, seed=0)
    for n in (10_000, 100_000):
        folder = base if n == 10_000 else _linked_copies(base, n // 10_000)
        with tempfile.TemporaryDirectory() as run:
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, str(folder), run],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds = time.perf_counter() - t0
        peak = json.loads(done.stdout.strip().splitlines()[-1])["max_rss_kib"] * 1024
        cache = n * 3 * 64 * 64  # decoded uint8 images
        row = {"n": n, "peak_bytes": peak, "cache_bytes": cache, "seconds": seconds}
        row["beyond_cache_bytes"] = peak - cache
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"rows": rows}


# --- report ---------------------------------------------------------------------------------


def _ms(values: list[float], fmt: str = ".3f") -> str:
    v = np.asarray(values, dtype=float)
    spread = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():{fmt}} ± {spread:{fmt}}"


def report(results: dict[str, Any]) -> None:
    lines = [
        "## Speed on one machine (issue 8)",
        "",
        "Made by "
        + "; ".join(
            f"`{c}` ({', '.join(p for p in PARTS if results.get(p, {}).get('command') == c)})"
            for c in dict.fromkeys(r["command"] for r in results.values())
        )
        + f" — {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU only.",
    ]
    if "train" in results:
        t = results["train"]
        by = {m: [r for r in t["rows"] if r["method"] == m] for m in NAMES}
        ratios = {
            m: [
                d["images_per_s"] / lab["images_per_s"]
                for d, lab in zip(by[m], by["lab"], strict=True)
            ]
            for m in DEBIAS
        }
        lines += [
            "",
            f"### Training throughput: `debias train` vs the lab's loop (utk-detect, "
            f"{t['n_train']} training images, {t['epochs']} epochs, {len(by['lab'])} seeds, "
            "alternating)",
            "",
            "| loop | images/s | speed-up per seed | test mean cell | test worst cell | "
            "test FPR (scene crops) |",
            "|---|---|---|---|---|---|",
        ]
        for method, rows in by.items():
            speedup = ", ".join(f"{x:.2f}x" for x in ratios.get(method, [1.0] * len(rows)))
            lines.append(
                f"| {NAMES[method]} | {_ms([r['images_per_s'] for r in rows], '.0f')} | "
                f"{speedup} | "
                f"{_ms([r['mean_cell'] for r in rows])} | {_ms([r['worst_cell'] for r in rows])} "
                f"| {_ms([r['fpr'] for r in rows])} |"
            )
        walls = [r["wall_seconds"] for r in by["debias"]]
        lines += [
            "",
            "Mean speed-up: "
            + ", ".join(f"{NAMES[m]} {np.mean(r):.2f}x" for m, r in ratios.items())
            + ". Images/s counts the epoch time: latent pass, histograms, sampling and steps. "
            "`debias train`'s whole call, with decoding, validation, "
            f"checkpoints and samples.csv, took {_ms(walls, '.0f')} s. All use the same model; "
            "`debias train` also augments (flip, colour, shift), holds out 10% for validation "
            "and trains on the other 90%.",
        ]
    if "flops" in results:
        f = results["flops"]
        lines += [
            "",
            "### FLOPs and the hardware limit",
            "",
            f"A training step costs {f['train_flops_per_image'] / 1e6:.1f} MFLOP per image "
            f"(forward and backward of encoder and decoder), inference "
            f"{f['inference_flops_per_image'] / 1e6:.1f} MFLOP (torch's FlopCounterMode). This "
            f"CPU's measured matrix-multiply peak: {f['peak_float32'] / 1e9:.0f} GFLOP/s float32, "
            f"{f['peak_bfloat16'] / 1e9:.0f} GFLOP/s bfloat16 (best of 20 2048x2048 products), "
            f"so the float32 ceiling is "
            f"{f['peak_float32'] / f['train_flops_per_image']:.0f} training images/s.",
        ]
        if "train" in results:
            lines += [
                "",
                f"debias decodes only the faces ({f['face_share']:.0%} of utk-detect's training "
                f"images): {f['debias_train_flops_per_image'] / 1e6:.1f} MFLOP per image. "
                "Achieved:",
            ]
            for method, name in NAMES.items():
                rows = [r for r in results["train"]["rows"] if r["method"] == method]
                flops = f[
                    "train_flops_per_image" if method == "lab" else "debias_train_flops_per_image"
                ]
                rate = np.mean([r["images_per_s"] for r in rows])
                achieved = rate * flops
                bf16 = DEBIAS.get(method, {}).get("precision") == "bfloat16"
                peak = f"peak_{'bfloat16' if bf16 else 'float32'}"
                lines.append(
                    f"- {name}: {rate:.0f} images/s x {flops / 1e6:.1f} MFLOP = "
                    f"{achieved / 1e9:.1f} GFLOP/s, {achieved / f[peak]:.0%} of the "
                    f"{peak.removeprefix('peak_')} peak."
                )
    if "resample" in results:
        lines += [
            "",
            "### Resampler: `LatentHistogram.fit` (weights and densities), 100 dimensions",
            "",
            "| samples | product rule (default) | max rule | the lab's numpy loop |",
            "|---|---|---|---|",
        ]
        for r in results["resample"]["rows"]:
            lines.append(
                f"| {r['n']:,} | {r['product']:.3f} s | {r['max']:.3f} s | "
                f"{r['lab_numpy_loop']:.3f} s |"
            )
        lines += ["", "Median of 3; two classes (40/60) with the ESS temperature on."]
    if "memory" in results:
        lines += [
            "",
            "### Peak memory of `debias train` (1 epoch, synthetic 64 px images)",
            "",
            "| images | peak resident | decoded uint8 cache | beyond the cache | seconds |",
            "|---|---|---|---|---|",
        ]
        for r in results["memory"]["rows"]:
            lines.append(
                f"| {r['n']:,} | {r['peak_bytes'] / 2**20:.0f} MiB | "
                f"{r['cache_bytes'] / 2**20:.0f} MiB | {r['beyond_cache_bytes'] / 2**20:.0f} MiB "
                f"| {r['seconds']:.0f} |"
            )
        small, large = results["memory"]["rows"][0], results["memory"]["rows"][-1]
        per_image = (large["beyond_cache_bytes"] - small["beyond_cache_bytes"]) / (
            large["n"] - small["n"]
        )
        lines += [
            "",
            f"Beyond the cache, memory grows by {per_image / 1024:.1f} KiB per image (the "
            "cache itself holds 12 KiB): the latent means, sampling weights and the table of "
            "paths, labels and groups. The rest (about 1 GiB) is the Python process, torch and "
            "the model. Above 4 GiB the cache is a memory-mapped file (`cache.npy` in the run "
            "folder) rather than RAM. The 100k set is the 10k set hard-linked ten times under "
            "distinct names: as many files to decode and hold, without drawing 100k faces.",
        ]
    write_section(HERE / "RESULTS.md", "speed", "\n".join(lines))


PARTS = {"train": part_train, "flops": part_flops, "resample": part_resample, "memory": part_memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "out" / "speed"))
    parser.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md only")
    args = parser.parse_args()
    if "train" in args.parts and not (args.data / "utk-detect-train.csv").is_file():
        sys.exit(f"{args.data}: utk-detect-train.csv not found. Pass the shared data folder.")
    torch.set_num_threads(2)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    saved = HERE / "speed.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    command = "python benchmarks/speed.py " + shlex.join(sys.argv[1:])
    for part in [] if args.report_only else args.parts:
        results[part] = PARTS[part](args)
        results[part]["command"] = command
        saved.write_text(json.dumps(results, indent=2) + "\n")
    report(results)


if __name__ == "__main__":
    main()
