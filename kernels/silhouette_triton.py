"""Per-sample summed distance to every cluster of every K, in one pass over the pair distances.

The function both implementations compute::

    out[i, c] = sum_j ||x_i - x_j||_2 * onehot[j, c]        X: (n, d), onehot: (n, C) -> (n, C)

where `onehot` is the stacked one-hot label matrix of every candidate K (C = sum of the K's), so a
single pass over the n x n distances gives, for every sample, the summed distance to every cluster
of every K. The silhouette itself is finished from these sums in `engine.silhouette`.

- `cluster_distance_sums_reference`: plain torch, float64, direct differences (no Gram trick);
  the yardstick for the kernel. O(block * n * d) memory; meant for tests, not for speed.
- `cluster_distance_sums_triton`: the Triton kernel. Each program owns BLOCK_M rows and BLOCK_C
  cluster columns; it walks all column blocks j, builds the BLOCK_M x BLOCK_N distance tile in
  registers (||x||^2 + ||y||^2 - 2 x.y, clamped at 0, self-distance forced to 0, sqrt) and
  immediately multiplies it into the one-hot block, so the n x n matrix never reaches global memory.
  The one-hot blocks are read from the dense (n, C) matrix, or built in the kernel from each
  sample's column index per labelling (`columns=`; fewer bytes, not yet timed on a GPU).

Whether the kernel runs compiled (CUDA) or in the CPU interpreter is fixed when this module is
imported: ``@triton.jit`` reads TRITON_INTERPRET at decoration time, so set it before the first
import of this module (a fresh subprocess is the reliable way; that is what the tests do).
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# x.y precision. Distances of nearby points come from a difference of large numbers, so plain tf32
# (10-bit mantissa) on x.y would ruin them; tf32x3 recovers about fp32 accuracy on tensor cores.
DIST_PRECISIONS = ("tf32x3", "ieee", "tf32")
# distance x one-hot precision. The one-hot side is exact in any format, so only the distance is
# rounded: "tf32" rounds each distance to 11 significant bits (the errors are unbiased and average
# out over a cluster; small clusters feel them most); "tf32x2" splits the distance into a tf32 head
# and the fp32 remainder and does two tf32 dots (about 21 bits, twice the tensor-core work);
# "ieee" is fp32 FMA (slowest on CUDA). bf16 is not offered: the Triton interpreter cannot run bf16
# dots, so such a path could not be checked on the CPU.
SUM_PRECISIONS = ("tf32", "tf32x2", "ieee")
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
def _cluster_sums_kernel(
    x_ptr, sqn_ptr, oh_ptr, cols_ptr, colk_ptr, out_ptr,
    n, d, C, flush,
    stride_xn, stride_xd, stride_ohn, stride_ohc, stride_cn, stride_on, stride_oc,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    DIST_PRECISION: tl.constexpr, SUM_MODE: tl.constexpr, FROM_COLUMNS: tl.constexpr,
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
        gram = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, d, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            k_ok = ks < d
            a = tl.load(x_ptr + rows[:, None] * stride_xn + ks[None, :] * stride_xd,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(x_ptr + cols[:, None] * stride_xn + ks[None, :] * stride_xd,
                        mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            gram = tl.dot(a, tl.trans(b), gram, input_precision=DIST_PRECISION)
        sq_j = tl.load(sqn_ptr + cols, mask=col_ok, other=0.0)
        d2 = sq_i[:, None] + sq_j[None, :] - 2.0 * gram
        # below the rounding noise (negatives included) -> 0, see FLUSH
        keep = d2 >= (2.0 * flush) * sq_i[:, None]
        # a point's distance to itself is 0 exactly; the Gram formula leaves rounding noise there
        keep = keep & (rows[:, None] != cols[None, :])
        d2 = tl.where(keep, d2, 0.0)
        dist = tl.sqrt(d2)
        # padded columns (j >= n) get a zero one-hot row, so their (finite) distances add nothing
        if FROM_COLUMNS:
            # the one-hot block built from each sample's column index in the labelling of each
            # column: BLOCK_N x (number of K) indices read instead of BLOCK_N x BLOCK_C floats
            code = tl.load(cols_ptr + cols[:, None] * stride_cn + col_k[None, :],
                           mask=col_ok[:, None] & ccol_ok[None, :], other=-1)
            oh = (code == ccols[None, :]).to(tl.float32)
        else:
            oh = tl.load(oh_ptr + cols[:, None] * stride_ohn + ccols[None, :] * stride_ohc,
                         mask=col_ok[:, None] & ccol_ok[None, :], other=0.0)
        if SUM_MODE == "tf32x2":
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
) -> torch.Tensor:
    """Triton: out[i, c] = sum_j ||x_i - x_j|| * onehot[j, c] without materialising the n x n tile.

    X: (n, d) float32 (bf16/fp16 are upcast), CUDA tensor, or CPU tensor under TRITON_INTERPRET=1.
    onehot: (n, C) float tensor of 0/1 on the same device (any float dtype; it is re-cast, exactly).
    Or instead, columns + n_columns: (n, nK) integer tensor, each sample's one-hot column (0..C-1)
    in each labelling, the labellings' columns side by side (labelling k owns a contiguous range),
    and C. The kernel then builds the one-hot blocks from the indices: n x nK integers are read
    instead of n x C floats (not yet measured on a GPU against the dense form: see
    benchmarks/tune_silhouette_triton.py).
    Returns (n, C) float32 on X's device. Accumulation is fp32.

    X is centred (mean subtracted) here because the Gram formula loses accuracy as ||x||^2 grows
    relative to the distances; distances are translation invariant.
    Precisions (CUDA defaults: dist "tf32x3", sum "tf32"; interpreter: "ieee" / "ieee"; the
    interpreter computes every dot in fp32 whatever is asked): see DIST_PRECISIONS, SUM_PRECISIONS.
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
    dist_precision = dist_precision or ("ieee" if interpreted else "tf32x3")
    sum_precision = sum_precision or ("ieee" if interpreted else "tf32")
    if dist_precision not in DIST_PRECISIONS:
        raise ValueError(f"dist_precision={dist_precision!r} is not one of: {', '.join(DIST_PRECISIONS)}")
    if sum_precision not in SUM_PRECISIONS:
        raise ValueError(f"sum_precision={sum_precision!r} is not one of: {', '.join(SUM_PRECISIONS)}")
    if interpreted and dist_precision == "tf32x3":
        dist_precision = "ieee"  # same numbers in the interpreter; avoids its tf32x3 emulation path

    n, d = X.shape
    C = onehot.shape[1] if onehot is not None else int(n_columns)
    out = torch.empty((n, C), dtype=torch.float32, device=X.device)
    if n == 0 or C == 0:
        return out.zero_()
    Xf = X.to(torch.float32)
    Xc = (Xf - Xf.mean(0, dtype=torch.float64).to(torch.float32)).contiguous()
    sqn = Xc.square().sum(1).contiguous()
    if onehot is not None:
        oh = onehot.to(torch.float32).contiguous()
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
    for name, v in (("block_m", block_m), ("block_n", block_n), ("block_d", block_d), ("block_c", block_c)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name}={v} must be a power of two >= 16 (tl.dot)")

    grid = (triton.cdiv(n, block_m), triton.cdiv(C, block_c))
    # Triton launches on torch's *current* device, not the tensors': make them the same (cuda:N).
    device_scope = torch.cuda.device(Xc.device) if Xc.is_cuda else contextlib.nullcontext()
    with device_scope:
        _cluster_sums_kernel[grid](
            Xc, sqn, oh, cols, col_k, out,
            n, d, C, FLUSH * d**0.5,
            Xc.stride(0), Xc.stride(1), oh.stride(0), oh.stride(1), cols.stride(0), out.stride(0), out.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_C=block_c,
            DIST_PRECISION=dist_precision, SUM_MODE=sum_precision, FROM_COLUMNS=columns is not None,
            num_warps=num_warps, num_stages=cfg["num_stages"],
        )
    return out


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
    "SUM_PRECISIONS",
    "cluster_distance_sums_reference",
    "cluster_distance_sums_triton",
    "default_config",
]
