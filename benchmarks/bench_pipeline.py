"""Stage benchmarks: decoders and backbones at parametrized sizes, and PCA + KMeans at 1M rows on
CUDA, in one run. The (reference, fast) pairs of engine.pairs (PCA, KMeans, silhouette, bf16
backbone) are timed against each other in bench_pairs.py.

    .venv/bin/python -m pytest benchmarks/bench_pipeline.py --benchmark-group-by=group
Compare rows within a group (same run, same machine); absolute numbers move with the machine.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from engine.backbones import load_backbone
from engine.bench import make_bench_set
from engine.cluster import fit_kmeans
from engine.loaders import make_loader
from engine.reduce import fit_pca

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return make_bench_set(tmp_path_factory.mktemp("bench-jpegs"), 64)


def _drain(loader, paths, batch_size=32):
    return sum(len(b.indices) for b in loader.batches(paths, batch_size))


@pytest.mark.parametrize("decoder", ["pil", "dali"])
def test_decode_resize_cpu(benchmark, jpegs, decoder):
    if decoder == "dali":
        pytest.importorskip("nvidia.dali")
    benchmark.group = "decode+resize (CPU), 64 ImageNet-like JPEGs"
    loader = make_loader(decoder, torch.device("cpu"))
    assert benchmark.pedantic(_drain, args=(loader, jpegs), rounds=3, warmup_rounds=1) == len(jpegs)


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", ["pil", "nvjpeg"])
def test_decode_resize_gpu(benchmark, tmp_path_factory, decoder):
    paths = make_bench_set(tmp_path_factory.mktemp("bench-gpu"), 2048)
    benchmark.group = "decode+resize to CUDA, 2048 JPEGs"
    loader = make_loader(decoder, torch.device("cuda"))

    def run():
        n = _drain(loader, paths, 256)
        torch.cuda.synchronize()
        return n

    assert benchmark.pedantic(run, rounds=3, warmup_rounds=1) == len(paths)


@pytest.mark.parametrize("precision", ["fp32"])
@pytest.mark.parametrize("model, batch", [("resnet18", 8), ("pixels", 64)])
def test_backbone_cpu(benchmark, model, batch, precision):
    benchmark.group = f"backbone CPU {model} b{batch}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone(model, "random", "cpu", precision=precision)
    images = torch.randn(batch, 3, 224, 224)
    out = benchmark.pedantic(backbone, args=(images,), rounds=3, warmup_rounds=1)
    assert out.shape == (batch, backbone.dim)


@pytest.mark.gpu
@pytest.mark.parametrize("precision, compile", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_backbone_gpu(benchmark, precision, compile):
    benchmark.group = "backbone CUDA resnet152 b256"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone("resnet152", "random", "cuda", precision=precision, compile=compile)
    images = torch.randn(256, 3, 224, 224, device="cuda", dtype=torch.float16)

    def run():
        out = backbone(images)
        torch.cuda.synchronize()
        return out

    assert benchmark.pedantic(run, rounds=5, warmup_rounds=2).shape == (256, 2048)


@pytest.mark.gpu
def test_pca_kmeans_gpu_1m(benchmark):
    benchmark.group = "CUDA 1M x 200: PCA + KMeans K=20"
    x = torch.randn(1_000_000, 256, device="cuda")

    def run():
        pca = fit_pca(x, 200, "torch")
        fit = fit_kmeans(pca.transform(x), 20, "torch", n_init=1, max_iter=50)
        torch.cuda.synchronize()
        return fit

    assert benchmark.pedantic(run, rounds=2, warmup_rounds=1).centroids.shape == (20, 200)
