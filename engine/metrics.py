"""Cluster-quality metrics other than silhouette, in torch on the data's device.

Each takes X: (n, d) float32 and labels: (n,) int64 (ids need not be contiguous; only ids that
occur count as clusters) and matches scikit-learn's definition.
"""
from __future__ import annotations

import torch


def _present(labels: torch.Tensor):
    ids, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return ids, inverse, counts


def _centroids(x: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    k = counts.shape[0]
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device).index_add_(0, inverse, x.double())
    return sums / counts[:, None].double()


def calinski_harabasz(x: torch.Tensor, labels: torch.Tensor) -> float:
    """(between-cluster dispersion / (k-1)) / (within-cluster dispersion / (n-k)); higher is better."""
    _, inverse, counts = _present(labels)
    n, k = x.shape[0], counts.shape[0]
    if k < 2 or n == k:
        return float("nan")
    xd = x.double()
    centers = _centroids(x, inverse, counts)
    mean = xd.mean(0)
    between = float((counts.double() * ((centers - mean) ** 2).sum(1)).sum())
    within = float(((xd - centers[inverse]) ** 2).sum())
    if within == 0:
        return 1.0
    return between * (n - k) / (within * (k - 1))


def davies_bouldin(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over clusters of the worst (s_i + s_j) / d(c_i, c_j); lower is better."""
    _, inverse, counts = _present(labels)
    k = counts.shape[0]
    if k < 2:
        return float("nan")
    centers = _centroids(x, inverse, counts)
    dist_to_center = (x.double() - centers[inverse]).norm(dim=1)
    scatter = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, inverse, dist_to_center) / counts.double()
    center_dist = torch.cdist(centers, centers)
    if bool((scatter == 0).all()) or bool((center_dist[~torch.eye(k, dtype=torch.bool, device=x.device)] == 0).all()):
        return 0.0
    ratio = (scatter[:, None] + scatter[None, :]) / center_dist
    ratio[~torch.isfinite(ratio)] = 0.0  # coincident centers, as scikit-learn
    ratio.fill_diagonal_(0.0)
    return float(ratio.max(dim=1).values.mean())


def balance(labels: torch.Tensor, k: int) -> float:
    """Smallest cluster size / largest, over the k ids 0..k-1 (an empty id counts as size 0)."""
    counts = torch.bincount(labels, minlength=k)
    return float(counts.min()) / max(1.0, float(counts.max()))
