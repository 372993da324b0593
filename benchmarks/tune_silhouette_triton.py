"""Launch configurations and precisions of the Triton silhouette kernel, timed on one GPU.

    python benchmarks/tune_silhouette_triton.py --n 200000          # on a CUDA machine
For n points, d = 200 and the one-hot columns of K = 2..30 (sum K = 464), each candidate computes
kernels.silhouette_triton.cluster_distance_sums_triton once after a warm-up (its compile), and
the table gives its time, the time scaled to 1,000,000 points (the work grows as n^2), and its
largest relative difference to the IEEE-fp32 run of the kernel (dist "ieee", sum "ieee").

Why these candidates (see default_config): the default splits C = 464 into two blocks of 256
columns, so every distance is computed twice; BLOCK_C = 512 with BLOCK_M = 32 computes it once.
Plain tf32 for x.y does a third of tf32x3's tensor-core work. "columns" builds each one-hot block
in the kernel from the samples' column indices (n x 29 integers read instead of n x 464 floats:
about half the bytes per tile). The comments give each candidate's spill stores in its sm_90
build with Triton 3.6 (the device image's) and 3.8: the default spills on 3.6, so spill-free
alternatives are here too.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

# spills: spill stores (STL) in the sm_90 build with Triton 3.6 / 3.8 (cuobjdump -sass), d = 200, C = 464
#            name                        block_m block_n block_d block_c warps dist      sum     one-hot    spills
CANDIDATES = [("default",                   None,   None,   None,   None, None, None,     None,   "dense"),    # 38 / 0
              ("default tf32",              None,   None,   None,   None, None, "tf32",   "tf32", "dense"),    # 32 / 0
              ("m64 n16 d16 c256",            64,     16,     16,    256,    8, "tf32x3", "tf32", "dense"),    #  0
              ("m64 n16 c256 tf32",           64,     16,     32,    256,    8, "tf32",   "tf32", "dense"),    #  0
              ("m32 n32 c512 tf32",           32,     32,     32,    512,    8, "tf32",   "tf32", "dense"),    # 109 / 0
              ("columns default",           None,   None,   None,   None, None, None,     None,   "columns"),  #  6 / 0
              ("columns m64 n32 d16 c256",    64,     32,     16,    256,    8, "tf32x3", "tf32", "columns"),  #  0
              ("columns m64 n32 d16 tf32",    64,     32,     16,    256,    8, "tf32",   "tf32", "columns"),  #  0
              ("columns m64 n16 c256 tf32",   64,     16,     32,    256,    8, "tf32",   "tf32", "columns"),  #  0
              ("columns m32 n32 c512 tf32",   32,     32,     32,    512,    8, "tf32",   "tf32", "columns")]  #  2 / 0


def one_hot_of_labels(labels, device) -> tuple[torch.Tensor, torch.Tensor]:
    """labels: list of (n,) int arrays with values 0..K-1 -> ((n, sum K) float32 one-hot, (n, nK)
    int64 column of each sample in each labelling), both on device."""
    sizes = [int(lab.max()) + 1 for lab in labels]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    columns = torch.stack([torch.as_tensor(lab, device=device) + off for lab, off in zip(labels, offsets)], dim=1)
    onehot = torch.zeros((columns.shape[0], sum(sizes)), device=device).scatter_(1, columns, 1.0)
    return onehot, columns


def main(argv=None) -> int:
    from bench_silhouette import make_data
    from kernels.silhouette_triton import cluster_distance_sums_triton

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--k-max", type=int, default=30)
    p.add_argument("--device", default="cuda", help="cuda; cpu only with TRITON_INTERPRET=1 (a dry run of this script)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    X, labels = make_data(args.n, tuple(range(2, args.k_max + 1)), device=args.device)
    onehot, columns = one_hot_of_labels(labels, args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "the Triton interpreter"
    print(f"Triton silhouette kernel: n={args.n} d={X.shape[1]} C={onehot.shape[1]} on {where}")

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def timed(form="dense", **kwargs):
        def run(rows):
            if form == "dense":
                return cluster_distance_sums_triton(X[:rows], onehot[:rows], **kwargs)
            return cluster_distance_sums_triton(X[:rows], columns=columns[:rows], n_columns=onehot.shape[1], **kwargs)
        run(min(4096, len(X)))  # compile outside the timing
        sync()
        t0 = time.perf_counter()
        out = run(len(X))
        sync()
        return time.perf_counter() - t0, out

    ref_s, ref = timed(dist_precision="ieee", sum_precision="ieee")
    ref = ref.double()
    rows = [("ieee / ieee (reference)", ref_s, 0.0)]
    for name, bm, bn, bd, bc, warps, dist, total, form in CANDIDATES:
        kwargs = {k: v for k, v in dict(block_m=bm, block_n=bn, block_d=bd, block_c=bc, num_warps=warps,
                                         dist_precision=dist, sum_precision=total).items() if v is not None}
        try:
            seconds, out = timed(form, **kwargs)
        except Exception as exc:  # one candidate that does not compile here must not hide the others
            print(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        err = float(((out.double() - ref).abs() / ref.abs().clamp(min=1)).max())
        rows.append((name, seconds, err))
        del out
    scale = (1_000_000 / args.n) ** 2
    print(f"{'candidate':<26}{'seconds':>9}{'1M est. s':>11}{'max rel diff':>14}")
    for name, seconds, err in sorted(rows, key=lambda r: r[1]):
        print(f"{name:<26}{seconds:>9.3f}{seconds * scale:>11.1f}{err:>14.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
