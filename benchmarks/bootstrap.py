"""Bootstrap speed: debias's count bootstrap against fairlearn's MetricFrame(n_boot=...).

Both compute the same per-group metrics (count, accuracy, selection rate, TPR, FPR, FNR,
precision) with percentile intervals, on synthetic binary predictions grouped by race x gender.
fairlearn resamples rows, so its time grows with rows x replicates; when a full run would take
longer than --fairlearn-budget seconds it is timed on fewer replicates and scaled linearly (the
table says so).

    python benchmarks/bootstrap.py                  # 10k, 100k, 1M rows, 1000 replicates
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fairlearn.metrics import (
    MetricFrame,
    count,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sections import write_section  # benchmarks/ is on sys.path when run as a script
from sklearn.metrics import accuracy_score, precision_score

from debias.fairness.audit import AuditOptions, audit

HERE = Path(__file__).parent


def predictions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    race = rng.choice(["White", "Black", "Asian", "Indian"], n, p=[0.55, 0.2, 0.15, 0.1])
    gender = rng.choice(["male", "female"], n)
    y = rng.integers(0, 2, n)
    wrong = rng.random(n) < np.where(race == "Black", 0.25, 0.08)
    return y, np.where(wrong, 1 - y, y), pd.DataFrame({"race": race, "gender": gender})


FAIRLEARN_METRICS = {
    "count": count,
    "accuracy": accuracy_score,
    "selection_rate": selection_rate,
    "tpr": true_positive_rate,
    "fpr": false_positive_rate,
    "fnr": false_negative_rate,
    "precision": lambda a, b: precision_score(a, b, zero_division=np.nan),
}


def time_fairlearn(y, p, groups, n_boot: int) -> float:
    t = time.perf_counter()
    for sensitive in (groups["race"], groups["gender"], groups[["race", "gender"]]):
        MetricFrame(
            metrics=FAIRLEARN_METRICS,
            y_true=y,
            y_pred=p,
            sensitive_features=sensitive,
            n_boot=n_boot,
            ci_quantiles=[0.025, 0.975],
            random_state=0,
        )
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--fairlearn-budget", type=float, default=120.0)
    parser.add_argument("--report-only", action="store_true", help="rewrite from bootstrap.json")
    args = parser.parse_args()
    if args.report_only:
        write(json.loads((HERE / "bootstrap.json").read_text()))
        return
    command = "python benchmarks/bootstrap.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(2)
    results = []
    for n in [int(r) for r in args.rows.split(",")]:
        y, p, groups = predictions(n)
        config = AuditOptions(groups=["race", "gender"], bootstrap=args.replicates)
        t = time.perf_counter()
        audit(y.astype(str), p.astype(str), groups, config)
        ours = time.perf_counter() - t
        # fairlearn: time a few replicates first, then the full count if it fits the budget.
        probe_boot = 5
        probe = time_fairlearn(y, p, groups, probe_boot)
        per_replicate = probe / probe_boot
        if per_replicate * args.replicates <= args.fairlearn_budget:
            theirs, theirs_boot = time_fairlearn(y, p, groups, args.replicates), args.replicates
            extrapolated = False
        else:
            theirs_boot = max(probe_boot, int(args.fairlearn_budget / 4 / per_replicate))
            theirs = time_fairlearn(y, p, groups, theirs_boot) / theirs_boot * args.replicates
            extrapolated = True
        row = {
            "rows": n,
            "replicates": args.replicates,
            "debias_s": ours,
            "fairlearn_s": theirs,
            "fairlearn_replicates_timed": theirs_boot,
            "fairlearn_extrapolated": extrapolated,
            "speedup": theirs / ours,
            "command": command.strip(),
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    write(results)


def write(results: list[dict]) -> None:
    first = results[0]
    lines = [
        "## Audit bootstrap speed (issue 4)",
        "",
        f"`{first.get('command', 'python benchmarks/bootstrap.py')}` on {platform.machine()}, "
        f"{first.get('threads', 2)} threads, {first.get('date', '')}. Binary predictions, "
        "groups race (4) x gender (2): every "
        "metric of the audit with 95% percentile intervals for race, gender and race & gender. "
        "debias: the whole `debias.audit` call (MetricFrame estimates on the weighted "
        "outcome table + count bootstrap + disparities). fairlearn: `MetricFrame(n_boot=...)` "
        "for the same three groupings.",
        "",
        "| rows | replicates | debias (s) | fairlearn n_boot (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        note = (
            f" (timed {r['fairlearn_replicates_timed']} replicates, scaled)"
            if r["fairlearn_extrapolated"]
            else ""
        )
        lines.append(
            f"| {r['rows']:,} | {r['replicates']} | {r['debias_s']:.2f} | "
            f"{r['fairlearn_s']:.1f}{note} | {r['speedup']:.0f}x |"
        )
    (HERE / "bootstrap.json").write_text(json.dumps(results, indent=2) + "\n")
    write_section(HERE / "RESULTS.md", "bootstrap", "\n".join(lines))


if __name__ == "__main__":
    main()
