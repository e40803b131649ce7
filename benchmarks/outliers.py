"""Outlier detection on real faces: AUROC per outlier type and the realised false-flag rate.

For each seed: train the default DB-VAE on a task's training faces (or reuse the run), fit
``LatentOutlierDetector`` on its training faces and calibrate it on its validation faces, then
score the task's held-out test faces (inliers) against
- scene crops from test-pool scenes (non-faces);
- test faces corrupted with Gaussian noise, Gaussian blur, an occluding square and JPEG
  compression, each at three severities;
- constant images (one random colour) and uniform-noise images.
Reported per type: AUROC of the combined score, of the reconstruction error alone (what
alibi-detect's OutlierVAE and pyod's VAE score), and of each component; plus the false-flag rate on
held-out faces at the calibrated threshold against its target, twice: calibrated on the run's
validation faces (the default; as White-skewed as training) and calibrated on 1,000 other held-out
test faces (``--calibration``: faces drawn like the screened ones), both measured on the same
remaining test faces; the latter, pooled and per race, also averaged over DRAWS random draws of
those 1,000 faces.

    python benchmarks/outliers.py --data ../shared/data --task utk-detect --seeds 3 --epochs 6
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter
from sections import write_section  # benchmarks/ is on sys.path when run as a script
from sklearn.metrics import roc_auc_score

from debias import TrainConfig, resume, train
from debias.data import decode_images
from debias.jobs.outliers import OutlierConfig, fit_detector
from debias.outliers import FACE_EVIDENCE

HERE = Path(__file__).parent
SIZE = 64
SEVERITIES = {
    "noise": (0.04, 0.08, 0.16),  # Gaussian noise std, fraction of the pixel range
    "blur": (0.5, 1.0, 2.0),  # Gaussian blur radius in pixels at 64 px
    "occlusion": (0.1, 0.25, 0.4),  # share of the image covered by a grey square
    "jpeg": (30, 15, 5),  # JPEG quality
}
N_CORRUPT = 1000  # faces per corruption and severity
N_SYNTHETIC = 500  # constant and uniform-noise images each
N_DEPLOY_CALIBRATION = 1000  # held-out faces that calibrate the deployment-matched detector
CLUSTERS = 8  # latent clusters of the label-free calibration option (the audit's slice count)
DRAWS = 20  # random draws of the calibration faces the realised rates are also averaged over


def corrupt(images: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """Corrupted copies of uint8 images ``(N, 3, S, S)``."""
    if kind == "noise":
        noisy = images.astype(np.float64) + rng.normal(0, level * 255, images.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    out = np.empty_like(images)
    for i, arr in enumerate(images):
        if kind == "occlusion":
            side = int(round(np.sqrt(level) * SIZE))
            y, x = rng.integers(0, SIZE - side + 1, 2)
            arr = arr.copy()
            arr[:, y : y + side, x : x + side] = 128
            out[i] = arr
            continue
        img = Image.fromarray(arr.transpose(1, 2, 0))
        if kind == "blur":
            img = img.filter(ImageFilter.GaussianBlur(level))
        else:
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=int(level))
            img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        out[i] = np.asarray(img).transpose(2, 0, 1)
    return out


def outlier_sets(data: Path, task: str, faces: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    test = pd.read_csv(data / "utk-detect-test.csv", keep_default_na=False)
    scenes = [str(data / p) for p in test.loc[test["label"] == "not_face", "path"]]
    sets = {"scene crops": decode_images(scenes, SIZE)[0]}
    pick = faces[rng.choice(len(faces), min(N_CORRUPT, len(faces)), replace=False)]
    for kind, levels in SEVERITIES.items():
        for s, level in enumerate(levels, start=1):
            sets[f"{kind} s{s}"] = corrupt(pick, kind, level, rng)
    colours = rng.integers(0, 256, (N_SYNTHETIC, 3, 1, 1), dtype=np.uint8)
    sets["constant"] = np.broadcast_to(colours, (N_SYNTHETIC, 3, SIZE, SIZE)).copy()
    sets["uniform noise"] = rng.integers(0, 256, (N_SYNTHETIC, 3, SIZE, SIZE), dtype=np.uint8)
    return sets


def rate_by_race(flagged: np.ndarray, races: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """Share of each race's faces flagged, ``flagged`` being the flags of ``races[rows]``."""
    return {r: float(flagged[races[rows] == r].mean()) for r in sorted(set(races))}


def run_seed(args: argparse.Namespace, seed: int, command: str) -> dict:
    out = Path(args.out)
    result_path = out / "results" / f"{args.task}-seed{seed}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run = out / "runs" / f"{args.task}-seed{seed}"
    t0 = time.perf_counter()
    if not (run / "density.pt").exists() and (run / "config.json").exists():
        resume(run, device="cpu")  # a benchmark stopped while training: finish that run
    elif not (run / "density.pt").exists():
        train(
            TrainConfig(
                labels=str(args.data / f"{args.task}-train.csv"),
                groups=["race", "gender"],
                epochs=args.epochs,
                seed=seed,
                device="cpu",
                out=str(run),
            )
        )
    train_s = time.perf_counter() - t0
    detector = fit_detector(run, OutlierConfig(model=str(run), data=".", device="cpu"))
    test = pd.read_csv(args.data / f"{args.task}-test.csv", keep_default_na=False)
    faces_rows = test[test["label"] != "not_face"]
    faces = decode_images([str(args.data / p) for p in faces_rows["path"]], SIZE)[0]
    inlier = detector.score_components(faces)
    inlier_table = detector.table_from_scores(inlier)
    record = {
        "task": args.task,
        "seed": seed,
        "epochs": args.epochs,
        "command": command,
        "train_s": train_s,
        "calibration_size": detector.n_calibration_,
        "components": detector.components_,
        "target_false_flag_rate": detector.contamination,
        "false_flag_rate": float(inlier_table["is_outlier"].mean()),
        "rare_rate": float(inlier_table["is_rare"].mean()),
        "n_inliers": len(faces),
        "types": {},
    }
    races = faces_rows["race"].to_numpy()
    # Calibration faces for the deployment-matched detector; both rates are measured on the rest.
    deploy = np.zeros(len(faces), bool)
    deploy[np.random.default_rng(seed).permutation(len(faces))[:N_DEPLOY_CALIBRATION]] = True
    calibration_csv = out / "results" / f"{args.task}-seed{seed}-calibration.csv"
    calibration_csv.parent.mkdir(parents=True, exist_ok=True)
    calibration_paths = [str((args.data / p).resolve()) for p in faces_rows["path"][deploy]]
    pd.DataFrame({"path": calibration_paths, "race": races[deploy]}).to_csv(
        calibration_csv, index=False
    )
    base = OutlierConfig(model=str(run), device="cpu")
    matched = fit_detector(run, dataclasses.replace(base, calibration=str(calibration_csv)))
    rest = ~deploy
    held_out = {c: v[rest] for c, v in inlier.items()}
    # Group-conditional (Mondrian): each race calibrated on its own deployment faces, and each
    # screened face judged by its race's threshold.
    by_race = fit_detector(
        run,
        dataclasses.replace(base, calibration=str(calibration_csv), calibration_groups="race"),
    )
    flags = {
        "validation": inlier_table["is_outlier"].to_numpy()[rest],
        "deployment": matched.table_from_scores(held_out)["is_outlier"].to_numpy(),
        "deployment by race": by_race.table_from_scores(held_out, races[rest])[
            "is_outlier"
        ].to_numpy(),
    }
    # Label-free: per k-means cluster of the latent means, on the validation faces and on the
    # deployment faces (the clusters need the latents, so these score the faces again).
    for name, calibration in (("validation", None), ("deployment", str(calibration_csv))):
        clustered = fit_detector(
            run,
            dataclasses.replace(base, calibration=calibration, calibration_clusters=CLUSTERS),
        )
        table = clustered.table_from_scores(
            {c: v[rest] for c, v in clustered.score_components(faces).items()}
        )
        flags[f"{name} by cluster"] = table["is_outlier"].to_numpy()
    # One draw of calibration faces settles a race's realised rate only to within a few points
    # (a few hundred faces on each side); the conformal guarantee is about the average over draws.
    # Calibrate again on DRAWS other random draws of the same size, without scoring faces again.
    for name, groups in (("deployment", None), ("deployment by race", races)):
        draws = []
        for draw in range(DRAWS):
            pick = np.zeros(len(faces), bool)
            pick[
                np.random.default_rng([seed, draw]).permutation(len(faces))[:N_DEPLOY_CALIBRATION]
            ] = True
            redrawn = copy.copy(matched).fit_calibration(
                {c: v[pick] for c, v in inlier.items()}, None if groups is None else groups[pick]
            )
            flagged = redrawn.table_from_scores(
                {c: v[~pick] for c, v in inlier.items()}, None if groups is None else groups[~pick]
            )["is_outlier"].to_numpy()
            draws.append({"all": float(flagged.mean()), **rate_by_race(flagged, races, ~pick)})
        record[f"false_flag_rate_{name}_draws"] = draws
    record["n_ffr"] = int(rest.sum())
    for name, flagged in flags.items():
        record[f"false_flag_rate_{name}"] = float(flagged.mean())
        record[f"false_flag_rate_{name}_by_race"] = rate_by_race(flagged, races, rest)
    other = "fisher" if detector.combine == "min" else "min"
    record["combine"], record["other_combine"] = detector.combine, other
    combined_in = detector.combine_scores(inlier)
    detector.combine = other
    other_in = detector.combine_scores(inlier)
    detector.combine = record["combine"]
    for name, images in outlier_sets(args.data, args.task, faces, seed).items():
        scores = detector.score_components(images)
        y = np.r_[np.zeros(len(faces)), np.ones(len(images))]
        auroc = {c: roc_auc_score(y, np.r_[inlier[c], scores[c]]) for c in scores}
        auroc["combined"] = roc_auc_score(y, np.r_[combined_in, detector.combine_scores(scores)])
        detector.combine = other
        auroc[other] = roc_auc_score(y, np.r_[other_in, detector.combine_scores(scores)])
        detector.combine = record["combine"]
        flagged = detector.table_from_scores(scores)["is_outlier"].mean()
        record["types"][name] = {"n": len(images), "auroc": auroc, "flagged": float(flagged)}
        print(
            f"seed {seed} {name}: combined {auroc['combined']:.3f} "
            f"reconstruction {auroc['reconstruction']:.3f}",
            flush=True,
        )
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(record, indent=2))
    return record


def report(records: list[dict]) -> None:
    def ms(values: list[float]) -> str:
        v = np.asarray(values)
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"

    first = records[0]
    types = list(first["types"])
    other = first["other_combine"]
    skip = ("combined", other)
    components = [c for c in first["types"][types[0]]["auroc"] if c not in skip]
    evidence = [c for c in first["components"] if c in FACE_EVIDENCE]
    folded = f"; {', '.join(evidence)} Fisher-combined into one p-value first" if evidence else ""
    lines = [
        f"## Outlier detection on real faces (issue 5): {first['task']}",
        "",
        f"`{first['command']}` — {len(records)} seeds (a run trained per seed, "
        f"{first['epochs']} epochs), {platform.machine()}. Inliers: the task's "
        f"{first['n_inliers']} held-out test faces. AUROC with outliers as the positive class, "
        "mean ± std over seeds. *reconstruction* alone is the baseline (what alibi-detect's "
        f"OutlierVAE and pyod's VAE score); *combined* is the detector (the {first['combine']} "
        f"rule over {', '.join(first['components'])}{folded}, calibrated on the validation "
        "faces), "
        f"*{other}* the same components combined by the other rule; the component columns are "
        "each raw score alone (upper tail); *density* is the rarity score, not combined.",
        "",
        f"| outlier type | n | combined | {other} | reconstruction only | "
        + " | ".join(c for c in components if c != "reconstruction")
        + " | flagged at threshold |",
        "|---|---|---|---|---|" + "---|" * (len(components) - 1) + "---|",
    ]
    for name in types:
        rows = [r["types"][name] for r in records]
        cells = [ms([row["auroc"][c] for row in rows]) for c in components if c != "reconstruction"]
        lines.append(
            f"| {name} | {rows[0]['n']} | {ms([row['auroc']['combined'] for row in rows])} | "
            f"{ms([row['auroc'][other] for row in rows])} | "
            f"{ms([row['auroc']['reconstruction'] for row in rows])} | "
            + " | ".join(cells)
            + f" | {ms([row['flagged'] for row in rows])} |"
        )
    races = list(first["false_flag_rate_validation_by_race"])
    lines += [
        "",
        f"False-flag rate at the calibrated threshold (target {first['target_false_flag_rate']}) "
        f"on {first['n_ffr']} held-out test faces, by what the detector was calibrated on. The "
        "run's validation faces are drawn like its training faces"
        + (
            " (93% White); the test faces are not (47% White), so only calibration on other test "
            "faces is exchangeable with them."
            if first["task"] == "utk-detect"
            else "; the other calibration sets are drawn like the screened test faces."
        )
        + " Per race: mean ± std over seeds of the rate among that race's held-out faces; "
        "*by race* calibrates each race on its own faces and judges each face by its race's "
        "threshold; *per latent cluster* does the same with k-means clusters of the latent means "
        "(no labels).",
        "",
        "| calibrated on | n | false-flag rate | per seed | " + " | ".join(races) + " |",
        "|---|---|---|---|" + "---|" * len(races),
    ]
    sizes = {
        "validation": first["calibration_size"],
        "deployment": N_DEPLOY_CALIBRATION,
        "deployment by race": N_DEPLOY_CALIBRATION,
        "validation by cluster": first["calibration_size"],
        "deployment by cluster": N_DEPLOY_CALIBRATION,
    }
    titles = {
        "validation": "the run's validation faces (default)",
        "deployment": "other held-out test faces (`--calibration`)",
        "deployment by race": "the same, each race on its own (`--calibration-groups race`)",
        "validation by cluster": f"validation faces, per latent cluster "
        f"(`--calibration-clusters {CLUSTERS}`)",
        "deployment by cluster": "other held-out test faces, per latent cluster",
    }
    for name, title in titles.items():
        if f"false_flag_rate_{name}" not in first:
            continue
        ffr = [r[f"false_flag_rate_{name}"] for r in records]
        by_race = [
            ms([r[f"false_flag_rate_{name}_by_race"][race] for r in records]) for race in races
        ]
        lines.append(
            f"| {title} | {sizes[name]} | {ms(ffr)} | {', '.join(f'{v:.3f}' for v in ffr)} | "
            + " | ".join(by_race)
            + " |"
        )
    if "false_flag_rate_deployment_draws" in first:
        lines += [
            "",
            f"The same two calibrations on faces drawn like the screened ones, averaged over "
            f"{DRAWS} random draws of the {N_DEPLOY_CALIBRATION} calibration faces per seed (the "
            "rate is measured on the rest each time; one draw settles a race's rate only to "
            "within a few points). Mean ± std over seeds of each seed's average; in brackets "
            "the lowest and highest single draw.",
            "",
            "| calibrated on | false-flag rate | " + " | ".join(races) + " |",
            "|---|---|" + "---|" * len(races),
        ]
        for name in ("deployment", "deployment by race"):
            cells = []
            for column in ["all", *races]:
                per_seed = [
                    [d[column] for d in r[f"false_flag_rate_{name}_draws"]] for r in records
                ]
                every = np.concatenate(per_seed)
                cells.append(
                    f"{ms([np.mean(v) for v in per_seed])} [{every.min():.3f}, {every.max():.3f}]"
                )
            lines.append(f"| {titles[name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Share of held-out faces flagged rare: {ms([r['rare_rate'] for r in records])}.",
    ]
    (HERE / "outliers.json").write_text(json.dumps(records, indent=2) + "\n")
    write_section(HERE / "RESULTS.md", f"outliers-{first['task']}", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument(
        "--task", default="utk-detect", choices=["utk-detect", "utk-gender", "utk-age"]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default=str(HERE / "out" / "outliers"))
    args = parser.parse_args()
    if not (args.data / f"{args.task}-train.csv").is_file():
        sys.exit(f"{args.data}: {args.task}-train.csv not found. Pass the shared data folder.")
    torch.set_num_threads(2)
    command = "python benchmarks/outliers.py " + shlex.join(sys.argv[1:])
    records = [run_seed(args, seed, command) for seed in range(args.seeds)]
    report(records)


if __name__ == "__main__":
    main()
