"""What the outlier prototypes share: a run cached by `benchmarks/outliers.py`, and one verdict.

`cached_run` loads a run that `benchmarks/outliers.py` trained, the task's held-out test faces,
their races and some of the benchmark's outlier sets; `judge` calibrates one variant (a list of
components, some Fisher-folded first) on the calibration faces' scores and returns its AUROC per
outlier set and its false-flag rate per race at the 5% target, by the detector's own functions.
Set ``debias.outliers.MIRROR`` before scoring anything.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import outliers as bench  # noqa: E402  (benchmarks/outliers.py: the same outlier sets)

from debias import outliers as O  # noqa: E402
from debias import runfolder  # noqa: E402
from debias.data import decode_images  # noqa: E402
from debias.jobs.outliers import OutlierConfig, fit_detector  # noqa: E402

DATA = Path("../shared/data")
SIZE = 64


@dataclass
class CachedRun:
    """A cached run's detector (calibrated on its validation faces), test faces and outliers."""

    detector: O.LatentOutlierDetector
    samples: pd.DataFrame
    faces: np.ndarray
    races: np.ndarray
    sets: dict[str, np.ndarray]

    def split(self, name: str) -> np.ndarray:
        """The run's own ``train`` or ``val`` images."""
        paths = self.samples.loc[self.samples.split == name, "path"].tolist()
        return decode_images(paths, SIZE)[0]


def cached_run(task: str, seed: int, keep: Collection[str]) -> CachedRun:
    run = Path(f"benchmarks/out/outliers/runs/{task}-seed{seed}")
    detector = fit_detector(run, OutlierConfig(model=str(run), data=".", device="cpu"))
    test = pd.read_csv(DATA / f"{task}-test.csv", keep_default_na=False)
    rows = test[test.label != "not_face"]
    faces = decode_images([str(DATA / p) for p in rows.path], SIZE)[0]
    sets = bench.outlier_sets(DATA, task, faces, seed)
    return CachedRun(
        detector,
        runfolder.read_samples(run),
        faces,
        rows.race.to_numpy(),
        {name: sets[name] for name in keep},
    )


def judge(
    calibration: dict[str, np.ndarray],
    inliers: dict[str, np.ndarray],
    outliers: dict[str, dict[str, np.ndarray]],
    races: np.ndarray,
    names: list[str],
    fold: Collection[str],
    sides: dict[str, bool],
) -> dict[str, float]:
    """AUROC per outlier set and false-flag rate per race of the min rule over ``names``."""
    cal = [calibration[c] for c in names]
    two, folded = [sides[c] for c in names], [c in fold for c in names]
    _, threshold = O.calibrate(cal, "min", 0.05, two, folded)
    inlier = O.combined_scores(cal, [inliers[c] for c in names], "min", two, folded)
    verdict = {}
    for name, scores in outliers.items():
        outlier = O.combined_scores(cal, [scores[c] for c in names], "min", two, folded)
        y = np.r_[np.zeros(len(inlier)), np.ones(len(outlier))]
        verdict[name] = float(roc_auc_score(y, np.r_[inlier, outlier]))
    for race in sorted(set(races)):
        verdict[race] = float((inlier[races == race] > threshold).mean())
    return verdict
