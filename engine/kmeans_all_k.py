"""KMeans for every candidate K and every init at once: the torch backend's K search.

Why: fitting K = 2..20 with 3 inits one after another is 57 small fits of tens of Lloyd
iterations, each iteration a handful of kernels and a host sync. On a GPU, at a few thousand
points, those launches and syncs are the cost, not the arithmetic (H100, 4,096 x 200, K = 2..20:
0.4-0.8 s, as long as extracting the features). Here the G = len(ks) x n_init fits are one
batched computation: per Lloyd iteration, one distance matmul against every fit's centroids
(padded to the largest K), one one-hot matmul for the new sums, and one host sync for every
fit's convergence test. A fit that has converged leaves the batch, so each keeps its own
iteration count and the work shrinks as fits finish.

The algorithm and the random draws are cluster.kmeans_torch's: greedy k-means++ from the same
seeded uniforms (one CPU generator per K, seeded with `seed`, drawn init after init), Lloyd with
scikit-learn's tolerance and empty-cluster rule, the best inertia over inits, clusters numbered by
size. Results agree with kmeans_torch up to floating-point summation order (tests check it).

Memory beyond x: per Lloyd iteration an (n, G) float32 array of distances (for scikit-learn's
empty-cluster rule), and at the end (n, G) int32 labels: at 1M rows and 87 fits (K = 2..30,
3 inits) 348 MB each; the distance blocks are bounded by `_block_budget`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .cluster import CHUNK_BUDGET, KMeansResult, is_oom, order_by_size, plusplus_draws
from .errors import ConfigError

# k-means++ evaluates (fits x trials x n) candidate distances per step: at most this many
# elements at once (fits are taken in groups), 2**26 float32 = 256 MiB.
PLUSPLUS_ELEMS = 1 << 26


def kmeans_all_k(x: torch.Tensor, ks: Sequence[int], n_init: int = 3, max_iter: int = 100, tol: float = 1e-4,
                 seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[int, KMeansResult]:
    """x: (n, d) float32 on any device; ks: distinct K in 1..n. Returns {k: KMeansResult} as
    cluster.kmeans_torch(x, k, n_init, max_iter, tol, seed) would, for every k at once.
    progress(1) is called as each K's last init converges (a long search shows it moving)."""
    x = x.float().contiguous()
    n = x.shape[0]
    ks = list(ks)
    for k in ks:
        if not 1 <= k <= n:
            raise ConfigError(f"k={k} must be between 1 and the number of samples ({n})")
    if not ks:
        return {}
    n_init = max(1, n_init)
    x_sq = (x * x).sum(1)
    abs_tol = tol * float(x.var(dim=0).mean()) if n > 1 else 0.0
    fit_k = [k for k in ks for _ in range(n_init)]  # fit g has K = fit_k[g]
    centers = _plusplus_all(x, x_sq, fit_k, n_init, seed)
    inits_left = {k: n_init for k in ks}

    def fit_done(g: int) -> None:
        inits_left[fit_k[g]] -= 1
        if progress and inits_left[fit_k[g]] == 0:
            progress(1)

    centers, n_iter = _lloyd_all(x, x_sq, centers, fit_k, max_iter, abs_tol, fit_done)
    labels, inertia = _assign_all(x, x_sq, centers, _Ragged(fit_k, x.device))
    inertia = inertia.tolist()  # (G,)
    results: dict[int, KMeansResult] = {}
    for i, k in enumerate(ks):
        fits = range(i * n_init, (i + 1) * n_init)
        best = min(fits, key=lambda g: (inertia[g], g))  # first init wins ties, as in kmeans_torch
        ordered_labels, ordered_centers = order_by_size(labels[:, best].long(), centers[best, :k].contiguous())
        results[k] = KMeansResult(ordered_labels, ordered_centers, inertia[best], n_iter[best])
    return results


def _draws(n: int, fit_k: list[int], n_init: int, seed: int) -> tuple[list[int], list[torch.Tensor]]:
    """kmeans_torch's random numbers per fit: the first center's index and the (k-1, trials)
    float64 uniforms, from one CPU generator per K seeded with `seed`, drawn init after init."""
    firsts, uniforms = [], []
    gen = None
    for g, k in enumerate(fit_k):
        if g % n_init == 0:
            gen = torch.Generator(device="cpu").manual_seed(seed)
        first, draws = plusplus_draws(n, k, gen)
        firsts.append(first)
        uniforms.append(draws)
    return firsts, uniforms


def _plusplus_all(x: torch.Tensor, x_sq: torch.Tensor, fit_k: list[int], n_init: int, seed: int) -> torch.Tensor:
    """Greedy k-means++ for every fit: (G, Kmax, d) float32 centers, fit g's in [:fit_k[g]]
    (padding rows are zeros). Fits are batched in groups of at most PLUSPLUS_ELEMS work."""
    n, d = x.shape
    kmax = max(fit_k)
    trials_max = 2 + int(math.log(kmax))
    firsts, uniforms = _draws(n, fit_k, n_init, seed)
    centers = torch.zeros((len(fit_k), kmax, d), dtype=torch.float32, device=x.device)
    group = max(1, PLUSPLUS_ELEMS // max(1, trials_max * n))
    for a in range(0, len(fit_k), group):
        part = range(a, min(a + group, len(fit_k)))
        centers[a:a + len(part)] = _plusplus_group(x, x_sq, [fit_k[g] for g in part], [firsts[g] for g in part],
                                                   [uniforms[g] for g in part], kmax)
    return centers


def _plusplus_group(x, x_sq, ks: list[int], firsts: list[int], uniforms: list[torch.Tensor], kmax: int) -> torch.Tensor:
    """k-means++ for a group of fits at once: step s picks every fit's center s+1 (fits with
    fewer centers keep theirs). Returns (len(ks), kmax, d); one upload of the draws, no host sync."""
    n, d = x.shape
    g_count = len(ks)
    trials = torch.tensor([u.shape[1] for u in uniforms])
    t_max = int(trials.max())
    table = torch.zeros((g_count, max(kmax - 1, 1), t_max), dtype=torch.float64)
    for g, u in enumerate(uniforms):
        table[g, : u.shape[0], : u.shape[1]] = u
    steps = torch.tensor(ks) - 1  # fit g takes steps 0 .. k-2
    step_ids = torch.arange(max(kmax - 1, 1))
    active = (step_ids[None, :] < steps[:, None])  # (G, Kmax-1)
    unused_trial = torch.arange(t_max)[None, :] >= trials[:, None]  # (G, T)
    if x.is_cuda:
        table, active, unused_trial = (t.pin_memory().to(x.device, non_blocking=True) for t in (table, active, unused_trial))
    first = torch.tensor(firsts).to(x.device)
    centers = torch.zeros((g_count, kmax, d), dtype=torch.float32, device=x.device)
    centers[:, 0] = x[first]
    closest = torch.stack([((x - x[f]) ** 2).sum(1).clamp_min(0) for f in firsts])  # (G, n), as kmeans_torch
    rows = torch.arange(g_count, device=x.device)
    for s in range(kmax - 1):
        cumulative = closest.double().cumsum(1)
        cand = torch.searchsorted(cumulative, table[:, s, :] * cumulative[:, -1:], right=True).clamp_max_(n - 1)
        cand_pts = x[cand]  # (G, T, d)
        d2 = (x_sq[None, None, :] - 2.0 * (cand_pts @ x.T) + (cand_pts * cand_pts).sum(2)[:, :, None]).clamp_min_(0)
        d2 = torch.minimum(d2, closest[:, None, :])
        potential = d2.sum(2).masked_fill_(unused_trial, float("inf"))
        best = potential.argmin(1)  # (G,)
        keep = active[:, s]
        centers[:, s + 1] = torch.where(keep[:, None], x[cand[rows, best]], centers[:, s + 1])
        closest = torch.where(keep[:, None], d2[rows, best], closest)
    return centers


CUDA_BLOCK_FACTOR = 16  # 2**28 elements: 3 GiB of float32 blocks at once


def _block_budget(x: torch.Tensor) -> int:
    """Elements of one (rows, width) block: CHUNK_BUDGET's (2**24, the budget cluster.py keeps,
    halved on out-of-memory), and on CUDA, until a halving, CUDA_BLOCK_FACTOR times that. The
    batched blocks are (rows, fits x Kmax) wide: at 1M rows, K = 2..30 and 3 inits, 2**24
    elements would be 156 blocks of a dozen kernels each per Lloyd iteration.
    A constant, not a share of free memory: the sums are added block by block, so the block size
    sets their last bits, and a run must give the same labels whatever else holds GPU memory
    (a rerun served from the feature cache has more free). An out-of-memory retry changes it."""
    if not x.is_cuda or CHUNK_BUDGET.halvings:
        return CHUNK_BUDGET.elems
    return CUDA_BLOCK_FACTOR * CHUNK_BUDGET.elems


def _blocks(x: torch.Tensor, width: int):
    """Row ranges whose (rows, width) blocks fit _block_budget."""
    n = x.shape[0]
    step = _block_rows(x, width)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _retry_on_oom(fn, x: torch.Tensor, width: int):
    """Run fn() (a pass over row blocks of `width` columns; its (n, G) outputs allocated by the
    caller, since smaller blocks cannot shrink them); on out-of-memory halve the rows per block
    (CHUNK_BUDGET, kept for later calls, never raised above its value) and run it again."""
    while True:
        try:
            return fn()
        except (RuntimeError, MemoryError) as exc:
            rows = _block_rows(x, width)
            if not is_oom(exc) or rows == 1:
                raise
            CHUNK_BUDGET.elems = max(width, min(CHUNK_BUDGET.elems, rows // 2 * width))
            CHUNK_BUDGET.halvings += 1
            if x.is_cuda:
                torch.cuda.empty_cache()


class _Ragged:
    """Where the centers of a set of fits (their K: `ks`) sit. Centers are stored padded,
    (G, Kmax, d); the matmuls use only the real ones, flat (sum(ks), d), so the padding costs no
    flops; the per-fit argmin reads a padded (rows, G, Kmax) block with +inf in the padding."""

    def __init__(self, ks: list[int], device: torch.device):
        self.count, self.kmax, self.total = len(ks), max(ks), sum(ks)
        positions = [g * self.kmax + j for g, k in enumerate(ks) for j in range(k)]
        starts = [0]
        for k in ks[:-1]:
            starts.append(starts[-1] + k)
        self.positions = torch.tensor(positions, device=device)  # (total,) padded index of each real center
        self.starts = torch.tensor(starts, device=device)  # (G,) flat index of each fit's first center
        self.valid = torch.arange(self.kmax, device=device)[None, :] < torch.tensor(ks, device=device)[:, None]

    def flat(self, padded: torch.Tensor) -> torch.Tensor:
        """(G, Kmax, ...) -> (total, ...): the real rows."""
        return padded.reshape(self.count * self.kmax, *padded.shape[2:]).index_select(0, self.positions)

    def padded(self, flat: torch.Tensor) -> torch.Tensor:
        """(total, ...) -> (G, Kmax, ...) with zeros in the padding."""
        out = flat.new_zeros((self.count * self.kmax, *flat.shape[1:]))
        return out.index_copy_(0, self.positions, flat).view(self.count, self.kmax, *flat.shape[1:])


class _BlockScratch:
    """The (rows, ·) float32 tensors a pass needs per row block, allocated once per pass and
    reused block after block. Fresh ones per block (tens of MB each, above glibc's 32 MB mmap
    threshold) were mapped and unmapped every block, a page fault per 4 KB touched: on the CPU,
    K = 2..20 at 100,000 x 200 spent 54 s of 82 in the kernel (108 s user)."""

    def __init__(self, rows: int, ragged: _Ragged, device: torch.device, onehot: bool = False):
        self.d2 = torch.empty((rows, ragged.total), dtype=torch.float32, device=device)
        self.padded = torch.empty((rows, ragged.count * ragged.kmax), dtype=torch.float32, device=device)
        self.onehot = torch.empty((rows, ragged.total), dtype=torch.float32, device=device) if onehot else None


def _block_argmin(block, block_sq, centers_flat, c_sq, ragged: _Ragged, scratch: _BlockScratch):
    """(values (b, G) float32, argmin (b, G) int64): squared distances of the rows to each fit's
    nearest center. centers_flat (total, d), c_sq (total,). In place in `scratch`, with the same
    bits as block_sq - 2 x.c + c_sq (x - y is x + (-y) in IEEE arithmetic; 2 x.c is exact)."""
    b = block.shape[0]
    d2 = torch.matmul(block, centers_flat.T, out=scratch.d2[:b])
    d2.mul_(-2.0).add_(block_sq[:, None]).add_(c_sq[None, :]).clamp_min_(0)
    padded = scratch.padded[:b].fill_(float("inf"))
    padded.index_copy_(1, ragged.positions, d2)
    return padded.view(-1, ragged.count, ragged.kmax).min(dim=2)


def _block_rows(x: torch.Tensor, width: int) -> int:
    """Rows of the largest block _blocks gives (the scratch tensors' size)."""
    return max(1, min(x.shape[0], _block_budget(x) // max(1, width)))


def _assign_all(x, x_sq, centers, ragged: _Ragged):
    """Nearest center of every row for every fit: (labels (n, G) int32, inertia (G,) float64).
    int32 and no per-row distances kept: at 10M rows and 57 fits that is 2.3 GB, not 6.9."""
    flat = ragged.flat(centers)
    c_sq = (flat * flat).sum(1)
    width = ragged.count * ragged.kmax
    labels = torch.empty((x.shape[0], ragged.count), dtype=torch.int32, device=x.device)
    inertia = torch.zeros(ragged.count, dtype=torch.float64, device=x.device)

    def run():
        inertia.zero_()
        scratch = _BlockScratch(_block_rows(x, width), ragged, x.device)
        for a, b in _blocks(x, width):
            mins, labels[a:b] = _block_argmin(x[a:b], x_sq[a:b], flat, c_sq, ragged, scratch)
            inertia.add_(mins.double().sum(0))
        return labels, inertia

    return _retry_on_oom(run, x, width)


def _assign_and_sum(x, x_sq, centers, ragged: _Ragged):
    """One Lloyd half-step for every fit: (sums (G, Kmax, d) float32, counts (G, Kmax) float32,
    squared distances (n, G) float32). Sums are one-hot matmuls: the same bits every run on CUDA
    too (cluster.cluster_sums says why)."""
    flat = ragged.flat(centers)
    c_sq = (flat * flat).sum(1)
    width = ragged.count * ragged.kmax

    mins = torch.empty((x.shape[0], ragged.count), dtype=torch.float32, device=x.device)

    def run():
        sums = torch.zeros((ragged.total, x.shape[1]), dtype=torch.float32, device=x.device)
        counts = torch.zeros(ragged.total, dtype=torch.float32, device=x.device)
        scratch = _BlockScratch(_block_rows(x, width), ragged, x.device, onehot=True)
        for a, b in _blocks(x, width):
            mins[a:b], labels = _block_argmin(x[a:b], x_sq[a:b], flat, c_sq, ragged, scratch)
            onehot = scratch.onehot[:b - a].zero_()
            onehot.scatter_(1, labels + ragged.starts[None, :], 1.0)
            sums += onehot.T @ x[a:b]
            counts += onehot.sum(0)
        return ragged.padded(sums), ragged.padded(counts), mins

    return _retry_on_oom(run, x, width)


def _lloyd_all(x, x_sq, centers, fit_k: list[int], max_iter: int, tol: float,
               fit_done: Callable[[int], None]) -> tuple[torch.Tensor, list[int]]:
    """Lloyd iterations for every fit until each converges (center shift <= tol) or max_iter;
    fit_done(g) as fit g stops. centers (G, Kmax, d), fit g's in [:fit_k[g]]. Returns the final
    centers and each fit's iteration count."""
    g_count = centers.shape[0]
    centers = centers.clone()
    n_iter = [0] * g_count
    running = list(range(g_count))
    ragged = None
    for it in range(1, max_iter + 1):
        if ragged is None:  # the running set changed: its layout and centers (uploads, so not every iteration)
            idx = torch.tensor(running, device=x.device)
            ragged = _Ragged([fit_k[g] for g in running], x.device)
            current, ok = centers[idx, : ragged.kmax], ragged.valid
        sums, counts, mins = _assign_and_sum(x, x_sq, current, ragged)
        empty = (counts == 0) & ok
        new = torch.where(ok[:, :, None], sums / counts.clamp_min(1.0)[:, :, None], current)
        shift = ((new - current) ** 2).sum((1, 2))
        # one host sync per iteration for every running fit
        empties, shifts = torch.stack([empty.sum(1).float(), shift]).tolist()
        for j, count in enumerate(empties):
            if count:
                # Re-seed fit j's empty clusters with the points farthest from their centers (as scikit-learn).
                far = torch.argsort(mins[:, j], descending=True)[: int(count)]
                sums[j][empty[j]] = x[far]
                counts[j][empty[j]] = 1.0
                new[j] = torch.where(ok[j][:, None], sums[j] / counts[j].clamp_min(1.0)[:, None], current[j])
                shifts[j] = float(((new[j] - current[j]) ** 2).sum())
        current = new
        for g in running:
            n_iter[g] = it
        # "not <=", as kmeans_torch's test: a NaN shift (NaN features) runs to max_iter there too
        still = [g for g, s in zip(running, shifts) if not s <= tol and it < max_iter]
        if still != running:
            centers[idx, : ragged.kmax] = current
            ragged = None
            for g in set(running) - set(still):
                fit_done(g)
        running = still
        if not running:
            break
    return centers, n_iter
