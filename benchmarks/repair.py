"""Last-layer repair on real faces: a label budget curve over seeds, paired against the plain model.

Usage (from the project root; the data folder is ../shared/data on the project's machines):

    python benchmarks/repair.py --data ../shared/data --seeds 5 --jobs 2 --out /tmp/brepair

For each task and seed it trains the plain classifier (``--baseline``) and the default DB-VAE
through ``debias.train``, scores both on the task's test CSV, then repairs each with
``debias.repair()`` from N group-labelled faces per (class, group) cell drawn by the seed from the
task's own training CSV (N in 25, 50, 100 and "all": every face of the minority cells, the
majority cells capped at the largest minority cell), and scores every repaired model on the same
test CSV. Group labels are read for the drawn faces only, and the improvement is claimed on the
test faces, which no repair saw. One JSON per (task, seed) lands in ``--out``; then the section
``repair`` of ``benchmarks/RESULTS.md`` is written from all results present.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sections import write_section  # benchmarks/ is on sys.path when run as a script
from utk import CELLS, TASKS

# The groups whose cells a repair balances (class x group): what each task is judged on.
REPAIR_GROUPS = {"utk-age": ["gender"], "utk-gender": ["race"], "utk-detect": ["race"]}
BUDGETS = ("25", "50", "100", "all")
MODELS = {"erm": {"baseline": True}, "default": {}}


def run_task_seed(
    data_dir: str, task: str, seed: int, epochs: int, out: str, threads: int
) -> dict[str, Any]:
    """Train both models on one task and seed, repair each at every budget, score them all."""
    import torch

    torch.set_num_threads(threads)
    from debias import TrainConfig, load_data, train

    train_csv, test_csv = (Path(data_dir) / name for name in TASKS[task])
    labelled_pool = load_data(labels=train_csv, groups=["race", "gender"], image_size=64)
    test = load_data(labels=test_csv, groups=["race", "gender"], image_size=64)
    record: dict[str, Any] = {"task": task, "seed": seed, "epochs": epochs, "models": {}}
    for name, overrides in MODELS.items():
        run_dir = Path(out) / "runs" / task / name / f"seed{seed}"
        config = TrainConfig(
            labels=str(train_csv), out=str(run_dir), epochs=epochs, seed=seed,
            groups=["race", "gender"], **overrides,
        )  # fmt: skip
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        result = train(config)
        scores = {"plain": _score(result.model, result.data.classes, test, task)}
        for budget in BUDGETS:
            scores[budget] = _repair_and_score(result, labelled_pool, test, task, budget, seed)
        record["models"][name] = scores
    return record


def _draw(pool: Any, task: str, budget: str, seed: int) -> np.ndarray:
    """Rows of the training CSV to label: N per (class, group) cell, drawn by the seed."""
    frame = pool.frame
    cell = (
        frame["label"].astype(str) + "|" + frame[REPAIR_GROUPS[task]].astype(str).agg("|".join, 1)
    )
    sizes = cell.value_counts()
    if budget == "all":
        largest = sizes.groupby(sizes.index.str.split("|").str[0]).transform("max")
        n = int(sizes[sizes < largest].max()) if (sizes < largest).any() else int(sizes.max())
    else:
        n = int(budget)
    rng = np.random.default_rng(seed)
    rows = [
        rng.choice(np.flatnonzero(cell == c), min(n, k), replace=False) for c, k in sizes.items()
    ]
    return np.sort(np.concatenate(rows))


def _repair_and_score(
    result: Any, pool: Any, test: Any, task: str, budget: str, seed: int
) -> dict[str, Any]:
    from debias import repair
    from debias.lastlayer import LastLayerRepair

    rows = _draw(pool, task, budget, seed)
    names = np.asarray(pool.classes)[pool.y[rows]]
    groups = pool.frame.iloc[rows][REPAIR_GROUPS[task]].reset_index(drop=True)
    t0 = time.perf_counter()
    fixed = repair(
        result.model, pool.images[rows], names, groups, classes=result.data.classes,
        allow_empty_cells=task == "utk-detect", estimator=LastLayerRepair(random_state=seed),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    score = _score(fixed.model, result.data.classes, test, task)
    score.update(
        repaired=fixed.repaired,
        labelled=int(len(rows)),
        seconds=seconds,
        cv_worst=fixed.estimator.cv_worst_,
        old_worst_on_labelled=fixed.estimator.old_worst_,
        C=fixed.estimator.C_,
    )
    return score


def _score(model: Any, classes: list[str], test: Any, task: str) -> dict[str, Any]:
    import torch

    from debias.encode import encode

    _, probs = encode(model, test.images, np.arange(len(test)), device=torch.device("cpu"))
    pred = np.asarray(classes)[probs.argmax(1).numpy()]
    correct = pred == test.frame["label"].to_numpy()
    faces = (test.frame["race"].astype(str) != "").to_numpy()
    frame = test.frame[faces]
    cells = frame[CELLS[task]].astype(str).agg(" & ".join, axis=1).to_numpy()
    per_cell = {c: float(correct[faces][cells == c].mean()) for c in sorted(set(cells))}
    acc = np.array(list(per_cell.values()))
    return {
        "cells": per_cell,
        "worst": float(acc.min()),
        "mean": float(acc.mean()),
        "fpr": float(1 - correct[~faces].mean()) if (~faces).any() else None,
    }


def _interval(d: np.ndarray) -> str:
    if len(d) < 2:
        return f"{d.mean() * 100:+.1f}"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) * 100
    mark = " *" if abs(d.mean() * 100) > half else ""
    return (
        f"{d.mean() * 100:+.1f} [{d.mean() * 100 - half:+.1f}, {d.mean() * 100 + half:+.1f}]{mark}"
    )


def _rows(records: list[dict[str, Any]]) -> list[str]:
    out = [
        "| model | labelled faces / cell | worst cell | mean of cells | worst cell vs plain "
        "(points, 95% CI) | mean vs plain | FPR | repaired (of seeds) | s per repair |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plain = [r["models"]["erm"]["plain"] for r in records]
    for model in MODELS:
        for budget in ("plain", *BUDGETS):
            s = [r["models"][model][budget] for r in records]
            worst, mean = np.array([x["worst"] for x in s]), np.array([x["mean"] for x in s])
            base_w = np.array([x["worst"] for x in plain])
            base_m = np.array([x["mean"] for x in plain])
            fpr = [x["fpr"] for x in s if x["fpr"] is not None]
            label = {"erm": "plain classifier", "default": "default DB-VAE"}[model]
            label += "" if budget == "plain" else " + repair"
            n = "-" if budget == "plain" else budget
            repaired = "-" if budget == "plain" else f"{sum(x['repaired'] for x in s)}/{len(s)}"
            secs = "-" if budget == "plain" else f"{np.mean([x['seconds'] for x in s]):.1f}"
            fpr_text = f"{np.mean(fpr):.4f}" if fpr else "-"
            spread = worst.std(ddof=1) if len(s) > 1 else 0.0
            out.append(
                f"| {label} | {n} | {worst.mean():.3f} ± {spread:.3f} | {mean.mean():.3f} | "
                f"{_interval(worst - base_w)} | {_interval(mean - base_m)} | {fpr_text} | "
                f"{repaired} | {secs} |"
            )
    return out


def write_report(out: Path, command: str) -> None:
    """Write the ``repair`` section of benchmarks/RESULTS.md from every result in ``out``."""
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = [
        f"Made by `{command}` — x86_64, 2 processes with one thread each, CPU only. Labelled faces "
        "are drawn by the seed from the task's training CSV (N per class x group cell; a cell with "
        "fewer gives all it has); every number is on the task's full test CSV, which no repair "
        "saw. Differences are paired with the plain classifier of the same seed (95% t-interval "
        "over seeds; * = excludes 0). Cells: age x gender (`utk-age`), race x gender (the others).",
        "",
    ]
    for task in TASKS:
        mine = [r for r in records if r["task"] == task]
        if mine:
            seeds = sorted(r["seed"] for r in mine)
            lines += [
                f"### {task} (seeds {seeds}, {mine[0]['epochs']} epochs)",
                "",
                *_rows(mine),
                "",
            ]
    title = "## Repair with a few group labels (issue 30)"
    write_section(Path("benchmarks/RESULTS.md"), "repair", "\n".join([title, "", *lines]))


def speed(command: str) -> None:
    """Time a repair from 10,000 labelled feature rows (512 features, as the 4-conv network's
    hidden layer; 2 classes x 2 groups) and write the section ``repair-speed``."""
    from debias.lastlayer import LastLayerRepair

    rng = np.random.default_rng(0)
    n, d = 10_000, 512
    y = rng.integers(0, 2, n)
    g = np.where(rng.random(n) < 0.9, y, 1 - y)  # a shortcut: the group agrees with the class
    X = rng.normal(size=(n, d))
    X[:, 0] += y
    X[:, 1] += 3 * g
    old = np.zeros((2, d))
    old[1, 1], old[0, 1] = 1.5, -1.5  # a layer that reads the shortcut
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        LastLayerRepair().fit(X, y, g, old_coef=old, old_intercept=np.array([2.25, -2.25]))
        times.append(time.perf_counter() - t0)
    lines = [
        "## Repair speed (issue 30)",
        "",
        f"Made by `{command}` — x86_64, 2 cores, one process, CPU only. `LastLayerRepair.fit` "
        f"on 10,000 labelled rows of 512 features (features already extracted; 7 C's x 5 folds "
        f"x 3 draws to choose, 10 draws to fit): {min(times):.1f} s (best of 3; "
        f"{', '.join(f'{t:.1f}' for t in times)} s).",
    ]
    write_section(Path("benchmarks/RESULTS.md"), "repair-speed", "\n".join(lines))
    print(lines[-1])


def main() -> None:
    """Run the budget curve and write its section of benchmarks/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the shared data folder (../shared/data)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--detect-epochs", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--out", default="benchmarks/out/repair")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--speed", action="store_true", help="time a repair of 10,000 rows")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/repair.py " + shlex.join(sys.argv[1:])
    if args.speed:
        speed(command)
        return
    if not args.data and not args.report_only:
        parser.error("--data is required (the shared data folder, ../shared/data)")
    if not args.report_only:
        todo = [
            (t, s)
            for t in args.tasks
            for s in range(args.first_seed, args.first_seed + args.seeds)
            if not (out / f"{t}-seed{s}.json").exists()
        ]
        os.environ["OMP_NUM_THREADS"] = "1"
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {
                pool.submit(
                    run_task_seed, args.data, t, s,
                    args.detect_epochs if t == "utk-detect" else args.epochs, str(out), 1,
                ): (t, s)
                for t, s in todo
            }  # fmt: skip
            for future, (t, s) in futures.items():
                record = future.result()
                (out / f"{t}-seed{s}.json").write_text(json.dumps(record, indent=1))
                print(t, s, {m: record["models"][m]["100"]["worst"] for m in MODELS}, flush=True)
    write_report(out, command)


if __name__ == "__main__":
    main()
