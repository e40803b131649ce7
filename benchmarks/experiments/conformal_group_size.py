"""How far under the target the detector's calibration flags, by calibration size (issue 17).

Exchangeable scores (five log-normal components, two of them correlated; the first three folded
by Fisher's method, the last three two-sided, as the detector combines them), calibrated with
:func:`debias.outliers.calibrate` on n faces and measured on 2,000 new ones, 200 repetitions:

    python benchmarks/experiments/conformal_group_size.py 127 200 466

Prints the mean realised rate, its standard error, and the ideal discrete conformal rate
floor(0.05 (n + 1)) / (n + 1).
"""

import sys

import numpy as np

from debias import outliers as O

TWO_SIDED = [False, False, True, True, True]
FOLD = [True, True, True, False, False]

for n in map(int, sys.argv[1:]):
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        z = rng.normal(size=(n + 2000, 5))
        z[:, 1] += 0.6 * z[:, 0]
        components = [np.exp(z[:, j]) for j in range(5)]
        calibration, new = [c[:n] for c in components], [c[n:] for c in components]
        _, threshold = O.calibrate(calibration, "min", 0.05, TWO_SIDED, FOLD)
        scores = O.combined_scores(calibration, new, "min", TWO_SIDED, FOLD)
        rates.append((scores > threshold).mean())
    ideal = np.floor(0.05 * (n + 1)) / (n + 1)
    error = np.std(rates) / np.sqrt(len(rates))
    print(f"n {n}: {np.mean(rates):.4f} ± {error:.4f}, ideal {ideal:.4f}")
