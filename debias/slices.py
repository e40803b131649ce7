"""Label-free slice discovery: where a classifier fails, without being told the groups.

The audited images are embedded with a DB-VAE's encoder (its latent means), clustered with
k-means, and the clusters are ranked by error rate. The DB-VAE only provides the embedding, so
the classifier being audited can be any model. The same latents give each image a density under
the run's training faces; accuracy by density decile shows whether rare faces fare worse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans, MiniBatchKMeans

from debias.fairness.audit import AuditOptions, audit

# Above this many images k-means runs in mini-batches: same clusters in spirit, a fraction of
# the time.
MINIBATCH_ABOVE = 50_000
N_EXAMPLES = 8
N_DECILES = 10


def find_slices(embedding: np.ndarray, n_slices: int, *, min_size: int, seed: int) -> np.ndarray:
    """Cluster ``embedding`` ``(N, K)`` into at most ``n_slices`` slices; return labels ``(N,)``.

    Fewer clusters are used when the data cannot fill ``n_slices`` slices of ``min_size``.
    """
    k = int(max(1, min(n_slices, len(embedding) // max(min_size, 1))))
    if k == 1:
        return np.zeros(len(embedding), dtype=np.int64)
    kind = MiniBatchKMeans if len(embedding) > MINIBATCH_ABOVE else KMeans
    model = kind(n_clusters=k, n_init=4, random_state=seed)
    return model.fit_predict(np.asarray(embedding, dtype=np.float64)).astype(np.int64)


def density_deciles(log_density: np.ndarray) -> np.ndarray:
    """Decile of each log-density: ``1`` holds the rarest tenth, ``10`` the most common."""
    ranks = pd.Series(log_density).rank(method="first").to_numpy()
    return np.ceil(ranks / len(ranks) * N_DECILES).clip(1, N_DECILES).astype(np.int64)


def slice_table(
    table: pd.DataFrame,
    slices: np.ndarray,
    embedding: np.ndarray,
    options: AuditOptions,
    *,
    kind: str,
    rank_by_error: bool = True,
) -> pd.DataFrame:
    """Error rate of each slice with a bootstrap interval, ranked, with composition and examples.

    Parameters
    ----------
    table : pandas.DataFrame
        The predictions: ``y_true``, ``y_pred``, optionally ``path`` and group columns.
    slices : numpy.ndarray
        Slice of each row ``(N,)``.
    embedding : numpy.ndarray
        The rows' latent means ``(N, K)``: examples are the failures nearest a slice's centre.
    options : AuditOptions
        Bootstrap size, level, minimum size, seed; ``groups`` only describe a slice's make-up.
    kind, rank_by_error
        ``kind`` (cluster, density decile) goes in the table; ``rank_by_error`` ranks by the
        error rate's lower interval bound, else slices keep their order.

    Returns
    -------
    pandas.DataFrame
        A row per slice: rank, n, errors, error_rate and interval, share_of_errors, examples.
    """
    acc = _slice_accuracy(table, slices, options)
    wrong = (table["y_true"].astype(str) != table["y_pred"].astype(str)).to_numpy()
    total_errors = max(int(wrong.sum()), 1)
    rows = []
    for _, r in acc.iterrows():
        members = np.flatnonzero(slices.astype(str) == r["group"])
        rows.append(
            {
                "kind": kind,
                "slice": r["group"],
                "n": int(r["n"]),
                "errors": int(wrong[members].sum()),
                "error_rate": 1 - r["value"],
                "ci_low": 1 - r["ci_high"],
                "ci_high": 1 - r["ci_low"],
                "judged": bool(r["judged"]),
                "share_of_errors": wrong[members].sum() / total_errors,
                "composition": _composition(table, members, options.groups),
                "examples": _examples(members, embedding, wrong),
            }
        )
    out = pd.DataFrame(rows)
    if rank_by_error:
        # The interval's lower bound ranks a small slice with a few errors below a large one that
        # is reliably bad; slices too small to judge go last.
        out = out.sort_values(["judged", "ci_low", "error_rate"], ascending=[False, False, False])
    else:
        out = out.sort_values("slice", key=lambda s: s.astype(int))
    out.insert(2, "rank", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)


def _slice_accuracy(table: pd.DataFrame, slices: np.ndarray, options: AuditOptions) -> Any:
    """Return each slice's accuracy row of an audit whose only groups are the slices."""
    name = "slice"
    result = audit(
        table["y_true"].to_numpy(),
        table["y_pred"].to_numpy(),
        pd.DataFrame({name: slices.astype(str)}),
        AuditOptions(
            groups=[name],
            bootstrap=options.bootstrap,
            ci=options.ci,
            min_group_size=options.min_group_size,
            seed=options.seed,
        ),
        classes=sorted(set(map(str, table["y_true"])) | set(map(str, table["y_pred"]))),
    )
    by_group = result.by_group
    return by_group[(by_group.attribute == name) & (by_group.metric == "accuracy")]


def _composition(table: pd.DataFrame, members: np.ndarray, groups: list[str]) -> str:
    """Per known column (the true label, then groups): the value most over-represented in the slice.

    Shares are of all rows, missing values included, so they read as "x% of this slice". A group
    column identical to the label is left out: it would repeat the label's line.
    """
    parts = []
    label = table["y_true"].astype(str)
    for column in ["y_true", *groups]:
        values = table[column].astype(str)
        if column != "y_true" and values.equals(label):
            continue  # the group is the label itself (e.g. gender for a gender classifier)
        overall = values.value_counts(normalize=True)
        inside = values.iloc[members].value_counts(normalize=True)
        inside = inside[inside.index != ""]
        if inside.empty:
            continue
        lift = (inside - overall.reindex(inside.index)).sort_values(ascending=False)
        top = lift.index[0]
        name = "label" if column == "y_true" else column
        parts.append(f"{name}={top} {inside[top]:.0%} ({overall[top]:.0%} overall)")
    return "; ".join(parts)


def _examples(members: np.ndarray, embedding: np.ndarray, wrong: np.ndarray) -> list[int]:
    """Row indices of up to N_EXAMPLES members: failures nearest the slice's centre first."""
    centre = embedding[members].mean(axis=0)
    distance = np.linalg.norm(embedding[members] - centre, axis=1)
    order = np.lexsort((distance, ~wrong[members]))  # failures first, then nearest
    return members[order[:N_EXAMPLES]].tolist()
