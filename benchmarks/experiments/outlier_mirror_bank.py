"""Prototype (issue 17, stop 17): mirrored training faces in the views' reference set too.

The kept detector averages each face view over the image and its mirror image, but the hidden
layer's mean and covariance and the conv map's neighbour bank hold the training faces unmirrored;
training flips faces, so the model's face distribution includes their mirror images. This adds
them to both references and prints AUROC for scene crops and the largest occlusion and the
validation-calibrated false-flag rate per race, before and after:

    python benchmarks/experiments/outlier_mirror_bank.py utk-gender 0   # task, seed
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prototype import cached_run, judge  # noqa: E402

from debias import outliers as O  # noqa: E402

torch.set_num_threads(1)
task, seed = sys.argv[1], int(sys.argv[2])
cached = cached_run(task, seed, keep=("scene crops", "occlusion s3"))
det, faces, races, sets = cached.detector, cached.faces, cached.races, cached.sets
train, val = cached.split("train"), cached.split("val")


def evaluate(variant: str) -> dict[str, float]:
    cal, inl = det.score_components(val), det.score_components(faces)
    outs = {n: det.score_components(v) for n, v in sets.items()}
    names = det.components_
    return {"variant": variant, **judge(cal, inl, outs, races, names, O.FACE_EVIDENCE, O.TWO_SIDED)}


rows = [evaluate("mirror average (kept)")]
_, _, f = O.raw_scores(det.model, train, positive=None, device=torch.device("cpu"), mirror=True)
hidden = np.concatenate(list(f["hidden_features"]))
det.hidden_stats_ = (hidden.mean(0), LedoitWolf().fit(hidden).precision_)
det.conv_bank_ = O._unit(torch.from_numpy(np.concatenate(list(f["conv_lof"]))))
own, _ = O._neighbours(det.conv_bank_, det.conv_bank_, O.NEIGHBOURS, skip_self=True)
det.conv_radius_ = own[:, -1]
rows.append(evaluate("+ mirrored training faces in the reference"))
print(f"{task} seed {seed}")
print(pd.DataFrame(rows).set_index("variant").round(4).to_string())
