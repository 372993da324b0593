"""RAPIDS cuML backend: PCA, KMeans and silhouette on the same device arrays (zero copy).

Thin on purpose: torch CUDA tensors go to CuPy through DLPack, cuML runs with output_type
"cupy", results come back through DLPack. Only called when `--cluster-backend cuml` was asked
for and engine.device says cuML works (it needs CUDA). API per cuML's documentation:
cuml.decomposition.PCA, cuml.cluster.KMeans, cuml.metrics.cluster.silhouette_samples.
"""
from __future__ import annotations

import numpy as np
import torch

from .cluster import KMeansResult, order_by_size
from .device import capability
from .errors import BackendUnavailable
from .reduce import PCAResult, _sample_rows, _svd_flip_rows, components_for
from .silhouette import SilhouetteResult, stratified_rows


def _require():
    cap = capability("cuml")
    if not cap.available:
        raise BackendUnavailable(f"cuML backend: {cap.reason}")


def to_cupy(tensor: torch.Tensor):
    """A CUDA tensor -> CuPy array sharing its memory (DLPack, no copy)."""
    import cupy

    if not tensor.is_cuda:
        raise BackendUnavailable("the cuML backend needs the features on a CUDA device (--device cuda)")
    return cupy.from_dlpack(tensor.contiguous())


def to_torch(array) -> torch.Tensor:
    """A CuPy array -> torch CUDA tensor sharing its memory (DLPack, no copy)."""
    return torch.from_dlpack(array)


def release_cupy_pool() -> None:
    """Give CuPy's cached free blocks back to the driver: cuML allocates through CuPy's pool
    (its copies of the inputs, its outputs), which torch's allocator cannot reuse. Arrays still
    in use (shared with torch through DLPack) are not touched."""
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()


def silhouette_chunk(free_bytes: int, rows: int) -> int:
    """Rows per chunk for cuML's silhouette_samples: its batched version works on chunk x chunk
    float32 distance tiles; two of them are kept within half the free memory, between 1,000 and
    40,000 (40,000: a 6.4 GB tile) and at most `rows`."""
    fit = int((free_bytes / 2 / (2 * 4)) ** 0.5)
    return max(1, min(rows, 40_000, max(1_000, fit)))


def pca_cuml(features: torch.Tensor, request, seed: int = 0, fit_limit: int | None = None) -> PCAResult:
    _require()
    from cuml.decomposition import PCA

    rows = _sample_rows(features.shape[0], fit_limit, seed)
    fit = features if rows is None else features[torch.as_tensor(rows, device=features.device)]
    data = to_cupy(fit.float())
    m = min(data.shape)
    pca = PCA(n_components=m, svd_solver="full", output_type="cupy").fit(data)
    ratio = np.asarray(pca.explained_variance_ratio_.get(), dtype=np.float32)
    k = components_for(ratio, request, m)
    comps = _svd_flip_rows(to_torch(pca.components_[:k]).float())
    mean = to_torch(pca.mean_).float()
    del pca, data  # its copy of the data (cuML fits on a Fortran-ordered copy) and its other outputs
    release_cupy_pool()
    return PCAResult(mean, comps, ratio, k, "exact" if rows is None else "sampled", int(fit.shape[0]))


def kmeans_cuml(x: torch.Tensor, k: int, n_init: int = 3, max_iter: int = 100, tol: float = 1e-4,
                seed: int = 0) -> KMeansResult:
    _require()
    from cuml.cluster import KMeans

    x = x.float()
    # cuML stops when the summed squared centroid shift is below tol itself; the torch and
    # scikit-learn backends scale tol by the mean feature variance first: the same here
    abs_tol = tol * float(x.var(dim=0).mean()) if x.shape[0] > 1 else 0.0
    km = KMeans(n_clusters=k, init="k-means++", n_init=max(1, n_init), max_iter=max_iter, tol=abs_tol,
                random_state=seed, output_type="cupy").fit(to_cupy(x))
    labels = to_torch(km.labels_).long()
    centers = to_torch(km.cluster_centers_).float()
    release_cupy_pool()
    labels, centers = order_by_size(labels, centers)
    return KMeansResult(labels, centers, float(km.inertia_), int(getattr(km, "n_iter_", 0) or 0))


def silhouette_cuml(x: torch.Tensor, labels: torch.Tensor, sample: int | None, seed: int) -> SilhouetteResult:
    """One K with cuML's silhouette_samples (chunked); sampled rows when `sample` is set."""
    _require()
    from cuml.metrics.cluster import silhouette_samples

    n = x.shape[0]
    lab_host = labels.cpu().numpy()
    # stratified as the torch backend's: a uniform sample could miss a small cluster (one label left)
    rows = np.arange(n) if sample is None else stratified_rows(lab_host, sample, seed)
    idx = torch.as_tensor(rows, device=x.device)
    data, codes = to_cupy(x[idx].float()), to_cupy(labels[idx].int())  # (refuses a CPU tensor first)
    free_bytes, _ = torch.cuda.mem_get_info(x.device)
    values = silhouette_samples(data, codes, chunksize=silhouette_chunk(free_bytes, len(rows)))
    picked = np.asarray(values.get() if hasattr(values, "get") else values, dtype=np.float32)
    del values
    release_cupy_pool()
    full = np.full(n, np.nan, dtype=np.float32)
    full[rows] = picked
    lab = lab_host[rows]
    means = {int(c): float(picked[lab == c].mean()) for c in np.unique(lab)}
    return SilhouetteResult(mean=float(picked.mean()), samples=full, cluster_means=means,
                            fraction_negative=float((picked < 0).mean()), sampled=sample is not None,
                            n_clusters=len(means))
