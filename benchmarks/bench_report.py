"""How long build_report takes on a large finished run (features already computed).

Target: a 100,000-image run in under 60 s on the 2-core development machine. The fake run has the
real shapes (predictions, per-sample silhouettes for K-1, K, K+1, 2-D projection, distances,
2048 PCA ratios, K = 2..30 scores) and real JPEG files: every image a montage shows is its own
1024x768 JPEG (so the decode work is the real K x 36 thumbnails); all other rows reuse those files.

Run: .venv/bin/python -m pytest benchmarks/bench_report.py  (pytest-benchmark, one round each)
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.report import build_report, outputs

K = 20
KS = tuple(range(2, 31))
MAX_MONTAGE, N_OUTLIERS = 36, 6
LIMIT_S = {10_000: 20.0, 100_000: 60.0}


def _photo(rng: np.random.Generator, width: int = 1024, height: int = 768) -> Image.Image:
    """A cheap photo-like JPEG source: two colour gradients and a few flat blocks (compresses like a photo)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (x / width * rng.uniform(0.3, 1) + y / height * rng.uniform(0.3, 1))[..., None] / 2
    img = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    for _ in range(4):
        x0, y0 = rng.integers(0, width - 200), rng.integers(0, height - 200)
        img[y0:y0 + rng.integers(50, 200), x0:x0 + rng.integers(50, 200)] = rng.integers(0, 255, 3)
    return Image.fromarray(img)


def make_large_run(run_dir: Path, images: Path, n: int, k: int = K, seed: int = 0) -> Path:
    """Write a fake finished run of n images in k clusters to run_dir (JPEGs in `images`, reused
    across calls); return run_dir."""
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True, exist_ok=True)

    sizes = np.sort(rng.multinomial(n - k * 50, rng.dirichlet(np.full(k, 2.0))) + 50)[::-1]  # largest first
    labels = rng.permutation(np.repeat(np.arange(k, dtype=np.int32), sizes))
    distances = rng.gamma(4.0, 0.25, n).astype(np.float32)

    # Members a montage shows (nearest 30, farthest 6 per cluster) each get their own file.
    shown = []
    for cid in range(k):
        idx = np.flatnonzero(labels == cid)
        order = idx[np.argsort(distances[idx], kind="stable")]
        shown.extend(order[:MAX_MONTAGE - N_OUTLIERS].tolist() + order[-N_OUTLIERS:].tolist())
    files = []
    for i in range(len(shown)):
        path = images / f"img_{i:05d}.jpg"
        if not path.exists():
            _photo(rng).save(path, quality=85)
        files.append(str(path))
    file_of = np.arange(n) % len(files)
    file_of[shown] = np.arange(len(shown))
    paths = [files[j] for j in file_of]

    def neighbour_labels(kk: int) -> np.ndarray:
        lab = labels.copy() if kk == k else np.minimum(labels, kk - 1).astype(np.int32)
        if kk > k:
            lab[rng.random(n) < 0.05] = kk - 1
        return lab.astype(np.int32)

    silhouettes = {kk: np.clip(rng.normal(0.15 + 0.01 * (kk == k), 0.12, n), -0.4, 0.9).astype(np.float32)
                   for kk in (k - 1, k, k + 1)}
    centres = rng.normal(0, 5, (k, 2))
    projection = (centres[labels] + rng.normal(0, 1.5, (n, 2))).astype(np.float32)
    evr = np.sort(rng.gamma(0.3, 1, 2048))[::-1]
    evr = (evr / evr.sum()).astype(np.float32)

    outputs.write_predictions(run_dir, paths, labels)
    outputs.write_skipped(run_dir, [(str(images / "broken.jpg"), "corrupt or truncated image")])
    outputs.write_analysis(run_dir, outputs.RunAnalysis(
        explained_variance_ratio=evr, n_components=200, ks=np.array(KS, np.int32),
        labels={kk: neighbour_labels(kk) for kk in (k - 1, k, k + 1)}, silhouettes=silhouettes,
        projection_2d=projection, distance_to_centroid=distances))
    scores = [{"k": kk, "silhouette": 0.15 - 0.002 * abs(kk - k), "inertia": 1e6 / kk,
               "calinski_harabasz": 900.0 - 10 * abs(kk - k), "davies_bouldin": 2.0 + 0.02 * abs(kk - k),
               "fraction_negative": 0.1 + 0.003 * kk, "balance": float(sizes[-1] / sizes[0]),
               "cluster_sizes": sizes.tolist() if kk == k else []} for kk in KS]
    outputs.write_summary(run_dir, {
        "imgcluster_version": "bench", "created": "2026-11-27T00:00:00+00:00", "inputs": [str(images)],
        "n_images": n, "n_skipped": 1, "k": k, "select": "silhouette", "scores": scores,
        "cluster_sizes": sizes.tolist(),
        "cluster_silhouettes": [float(silhouettes[k][labels == c].mean()) for c in range(k)],
        "pca": {"mode": "exact", "n_components": 200, "explained_variance": float(evr[:200].sum())},
        "silhouette": {"mode": "exact", "sample_size": None},
        "timings": {"total": {"seconds": 100.0, "images_per_s": n / 100.0}},
        "backends": {"device": "cpu", "decoder": "pil", "backbone": "resnet152", "cluster": "torch",
                     "silhouette": "torch"},
        "config": {}, "versions": {},
    })
    return run_dir


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    # Import the report's modules first (matplotlib, ~0.5 s on the dev machine; torch is not loaded
    # since f6d0bd3) so the first size measured does not pay them; a fresh `imgcluster report` process does.
    import engine.report.builder  # noqa: F401

    return tmp_path_factory.mktemp("bench_report")


@pytest.mark.parametrize("n", [10_000, 100_000])
def test_build_report_time(benchmark, image_root, n):
    run_dir = make_large_run(image_root / f"run{n}", image_root / "images", n)
    seconds = []

    def build():
        start = time.perf_counter()
        index = build_report(run_dir)
        seconds.append(time.perf_counter() - start)
        return index

    index = benchmark.pedantic(build, rounds=1, iterations=1)
    benchmark.extra_info.update({"n_images": n, "k": K, "seconds": seconds[0], "images_per_s": n / seconds[0]})
    print(f"\nbuild_report, {n:,} images, K={K}: {seconds[0]:.2f} s ({n / seconds[0]:,.0f} images/s)")
    assert index.is_file()
    assert len(list((index.parent / "montages").glob("*.jpg"))) == K
    assert seconds[0] < LIMIT_S[n], f"report for {n:,} images took {seconds[0]:.1f} s (limit {LIMIT_S[n]} s)"
