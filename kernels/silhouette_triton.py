"""Per-sample summed distance to every cluster of every K, in one pass over the pair distances.

The function both implementations compute::

    out[i, c] = sum_j ||x_i - x_j||_2 * onehot[j, c]        X: (n, d), onehot: (n, C) -> (n, C)

where `onehot` is the stacked one-hot label matrix of every candidate K (C = sum of the K's), so a
single pass over the n x n distances gives, for every sample, the summed distance to every cluster
of every K. The silhouette itself is finished from these sums in `engine.silhouette`.

- `cluster_distance_sums_reference`: plain torch, float64, direct differences (no Gram trick);
  the yardstick for the kernel. O(block * n * d) memory; meant for tests, not for speed.
- `cluster_distance_sums_tiled` (the default, DEFAULT_METHOD): for each block of rows a Triton
  kernel writes the fp16 distances to the columns from the block on (symmetry: each distance once)
  into a (rows, n) buffer in device memory, and cuBLAS multiplies that tile into the one-hot matrix
  (fp16 operands, fp32 sums split every SUM_CHUNK terms). Measured fastest on an H100: 0.23 s at
  200k points (mean silhouette 1.4e-6 from float64; 1.1e-4 without the split), 6.2 s at 1M for
  K = 2..30 (benchmarks/RESULTS.md, run 3).
- `cluster_distance_sums_triton` ("fused"): one kernel. Each program owns BLOCK_M rows and BLOCK_C
  cluster columns; it walks all column blocks j, builds the BLOCK_M x BLOCK_N distance tile in
  registers (||x||^2 + ||y||^2 - 2 x.y, clamped at 0, self-distance forced to 0, sqrt) and
  immediately multiplies it into the one-hot block, so no distance reaches global memory. The
  one-hot blocks are read from the dense (n, C) matrix, or built in the kernel from each sample's
  column index per labelling (`columns=`). On the H100 its best configuration was 8x slower than
  tiled (register pressure: the BLOCK_M x BLOCK_C accumulator spills), and it sums each output
  in one tensor-core accumulator over all n terms, which drifts (see RESULTS.md).
- `cluster_distance_sums`: either, by `method`.

Whether the kernel runs compiled (CUDA) or in the CPU interpreter is fixed when this module is
imported: ``@triton.jit`` reads TRITON_INTERPRET at decoration time, so set it before the first
import of this module (a fresh subprocess is the reliable way; that is what the tests do).
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

# x.y precision. Distances of nearby points come from a difference of large numbers, so plain tf32
# (10-bit mantissa) on x.y would ruin them; tf32x3 recovers about fp32 accuracy on tensor cores.
# "fp16x3" does the same with fp16 halves: X (scaled by a power of two) = hi + lo, both fp16, and
# x.y ~ hi.hi + hi.lo + lo.hi in fp32 accumulation (about 22 bits; fp16 tensor cores run at twice
# the tf32 rate and the operands take half the bytes).
DIST_PRECISIONS = ("tf32x3", "fp16x3", "ieee", "tf32")
# distance x one-hot precision. The one-hot side is exact in any format, so only the distance is
# rounded: "tf32" rounds each distance to 11 significant bits (the errors are unbiased and average
# out over a cluster; small clusters feel them most); "tf32x2" splits the distance into a tf32 head
# and the fp32 remainder and does two tf32 dots (about 21 bits, twice the tensor-core work);
# "ieee" is fp32 FMA (slowest on CUDA). bf16 is not offered: the Triton interpreter cannot run bf16
# dots, so such a path could not be checked on the CPU.
# "fp16": the distance (scaled by a power of two into fp16's range) rounded to nearest, 11 bits like
# tf32, but rounded where tf32 operands are truncated by the tensor cores, so the errors do not add
# up one way; twice tf32's rate. "fp16x2": fp16 head + fp16 remainder, two fp16 dots (~22 bits).
SUM_PRECISIONS = ("fp16", "fp16x2", "tf32", "tf32x2", "ieee")
HALF_SUMS = ("fp16", "fp16x2")
# Ways to run the pass: "fused" keeps each distance tile in registers and multiplies it into the
# one-hot block in the same kernel; "tiled" writes a block of rows of fp16 distances (a row block
# x n tile) to device memory and lets cuBLAS multiply it into the one-hot matrix.
METHODS = ("fused", "tiled")
# Measured on an H100 (benchmarks/RESULTS.md, 2026-11-27), K = 2..30 at 200k points: tiled fp16x3
# 0.25 s, the fastest fused configuration 2.0 s, the fused default 5.9 s; tiled was also the closest
# to float64. At 1M points tiled took 9.6 s for the whole silhouette_all_k.
DEFAULT_METHOD = "tiled"
# Squared distances below FLUSH * sqrt(d) * 2 ||x_i||^2 (X centred) are set to 0. That is about the
# size of the fp32 rounding noise of the Gram formula (a pair that close has ||x_j|| ~ ||x_i||).
# Without it an exact duplicate gets sqrt(noise) instead of 0, far larger than the noise itself;
# a pair truly that close moves by no more than the noise would have moved it.
FLUSH = 8 * 2.0**-24


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cluster_distance_sums_reference(X: torch.Tensor, onehot: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Reference: out[i, c] = sum_j ||x_i - x_j|| * onehot[j, c], in float64 by direct differences.

    X: (n, d) float tensor (any device); onehot: (n, C) float tensor on the same device.
    Returns (n, C) float64 on X's device. Row blocks of `block` keep memory at block * n * d.
    """
    if X.ndim != 2 or onehot.ndim != 2 or onehot.shape[0] != X.shape[0]:
        raise ValueError(f"X must be (n, d) and onehot (n, C); got {tuple(X.shape)} and {tuple(onehot.shape)}")
    X64 = X.to(torch.float64)
    oh64 = onehot.to(torch.float64)
    out = torch.empty((X.shape[0], onehot.shape[1]), dtype=torch.float64, device=X.device)
    for start in range(0, X.shape[0], block):
        diff = X64[start:start + block, None, :] - X64[None, :, :]
        dist = diff.square().sum(-1).sqrt()
        out[start:start + block] = dist @ oh64
    return out


@triton.jit
def _gram_tile(x_ptr, xlo_ptr, rows, cols, row_ok, col_ok, d, stride_xn, stride_xd,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               DIST_PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 x_rows . x_cols over all d features (see DIST_PRECISIONS)."""
    gram = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_ok = ks < d
        a_off = rows[:, None] * stride_xn + ks[None, :] * stride_xd
        b_off = cols[:, None] * stride_xn + ks[None, :] * stride_xd
        a_mask = row_ok[:, None] & k_ok[None, :]
        b_mask = col_ok[:, None] & k_ok[None, :]
        a = tl.load(x_ptr + a_off, mask=a_mask, other=0.0)
        b = tl.load(x_ptr + b_off, mask=b_mask, other=0.0)
        if DIST_PRECISION == "fp16x3":
            a_lo = tl.load(xlo_ptr + a_off, mask=a_mask, other=0.0)
            b_lo = tl.load(xlo_ptr + b_off, mask=b_mask, other=0.0)
            gram = tl.dot(a_lo, tl.trans(b), gram)  # the small cross terms first
            gram = tl.dot(a, tl.trans(b_lo), gram)
            gram = tl.dot(a, tl.trans(b), gram)
        else:
            gram = tl.dot(a, tl.trans(b), gram, input_precision=DIST_PRECISION)
    return gram


@triton.jit
def _distances(gram, sq_i, sq_j, rows, cols, flush):
    """||x_i - x_j|| from the Gram tile, with the noise floor (FLUSH) and zero self-distances."""
    d2 = sq_i[:, None] + sq_j[None, :] - 2.0 * gram
    # below the rounding noise (negatives included) -> 0, see FLUSH
    keep = d2 >= (2.0 * flush) * sq_i[:, None]
    # a point's distance to itself is 0 exactly; the Gram formula leaves rounding noise there
    keep = keep & (rows[:, None] != cols[None, :])
    return tl.sqrt(tl.where(keep, d2, 0.0))


@triton.jit
def _cluster_sums_kernel(
    x_ptr, xlo_ptr, sqn_ptr, oh_ptr, cols_ptr, colk_ptr, out_ptr,
    n, d, C, flush, sum_scale,
    stride_xn, stride_xd, stride_ohn, stride_ohc, stride_cn, stride_on, stride_oc,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    DIST_PRECISION: tl.constexpr, SUM_MODE: tl.constexpr, FROM_COLUMNS: tl.constexpr,
    HALF_SUM: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    # int64 row/column indices: n * C and n * d pass 2^31 at a few million rows
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    ccols = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n
    ccol_ok = ccols < C
    sq_i = tl.load(sqn_ptr + rows, mask=row_ok, other=0.0)
    if FROM_COLUMNS:
        # which labelling each of this program's one-hot columns belongs to
        col_k = tl.load(colk_ptr + ccols, mask=ccol_ok, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for j0 in range(0, n, BLOCK_N):
        cols = tl.arange(0, BLOCK_N).to(tl.int64) + j0
        col_ok = cols < n
        gram = _gram_tile(x_ptr, xlo_ptr, rows, cols, row_ok, col_ok, d, stride_xn, stride_xd,
                          BLOCK_M, BLOCK_N, BLOCK_D, DIST_PRECISION)
        sq_j = tl.load(sqn_ptr + cols, mask=col_ok, other=0.0)
        dist = _distances(gram, sq_i, sq_j, rows, cols, flush)
        # padded columns (j >= n) get a zero one-hot row, so their (finite) distances add nothing
        if FROM_COLUMNS:
            # the one-hot block built from each sample's column index in the labelling of each
            # column: BLOCK_N x (number of K) indices read instead of BLOCK_N x BLOCK_C floats
            code = tl.load(cols_ptr + cols[:, None] * stride_cn + col_k[None, :],
                           mask=col_ok[:, None] & ccol_ok[None, :], other=-1)
            if HALF_SUM:
                oh = (code == ccols[None, :]).to(tl.float16)
            else:
                oh = (code == ccols[None, :]).to(tl.float32)
        else:  # fp16 for the fp16 sums (the host converts it), else fp32
            oh = tl.load(oh_ptr + cols[:, None] * stride_ohn + ccols[None, :] * stride_ohc,
                         mask=col_ok[:, None] & ccol_ok[None, :], other=0.0)
        if SUM_MODE == "fp16":
            acc = tl.dot((dist * sum_scale).to(tl.float16), oh, acc)
        elif SUM_MODE == "fp16x2":
            scaled = dist * sum_scale
            hi16 = scaled.to(tl.float16)
            acc = tl.dot((scaled - hi16.to(tl.float32)).to(tl.float16), oh, acc)
            acc = tl.dot(hi16, oh, acc)
        elif SUM_MODE == "tf32x2":
            # head: the distance with its low 13 mantissa bits cut (exact in tf32); tail: the rest,
            # exact in fp32, which tf32 then rounds at 2^-11 of an already 2^-10-small number
            hi = (dist.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
            acc = tl.dot(hi, oh, acc, input_precision="tf32")
            acc = tl.dot(dist - hi, oh, acc, input_precision="tf32")
        else:
            acc = tl.dot(dist, oh, acc, input_precision=SUM_MODE)
    tl.store(out_ptr + rows[:, None] * stride_on + ccols[None, :] * stride_oc, acc,
             mask=row_ok[:, None] & ccol_ok[None, :])


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def default_config(C: int, d: int) -> dict[str, int]:
    """Launch parameters for C one-hot columns and d features.

    Trade-offs: every extra block along C recomputes all distances, so BLOCK_C is wide (up to 256);
    the fp32 accumulator BLOCK_M x BLOCK_C must stay in registers; each program streams all of X
    and the one-hot matrix, so BLOCK_M sets how often what it reads is reused. For sm_90 with dist
    "tf32x3", sum "tf32" (ahead-of-time builds, spill stores counted with cuobjdump -sass): no
    register spills with Triton 3.8, but 38 spill stores with Triton 3.6 (the device image's) at
    C >= 256. Their speed has not been measured on a GPU: benchmarks/tune_silhouette_triton.py
    times the alternatives, spill-free ones on 3.6 included.
    """
    block_c = min(256, max(16, _next_pow2(C)))
    if block_c >= 256:
        block_m, block_n = 64, 32
    elif block_c == 128:
        block_m, block_n = 64, 64
    else:
        block_m, block_n = 128, 64
    return {"block_m": block_m, "block_n": block_n, "block_d": min(32, max(16, _next_pow2(d))),
            "block_c": block_c, "num_warps": 8, "num_stages": 2}


def _check_precisions(dist_precision, sum_precision, interpreted: bool) -> tuple[str, str]:
    dist_precision = dist_precision or ("ieee" if interpreted else "tf32x3")
    sum_precision = sum_precision or ("ieee" if interpreted else "tf32")
    if dist_precision not in DIST_PRECISIONS:
        raise ValueError(f"dist_precision={dist_precision!r} is not one of: {', '.join(DIST_PRECISIONS)}")
    if sum_precision not in SUM_PRECISIONS:
        raise ValueError(f"sum_precision={sum_precision!r} is not one of: {', '.join(SUM_PRECISIONS)}")
    if interpreted and dist_precision == "tf32x3":
        dist_precision = "ieee"  # same numbers in the interpreter; avoids its tf32x3 emulation path
    return dist_precision, sum_precision


def _pow2_at_most(v: float) -> float:
    """The largest power of two <= v (v > 0)."""
    return 2.0 ** math.floor(math.log2(v))


def _operands(X: torch.Tensor, dist_precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """What the kernels read for x.y: (x, x_lo, squared norms, x_scale).

    X: (n, d). It is centred in float32 (the Gram formula loses accuracy as ||x||^2 grows relative
    to the distances; distances are translation invariant). For "fp16x3" it is also multiplied by
    a power of two (exact) so max |x| is in [128, 256), then split into fp16 hi + lo, both (n, d);
    the kernels then compute x_scale times the distances. Otherwise x is the fp32 (n, d) centred X,
    x_lo the same tensor (unused) and x_scale 1. Squared norms: (n,) fp32 of the scaled rows.
    """
    Xf = X.to(torch.float32)
    Xc = (Xf - Xf.mean(0, dtype=torch.float64).to(torch.float32)).contiguous()
    if dist_precision != "fp16x3":
        return Xc, Xc, Xc.square().sum(1).contiguous(), 1.0
    amax = float(Xc.abs().max()) if Xc.numel() else 0.0
    x_scale = 256.0 / 2.0 ** math.ceil(math.log2(amax)) if amax > 0 else 1.0
    Xs = Xc * x_scale
    hi = Xs.to(torch.float16)
    lo = (Xs - hi.to(torch.float32)).to(torch.float16)
    return hi.contiguous(), lo.contiguous(), Xs.square().sum(1).contiguous(), x_scale


def _sum_scale(sqn: torch.Tensor, sum_precision: str) -> float:
    """Power of two that maps the largest possible distance (2 max ||x||, in the kernels' units)
    to at most 2^14, inside fp16's range (65504) with room; 1 for the fp32 sums."""
    if sum_precision not in HALF_SUMS or sqn.numel() == 0:
        return 1.0
    reach = 2.0 * float(sqn.max()) ** 0.5
    return _pow2_at_most(2.0**14 / reach) if reach > 0 else 1.0


def _flush(d: int) -> float:
    return FLUSH * d**0.5


def cluster_distance_sums_triton(
    X: torch.Tensor,
    onehot: torch.Tensor | None = None,
    *,
    columns: torch.Tensor | None = None,
    n_columns: int | None = None,
    dist_precision: str | None = None,
    sum_precision: str | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_d: int | None = None,
    block_c: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Triton, fused: out[i, c] = sum_j ||x_i - x_j|| * onehot[j, c] without materialising any
    distance tile outside registers.

    X: (n, d) float32 (bf16/fp16 are upcast), CUDA tensor, or CPU tensor under TRITON_INTERPRET=1.
    onehot: (n, C) float tensor of 0/1 on the same device (any float dtype; it is re-cast, exactly).
    Or instead, columns + n_columns: (n, nK) integer tensor, each sample's one-hot column (0..C-1)
    in each labelling, the labellings' columns side by side (labelling k owns a contiguous range),
    and C. The kernel then builds the one-hot blocks from the indices: n x nK integers are read
    instead of n x C floats.
    Returns (n, C) float32 on X's device. Accumulation is fp32.

    Precisions (CUDA defaults: dist "tf32x3", sum "tf32"; interpreter: "ieee" / "ieee"; the
    interpreter computes tf32 dots in fp32 and fp16 dots on fp16-rounded inputs): see
    DIST_PRECISIONS, SUM_PRECISIONS and `_operands`.
    Block sizes are powers of two; C is padded (by masking) to a multiple of BLOCK_C >= 16 for
    tl.dot. Defaults: `default_config`.
    """
    if (onehot is None) == (columns is None):
        raise ValueError("give either onehot or columns (with n_columns)")
    given = onehot if onehot is not None else columns
    if X.ndim != 2 or given.ndim != 2 or given.shape[0] != X.shape[0]:
        raise ValueError(f"X must be (n, d) and onehot (n, C) or columns (n, nK); "
                         f"got {tuple(X.shape)} and {tuple(given.shape)}")
    if given.device != X.device:
        raise ValueError(f"X is on {X.device} but {'onehot' if onehot is not None else 'columns'} on {given.device}")
    if columns is not None and (n_columns is None or n_columns < 0):
        raise ValueError("columns needs n_columns, the number of one-hot columns C")
    interpreted = _interpreted()
    if X.device.type != "cuda" and not interpreted:
        raise RuntimeError("the Triton kernel needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
    dist_precision, sum_precision = _check_precisions(dist_precision, sum_precision, interpreted)
    half_sum = sum_precision in HALF_SUMS

    n, d = X.shape
    C = onehot.shape[1] if onehot is not None else int(n_columns)
    out = torch.empty((n, C), dtype=torch.float32, device=X.device)
    if n == 0 or C == 0:
        return out.zero_()
    xa, xlo, sqn, x_scale = _operands(X, dist_precision)
    sum_scale = _sum_scale(sqn, sum_precision)
    if onehot is not None:
        oh = onehot.to(torch.float16 if half_sum else torch.float32).contiguous()
        cols = col_k = torch.zeros(1, dtype=torch.int32, device=X.device)  # unused by the kernel
    else:
        cols = columns.to(torch.int32).contiguous()
        col_k = _labelling_of_columns(cols, C)
        oh = torch.zeros((1, 1), dtype=torch.float32, device=X.device)  # unused by the kernel

    cfg = default_config(C, d)
    block_m = block_m or cfg["block_m"]
    block_n = block_n or cfg["block_n"]
    block_d = block_d or cfg["block_d"]
    block_c = block_c or cfg["block_c"]
    num_warps = num_warps or cfg["num_warps"]
    num_stages = num_stages or cfg["num_stages"]
    _check_blocks(block_m=block_m, block_n=block_n, block_d=block_d, block_c=block_c)

    grid = (triton.cdiv(n, block_m), triton.cdiv(C, block_c))
    with _on_device_of(xa):
        _cluster_sums_kernel[grid](
            xa, xlo, sqn, oh, cols, col_k, out,
            n, d, C, _flush(d), sum_scale,
            xa.stride(0), xa.stride(1), oh.stride(0), oh.stride(1), cols.stride(0), out.stride(0), out.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_C=block_c,
            DIST_PRECISION=dist_precision, SUM_MODE=sum_precision, FROM_COLUMNS=columns is not None,
            HALF_SUM=half_sum, num_warps=num_warps, num_stages=num_stages,
        )
    if x_scale != 1.0 or sum_scale != 1.0:
        out.mul_(1.0 / (x_scale * sum_scale))  # powers of two: exact
    return out


def _check_blocks(**blocks: int) -> None:
    for name, v in blocks.items():
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name}={v} must be a power of two >= 16 (tl.dot)")


def _on_device_of(t: torch.Tensor):
    """Triton launches on torch's *current* device, not the tensors': make them the same (cuda:N)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# --------------------------------------------------------------------------- tiled: Triton + cuBLAS


@triton.jit
def _distance_tile_kernel(
    x_ptr, xlo_ptr, sqn_ptr, out_ptr,
    row0, n_rows, col0, n_cols, d, flush, sum_scale,
    stride_xn, stride_xd, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DIST_PRECISION: tl.constexpr,
):
    """out[r, c] = fp16(sum_scale * ||x[row0 + r] - x[col0 + c]||) for r < n_rows, c < n_cols."""
    # program_id(0) (row blocks) varies fastest: consecutive programs share one block of columns,
    # so it is read from L2 once for all the row blocks of the tile
    r = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = r < n_rows
    col_ok = c < n_cols
    rows = r + row0
    cols = c + col0
    gram = _gram_tile(x_ptr, xlo_ptr, rows, cols, row_ok, col_ok, d, stride_xn, stride_xd,
                      BLOCK_M, BLOCK_N, BLOCK_D, DIST_PRECISION)
    sq_i = tl.load(sqn_ptr + rows, mask=row_ok, other=0.0)
    sq_j = tl.load(sqn_ptr + cols, mask=col_ok, other=0.0)
    dist = _distances(gram, sq_i, sq_j, rows, cols, flush)
    tl.store(out_ptr + r[:, None] * stride_om + c[None, :], (dist * sum_scale).to(tl.float16),
             mask=row_ok[:, None] & col_ok[None, :])


# terms per tensor-core sum in the tiled method (see cluster_distance_sums_tiled's sum_chunk)
SUM_CHUNK = 8192
# fp16 distance tile budget on CUDA: at most this many bytes, and at most a quarter of free memory
TILE_BYTES_CUDA = 16 << 30
TILE_BYTES_CPU = 64 << 20


def _tile_rows(n: int, device: torch.device, block_m: int) -> int:
    budget = TILE_BYTES_CPU
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(TILE_BYTES_CUDA, free // 4)
    rows = budget // (2 * max(n, 1))
    # at least ~8 row blocks (the symmetric scheme then skips most of the lower triangle), whole
    # kernel row blocks, at least one
    rows = min(rows, max(block_m, -(-n // 8)))
    return int(max(block_m, rows // block_m * block_m))


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp16 (m, k) @ fp16 (k, c) -> fp32 (m, c), accumulated in fp32 (cuBLAS on CUDA). The CPU
    (interpreter tests) has no fp16 -> fp32 matmul: there the same products in fp32 (fp16 values
    are exact in fp32)."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.to(torch.float32), b.to(torch.float32))


def cluster_distance_sums_tiled(
    X: torch.Tensor,
    onehot: torch.Tensor,
    *,
    dist_precision: str | None = None,
    sum_precision: str | None = None,
    block_rows: int | None = None,
    sum_chunk: int | None = SUM_CHUNK,
    block_m: int = 128,
    block_n: int = 128,
    block_d: int = 32,
    num_warps: int = 8,
    num_stages: int = 3,
) -> torch.Tensor:
    """Triton + cuBLAS: out[i, c] = sum_j ||x_i - x_j|| * onehot[j, c], one block of rows at a time.

    X: (n, d) float (CUDA, or CPU under TRITON_INTERPRET=1); onehot: (n, C) 0/1 float on X's
    device. Returns (n, C) float32.

    For each block I of `block_rows` rows, a Triton kernel writes the fp16 distances D[I, J] for
    the columns J from the block's first row on (the upper triangle and the diagonal block) into a
    (block_rows, n) buffer; cuBLAS then adds D @ onehot[J] to out[I] and, for the columns past the
    block, D^T @ onehot[I] to out[J] (fp16 operands, fp32 accumulation). So every distance is
    computed once and the n x C products run on cuBLAS's tensor-core GEMMs. Memory: the tile,
    block_rows x n x 2 bytes (`_tile_rows`: up to 16 GiB or a quarter of free memory).
    dist_precision: DIST_PRECISIONS (CUDA default "fp16x3"; interpreter "ieee"). sum_precision:
    only "fp16" (the tile's format; the sum is then fp32).
    sum_chunk: the most terms one cuBLAS product sums (row blocks are capped to it too); longer
    sums are split and the parts added in fp32 outside the tensor cores. None: no split. Why: on
    the H100 every tensor-core method agreed with float64 to ~7e-4 (relative, worst sum) at
    200k points but within 1e-4 in the mean at 20k: the error grows with the length of the
    tensor cores' own fp32 accumulation. A CPU model of that accumulation with truncation
    reproduces the drift (one-sided) and the split removes it; the split's effect on the GPU is
    not measured yet (benchmarks/tune_silhouette_triton.py has the rows).
    """
    if X.ndim != 2 or onehot.ndim != 2 or onehot.shape[0] != X.shape[0]:
        raise ValueError(f"X must be (n, d) and onehot (n, C); got {tuple(X.shape)} and {tuple(onehot.shape)}")
    if onehot.device != X.device:
        raise ValueError(f"X is on {X.device} but onehot on {onehot.device}")
    interpreted = _interpreted()
    if X.device.type != "cuda" and not interpreted:
        raise RuntimeError("the Triton kernel needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
    if sum_precision not in (None, "fp16"):
        raise ValueError(f"the tiled method sums fp16 distance tiles: sum_precision must be 'fp16', got {sum_precision!r}")
    dist_precision, _ = _check_precisions(dist_precision or ("ieee" if interpreted else "fp16x3"), "fp16", interpreted)
    _check_blocks(block_m=block_m, block_n=block_n, block_d=block_d)

    n, d = X.shape
    C = onehot.shape[1]
    out = torch.zeros((n, C), dtype=torch.float32, device=X.device)
    if n == 0 or C == 0:
        return out
    xa, xlo, sqn, x_scale = _operands(X, dist_precision)
    sum_scale = _sum_scale(sqn, "fp16")
    oh = onehot.to(torch.float16).contiguous()
    if sum_chunk is not None and int(sum_chunk) < 1:
        raise ValueError(f"sum_chunk must be a positive integer or None, got {sum_chunk!r}")
    rows = max(1, min(int(block_rows or _tile_rows(n, X.device, block_m)), n))
    if sum_chunk:
        rows = min(rows, int(sum_chunk))  # the transposed product sums over the block's rows
    chunk = int(sum_chunk) if sum_chunk else n
    buf = torch.empty(rows * n, dtype=torch.float16, device=X.device)
    with _on_device_of(xa):
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            c, m = stop - start, n - start
            tile = buf[: c * m].view(c, m)
            grid = (triton.cdiv(c, block_m), triton.cdiv(m, block_n))
            _distance_tile_kernel[grid](
                xa, xlo, sqn, tile, start, c, start, m, d, _flush(d), sum_scale,
                xa.stride(0), xa.stride(1), tile.stride(0),
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DIST_PRECISION=dist_precision,
                num_warps=num_warps, num_stages=num_stages,
            )
            for k0 in range(0, m, chunk):
                k1 = min(k0 + chunk, m)
                out[start:stop] += _mm_fp32(tile[:, k0:k1], oh[start + k0:start + k1])
            if stop < n:
                out[stop:] += _mm_fp32(tile[:, c:].T, oh[start:stop])
    out.mul_(1.0 / (x_scale * sum_scale))  # powers of two: exact
    return out


def cluster_distance_sums(X: torch.Tensor, onehot: torch.Tensor | None = None, method: str | None = None,
                          **options) -> torch.Tensor:
    """`cluster_distance_sums_triton` (method "fused") or `cluster_distance_sums_tiled` ("tiled");
    None: DEFAULT_METHOD. options: that function's keyword arguments."""
    method = method or DEFAULT_METHOD
    if method == "fused":
        return cluster_distance_sums_triton(X, onehot, **options)
    if method == "tiled":
        return cluster_distance_sums_tiled(X, onehot, **options)
    raise ValueError(f"method={method!r} is not one of: {', '.join(METHODS)}")


def _labelling_of_columns(cols: torch.Tensor, C: int) -> torch.Tensor:
    """cols: (n, nK) int32 column indices -> (C,) int32: the labelling (0..nK-1) each column
    belongs to, from each labelling's range of columns (its min and max index over the samples).
    Columns no sample uses inside a range still belong to it; ValueError when ranges overlap."""
    lo, hi = cols.min(0).values.tolist(), cols.max(0).values.tolist()
    col_k = torch.zeros(C, dtype=torch.int32)
    for k, (a, b) in enumerate(zip(lo, hi)):
        if a < 0 or b >= C or (k and a <= hi[k - 1]):
            raise ValueError(f"columns of labelling {k} span {a}..{b}: each labelling needs its own range in 0..{C - 1}")
        col_k[a:] = k
    return col_k.to(cols.device)


__all__ = [
    "DIST_PRECISIONS",
    "FLUSH",
    "METHODS",
    "SUM_PRECISIONS",
    "cluster_distance_sums",
    "cluster_distance_sums_reference",
    "cluster_distance_sums_tiled",
    "cluster_distance_sums_triton",
    "default_config",
]
