"""UTKFace benchmark: plain classifier vs oracle vs DB-VAE variants, over seeds, on real faces.

Usage (from the project root; the data folder is ../shared/data on the project's machines):

    python benchmarks/utk.py --data ../shared/data --seeds 5 --epochs 12

Each (task, method, seed) trains through ``debias.train`` into ``--out``/runs, is scored on the
task's test CSV and leaves one JSON in ``--out``/results (a rerun skips finished ones). Then
``benchmarks/RESULTS.md`` and ``benchmarks/results.json`` are written from all results present.
Group labels (race, gender) are read only for scoring, and by the oracle's resampling.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sections import write_section  # benchmarks/ is on sys.path when run as a script

TASKS = {
    "utk-gender": ("utk-gender-train.csv", "utk-gender-test.csv"),
    "utk-detect": ("utk-detect-train.csv", "utk-detect-test.csv"),
    "utk-age": ("utk-age-train.csv", "utk-age-test.csv"),
}
# The cells each task is judged on; the oracle balances the same columns (it reads them).
CELLS = {
    "utk-gender": ["race", "gender"],
    "utk-detect": ["race", "gender"],
    "utk-age": ["label", "gender"],  # age x gender: young men and old women break the shortcut
}
ORACLE_GROUPS = {"utk-gender": ["race", "gender"], "utk-detect": ["race", "gender"]}
ORACLE_GROUPS["utk-age"] = ["gender"]  # within each age class: the shared data README's oracle


@dataclass
class Method:
    """A benchmarked method: TrainConfig fields that differ from the defaults."""

    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


# The lab's recipe pins every resampling field, so changing the project's defaults never
# changes what "lab" means.
LAB = dict(
    combine="max",
    bins=10,
    alpha=1e-3,
    ess_fraction=None,
    warmup_epochs=0,
    kl_weight=5e-4,
    recon="l1",
    batch_size=32,
    lr=5e-4,
    lr_schedule="constant",
)
METHODS = {
    "erm": Method("plain classifier (ERM, --baseline)", dict(baseline=True)),
    "oracle": Method(
        "resample by the true groups within each class (reads group labels): race x gender, "
        "gender for utk-age",
        dict(baseline=True, balance_groups=["<task's groups>"]),
    ),
    "lab": Method("MIT lab DB-VAE recipe: per-dim max, 10 bins, alpha 1e-3", LAB),
    "product": Method(
        "paper's product rule in log space, alpha 1e-3", {**LAB, "combine": "product"}
    ),
    "lab-cosine": Method(
        "the lab recipe at the project's cosine schedule (isolates the rule)",
        {**LAB, "lr_schedule": "cosine"},
    ),
    "default": Method("the project's default TrainConfig", {}),
    "rarity": Method("the DB-VAE's latent histograms alone", dict(weighting="rarity")),
    "mixture": Method(
        "a joint latent density alone: per class, Gaussian mixtures on the whitened top "
        "principal axes of the latent means (debias/mixture.py)",
        dict(weighting="mixture"),
    ),
    "errors+mixture": Method(
        "the default with the joint density in place of the histograms: error feedback at a "
        "quarter of each class's draws, the mixture spreading the weight within both parts",
        dict(weighting="errors+mixture", error_share=0.25),
    ),
    "worst-class": Method(
        "the default, keeping the epoch with the best worst-class validation accuracy "
        "(--select worst-class; no group labels)",
        dict(select="worst-class"),
    ),
    "worst-cluster": Method(
        "the default, keeping the epoch with the best worst accuracy over 4 latent clusters of "
        "each class's validation faces (--select worst-cluster; no group labels)",
        dict(select="worst-cluster"),
    ),
    # The error methods pin their share: when the default's share fell from 0.5 to 0.25
    # (9177122), an unpinned "errors+rarity" silently became "default" (same runs, same numbers).
    "errors": Method(
        "error feedback: what the model gets wrong after 3 plain epochs gets half of its "
        "class's draws",
        dict(weighting="errors", error_share=0.5),
    ),
    "errors+rarity": Method(
        "error feedback at half of each class's draws, with latent rarity spreading the weight "
        "within both parts",
        dict(weighting="errors+rarity", error_share=0.5),
    ),
    "jtt": Method(
        "Just Train Twice (Liu et al. 2021), two stages: a plain model trained JTT_EPOCHS "
        "epochs, then a new plain model trained from scratch with its training errors drawn "
        "JTT_UPWEIGHT times as often; settings from JTT's grid, chosen without group labels",
        dict(baseline=True),
    ),
}
# JTT's identification epochs and upweight: a sixth of the budget (JTT's CelebA setting is 1 of
# 50 epochs) and 20, the smallest upweight of JTT's grid {20, 50, 100}. No group label is read.
JTT_EPOCHS = 2
JTT_UPWEIGHT = 20.0


def _cells(frame: Any, task: str) -> Any:
    a, b = CELLS[task]
    return frame[a].astype(str) + " " + frame[b].astype(str)


def run_one(
    data_dir: str,
    task: str,
    method: str,
    seed: int,
    epochs: int,
    out: str,
    threads: int,
    command: str,
) -> dict[str, Any]:
    """Train one method on one task with one seed and score it on the test split."""
    import torch

    torch.set_num_threads(threads)
    from debias import ModelConfig, TrainConfig, load_data, train
    from debias.encode import encode

    train_csv, test_csv = (Path(data_dir) / name for name in TASKS[task])
    run_dir = Path(out) / "runs" / task / method / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = dict(METHODS[method].overrides)
    if overrides.get("balance_groups"):
        overrides["balance_groups"] = ORACLE_GROUPS[task]
    # A variant may change the network too (backbone="resnet18"): ModelConfig's fields go there.
    model_fields = {f.name for f in fields(ModelConfig)}
    model = ModelConfig(**{k: overrides.pop(k) for k in list(overrides) if k in model_fields})
    config = TrainConfig(
        labels=str(train_csv),
        out=str(run_dir),
        epochs=epochs,
        seed=seed,
        groups=["race", "gender"],
        model=model,
        **overrides,
    )
    t0 = time.perf_counter()
    result = _jtt(config, run_dir) if method == "jtt" else train(config)
    wall = time.perf_counter() - t0

    test = load_data(labels=test_csv, groups=["race", "gender"], image_size=config.model.image_size)
    _, probs = encode(result.model, test.images, np.arange(len(test)), device=torch.device("cpu"))
    pred = np.array(result.data.classes)[probs.argmax(1).numpy()]
    correct = pred == test.frame["label"].to_numpy()
    faces = test.frame["race"].astype(str) != ""
    cells = _cells(test.frame[faces], task)
    per_cell = {c: float(correct[faces][cells == c].mean()) for c in sorted(set(cells))}
    acc = np.array(list(per_cell.values()))
    resampled = [m for m in result.metrics if m["resampled"]]
    train_seconds = sum(m["seconds"] for m in result.metrics)
    record = {
        "task": task,
        "method": method,
        "seed": seed,
        "epochs": epochs,
        "command": command,
        "config": config.to_dict(),
        "cells": per_cell,
        "mean": float(acc.mean()),
        "worst": float(acc.min()),
        "variance": float(np.var(acc * 100)),
        "fpr": float(1 - correct[~faces].mean()) if (~faces).any() else None,
        "ess_fraction": float(np.mean([m["ess_fraction"] for m in resampled]))
        if resampled
        else 1.0,
        "wall_seconds": wall,
        # Training images per second, the per-epoch latent pass included.
        "images_per_s": sum(m["images_per_s"] * m["seconds"] for m in result.metrics)
        / train_seconds,
        "val_acc": result.metrics[-1]["val_acc"],
        # the epoch whose weights were scored (--select), and every epoch's selection scores
        "kept_epoch": result.metrics[-1].get("kept_epoch", epochs),
        "val_worst_class": [m.get("val_worst_class") for m in result.metrics],
        "val_worst_cluster": [m.get("val_worst_cluster") for m in result.metrics],
        "skipped": len(result.data.skipped),
    }
    shutil.rmtree(run_dir, ignore_errors=True)  # the checkpoint is 11 MB; the numbers are kept
    return record


def _jtt(config: Any, run_dir: Path) -> Any:
    """JTT: a plain identification model, then a fresh plain model with its errors upweighted."""
    import dataclasses

    import torch

    import debias.training as training
    from debias import train
    from debias.encode import encode
    from debias.weighting import EpochWeights

    first = train(
        dataclasses.replace(config, epochs=JTT_EPOCHS, out=str(run_dir.with_name("jtt-id")))
    )
    rows = training.split_indices(first.data, config.val_fraction, config.seed)[0]
    _, probs = encode(first.model, first.data.images, rows, device=torch.device("cpu"))
    wrong = torch.from_numpy(probs.argmax(1).numpy() != first.data.y[rows])
    fixed = torch.where(wrong, JTT_UPWEIGHT, 1.0)

    class Upweighted:  # a method of the benchmark's own, passed as any method is
        def epoch_weights(self, view: Any) -> EpochWeights:
            return EpochWeights(fixed / fixed.sum(), True)

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            pass

    try:
        return train(config, method=Upweighted())
    finally:
        shutil.rmtree(run_dir.with_name("jtt-id"), ignore_errors=True)


def _summary(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"


def _paired(a: list[float], b: list[float]) -> str:
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return f"{d.mean():+.3f}"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    mark = " *" if abs(d.mean()) > half else ""
    return f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]{mark}"


def write_report(
    out: Path, command: str, target: Path, section: str = "utk", title: str = "issue 3"
) -> None:
    """Aggregate every result JSON under ``out`` into a section of ``target``/RESULTS.md."""
    records = [json.loads(p.read_text()) for p in sorted((out / "results").rglob("*.json"))]
    commands = sorted({r.get("command", command) for r in records})
    lines = [
        f"## Debiasing on real faces ({title})",
        "",
        "Produced by (each result records its command):",
        "",
        "```",
        *commands,
        "```",
        "",
        "Mean ± std over seeds. Cells are race x gender on the test split (age x gender for "
        "utk-age); variance is across "
        "cells in percent squared (the paper's bias measure). Paired differences are against "
        "ERM with the same seed: mean [95% t-interval]; * marks an interval that excludes 0.",
        "",
    ]
    summary: dict[str, Any] = {"commands": commands, "tasks": {}}
    for task in TASKS:
        rows = [r for r in records if r["task"] == task]
        if not rows:
            continue
        erm = {r["seed"]: r for r in rows if r["method"] == "erm"}
        lines += [
            f"## {task}",
            "",
            f"Epochs: {sorted({r['epochs'] for r in rows})}.",
            "",
            "| method | seeds | mean | worst cell | variance | FPR non-face | ESS | s/run "
            "| img/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        summary["tasks"][task] = {}
        diffs = []
        for method in METHODS:
            rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
            if not rs:
                continue
            fpr = _summary([r["fpr"] for r in rs]) if rs[0]["fpr"] is not None else "-"
            lines.append(
                f"| {method} | {len(rs)} | {_summary([r['mean'] for r in rs])} | "
                f"{_summary([r['worst'] for r in rs])} | "
                f"{_summary([r['variance'] for r in rs]).replace('.000', '')} | {fpr} | "
                f"{np.mean([r['ess_fraction'] for r in rs]):.2f} | "
                f"{np.mean([r['wall_seconds'] for r in rs]):.0f} | "
                f"{np.mean([r['images_per_s'] for r in rs]):.0f} |"
            )
            summary["tasks"][task][method] = {
                key: {
                    "mean": float(np.mean([r[key] for r in rs])),
                    "std": float(np.std([r[key] for r in rs], ddof=1)) if len(rs) > 1 else 0.0,
                }
                for key in (
                    "mean",
                    "worst",
                    "variance",
                    "ess_fraction",
                    "wall_seconds",
                    "images_per_s",
                )
                + (("fpr",) if rs[0]["fpr"] is not None else ())
            }
            summary["tasks"][task][method]["seeds"] = [r["seed"] for r in rs]
            paired = [r for r in rs if r["seed"] in erm]
            if method != "erm" and len(paired) > 1:
                base = [erm[r["seed"]] for r in paired]
                diffs.append(
                    f"| {method} | {len(paired)} | "
                    f"{_paired([r['worst'] for r in paired], [b['worst'] for b in base])} | "
                    f"{_paired([r['variance'] for r in paired], [b['variance'] for b in base])} | "
                    f"{_paired([r['mean'] for r in paired], [b['mean'] for b in base])} |"
                )
        cell_names = sorted(rows[0]["cells"])
        lines += [
            "",
            "Accuracy per cell (mean over seeds):",
            "",
            "| method | " + " | ".join(cell_names) + " |",
            "|---|" + "---|" * len(cell_names),
        ]
        for method in METHODS:
            rs = [r for r in rows if r["method"] == method]
            if rs:
                lines.append(
                    f"| {method} | "
                    + " | ".join(f"{np.mean([r['cells'][c] for r in rs]):.3f}" for c in cell_names)
                    + " |"
                )
        if diffs:
            lines += [
                "",
                "Paired difference against ERM (same seed):",
                "",
                "| method | pairs | worst cell | variance | mean |",
                "|---|---|---|---|---|",
                *diffs,
            ]
        lines.append("")
    lines += ["## Methods", ""] + [
        f"- `{k}`: {m.description}; overrides `{m.overrides}`" for k, m in METHODS.items()
    ]
    write_section(target / "RESULTS.md", section, "\n".join(lines))
    name = "results.json" if section == "utk" else f"results-{section}.json"
    (target / name).write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument(
        "--threads", type=int, help="torch threads per run (default: the cores shared by the jobs)"
    )
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:FIELD=JSON,...",
        help="an extra method: the default with these TrainConfig (or ModelConfig) fields changed, "
        'e.g. ess30:ess_fraction=0.3 or r18:backbone=\\"resnet18\\" (repeatable)',
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--section", default="utk", help="the RESULTS.md section to write (and results-NAME.json)"
    )
    parser.add_argument("--title", default="issue 3", help="the section's heading")
    parser.add_argument(
        "--report-dir",
        default=str(Path(__file__).parent),
        help="where RESULTS.md and results.json go",
    )
    args = parser.parse_args()
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in assignments.split(","))}
        METHODS[name] = Method(f"default with {overrides}", overrides)
        args.methods.append(name)
    data = Path(args.data)
    for task in args.tasks:
        for name in TASKS[task]:
            if not (data / name).is_file():
                sys.exit(
                    f"Error: {data / name}: not found. Pass the shared data folder with --data."
                )
    out = Path(args.out)
    command = "python benchmarks/utk.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not args.report_only:
        jobs = []
        for task in args.tasks:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for method in args.methods:
                    path = out / "results" / task / method / f"seed{seed}.json"
                    if not path.exists():
                        jobs.append((task, method, seed, path))
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [
                (
                    pool.submit(
                        run_one, str(data), t, m, s, args.epochs, str(out), threads, command
                    ),
                    p,
                )
                for t, m, s, p in jobs
            ]
            for future, path in futures:
                record = future.result()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2))
                print(
                    f"{record['task']:10} {record['method']:8} seed {record['seed']}: "
                    f"mean {record['mean']:.3f} worst {record['worst']:.3f} "
                    f"var {record['variance']:.1f} ({record['wall_seconds']:.0f} s)",
                    flush=True,
                )
    write_report(out, command, Path(args.report_dir), args.section, args.title)


if __name__ == "__main__":
    main()
