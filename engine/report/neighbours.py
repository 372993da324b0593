"""What changes one K away from the chosen one: which clusters split at K + 1, which merge at K - 1.

From the labels analysis.npz keeps for the chosen K and its neighbours (no recomputation): a
cross-tabulation of the two labellings, read the way a user compares the two silhouette plots.
"""
from __future__ import annotations

import numpy as np

# A part counts in a split or merge when it holds at least this share of the cluster it came from
# (smaller ones are a few images changing sides, not a change of grouping).
PART_SHARE = 0.15


def _crosstab(a: np.ndarray, ka: int, b: np.ndarray, kb: int) -> np.ndarray:
    """(ka, kb) int64 counts of images in cluster i of `a` and cluster j of `b`."""
    return np.bincount(a.astype(np.int64) * kb + b.astype(np.int64), minlength=ka * kb).reshape(ka, kb)


def splits(chosen: np.ndarray, k: int, finer: np.ndarray, k_finer: int) -> list[tuple[int, list[tuple[int, float]]]]:
    """[(cluster of the chosen K, [(cluster at the finer K, share of its images)])] for each cluster
    that the finer labelling divides into two or more parts of at least PART_SHARE, largest first.
    chosen, finer: (n,) ints 0..k-1 and 0..k_finer-1 over the same images."""
    table = _crosstab(chosen, k, finer, k_finer)
    out = []
    for i in range(k):
        total = int(table[i].sum())
        if not total:
            continue
        parts = [(int(j), table[i, j] / total) for j in np.argsort(-table[i], kind="stable") if table[i, j]]
        big = [(j, float(share)) for j, share in parts if share >= PART_SHARE]
        if len(big) >= 2:
            out.append((i, big))
    return out


def merges(chosen: np.ndarray, k: int, coarser: np.ndarray, k_coarser: int) -> list[list[int]]:
    """[[clusters of the chosen K whose images mostly go to one and the same cluster of the
    coarser labelling]] for each such group of two or more, each group sorted, groups in order.
    chosen, coarser: (n,) ints 0..k-1 and 0..k_coarser-1 over the same images."""
    table = _crosstab(chosen, k, coarser, k_coarser)
    into: dict[int, list[int]] = {}
    for i in range(k):
        total = int(table[i].sum())
        if total:
            j = int(np.argmax(table[i]))
            into.setdefault(j, []).append(i)
    return sorted(sorted(group) for group in into.values() if len(group) >= 2)
