"""A synthetic finished run for report tests: 60 small images in 3 visually distinct groups plus
predictions.csv, skipped.csv, summary.json and analysis.npz written with engine.report.outputs.

Cluster 0 (36 images, PNG): a red square whose red level falls with the distance rank (rank r ->
red = RED_TOP - RED_STEP * r), except the 6 farthest members, which are yellow: a montage test can
read the order off the tile colours. Cluster 1 (14, JPEG): green discs. Cluster 2 (10, PNG and
JPEG, odd sizes and names): blue stripes. Input order is shuffled so it differs from distance order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.report import outputs

SIZES = (36, 14, 10)          # cluster sizes, largest first (ids ordered by size)
K = 3
KS = (2, 3, 4, 5, 6)
N_OUTLIERS = 6
RED_TOP, RED_STEP = 250, 6     # cluster 0 rank r -> red level RED_TOP - RED_STEP * r
YELLOW = (255, 220, 0)
ODD_NAMES = ("odd <name> & 'q'.png", "comma, name.jpg")  # HTML escaping and CSV quoting


@dataclass
class FakeRun:
    """What make_fake_run wrote. Arrays are in predictions.csv (input) order.

    paths: n str; labels: (n,) int32 (chosen K); distances: (n,) float32; silhouettes: {K: (n,) float32}
    """

    run_dir: Path
    image_dir: Path
    paths: list[str]
    labels: np.ndarray
    distances: np.ndarray
    silhouettes: dict[int, np.ndarray]
    k: int = K
    ks: tuple[int, ...] = KS
    summary: dict = field(default_factory=dict)

    def members(self, cid: int) -> list[int]:
        """Indices of cluster `cid`, nearest to the centroid first."""
        idx = np.flatnonzero(self.labels == cid)
        return idx[np.argsort(self.distances[idx], kind="stable")].tolist()


def _red_square(rank: int, n_far_start: int) -> Image.Image:
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    color = YELLOW if rank >= n_far_start else (RED_TOP - RED_STEP * rank, 0, 0)
    ImageDraw.Draw(img).rectangle((6, 6, 57, 57), fill=color)
    return img


def _green_disc(i: int) -> Image.Image:
    img = Image.new("RGB", (72, 56), (10, 10, 10))
    r = 18 + i % 6
    ImageDraw.Draw(img).ellipse((36 - r, 28 - r, 36 + r, 28 + r), fill=(30, 200, 60))
    return img


def _blue_stripes(i: int) -> Image.Image:
    size = [(80, 40), (40, 80), (64, 64), (100, 30)][i % 4]
    img = Image.new("RGB", size, (230, 235, 255))
    draw = ImageDraw.Draw(img)
    for y in range(0, size[1], 8):
        draw.rectangle((0, y, size[0], y + 3), fill=(20, 40, 200))
    return img


def make_fake_run(tmp_path, seed: int = 0) -> FakeRun:
    """Write images to tmp_path/images and a finished run to tmp_path/run; return a FakeRun."""
    rng = np.random.default_rng(seed)
    tmp_path = Path(tmp_path)
    image_dir, run_dir = tmp_path / "images", tmp_path / "run"
    image_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    records = []  # (path, cluster, distance)
    far_start = SIZES[0] - N_OUTLIERS
    for rank in range(SIZES[0]):
        path = image_dir / f"red_{rank:02d}.png"
        _red_square(rank, far_start).save(path)
        records.append((str(path), 0, 0.2 + 0.05 * rank))
    for i in range(SIZES[1]):
        path = image_dir / f"green_{i:02d}.jpg"
        _green_disc(i).save(path, quality=90)
        records.append((str(path), 1, float(rng.uniform(0.3, 1.5))))
    for i in range(SIZES[2]):
        name = ODD_NAMES[i] if i < len(ODD_NAMES) else f"blue_{i:02d}.{'png' if i % 2 else 'jpg'}"
        path = image_dir / name
        _blue_stripes(i).save(path, format="PNG" if name.endswith(".png") else "JPEG")
        records.append((str(path), 2, float(rng.uniform(0.3, 1.5))))
    order = rng.permutation(len(records))  # input order != distance order
    records = [records[i] for i in order]
    n = len(records)
    paths = [r[0] for r in records]
    labels = np.array([r[1] for r in records], dtype=np.int32)
    distances = np.array([r[2] for r in records], dtype=np.float32)

    # Neighbouring K: K=2 merges clusters 1 and 2; K=4 splits cluster 0 in two halves of 18.
    labels_k2 = np.where(labels == 0, 0, 1).astype(np.int32)
    labels_k4 = labels + (labels > 0)
    c0 = np.flatnonzero(labels == 0)
    labels_k4[c0[: len(c0) // 2]] = 0
    labels_k4[c0[len(c0) // 2:]] = 1
    labels_k4 = labels_k4.astype(np.int32)
    centres = {2: (0.45, 0.15), 3: (0.62, 0.1), 4: (0.30, 0.2)}
    sampled_out = rng.choice(n, size=6, replace=False)  # "sampled" silhouette: 6 values not computed
    silhouettes = {}
    for kk, (mu, sd) in centres.items():
        sil = np.clip(rng.normal(mu, sd, n), -0.3, 0.95).astype(np.float32)
        sil[sampled_out] = np.nan
        silhouettes[kk] = sil

    group_xy = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    angle = rng.uniform(0, 2 * np.pi, n)
    projection = group_xy[labels] + distances[:, None] * np.c_[np.cos(angle), np.sin(angle)]

    evr = 0.25 * 0.85 ** np.arange(64)
    evr = evr / evr.sum() * 0.98
    outputs.write_predictions(run_dir, paths, labels)
    outputs.write_skipped(run_dir, [(str(image_dir / "notes.txt"), "not an image (unrecognised content)"),
                                    (str(image_dir / "empty.jpg"), "empty file (0 bytes)")])
    outputs.write_analysis(run_dir, outputs.RunAnalysis(
        explained_variance_ratio=evr.astype(np.float32), n_components=20, ks=np.array(KS, dtype=np.int32),
        labels={2: labels_k2, 3: labels, 4: labels_k4}, silhouettes=silhouettes,
        projection_2d=projection.astype(np.float32), distance_to_centroid=distances))

    sil_by_k = {2: 0.45, 3: 0.62, 4: 0.30, 5: 0.24, 6: 0.20}
    scores = []
    for kk in KS:
        sizes = np.bincount({2: labels_k2, 3: labels, 4: labels_k4}.get(kk, rng.integers(0, kk, n)), minlength=kk)
        sizes = sorted(sizes.tolist(), reverse=True)
        scores.append({"k": kk, "silhouette": sil_by_k[kk], "inertia": 500.0 / kk,
                       "calinski_harabasz": 120.0 - 15 * abs(kk - 3), "davies_bouldin": 0.5 + 0.1 * abs(kk - 3),
                       "fraction_negative": 0.02 * kk, "balance": sizes[-1] / sizes[0], "cluster_sizes": sizes})
    summary = {
        "imgcluster_version": "0.0.0-test", "created": "2026-11-27T12:00:00+00:00", "inputs": [str(image_dir)],
        "n_images": n, "n_skipped": 2, "k": K, "select": "silhouette", "scores": scores,
        "cluster_sizes": list(SIZES),
        "cluster_silhouettes": [float(np.nanmean(silhouettes[K][labels == c])) for c in range(K)],
        "pca": {"mode": "exact", "n_components": 20, "explained_variance": float(evr[:20].sum())},
        "silhouette": {"mode": "sampled", "sample_size": n - 6},
        "timings": {stage: {"seconds": s, "images_per_s": n / s} for stage, s in
                    (("discover", 0.01), ("extract", 2.5), ("pca", 0.05), ("kmeans", 0.2), ("silhouette", 0.3),
                     ("total", 3.1))},
        "backends": {"device": "cpu", "decoder": "pil", "backbone": "resnet152", "cluster": "torch",
                     "silhouette": "torch"},
        "config": {"k_min": 2, "k_max": 6, "seed": 0, "note": "<script>alert(1)</script>"},
        "versions": {"python": "3.x", "torch": "test"},
    }
    outputs.write_summary(run_dir, summary)
    return FakeRun(run_dir=run_dir, image_dir=image_dir, paths=paths, labels=labels, distances=distances,
                   silhouettes=silhouettes, summary=summary)
