"""Prototype (issue 17, stop 17): average the face evidence over shifted copies too? (No.)

On top of the mirror average, each view is averaged over copies shifted by 2 px diagonally
(reflect-padded, as training's shifts are): 3 copies (none, +2/+2, -2/-2) or 5 (and +2/-2,
-2/+2). Prints AUROC for scene crops and the largest occlusion and the validation-calibrated
false-flag rate per race:

    python benchmarks/experiments/outlier_shift_tta.py utk-gender 0   # task, seed
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prototype import cached_run, judge  # noqa: E402

from debias import outliers as O  # noqa: E402

torch.set_num_threads(1)
task, seed = sys.argv[1], int(sys.argv[2])
cached = cached_run(task, seed, keep=("scene crops", "occlusion s3"))
det, faces, races, sets = cached.detector, cached.faces, cached.races, cached.sets
val = cached.split("val")


def shifted(images, dy, dx):
    p = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    return np.ascontiguousarray(p[:, :, 4 + dy : 4 + dy + 64, 4 + dx : 4 + dx + 64])


SHIFTS = [(0, 0), (2, 2), (-2, -2), (2, -2), (-2, 2)]


def scored(images):
    per = [det.score_components(shifted(images, *s)) for s in SHIFTS]
    out = dict(per[0])
    for n_s in (3, 5):
        for c in O.FACE_EVIDENCE:
            out[f"{c}_s{n_s}"] = np.mean([p[c] for p in per[:n_s]], axis=0)
    return out


cal, inl = scored(val), scored(faces)
outs = {n: scored(v) for n, v in sets.items()}
sides = {f"{c}{tag}": O.TWO_SIDED[c] for c in O.TWO_SIDED for tag in ("", "_s3", "_s5")}
rows = []
for tag in ("", "_s3", "_s5"):
    fold = [f"{c}{tag}" for c in O.FACE_EVIDENCE]
    names = [*fold, "sharpness", "blockiness"]
    rows.append(
        {"copies": tag or "mirror only", **judge(cal, inl, outs, races, names, fold, sides)}
    )
print(f"{task} seed {seed}")
print(pd.DataFrame(rows).set_index("copies").round(4).to_string())
