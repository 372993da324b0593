"""Serving a fitted model: FittedModel.predict_bytes throughput and per-request latency.

One request = a list of encoded JPEGs (the generated sample set, ~180-320 px, cycled) ->
labels/distances/confidences; timed end to end: CPU decode + resize in the model's thread pool,
upload, backbone, PCA, nearest centroid, results back on the host. The model is synthetic
(random PCA and K=20 centroids around the backbone with random weights): the work per image
does not depend on the values.

CPU cases: pixels and resnet18 at request sizes 1, 16, 256 (about 1 min on 2 cores).
GPU cases (skipped without CUDA): resnet18 and resnet152 (bf16) at 1, 16, 256, for both
predict_bytes and predict_tensors (pre-decoded, normalized batches already on the GPU: the
model-only ceiling).

Run:
  .venv/bin/python -m pytest benchmarks/bench_predict.py                  # table at the end
  .venv/bin/python benchmarks/bench_predict.py --device cpu --models pixels,resnet18
  .venv/bin/python benchmarks/bench_predict.py --device cuda --models resnet18,resnet152 --api bytes,tensors
Columns: img/s = images per second over all timed requests; p50 / p99 = request latency (ms).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine.backbones import load_backbone
from engine.loaders.decode import load_and_preprocess
from engine.loaders.preprocess import describe as describe_preprocess, normalize_uint8
from engine.model import FittedModel, ModelState
from engine.sample_data import generate_sample_set

BATCHES = (1, 16, 256)
K = 20
N_COMPONENTS = 200
CPU_BUDGET_S = 2.0   # timed seconds per case (at least MIN_ROUNDS requests)
GPU_BUDGET_S = 3.0
MIN_ROUNDS = 3
MAX_ROUNDS = 500


def synthetic_model(name: str, device: str, precision: str = "auto", num_threads: int | None = None) -> FittedModel:
    """A FittedModel around `name` (random weights) with random PCA (d -> min(200, d)) and K=20 centroids."""
    backbone = load_backbone(name, "random", device, seed=0, precision=precision, warn=lambda m: None)
    d = backbone.dim
    nc = min(N_COMPONENTS, d)
    g = torch.Generator().manual_seed(0)
    comps = torch.linalg.qr(torch.randn(d, nc, generator=g)).Q.T.contiguous()
    state = ModelState(
        backbone={"name": name, "dim": d, "precision": backbone.precision, "fingerprint": backbone.fingerprint,
                  "weights": {"kind": "random", "path": None, "seed": 0, "description": backbone.weights}},
        preprocess=describe_preprocess(),
        pca={"mode": "exact", "n_components": nc, "input_dim": d, "explained_variance": 0.9, "fit_rows": 0,
             "spectrum_length": nc},
        k=K, scores=[], config={}, centroids=torch.randn(K, nc, generator=g),
        cluster_mean_distance=torch.ones(K), cluster_sizes=torch.ones(K, dtype=torch.int64),
        pca_mean=torch.zeros(d), pca_components=comps, pca_explained_variance_ratio=torch.full((nc,), 0.9 / nc))
    return FittedModel(state, backbone, num_threads=num_threads or min(16, os.cpu_count() or 1),
                       batch_size=max(BATCHES))


def sample_blobs(n: int = 60) -> list[bytes]:
    """Encoded JPEGs of the generated sample set (6 groups)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_sample_set(tmp, per_group=max(1, n // 6))
        return [p.read_bytes() for p in paths]


def request(blobs: list[bytes], size: int, offset: int) -> list[bytes]:
    return [blobs[(offset + i) % len(blobs)] for i in range(size)]


@dataclass
class Row:
    device: str
    model: str
    api: str
    batch: int
    rounds: int
    img_s: float
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        return (f"{self.device:<6} {self.model:<10} {self.api:<8} {self.batch:>6} {self.rounds:>7} "
                f"{self.img_s:>10,.1f} {self.p50_ms:>10.2f} {self.p99_ms:>10.2f}")


HEADER = f"{'device':<6} {'model':<10} {'api':<8} {'batch':>6} {'rounds':>7} {'img/s':>10} {'p50 ms':>10} {'p99 ms':>10}"


def make_call(model: FittedModel, api: str, blobs: list[bytes], batch: int):
    """A zero-argument callable doing one request of `batch` images through `api`."""
    if api == "bytes":
        reqs = [request(blobs, batch, o) for o in range(0, len(blobs), 7)]
        state = {"i": 0}

        def call():
            state["i"] += 1
            return model.predict_bytes(reqs[state["i"] % len(reqs)])
        return call
    if api == "tensors":
        arrays = np.stack([load_and_preprocess(b) for b in request(blobs, batch, 0)])
        dtype = torch.float16 if model.device.type == "cuda" else torch.float32
        images = normalize_uint8(torch.from_numpy(arrays).to(model.device), dtype)
        return lambda: model.predict_tensors(images)
    raise ValueError(api)


def measure(call, batch: int, budget_s: float, warmup: int = 2, min_rounds: int = MIN_ROUNDS,
            timer=None) -> tuple[int, float, np.ndarray]:
    """Warm up, then time requests for about budget_s: (rounds, img/s, latencies in ms).

    timer(fn, rounds) runs fn `rounds` times (default: a plain loop; pytest-benchmark's pedantic
    in the pytest cases, so its record is of the same calls, not extra ones)."""
    first = time.perf_counter()
    for _ in range(warmup):
        call()
    per_call = (time.perf_counter() - first) / max(1, warmup)
    rounds = int(max(min_rounds, min(MAX_ROUNDS, budget_s / max(per_call, 1e-6))))
    latencies = []

    def timed():
        t0 = time.perf_counter()
        result = call()
        latencies.append(time.perf_counter() - t0)
        assert result.ok.all()

    if timer is None:
        for _ in range(rounds):
            timed()
    else:
        timer(timed, rounds)
    lat = np.asarray(latencies)
    return len(lat), batch * len(lat) / lat.sum(), lat * 1e3


def row_for(device: str, name: str, api: str, batch: int, lat_ms: np.ndarray, rounds: int, img_s: float) -> Row:
    return Row(device, name, api, batch, rounds, img_s, float(np.percentile(lat_ms, 50)),
               float(np.percentile(lat_ms, 99)))


# --------------------------------------------------------------------------- pytest-benchmark

_rows: list[Row] = []
_models: dict[tuple[str, str], FittedModel] = {}


@pytest.fixture(scope="module")
def blobs():
    return sample_blobs()


@pytest.fixture(scope="module", autouse=True)
def print_table(request):
    yield
    for model in _models.values():
        model.close()
    _models.clear()
    if _rows:
        lines = ["", f"predict throughput and latency ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores"
                 + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "") + ")", HEADER]
        lines += [r.line() for r in _rows]
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            print("\n".join(lines), flush=True)


def _model(name: str, device: str) -> FittedModel:
    if (name, device) not in _models:
        _models[(name, device)] = synthetic_model(name, device)
    return _models[(name, device)]


def _bench(benchmark, blobs, device, name, api, batch, budget, warmup=1, min_rounds=MIN_ROUNDS):
    model = _model(name, device)
    call = make_call(model, api, blobs, batch)
    benchmark.group = f"predict {device} {name} {api}"
    rounds, img_s, lat = measure(call, batch, budget, warmup=warmup, min_rounds=min_rounds,
                                 timer=lambda fn, n: benchmark.pedantic(fn, rounds=n, iterations=1))
    benchmark.extra_info.update(batch=batch, img_per_s=round(img_s, 1), p50_ms=round(float(np.percentile(lat, 50)), 3),
                                p99_ms=round(float(np.percentile(lat, 99)), 3))
    _rows.append(row_for(device, name, api, batch, lat, rounds, img_s))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", ["pixels", "resnet18"])
def test_predict_cpu(benchmark, blobs, name, batch):
    if name != "pixels" and batch > 16:  # resnet18 at 256 on 2 cores: several seconds a request
        _model(name, "cpu").predict_bytes(request(blobs, 16, 0))  # warm-up at a smaller size
        _bench(benchmark, blobs, "cpu", name, "bytes", batch, 0, warmup=0, min_rounds=2)
    else:
        _bench(benchmark, blobs, "cpu", name, "bytes", batch, CPU_BUDGET_S)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("api", ["bytes", "tensors"])
@pytest.mark.parametrize("name", ["resnet18", "resnet152"])
def test_predict_gpu(benchmark, blobs, name, api, batch):
    _bench(benchmark, blobs, "cuda", name, api, batch, GPU_BUDGET_S, warmup=3)


# --------------------------------------------------------------------------- script mode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--models", default="pixels,resnet18")
    p.add_argument("--api", default="bytes", help="comma list of bytes, tensors")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--budget", type=float, default=None, help="timed seconds per case")
    p.add_argument("--threads", type=int, default=None, help="decode threads (default: min(16, cores))")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    budget = args.budget if args.budget is not None else (GPU_BUDGET_S if args.device.startswith("cuda") else CPU_BUDGET_S)
    blobs = sample_blobs()
    name_of_device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"cpu ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"
    print(f"predict: {len(blobs)} distinct sample JPEGs, K={K}, on {name_of_device}")
    print(HEADER)
    for name in args.models.split(","):
        model = synthetic_model(name, args.device, num_threads=args.threads)
        for api in args.api.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                call = make_call(model, api, blobs, batch)
                rounds, img_s, lat = measure(call, batch, budget, warmup=1 if args.device == "cpu" else 3)
                print(row_for(args.device.split(":")[0], name, api, batch, lat, rounds, img_s).line(), flush=True)
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
