"""Methods, precisions and launch configurations of the Triton silhouette kernels, timed on one GPU.

    python benchmarks/tune_silhouette_triton.py --n 200000          # on a CUDA machine
For n points, d = 200 and the one-hot columns of K = 2..30 (sum K = 464), each candidate computes
kernels.silhouette_triton.cluster_distance_sums once after a warm-up (its compile). One row per
candidate, printed as soon as it is measured: its time, the time scaled to 1,000,000 points (the
work grows as n^2), the largest relative difference of its distance sums to a float64 reference,
and the largest difference of the mean silhouette (over the 29 K) to the float64 one; the issue's
bound for that is 1e-4. The float64 reference is the chunked torch computation in float64.

Candidates (see default_config and the module's precision notes):
- "fused": the distance tile stays in registers. The first GPU run (H100, Triton 3.6, 200k points)
  measured the default (tf32x3 / tf32, two blocks of 256 one-hot columns) at 6.2 s and plain tf32 at
  2.9 s: about 25 TFLOP/s, far from the tensor cores' rate. fp16 sums halve the operand registers
  and the one-hot bytes and round instead of truncating; fp16x3 halves the x.y operand bytes.
- "tiled": a Triton kernel writes fp16 distance tiles (a block of rows x n) and cuBLAS multiplies
  them into the one-hot matrix; each distance is computed once (symmetry), the big product is a
  cuBLAS GEMM. Second H100 run (200k): 0.25 s, mean within 1.1e-4 of float64, but every
  tensor-core candidate was off by ~7e-4 in its worst sum; "split" rows cap the terms one
  tensor-core sum adds (sum_chunk, default 8192), "no split" is what that run measured.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

# (name, method, options for cluster_distance_sums, one-hot form). Comments: spill stores (STL) in
# the sm_90 build with Triton 3.6, the device image's version (cuobjdump -sass, d = 200, C = 464).
CANDIDATES = [
    ("tiled fp16x3",                  "tiled", dict(dist_precision="fp16x3"), "dense"),                 # 0 spills
    ("tiled fp16x3 no split",         "tiled", dict(dist_precision="fp16x3", sum_chunk=None), "dense"),
    ("tiled fp16x3 split 32k",        "tiled", dict(dist_precision="fp16x3", sum_chunk=32768), "dense"),
    ("tiled fp16x3 split 2k",         "tiled", dict(dist_precision="fp16x3", sum_chunk=2048), "dense"),
    ("tiled tf32x3",                  "tiled", dict(dist_precision="tf32x3"), "dense"),                 # 0
    ("tiled fp16x3 m128 n64",         "tiled", dict(dist_precision="fp16x3", block_n=64), "dense"),     # 0
    ("tiled fp16x3 m64 n128 w4",      "tiled", dict(dist_precision="fp16x3", block_m=64, num_warps=4), "dense"),  # 0
    ("fused fp16x3/fp16 c512 m64 n16", "fused", dict(dist_precision="fp16x3", sum_precision="fp16", block_m=64,
                                                     block_n=16, block_d=32, block_c=512, num_warps=8), "dense"),  # 16
    ("fused fp16x3/fp16 c256 m128",   "fused", dict(dist_precision="fp16x3", sum_precision="fp16", block_m=128,
                                                    block_n=32, block_d=32, block_c=256, num_warps=8), "dense"),  # 22
    ("fused tf32x3/fp16 c256 m64",    "fused", dict(dist_precision="tf32x3", sum_precision="fp16", block_m=64,
                                                    block_n=32, block_d=32, block_c=256, num_warps=8), "dense"),  # 21
    ("fused fp16x3/fp16 columns",     "fused", dict(dist_precision="fp16x3", sum_precision="fp16", block_m=64,
                                                    block_n=16, block_d=32, block_c=512, num_warps=8), "columns"),
    ("fused default (tf32x3/tf32)",   "fused", dict(), "dense"),                                        # 38
]


def float64_sums(X: torch.Tensor, onehot: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """(n, C) float64 distance sums by the Gram formula in float64, chunked: the yardstick."""
    X64 = X.double()
    X64 = X64 - X64.mean(0)
    sq = X64.square().sum(1)
    oh = onehot.double()
    out = torch.empty(onehot.shape, dtype=torch.float64, device=X.device)
    for a in range(0, len(X64), rows):
        d2 = (sq[a:a + rows, None] + sq[None, :] - 2.0 * X64[a:a + rows] @ X64.T).clamp_(min=0)
        d2[torch.arange(d2.shape[0]), torch.arange(a, a + d2.shape[0])] = 0.0
        out[a:a + rows] = d2.sqrt_() @ oh
    return out


def main(argv=None) -> int:
    from bench_silhouette import make_data
    from engine.silhouette import _columns_on, _encode_labels, _onehot, _silhouettes_from_sums
    from kernels.silhouette_triton import cluster_distance_sums

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--k-max", type=int, default=30)
    p.add_argument("--device", default="cuda", help="cuda; cpu only with TRITON_INTERPRET=1 (a dry run of this script)")
    p.add_argument("--only", default="", help="comma list of candidate names (substrings) to run; default all")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    X, labels = make_data(args.n, tuple(range(2, args.k_max + 1)), device=args.device)
    labellings = _encode_labels(labels, args.n)
    columns = _columns_on(labellings, args.device)  # (n, nK): the kernel's `columns=` form too
    onehot = _onehot(columns, sum(len(lab.values) for lab in labellings))
    where = torch.cuda.get_device_name() if args.device == "cuda" else "the Triton interpreter"
    print(f"Triton silhouette kernels: n={args.n} d={X.shape[1]} C={onehot.shape[1]} on {where}", flush=True)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def means_of(sums):
        return _silhouettes_from_sums(sums.float(), columns, labellings).mean(0)

    t0 = time.perf_counter()
    ref = float64_sums(X, onehot)
    sync()
    ref_means = means_of(ref)
    print(f"float64 reference: {time.perf_counter() - t0:.2f} s", flush=True)
    scale = (1_000_000 / args.n) ** 2
    print(f"{'candidate':<32}{'seconds':>9}{'1M est. s':>11}{'max rel diff':>14}{'mean diff':>11}", flush=True)
    wanted = [w for w in args.only.split(",") if w]
    for name, method, options, form in CANDIDATES:
        if wanted and not any(w in name for w in wanted):
            continue

        def run(rows):
            if form == "dense":
                return cluster_distance_sums(X[:rows], onehot[:rows], method=method, **options)
            return cluster_distance_sums(X[:rows], columns=columns[:rows], n_columns=onehot.shape[1],
                                         method=method, **options)
        try:
            run(min(4096, len(X)))  # compile outside the timing
            sync()
            t0 = time.perf_counter()
            out = run(len(X))
            sync()
            seconds = time.perf_counter() - t0
        except Exception as exc:  # one candidate that does not compile here must not hide the others
            print(f"{name:<32}failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", flush=True)
            continue
        err = float(((out.double() - ref).abs() / ref.abs().clamp(min=1)).max())
        mean_err = float(abs(means_of(out) - ref_means).max())
        print(f"{name:<32}{seconds:>9.3f}{seconds * scale:>11.1f}{err:>14.2e}{mean_err:>11.1e}", flush=True)
        del out
    return 0


if __name__ == "__main__":
    sys.exit(main())
