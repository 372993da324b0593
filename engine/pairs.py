"""Every fast path beside its reference: the one registry that tests and benchmarks iterate.

A Pair names a stage, the fast implementation and the device it runs on, the reference it must
agree with, how to make seeded inputs of a given size, and how far apart the two outputs may be
(`discrepancy` <= `tolerance`; labels are compared by ARI, numbers with explicit tolerances, never
bit for bit). tests/test_pairs.py checks every pair at `test_size`; benchmarks/bench_pairs.py times
both sides at `bench_size` in the same run. CUDA pairs need a GPU and are skipped without one.

    from engine.pairs import PAIRS
    for pair in PAIRS:
        if pair.missing() is None:
            inputs = pair.make_inputs(pair.test_size)
            print(pair.id, pair.discrepancy(pair.run_fast(inputs), pair.run_reference(inputs)))

Decoders are paired with PIL in tests/test_loaders_gpu_paths.py (they need image files and
per-format cases) and benchmarked in benchmarks/bench_pipeline.py.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .device import capabilities


@dataclass(frozen=True)
class Pair:
    """stage: 'pca' | 'kmeans' | 'kmeans_search' | 'silhouette' | 'backbone'; fast: the fast path's name; device:
    where it runs ('cpu' | 'cuda'); reference: what it is checked against (on the host).
    make_inputs(n) -> inputs (host, seeded); run_fast(inputs) / run_reference(inputs) -> outputs
    on the host; discrepancy(fast_out, ref_out) -> float, 0 for perfect agreement, described by
    `measure`; requires: capabilities (engine.device) needed besides the device."""

    stage: str
    fast: str
    device: str
    reference: str
    make_inputs: Callable[[int], Any]
    run_fast: Callable[[Any], Any]
    run_reference: Callable[[Any], Any]
    discrepancy: Callable[[Any, Any], float]
    tolerance: float
    measure: str
    test_size: int
    bench_size: int
    requires: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.stage}-{self.fast}-{self.device}"

    def missing(self) -> str | None:
        """Why this pair cannot run here, or None when it can."""
        caps = capabilities()
        for name in (("cuda",) if self.device == "cuda" else ()) + self.requires:
            if not caps[name].available:
                return f"{self.id}: {name} unavailable ({caps[name].reason})"
        return None


# --------------------------------------------------------------------------- inputs (seeded, host)

def _spectrum_features(n: int, d: int = 256, rank: int = 48, seed: int = 0) -> torch.Tensor:
    """(n, d) float32: a rank-`rank` signal with well-separated variances (10 down to 1) plus
    small noise, so the leading principal axes are well defined for any implementation."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))
    latent = torch.randn(n, rank, generator=g, dtype=torch.float64) * torch.linspace(10, 1, rank, dtype=torch.float64)
    x = latent @ basis.T + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0
    return x.float()


def _blobs(n: int, d: int = 32, centers: int = 8, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """(n, d) float32 separable Gaussian blobs and their (n,) int64 true labels."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n, n_features=d, centers=centers, cluster_std=1.0, random_state=seed)
    return torch.from_numpy(x.astype(np.float32)), y.astype(np.int64)


def _labellings(n: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Blobs and four labellings of them: the truth, two coarsenings and a random one (K = 2..8)."""
    x, y = _blobs(n, d=64)
    rng = np.random.default_rng(0)
    return x, [y, y % 2, y % 3, rng.integers(0, 5, n)]


def _images(n: int) -> torch.Tensor:
    """(n, 3, 224, 224) float32 ImageNet-normalized smooth random images."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 14, 14, generator=g)
    pixels = torch.nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (pixels - mean) / std


# --------------------------------------------------------------------------- stages

PCA_COMPONENTS = 32


def _pca_fast(device: str):
    def run(x: torch.Tensor) -> np.ndarray:
        from .reduce import fit_pca

        return fit_pca(x.to(device), PCA_COMPONENTS, "torch").components.cpu().numpy()
    return run


def _pca_reference(x: torch.Tensor) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(PCA_COMPONENTS, svd_solver="full").fit(x.numpy()).components_


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


KMEANS_K = 8


def _kmeans_fast(device: str):
    def run(inputs) -> np.ndarray:
        from .cluster import fit_kmeans

        return fit_kmeans(inputs[0].to(device), KMEANS_K, "torch", seed=0).labels.cpu().numpy()
    return run


def _kmeans_reference(inputs) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(KMEANS_K, n_init=3, random_state=0).fit_predict(inputs[0].numpy())


SEARCH_KS = range(2, 21)  # the K range of `imgcluster run` and `bench`


def _kmeans_search(device: str, batched: bool):
    """Inertia per K of the K search (K = 2..20, 3 inits): every K in one batched computation
    (kmeans_all_k, what search_k runs) or one kmeans_torch fit per K, on `device`."""
    def run(inputs) -> np.ndarray:
        from .cluster import kmeans_torch
        from .kmeans_all_k import kmeans_all_k

        x = inputs[0].to(device)
        ks = [k for k in SEARCH_KS if k < len(x)]
        fits = kmeans_all_k(x, ks, seed=0) if batched else {k: kmeans_torch(x, k, seed=0) for k in ks}
        return np.array([fits[k].inertia for k in ks])
    return run


def _max_relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(np.asarray(a, np.float64) - b) / np.abs(np.asarray(b, np.float64))).max())


def _one_minus_ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return 1.0 - float(adjusted_rand_score(a, b))


def _silhouette_fast(device: str, backend: str):
    def run(inputs) -> list[float]:
        from .silhouette import silhouette_all_k

        x, labellings = inputs
        return [r.mean for r in silhouette_all_k(x.to(device), labellings, backend=backend)]
    return run


def _silhouette_reference(inputs) -> list[float]:
    from sklearn.metrics import silhouette_score

    x, labellings = inputs
    return [float(silhouette_score(x.numpy().astype(np.float64), lab)) for lab in labellings]


BACKBONE_MODEL = "resnet18"


def _features(device: str, precision: str):
    def run(images: torch.Tensor) -> torch.Tensor:
        from .backbones import load_backbone

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seeded random weights are intended here
            backbone = load_backbone(BACKBONE_MODEL, "random", device, seed=0, precision=precision)
        return torch.cat([backbone(images[i:i + 64].to(device)).cpu() for i in range(0, len(images), 64)])
    return run


def centred_cosine(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image cosine (n,) float64 of two (n, d) feature sets, both centred on the reference's
    mean feature. Features of different images share a large common part (random weights: plain
    cosine ~0.997 between any two images), so plain cosine cannot tell an image from its
    neighbour; centred, a wrong image scores below 0.7 and bf16 rounding above 0.99."""
    centre = reference.double().mean(0)
    return torch.nn.functional.cosine_similarity(features.double() - centre, reference.double() - centre, dim=1)


def _one_minus_min_centred_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1.0 - float(centred_cosine(a, b).min())


def _pairs() -> tuple[Pair, ...]:
    pairs = []
    for device in ("cpu", "cuda"):
        pairs += [
            Pair("pca", "torch", device, "sklearn PCA(svd_solver='full')", _spectrum_features,
                 _pca_fast(device), _pca_reference, _max_abs_diff, 1e-3,
                 f"max |component difference| over {PCA_COMPONENTS} svd_flip-ed axes", 4_000, 20_000),
            Pair("kmeans", "torch", device, "sklearn KMeans(n_init=3)", _blobs,
                 _kmeans_fast(device), _kmeans_reference, _one_minus_ari, 0.01,
                 f"1 - ARI between the two labellings, K={KMEANS_K} separable blobs", 4_000, 50_000),
            Pair("kmeans_search", "all-k", device, f"kmeans_torch one K at a time on {device}",
                 lambda n: _blobs(n, d=200, centers=10), _kmeans_search(device, True),
                 _kmeans_search(device, False), _max_relative_diff, 1e-3,
                 "max relative inertia difference over K = 2..20", 600, 4_096),
            Pair("silhouette", "torch", device, "sklearn silhouette_score per K", _labellings,
                 _silhouette_fast(device, "torch"), _silhouette_reference, _max_abs_diff, 1e-5,
                 "max |mean silhouette difference| over 4 labellings", 2_000, 10_000),
        ]
    pairs += [
        Pair("silhouette", "triton", "cuda", "sklearn silhouette_score per K", _labellings,
             _silhouette_fast("cuda", "triton"), _silhouette_reference, _max_abs_diff, 1e-4,
             "max |mean silhouette difference| over 4 labellings", 2_000, 10_000, requires=("triton",)),
        Pair("backbone", "bf16", "cpu", f"{BACKBONE_MODEL} fp32 on the CPU", _images,
             _features("cpu", "bf16"), _features("cpu", "fp32"), _one_minus_min_centred_cosine, 0.01,
             "1 - smallest per-image cosine of the features, centred on the reference's mean", 64, 512, requires=("cpu_bf16",)),
        Pair("backbone", "bf16", "cuda", f"{BACKBONE_MODEL} fp32 on the CPU", _images,
             _features("cuda", "bf16"), _features("cpu", "fp32"), _one_minus_min_centred_cosine, 0.01,
             "1 - smallest per-image cosine of the features, centred on the reference's mean", 64, 512),
    ]
    return tuple(pairs)


PAIRS: tuple[Pair, ...] = _pairs()

__all__ = ["PAIRS", "Pair", "centred_cosine"]
