"""Exact silhouette for every candidate K in one pass over the pair distances.

Pair distances do not depend on K. Each distance tile is computed once and multiplied by the
stacked one-hot label matrix of every K, (n, C) with C = sum of the K's. That gives, per sample,
the summed distance to every cluster of every K; a(i), b(i) and s(i) then follow per K from an
(n, K) slice. Cost about 2 n^2 (d + C) flops; memory O(tile + n C).

Conventions follow sklearn.metrics.silhouette_samples (euclidean):
- a(i): mean distance to the other members of i's cluster (sum / (size - 1));
- b(i): smallest mean distance to the members of another cluster;
- s(i) = (b - a) / max(a, b); a member of a singleton cluster gets 0; 0 / 0 gives 0;
- labels need not be contiguous ({0, 2, 5} is three clusters); a K needs 2 <= clusters <= n - 1.

Backends (`backend=`):
- "torch": row blocks of X against the rest of X with BLAS (CPU or CUDA; only the upper triangle
  of the symmetric distance matrix is computed). Float64 on the CPU (the reference the fast paths
  are held to: fp32 Gram distances of near neighbours were off by up to ~1e-4 in s(i), and the
  CPU path is still ~30x scikit-learn), fp32 on CUDA. Matmul on the centred X, squared distances
  ||x||^2 + ||y||^2 - 2 x.y, values under the rounding noise set to 0 (exact duplicates get exactly
  0), self-distances 0, sqrt, then matmuls with the one-hot matrix for both the block's rows and
  its columns. On CUDA, TF32 matmul is switched off for the call.
- "triton": `kernels.silhouette_triton` (CUDA, or CPU tensors under TRITON_INTERPRET=1): by
  default the tiled method, Triton fp16 distance tiles multiplied into the one-hot matrix by
  cuBLAS; `triton_options={"method": "fused"}` keeps each tile in registers instead (slower on
  the H100, see benchmarks/RESULTS.md).
- "auto": "triton" when X is on CUDA and Triton is available, else "torch".
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")

# Squared distances below FLUSH * sqrt(d) * 2 ||x_i||^2 (X centred) are taken as 0: that is about the
# size of the fp32 rounding noise of the Gram formula. Without it an exact duplicate gets
# sqrt(noise), far larger than the noise. Same rule as kernels.silhouette_triton.FLUSH.
FLUSH = 8 * 2.0**-24
FLUSH_FP64 = 8 * 2.0**-53  # the same rule for the float64 Gram (the CPU path)

# Memory for the one fp32 distance tile of the torch backend. On the CPU the block size hardly
# matters when the machine is quiet; on a busy machine fewer, larger blocks (fewer thread-pool
# barriers) were faster, so the budget alone sets it.
_TILE_BUDGET_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}


@dataclass
class SilhouetteResult:
    """Silhouette of one labelling (one K).

    mean: mean silhouette over the samples it was computed for (all, or the sampled ones).
    samples: (n,) float32 numpy array of per-sample silhouettes; NaN for points not in the sample
        when `sampled` is True.
    cluster_means: label value (as given, e.g. 0, 2, 5) -> mean silhouette of its (sampled) members.
    fraction_negative: fraction of the (sampled) samples with s < 0.
    sampled: True when computed on a stratified sample (see `silhouette_all_k`).
    n_clusters: number of distinct labels in the full labelling.
    """

    mean: float
    samples: np.ndarray
    cluster_means: dict[int, float]
    fraction_negative: float
    sampled: bool = False
    n_clusters: int = 0
    sample_indices: np.ndarray | None = field(default=None, repr=False)  # (m,) int64 when sampled


def default_exact_limit(device: torch.device | str) -> int:
    """Largest n for which the K search should compute the exact all-K silhouette.

    Above it, use `sample_size=` (the search should switch to sampling automatically).
    Rule: the n at which one exact all-K pass (K = 2..15, d = 200, 119 one-hot columns) is
    expected to take about 60 s. The cost grows as n^2, so n_limit = n_bench * sqrt(60 s / t_bench).
    - CPU: 75,000, from the torch backend on the 2-core development machine while it was shared
      with other jobs: 40,000 points in 16.6 s gives 76,000 (the same machine less busy ran 20,000
      points in 1.2 to 2.0 s, which would give 110,000 to 140,000); rounded down.
    - CUDA: 1,000,000. Measured on an H100 (benchmarks/RESULTS.md, run 3): K = 2..30 (464 columns,
      more than the rule's 119) on 1M points took 6.2 s with the default tiled method, so time alone
      would allow ~3M. Kept at 1M, the largest n whose time was measured; the accuracy was measured
      at 200k (mean silhouette 1.4e-6 from float64 with the split sums), not above.
    """
    dev = torch.device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        return 1_000_000
    return 75_000


# --------------------------------------------------------------------------- labels


@dataclass
class _Labelling:
    values: np.ndarray   # (K,) the distinct label values, sorted
    codes: np.ndarray    # (n,) int64 in 0..K-1
    counts: np.ndarray   # (K,) int64, all >= 1


def _encode_labels(labels_per_k: Sequence, n: int) -> list[_Labelling]:
    out = []
    for i, lab in enumerate(labels_per_k):
        arr = lab.detach().cpu().numpy() if isinstance(lab, torch.Tensor) else np.asarray(lab)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ConfigError(f"labels_per_k[{i}] must have shape ({n},), got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ConfigError(f"labels_per_k[{i}] must hold integers, got dtype {arr.dtype}")
        values, codes, counts = _unique_codes(arr)
        if not 2 <= len(values) <= n - 1:
            raise ConfigError(
                f"labels_per_k[{i}] has {len(values)} clusters; the silhouette needs 2 <= clusters <= n - 1 (n={n})"
            )
        out.append(_Labelling(values, codes, counts))
    return out


def _unique_codes(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(arr, return_inverse=True, return_counts=True) for a 1-D integer array.

    Labels are nearly always small non-negative ints (KMeans output): then one bincount and a
    lookup table, O(n), instead of np.unique's sort (1.3 s for 29 labellings of 1M points on the
    development VM). Returns (values (K,), codes (n,) int64 in 0..K-1, counts (K,) int64)."""
    if arr.size and arr.dtype != np.bool_:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi < max(1 << 16, 4 * arr.size):
            counts = np.bincount(arr, minlength=hi + 1)
            values = np.flatnonzero(counts)
            if len(values) == hi + 1:  # contiguous 0..K-1: the labels are the codes
                return values, arr.astype(np.int64, copy=False), counts.astype(np.int64)
            lut = np.zeros(hi + 1, dtype=np.int64)
            lut[values] = np.arange(len(values))
            return values, lut[arr], counts[values].astype(np.int64)
    values, codes, counts = np.unique(arr, return_inverse=True, return_counts=True)
    return values, codes.reshape(-1).astype(np.int64), counts.astype(np.int64)


def _column_rows(labellings: Sequence[_Labelling]) -> np.ndarray:
    """(nK, n) int64, contiguous: row i holds each sample's one-hot column in labelling i (codes +
    that K's offset). Rows, not columns: stacking 1M-long columns is a strided write per element
    (1 s for 29 labellings here)."""
    offsets = np.cumsum([0] + [len(lab.values) for lab in labellings[:-1]])
    return np.stack([lab.codes + off for lab, off in zip(labellings, offsets)], axis=0)


def _columns(labellings: Sequence[_Labelling]) -> np.ndarray:
    """(n, nK) int64 view: the one-hot column of each sample in each labelling."""
    return _column_rows(labellings).T


def _columns_on(labellings: Sequence[_Labelling], device: torch.device) -> torch.Tensor:
    """`_columns` as an (n, nK) int64 tensor on `device`: the contiguous (nK, n) block is what
    travels (a non-contiguous copy would be made contiguous on the host first), then transposed."""
    return torch.from_numpy(_column_rows(labellings)).to(device).T


def _onehot(cols: torch.Tensor, total: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """cols: (n, nK) int64 on the target device -> (n, total) `dtype` one-hot matrices side by side."""
    onehot = torch.zeros((cols.shape[0], total), dtype=dtype, device=cols.device)
    return onehot.scatter_(1, cols, 1.0)


# --------------------------------------------------------------------------- distance sums


_ieee_lock = threading.Lock()
_ieee_users = 0  # _ieee_matmul blocks running now, in any thread
_ieee_saved = "highest"  # the precision the program had when the first of them began


@contextlib.contextmanager
def _ieee_matmul(device: torch.device):
    """TF32 matmul would wreck the Gram-formula distances of nearby points; switch it off here.

    The setting is process-wide, so overlapping blocks (fits in several threads) share one switch:
    the first saves the program's setting, the last restores it (each saving and restoring its
    own could leave "highest" behind for good)."""
    global _ieee_users, _ieee_saved
    if device.type != "cuda":
        yield
        return
    with _ieee_lock:
        if _ieee_users == 0:
            _ieee_saved = _matmul_setting()
            _set_matmul(_ieee_saved[0], "ieee")
        _ieee_users += 1
    try:
        yield
    finally:
        with _ieee_lock:
            _ieee_users -= 1
            if _ieee_users == 0:
                _set_matmul(*_ieee_saved)


def _matmul_setting() -> tuple[str, str]:
    """(API, value) of CUDA's fp32 matmul precision as the program set it: torch's global setting
    ("legacy", e.g. "high"), or, where the program used the per-backend setting of torch >= 2.9
    (torch.backends.cuda.matmul.fp32_precision), that one: torch raises on reading the global one
    once both were used."""
    try:
        return "legacy", torch.get_float32_matmul_precision()
    except RuntimeError:
        return "backend", torch.backends.cuda.matmul.fp32_precision


def _set_matmul(api: str, value: str) -> None:
    """Set the precision through the API the program uses; "ieee" means full fp32 in both."""
    if api == "legacy":
        torch.set_float32_matmul_precision("highest" if value == "ieee" else value)
    else:
        torch.backends.cuda.matmul.fp32_precision = value


def _work_dtype(device: torch.device) -> torch.dtype:
    """What the torch backend computes in: float64 on the CPU (the reference), float32 on CUDA."""
    return torch.float32 if device.type == "cuda" else torch.float64


def _auto_chunk(n: int, device: torch.device) -> int:
    budget = _TILE_BUDGET_BYTES["cuda" if device.type == "cuda" else "cpu"]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, free // 8)
    itemsize = torch.empty(0, dtype=_work_dtype(device)).element_size()
    rows = max(1, budget // (itemsize * max(n, 1)))  # one tile row per row
    # at least ~8 row blocks, so the symmetric scheme skips most of the lower triangle
    return int(max(1, min(rows, n, max(64, -(-n // 8)))))


def _centre(X: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """X - mean(X), computed in float64, returned as `dtype`. Distances are translation invariant;
    the Gram formula's error is not."""
    X64 = X.to(torch.float64)
    return (X64 - X64.mean(0)).to(dtype).contiguous()


def _cluster_distance_sums_torch(Xc: torch.Tensor, onehot: torch.Tensor, chunk_size: int,
                                 done: Callable[[float], None] | None = None) -> torch.Tensor:
    """sums[i, c] = sum_j ||x_i - x_j|| onehot[j, c]. Xc: (n, d) float32 or float64, centred;
    onehot: (n, C) of the same dtype on the same device. Returns (n, C) of that dtype. Extra
    memory: one chunk_size x n tile.

    The distance matrix is symmetric, so only the blocks on and right of the diagonal are computed:
    row block I against columns start(I)..n gives out[I] += D @ onehot[start:] and, for the columns
    past the block, out[J] += D^T @ onehot[I]. That halves the distance work (the one-hot products
    stay whole). done(fraction) after each row block: the fraction of the distance work finished.
    """
    n, d = Xc.shape
    sq = Xc.square().sum(1)
    flush = FLUSH if Xc.dtype == torch.float32 else FLUSH_FP64
    thr = (2.0 * flush * math.sqrt(d)) * sq  # per-row noise floor of d^2, see FLUSH
    out = torch.zeros((n, onehot.shape[1]), dtype=Xc.dtype, device=Xc.device)
    # one flat buffer, viewed as a contiguous (c, m) tile each step: fresh tile-sized allocations
    # cost more than the arithmetic on the CPU
    buf = torch.empty(chunk_size * n, dtype=Xc.dtype, device=Xc.device)
    with _ieee_matmul(Xc.device):
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            c, m = stop - start, n - start
            G = buf[: c * m].view(c, m)
            torch.addmm(sq[None, start:], Xc[start:stop], Xc[start:].T, beta=1.0, alpha=-2.0, out=G)
            G.add_(sq[start:stop, None])
            diag = G.view(-1)[:: m + 1]  # self-distances: row r, column r (c of them, as m >= c)
            block_thr = thr[start:stop]
            diag.copy_(block_thr)  # at the floor, not below it: does not flag its row
            # negatives and values under the noise floor -> 0
            if G.is_cuda:
                G.masked_fill_(G < block_thr[:, None], 0.0)  # no host sync inside the loop
            else:
                low = G.amin(1) < block_thr  # one read pass; rows with nothing to fix (nearly all) skip the fill
                if bool(low.any()):
                    rows = low.nonzero().squeeze(1)
                    part = G.index_select(0, rows)
                    part.masked_fill_(part < block_thr[rows, None], 0.0)
                    G.index_copy_(0, rows, part)
            diag.zero_()
            G.sqrt_()
            out[start:stop].addmm_(G, onehot[start:])
            if stop < n:
                out[stop:].addmm_(G[:, c:].T, onehot[start:stop])
            if done is not None:  # block I covers columns start..n: the work left is the triangle past stop
                done(1.0 - ((n - stop) / n) ** 2)
    return out


def _resolve_backend(backend: str, device: torch.device, notify: Callable[[str], None] | None) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of: {', '.join(BACKENDS)}")
    from .device import capability, triton_interpreted

    triton_cap = capability("triton")
    if backend == "triton":
        if not triton_cap.available:
            raise BackendUnavailable(f"silhouette backend 'triton': {triton_cap.reason}; use backend='torch'")
        if device.type != "cuda" and not triton_interpreted():
            raise BackendUnavailable(
                f"silhouette backend 'triton' needs X on a CUDA device (X is on {device}); "
                "move X to CUDA or use backend='torch'"
            )
        return "triton"
    if backend == "torch":
        return "torch"
    if device.type == "cuda":
        if triton_cap.available:
            return "triton"
        if notify:
            notify(f"Silhouette: torch backend (Triton unavailable: {triton_cap.reason})")
    return "torch"


def _distance_sums(Xc: torch.Tensor, onehot: torch.Tensor, backend: str, chunk_size: int | None,
                   auto: bool, notify: Callable[[str], None] | None,
                   triton_options: dict | None = None, done: Callable[[float], None] | None = None) -> torch.Tensor:
    if backend == "triton":
        try:
            from kernels.silhouette_triton import cluster_distance_sums

            return cluster_distance_sums(Xc, onehot, **_kernel_options(triton_options))
        except Exception as exc:  # auto may fall back (and says so); a named backend may not
            if not auto:
                raise
            first_line = (str(exc).splitlines() or [""])[0][:160]
            msg = f"Silhouette: Triton kernel failed ({type(exc).__name__}: {first_line}); using torch"
            (notify or log.warning)(msg)
    chunk = chunk_size or _auto_chunk(Xc.shape[0], Xc.device)
    work = _work_dtype(Xc.device)
    return _cluster_distance_sums_torch(Xc.to(work), onehot.to(work), max(1, min(int(chunk), Xc.shape[0])), done)


# --------------------------------------------------------------------------- silhouettes from sums


def _silhouettes_from_sums(sums: torch.Tensor, cols: torch.Tensor, labellings: Sequence[_Labelling]) -> np.ndarray:
    """sums: (n, C) float32 summed distance of each sample to each cluster column; cols: (n, nK)
    int64, the column of each sample's own cluster in each labelling. Returns (n, nK) float64 s(i)
    on the host. Temporaries stay at (n, K) per labelling: on the GPU n may be 10^6 or more."""
    if sums.device.type == "cpu":
        # NumPy, single-threaded: these are many small ops, and torch's thread pool costs more
        # than it gives on them (measured on the shared 2-core machine)
        return _silhouettes_from_sums_numpy(sums.numpy(), cols.numpy(), labellings)
    device = sums.device
    counts = torch.from_numpy(np.concatenate([lab.counts for lab in labellings])).to(device)
    own = sums.gather(1, cols).to(torch.float64)            # (n, nK) summed distance to own cluster
    own_count = counts[cols]
    a = own / (own_count - 1).clamp(min=1)
    b = torch.empty_like(a)
    offset = 0
    for i, lab in enumerate(labellings):
        k = len(lab.values)
        means = sums[:, offset:offset + k] / counts[offset:offset + k]
        means.scatter_(1, cols[:, i:i + 1] - offset, math.inf)   # own cluster is not a candidate for b
        b[:, i] = means.amin(1)
        offset += k
    denom = torch.maximum(a, b)
    s = torch.where(denom > 0, (b - a) / torch.where(denom > 0, denom, 1.0), 0.0)  # 0 / 0 -> 0
    # singleton clusters: 0 (sklearn's convention). Transposed on the device and back, so the copy
    # is contiguous and each labelling's column is a contiguous row on the host.
    return torch.where(own_count > 1, s, 0.0).T.contiguous().cpu().numpy().T


def _silhouettes_from_sums_numpy(sums: np.ndarray, cols: np.ndarray, labellings: Sequence[_Labelling]) -> np.ndarray:
    """The same as `_silhouettes_from_sums`, for host arrays."""
    counts = np.concatenate([lab.counts for lab in labellings])
    own = np.take_along_axis(sums, cols, 1).astype(np.float64)
    own_count = counts[cols]
    a = own / np.maximum(own_count - 1, 1)
    b = np.empty_like(a)
    offset = 0
    for i, lab in enumerate(labellings):
        k = len(lab.values)
        means = sums[:, offset:offset + k] / counts[offset:offset + k]
        np.put_along_axis(means, cols[:, i:i + 1] - offset, np.inf, 1)
        b[:, i] = means.min(1)
        offset += k
    denom = np.maximum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > 0, (b - a) / denom, 0.0)
    return np.where(own_count > 1, s, 0.0)


def _summarise(s: np.ndarray, lab: _Labelling, codes: np.ndarray,
               members: np.ndarray | None = None) -> tuple[float, dict[int, float], float]:
    """s: (m,) float64 silhouettes of the points whose codes are `codes`; members: their count per
    cluster when known (the exact mode: lab.counts), else counted here."""
    k = len(lab.values)
    if members is None:
        members = np.bincount(codes, minlength=k)
    totals = np.bincount(codes, weights=s, minlength=k)
    cluster_means = {
        _py(lab.values[c]): float(totals[c] / members[c]) for c in range(k) if members[c] > 0
    }
    return float(s.mean()), cluster_means, float(np.count_nonzero(s < 0)) / max(len(s), 1)


def _py(v):
    return v.item() if hasattr(v, "item") else v


# --------------------------------------------------------------------------- sampling


def _stratified_sample(lab: _Labelling, sample_size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted, int64) of a stratified sample: proportional allocation by cluster size
    (largest remainders), but every cluster gets at least min(size, 2) points, so each sampled
    member of a non-singleton cluster has a defined a(i). The sample can therefore exceed
    `sample_size` when there are more than sample_size / 2 clusters."""
    counts = lab.counts
    n = counts.sum()
    target = sample_size * counts / n
    quota = np.minimum(counts, np.maximum(np.minimum(counts, 2), np.floor(target).astype(np.int64)))
    remaining = int(sample_size - quota.sum())
    while remaining > 0:
        room = quota < counts
        frac = np.where(room, target - quota, -np.inf)
        order = np.argsort(-frac, kind="stable")[: min(remaining, int(room.sum()))]
        quota[order] += 1
        remaining -= len(order)
    order = np.argsort(lab.codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    picked = [rng.choice(order[s:s + c], size=q, replace=False) for s, c, q in zip(starts, counts, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def stratified_rows(labels: np.ndarray, sample_size: int, seed: int) -> np.ndarray:
    """Sorted int64 row indices of the stratified sample silhouette_all_k scores (every cluster
    keeps min(size, 2) rows, so a sample never loses a cluster), for backends that score a K on
    their own (scikit-learn, cuML). labels: (n,) ints 0..K-1; the draw is seeded by (seed, K), so
    each K has its own."""
    labels = np.asarray(labels)
    values, codes, counts = _unique_codes(labels)
    rng = np.random.default_rng([int(seed), int(labels.max()) + 1])
    return _stratified_sample(_Labelling(values, codes, counts), int(sample_size), rng)


# --------------------------------------------------------------------------- public API


# The Triton kernels' method and precision names (kernels/silhouette_triton.py METHODS,
# DIST_PRECISIONS, SUM_PRECISIONS), repeated so that checking them does not import Triton.
_TRITON_METHODS = ("fused", "tiled")
_TRITON_DIST = ("tf32x3", "fp16x3", "ieee", "tf32")
_TRITON_SUM = ("fp16", "fp16x2", "tf32", "tf32x2", "ieee")
# launch parameters a caller may set (each kernel takes its own subset)
_TRITON_LAUNCH = ("block_m", "block_n", "block_d", "block_c", "block_rows", "sum_chunk", "num_warps", "num_stages")


def _check_triton_options(options) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise ConfigError(f"triton_options must be a dict, got {type(options).__name__}")
    known = ("method", "dist_precision", "sum_precision") + _TRITON_LAUNCH
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"triton_options: unknown key {key!r}; known: {', '.join(known)}")
        choices = {"method": _TRITON_METHODS, "dist_precision": _TRITON_DIST, "sum_precision": _TRITON_SUM}.get(key)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"triton_options[{key!r}]={value!r} is not one of: {', '.join(choices)}")
        if key in _TRITON_LAUNCH and value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"triton_options[{key!r}] must be a positive integer, got {value!r}")


def _kernel_options(options: dict | None) -> dict:
    """triton_options -> keyword arguments of kernels.silhouette_triton.cluster_distance_sums
    (None values dropped: the kernel's defaults; except sum_chunk, where None means no split)."""
    return {k: v for k, v in (options or {}).items() if v is not None or k == "sum_chunk"}


def _as_tensor(X) -> torch.Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, torch.Tensor):
        raise ConfigError(f"X must be a torch tensor or numpy array, got {type(X).__name__}")
    if X.ndim != 2:
        raise ConfigError(f"X must be 2-D (n, d), got shape {tuple(X.shape)}")
    X = X.to(torch.float32)
    if not bool(torch.isfinite(X).all()):
        raise ConfigError("X contains NaN or infinity")
    return X


def silhouette_all_k(
    X,
    labels_per_k: Sequence,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    sample_size: int | None = None,
    seed: int = 0,
    notify: Callable[[str], None] | None = None,
    triton_options: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[SilhouetteResult]:
    """Silhouette (euclidean) of every labelling in `labels_per_k`, from one pass over the distances.

    X: (n, d) float tensor (CPU or CUDA) or numpy array, taken as float32 points; the torch
        backend computes in float64 on the CPU and float32 on CUDA, the Triton kernels as they say.
    labels_per_k: list of (n,) integer label vectors (numpy or torch), one per candidate K. Label
        values need not be contiguous; each needs 2 <= distinct labels <= n - 1.
    backend: "auto" | "torch" | "triton" (see module docstring). "triton" when Triton cannot run
        here raises BackendUnavailable.
    chunk_size: rows per distance tile for the torch backend; None picks it from a memory budget
        for the (chunk_size, n) tile (256 MiB on the CPU; on CUDA 1 GiB or 1/8 of the free
        memory, whichever is smaller). The Triton
        backend keeps its tiles in registers and ignores it.
    sample_size: None for the exact silhouette. An int m < n computes, per K, the silhouettes of a
        stratified sample (drawn from `seed` and the K's position in the list; proportional to
        cluster size, at least min(size, 2) points per cluster) against that sample only, like
        sklearn's silhouette_score(sample_size=) but stratified. Then `samples` holds NaN for the
        points outside the sample, `mean`, `cluster_means` and `fraction_negative` are over the
        sampled points, and `sampled` is True. Each K costs its own pass over the m x m distances.
        m >= n gives the exact result.
    notify: called with a one-line message when "auto" falls back (Triton unavailable or failed).
    triton_options: how the Triton backend runs (kernels.silhouette_triton): "method" ("fused" or
        "tiled"), "dist_precision", "sum_precision" and launch parameters (block_m, ...), e.g.
        {"method": "fused", "dist_precision": "tf32", "sum_precision": "tf32"}. None keeps the
        defaults. Ignored by the torch backend (IEEE float64 on the CPU, fp32 on CUDA). A tuning and
        benchmarking knob.
    progress: called with a count of labellings' worth of work done, adding up to
        len(labels_per_k): per row block of the exact pass (by the share of the distance work it
        did), after each K's pass when sampled. The exact pass over 75,000 points takes about a
        minute on 2 cores, and a K search showed nothing moving all that time.

    Returns one SilhouetteResult per labelling, in order; `samples` on the host as float32.
    """
    X = _as_tensor(X)
    n = X.shape[0]
    if n < 3:
        raise ConfigError(f"the silhouette needs at least 3 samples, got n={n}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ConfigError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if sample_size is not None and int(sample_size) < 2:
        raise ConfigError(f"sample_size must be an integer >= 2 or None, got {sample_size!r}")
    _check_triton_options(triton_options)
    labellings = _encode_labels(labels_per_k, n)
    if not labellings:
        return []
    resolved = _resolve_backend(backend, X.device, notify)
    auto = backend == "auto"
    # centred in float64; the torch backend works in _work_dtype, the Triton kernels in float32
    Xc = _centre(X, _work_dtype(X.device) if resolved == "torch" else torch.float32)
    reported = 0

    def done(fraction: float) -> None:  # fraction of all the labellings' work -> whole progress steps
        nonlocal reported
        target = min(len(labellings), int(fraction * len(labellings) + 1e-9))
        if progress is not None and target > reported:
            progress(target - reported)
            reported = target

    if sample_size is None or int(sample_size) >= n:
        cols = _columns_on(labellings, X.device)
        total = sum(len(lab.values) for lab in labellings)
        sums = _distance_sums(Xc, _onehot(cols, total, Xc.dtype), resolved, chunk_size, auto, notify, triton_options,
                              # the last step waits for the per-sample silhouettes below
                              done=lambda f: done(min(f, 1.0 - 0.5 / len(labellings))))
        s_all = _silhouettes_from_sums(sums, cols, labellings)
        results = []
        for i, lab in enumerate(labellings):
            s = np.ascontiguousarray(s_all[:, i])
            mean, cmeans, neg = _summarise(s, lab, lab.codes, lab.counts)
            results.append(SilhouetteResult(mean, s.astype(np.float32), cmeans, neg, False, len(lab.values)))
        done(1.0)
        return results

    results = []
    for i, lab in enumerate(labellings):
        k = len(lab.values)
        rng = np.random.default_rng([int(seed), i])
        idx = _stratified_sample(lab, int(sample_size), rng)
        if len(idx) >= n:  # the per-cluster minimum took everything: this K is exact
            idx = np.arange(n, dtype=np.int64)
        sub = _Labelling(lab.values, lab.codes[idx], np.bincount(lab.codes[idx], minlength=k))
        Xs = _centre(Xc.index_select(0, torch.from_numpy(idx).to(X.device)), Xc.dtype)
        cols = torch.from_numpy(sub.codes[:, None]).to(X.device)
        sums = _distance_sums(Xs, _onehot(cols, k, Xs.dtype), resolved, chunk_size, auto, notify, triton_options)
        s_sub = _silhouettes_from_sums(sums, cols, [sub])[:, 0]
        samples = np.full(n, np.nan, dtype=np.float32)
        samples[idx] = s_sub
        mean, cmeans, neg = _summarise(s_sub, lab, sub.codes)
        sampled = len(idx) < n
        results.append(SilhouetteResult(mean, samples, cmeans, neg, sampled, k, idx if sampled else None))
        done((i + 1) / len(labellings))
    return results


__all__ = ["BACKENDS", "SilhouetteResult", "default_exact_limit", "silhouette_all_k"]
