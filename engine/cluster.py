"""KMeans: k-means++ init + Lloyd iterations, several seeded inits, best inertia wins.

Backends: 'torch' (ours, on CPU or CUDA tensors, matmul distances), 'sklearn' (the reference),
'cuml' (engine.cuml_adapter). Every backend returns labels renumbered by cluster size
(0 = largest), so the same data and seed give the same ids everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError


@dataclass
class KMeansResult:
    """labels: (n,) int64 in 0..k-1 ordered by size (largest first); centroids: (k, d) float32;
    inertia: sum of squared distances to the assigned centroid; n_iter: Lloyd iterations of the best init."""

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: float
    n_iter: int


# torch's CUDA and CPU allocators, the CUDA runtime, DALI's device allocator ("CUDA allocation failed")
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "cuda allocation failed")


def is_oom(exc: BaseException) -> bool:
    """True for an allocation failure: torch.OutOfMemoryError (CUDA), MemoryError (Python), or a
    RuntimeError that says so (torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


class ChunkBudget:
    """Elements of the (rows, k) distance block evaluated at once. Halved on out-of-memory and kept
    for later calls in this process (memory pressure rarely goes away); `halvings` counts them."""

    def __init__(self, elems: int = 1 << 24):
        self.elems = elems
        self.halvings = 0


CHUNK_BUDGET = ChunkBudget()


def _chunk_rows(n: int, k: int, budget_elems: int | None = None) -> int:
    budget = CHUNK_BUDGET.elems if budget_elems is None else budget_elems
    return max(1, min(n, budget // max(1, k)))


def _block_argmin(block: torch.Tensor, block_sq: torch.Tensor, centroids: torch.Tensor, c_sq: torch.Tensor):
    """One row block: (values (b,) float32, argmin (b,) int64) of the squared distances to centroids."""
    d2 = (block_sq[:, None] - 2.0 * (block @ centroids.T) + c_sq[None, :]).clamp_min_(0)
    return d2.min(dim=1)


def squared_distances_argmin(x: torch.Tensor, centroids: torch.Tensor, x_sq: torch.Tensor | None = None):
    """For each row of x (n, d): (argmin index (n,) int64, min squared distance (n,) float32) to centroids (k, d).

    ‖x‖² − 2x·c + ‖c‖², clamped at 0; evaluated in row chunks so the (chunk, k) block stays small.
    An out-of-memory error on a block halves the chunk (CHUNK_BUDGET) and retries that block.
    """
    n = x.shape[0]
    k = centroids.shape[0]
    c_sq = (centroids * centroids).sum(1)
    if x_sq is None:
        x_sq = (x * x).sum(1)
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    mins = torch.empty(n, dtype=torch.float32, device=x.device)
    step = _chunk_rows(n, k)
    start = 0
    while start < n:
        try:
            values, idx = _block_argmin(x[start:start + step], x_sq[start:start + step], centroids, c_sq)
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc) or step == 1:
                raise
            step = max(1, step // 2)
            CHUNK_BUDGET.elems = max(k, step * k)
            CHUNK_BUDGET.halvings += 1
            if x.is_cuda:
                torch.cuda.empty_cache()
            continue
        labels[start:start + step] = idx
        mins[start:start + step] = values
        start += step
    return labels, mins


def plusplus_draws(n: int, k: int, gen: torch.Generator) -> tuple[int, torch.Tensor]:
    """The random numbers of one k-means++ init: the first center's row, and (k-1, trials)
    float64 uniforms for the candidates of each later step (trials = 2 + log k), from `gen` in
    that order. kmeans_all_k draws through here too, so both give the same fits."""
    first = int(torch.randint(n, (1,), generator=gen, device="cpu"))
    return first, torch.rand((max(k - 1, 0), 2 + int(math.log(k))), generator=gen, dtype=torch.float64)


def _kmeans_plusplus(x: torch.Tensor, x_sq: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (as scikit-learn): 2 + log(k) candidates per step, keep the best.

    No host sync per center: the uniforms for every step come from the seeded CPU generator in
    one draw and one upload, and the chosen rows are picked with device-side indices (on a GPU the
    syncs, not the arithmetic, were the cost at a few thousand points)."""
    n = x.shape[0]
    first, uniforms = plusplus_draws(n, k, gen)
    if x.is_cuda:
        uniforms = uniforms.pin_memory().to(x.device, non_blocking=True)
    centers = [x[first:first + 1]]
    closest = ((x - x[first]) ** 2).sum(1).clamp_min(0)
    for step in range(k - 1):
        # candidates with probability proportional to `closest`; when every remaining point
        # coincides with a center (total 0) they are all the last point, itself a duplicate
        cumulative = closest.double().cumsum(0)
        cand = torch.searchsorted(cumulative, uniforms[step] * cumulative[-1], right=True).clamp_max_(n - 1)
        cand_pts = x[cand]
        d2 = (x_sq[None, :] - 2.0 * (cand_pts @ x.T) + (cand_pts * cand_pts).sum(1)[:, None]).clamp_min_(0)
        d2 = torch.minimum(d2, closest[None, :])
        best = d2.sum(1).argmin().view(1)
        centers.append(x.index_select(0, cand.index_select(0, best)))
        closest = d2.index_select(0, best).squeeze(0)
    return torch.cat(centers)


def order_by_size(labels: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber clusters by size, largest first; ties broken by the first member's position.
    Empty clusters go last. labels (n,) int64, centroids (k, d) -> same shapes."""
    k = centroids.shape[0]
    n = labels.shape[0]
    counts = torch.bincount(labels, minlength=k).cpu()
    positions = torch.arange(n, device=labels.device)
    first = torch.full((k,), n, dtype=torch.int64, device=labels.device).scatter_reduce(
        0, labels, positions, reduce="amin").cpu()
    order = sorted(range(k), key=lambda c: (-int(counts[c]), int(first[c])))
    remap = torch.empty(k, dtype=torch.int64)
    remap[torch.tensor(order)] = torch.arange(k)
    remap = remap.to(labels.device)
    return remap[labels], centroids[torch.tensor(order, device=centroids.device)]


def cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int, chunk_rows: int = 1 << 16) -> torch.Tensor:
    """(k, d) float32 sum of the rows of x (n, d) per label (n,) int64.

    On the CPU index_add_ is deterministic. On CUDA it uses float atomics, whose order (and so
    the last bits of the centroids, sometimes a label near a tie) changes from run to run, so
    there the sums are one-hot matmuls over row chunks, which give the same bits every run."""
    if not x.is_cuda:
        return torch.zeros((k, x.shape[1]), dtype=torch.float32, device=x.device).index_add_(0, labels, x)
    return onehot_sums(x, labels, k, chunk_rows)


def onehot_sums(x: torch.Tensor, labels: torch.Tensor, k: int, chunk_rows: int = 1 << 16,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """cluster_sums as one-hot matmuls over row chunks (the CUDA path; any device). dtype: what
    the chunks' products are added up in (float64 for metrics over many rows)."""
    sums = torch.zeros((k, x.shape[1]), dtype=dtype, device=x.device)
    for start in range(0, x.shape[0], chunk_rows):
        onehot = torch.nn.functional.one_hot(labels[start:start + chunk_rows], k).to(x.dtype)
        sums += onehot.T @ x[start:start + chunk_rows]
    return sums


def _lloyd(x, x_sq, centers, max_iter, tol):
    n, d = x.shape
    k = centers.shape[0]
    labels = None
    for it in range(1, max_iter + 1):
        labels, mins = squared_distances_argmin(x, centers, x_sq)
        sums = cluster_sums(x, labels, k)
        counts = torch.bincount(labels, minlength=k).float()
        empty = counts == 0
        new_centers = sums / counts.clamp_min(1.0)[:, None]
        # one host sync per iteration for both questions (on a GPU the syncs dominate small fits)
        any_empty, shift = torch.stack([empty.any().float(), ((new_centers - centers) ** 2).sum()]).tolist()
        if any_empty:
            # Re-seed an empty cluster with the points farthest from their centers (as scikit-learn).
            far = torch.argsort(mins, descending=True)[: int(empty.sum())]
            sums[empty] = x[far]
            counts[empty] = 1.0
            new_centers = sums / counts[:, None]
            shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= tol:
            break
    labels, mins = squared_distances_argmin(x, centers, x_sq)
    return labels, centers, float(mins.double().sum()), it


def kmeans_torch(x: torch.Tensor, k: int, n_init: int = 3, max_iter: int = 100, tol: float = 1e-4,
                 seed: int = 0) -> KMeansResult:
    """x: (n, d) float32 on any device. tol is relative to the mean per-feature variance (as scikit-learn)."""
    x = x.float().contiguous()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} must be between 1 and the number of samples ({n})")
    x_sq = (x * x).sum(1)
    abs_tol = tol * float(x.var(dim=0).mean()) if n > 1 else 0.0
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best = None
    for _ in range(max(1, n_init)):
        centers = _kmeans_plusplus(x, x_sq, k, gen)
        labels, centers, inertia, n_iter = _lloyd(x, x_sq, centers, max_iter, abs_tol)
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia, n_iter)
    labels, centers = order_by_size(best[0], best[1])
    return KMeansResult(labels, centers, best[2], best[3])


def kmeans_sklearn(x: torch.Tensor, k: int, n_init: int = 3, max_iter: int = 100, tol: float = 1e-4,
                   seed: int = 0) -> KMeansResult:
    """scikit-learn's KMeans (lloyd, k-means++): the reference."""
    from sklearn.cluster import KMeans

    data = x.detach().float().cpu().numpy()
    km = KMeans(n_clusters=k, init="k-means++", n_init=max(1, n_init), max_iter=max_iter, tol=tol,
                random_state=seed, algorithm="lloyd").fit(data)
    labels = torch.from_numpy(km.labels_.astype(np.int64)).to(x.device)
    centers = torch.from_numpy(km.cluster_centers_.astype(np.float32)).to(x.device)
    labels, centers = order_by_size(labels, centers)
    return KMeansResult(labels, centers, float(km.inertia_), int(km.n_iter_))


def fit_kmeans(x: torch.Tensor, k: int, backend: str = "torch", n_init: int = 3, max_iter: int = 100,
               tol: float = 1e-4, seed: int = 0) -> KMeansResult:
    if backend == "torch":
        return kmeans_torch(x, k, n_init, max_iter, tol, seed)
    if backend == "sklearn":
        return kmeans_sklearn(x, k, n_init, max_iter, tol, seed)
    if backend == "cuml":
        from .cuml_adapter import kmeans_cuml

        return kmeans_cuml(x, k, n_init, max_iter, tol, seed)
    raise ConfigError(f"cluster_backend={backend!r} is not one of: torch, sklearn, cuml")


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid for new points: x (n, d), centroids (k, d) -> (labels (n,) int64,
    distances (n, k) float32 Euclidean) on x's device."""
    c = centroids.to(x.device).float()
    x = x.float()
    d2 = ((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]).clamp_min_(0)
    dist = d2.sqrt()
    return dist.argmin(1), dist
