"""`imgcluster bench`: images/s per stage and end to end, against the seed-like configuration.

The seed-like configuration is the 2019 method as first written: PIL decode in a thread pool,
an fp32 model, scikit-learn PCA / KMeans / silhouette_score one K at a time. It is measured in
the same run, on the same files, so the ratio is meaningful on a noisy machine. Throughput does
not depend on the weights, so the backbone uses seeded random weights (no download).

Every stage's figures ({"seconds", "images_per_s", "images"}) are for the same n images. The
backbone alone is timed on whole batches of random tensors and its seconds scaled to n; the
timed run itself is kept as "measured": {"seconds", "images"}.
"""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .backbones import load_backbone
from .config import Config
from .device import resolve_cluster_backend, resolve_cuda_graphs, resolve_decoder, resolve_device
from .errors import ConfigError
from .features import auto_batch_size, extract_features
from .loaders import make_loader
from .pipeline import cluster_features
from .progress import Reporter
from .select import usable_ks

UNIQUE_IMAGES = 256  # distinct JPEGs generated; larger sets hard-link them (decode work is the same)
BENCH_NAME = re.compile(r"bench_\d{5,}\.jpg")  # the files make_bench_set writes (and nothing else)


def _imagenet_like(rng: np.random.Generator, h: int = 400, w: int = 500) -> Image.Image:
    """A photo-like 400x500 RGB image: smooth colour field + mid-frequency detail + grain.
    At JPEG quality 90 it is about 90 KB, like an average ImageNet validation image."""
    coarse = Image.fromarray(rng.uniform(0, 255, (8, 10, 3)).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    detail = Image.fromarray(rng.uniform(0, 255, (50, 62, 3)).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    img = 0.7 * np.asarray(coarse, np.float32) + 0.3 * np.asarray(detail, np.float32) + rng.normal(0, 13, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_bench_set(folder, n: int, seed: int = 0) -> list[Path]:
    """Ensure `folder` holds n ImageNet-like JPEGs (bench_00000.jpg ...); returns their paths.

    Raises ConfigError when `folder` holds anything else: the bench writes its own images there
    (hundreds to thousands of them), never into a folder of the user's photos."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--folder {folder} is a file: give a new or empty folder for the bench images")
    others = sorted(e.name for e in folder.iterdir() if not BENCH_NAME.fullmatch(e.name)) if folder.exists() else []
    if others:
        raise ConfigError(f"--folder {folder} holds {len(others)} other file(s) (e.g. {others[0]}): the bench "
                          "generates its own ImageNet-like JPEGs (bench_NNNNN.jpg) there; give a new or empty "
                          "folder, or leave --folder out")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"bench_{i:05d}.jpg" for i in range(n)]
    unique = min(n, UNIQUE_IMAGES)

    def write(i: int) -> None:
        if not paths[i].exists():
            _imagenet_like(np.random.default_rng([seed, i])).save(paths[i], "JPEG", quality=90)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(write, range(unique)))
    for i in range(unique, n):
        if not paths[i].exists():
            try:
                os.link(paths[i % unique], paths[i])
            except OSError:
                paths[i].write_bytes(paths[i % unique].read_bytes())
    return paths


@dataclass
class Stage:
    name: str
    seconds: float
    images: int

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class BenchResult:
    device: str
    model: str
    n_images: int
    ks: list[int]
    ours: dict[str, dict] = field(default_factory=dict)
    seed_like: dict[str, dict] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """End-to-end speed of ours over the seed-like configuration."""
        return self.seed_like["end_to_end"]["seconds"] / self.ours["end_to_end"]["seconds"]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ratio_end_to_end"] = self.ratio if self.seed_like else None
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _record(table: dict, stage: Stage) -> None:
    table[stage.name] = {"seconds": round(stage.seconds, 4), "images_per_s": round(stage.images_per_s, 1),
                         "images": stage.images}


def _read_all(paths) -> None:
    def read(p):
        with open(p, "rb") as handle:
            return len(handle.read())

    with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
        list(pool.map(read, paths))


def _drain(loader, paths, batch_size, device) -> None:
    for batch in loader.batches(paths, batch_size):
        _ = batch.images.shape
    _sync(device)


def _backbone_rate(backbone, batch_size, device, iters: int) -> Stage:
    images = torch.randn(batch_size, 3, 224, 224, device=device,
                         dtype=torch.float16 if device.type == "cuda" else torch.float32)
    backbone(images)  # warm-up (cudnn autotune, compile)
    seconds = _timed(lambda: [backbone(images) for _ in range(iters)], device)
    return Stage("backbone", seconds, batch_size * iters)


def _seed_like_clustering(features: torch.Tensor, config: Config) -> dict[str, float]:
    """scikit-learn PCA, then KMeans and silhouette_score one K at a time (the 2019 method)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    x = features.float().cpu().numpy()
    times = {}
    t0 = time.perf_counter()
    reduced = PCA(n_components=min(config.reduce.pca, *x.shape) if isinstance(config.reduce.pca, int) else config.reduce.pca,
                  svd_solver="full").fit_transform(x) if config.reduce.pca else x
    times["pca"] = time.perf_counter() - t0
    times["kmeans"] = times["silhouette"] = 0.0
    for k in config.cluster.k:
        t0 = time.perf_counter()
        labels = KMeans(k, n_init=config.cluster.n_init, random_state=config.cluster.seed).fit_predict(reduced)
        times["kmeans"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        silhouette_score(reduced, labels)
        times["silhouette"] += time.perf_counter() - t0
    return times


def _measure_extraction(table: dict, paths, loader, backbone, batch_size: int, device) -> tuple:
    """Record decode+resize alone, the backbone alone, and both together (what a run does) in
    `table`; returns (the Extraction, its seconds)."""
    n = len(paths)
    _drain(loader, paths[: min(n, batch_size)], batch_size, device)  # warm-up: pipeline build, thread pools
    _record(table, Stage("decode_resize", _timed(lambda: _drain(loader, paths, batch_size, device), device), n))
    # The backbone alone is timed on whole batches of random tensors, repeated (2 to 20 times) for
    # a stable figure. Its seconds are scaled to the n images so that every row of a table counts
    # the same images (unscaled, 4 x 16 of them took longer than the whole extract of 24); what was
    # timed is kept under "measured".
    measured = _backbone_rate(backbone, batch_size, device, iters=max(2, min(20, n // batch_size)))
    _record(table, Stage("backbone", measured.seconds * n / measured.images, n))
    table["backbone"]["measured"] = {"seconds": round(measured.seconds, 4), "images": measured.images}
    t0 = time.perf_counter()
    extraction = extract_features(paths, loader, backbone, batch_size)
    _sync(device)
    seconds = time.perf_counter() - t0
    _record(table, Stage("extract", seconds, n))
    # how much of extract the model spent waiting for decoded batches: decode-bound or model-bound
    table["extract"]["waited_for_loader_s"] = round(extraction.waited_for_loader, 4)
    return extraction, seconds


def _warm_up_clustering(features: torch.Tensor, config: Config, backend: str) -> None:
    """One small clustering pass first, with the real K list and PCA request: the first
    linalg/BLAS call of a process loads libraries (seconds on the CPU), and on a GPU the first
    Triton launch for a given shape class compiles the kernel; neither belongs in the stage times.
    The sample has at least as many rows as dimensions so PCA takes the same (covariance) path.

    Triton compiles one variant per divisibility of its integer arguments by 16 (the row count
    among them), so the sample's row count has the remainder mod 16 of the real one: the first
    H100 runs warmed up on 2,049 rows for 4,096 (now 2,064) and paid a 0.6-0.8 s compile inside the timed
    silhouette stage."""
    n = len(features)
    rows = min(n, max(features.shape[1] + 1, max(config.cluster.k) + 2, 512))
    if rows < n:
        rows += (n - rows) % 16  # same remainder mod 16 as n: at most 15 more rows, never past n
    small = features[:rows]
    ks = [k for k in config.cluster.k if k <= rows - 1] or [2]
    warm = config.replace(k=",".join(map(str, ks)))
    cluster_features(small, warm, backend, Reporter())
    _seed_like_clustering(small, warm)


def run_bench(folder=None, n: int | None = None, model: str = "resnet152", device: str = "auto",
              decoder: str = "auto", k: str = "2:20", pca=200, batch_size: int | None = None,
              compile: bool = False, seed_like: bool = True, reporter: Reporter | None = None,
              io_threads: int | None = None, cuda_graphs: bool = False) -> BenchResult:
    """Measure every stage on `n` ImageNet-like JPEGs (generated into `folder` when missing)."""
    # Checked before the default is applied: `n or default` turned --n 0 into the default.
    if n is not None and n < 3:
        raise ConfigError(f"--n {n}: the bench needs at least 3 images (the silhouette needs 2 <= K <= n - 1)")
    reporter = reporter or Reporter()
    dev = resolve_device(device, reporter.notify)
    resolve_cuda_graphs(cuda_graphs, dev)  # before the bench set is made
    if n is None:
        n = 4096 if dev.type == "cuda" else 96
    # random weights: throughput does not depend on them, and no download (pixels has none)
    config = Config.from_kwargs(model=model, weights="auto" if model == "pixels" else "random", device=device, decoder=decoder, k=k, pca=pca,
                                compile=compile, batch_size=batch_size, cuda_graphs=cuda_graphs)
    # Both configurations cluster the same Ks: those n images can support (K <= n - 1).
    config = config.replace(k=",".join(map(str, usable_ks(config.cluster.k, n, reporter.notify))))
    folder = Path(folder) if folder else Path(os.environ.get("TMPDIR", "/tmp")) / "imgcluster-bench"
    reporter.notify(f"Bench set: {n} ImageNet-like JPEGs (400x500, q90) in {folder}")
    paths = make_bench_set(folder, n)
    dec = resolve_decoder(decoder, dev, reporter.notify)
    cluster_backend = resolve_cluster_backend("auto", dev)
    bs = batch_size or auto_batch_size(dev, model)
    result = BenchResult(str(dev), model, n, list(config.cluster.k),
                         backends={"decoder": dec, "cluster": cluster_backend})

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are intended here
        ours_bb = load_backbone(model, "random", dev, compile=compile, cuda_graphs=cuda_graphs)
        # the 2019 method as written: an fp32 model in the default (NCHW) layout
        seed_bb = load_backbone(model, "random", dev, precision="fp32", channels_last=False) if seed_like else None
    result.backends["backbone"] = (f"{model} {ours_bb.precision}" + (" compiled" if compile else "")
                                   + (" cuda-graphs" if cuda_graphs else ""))

    # Ours, stage by stage.
    _record(result.ours, Stage("read", _timed(lambda: _read_all(paths), dev), n))
    loader = make_loader(dec, dev, io_threads=io_threads)
    extraction, extract_s = _measure_extraction(result.ours, paths, loader, ours_bb, bs, dev)
    if hasattr(loader, "io_threads"):  # the GPU decoders' file-reading threads (loaders/frontend.py)
        result.backends["io_threads"] = f"{loader.io_threads or 'auto'} ({loader.io_threads_used} used)"
    _warm_up_clustering(extraction.features, config, cluster_backend)
    t0 = time.perf_counter()
    _, _, search, timings = cluster_features(extraction.features, config, cluster_backend, Reporter())
    _sync(dev)
    cluster_s = time.perf_counter() - t0
    for stage in ("pca", "kmeans", "silhouette"):
        _record(result.ours, Stage(stage, timings[stage]["seconds"], n))
    _record(result.ours, Stage("end_to_end", extract_s + cluster_s, n))

    if seed_like:
        seed_extraction, seed_extract_s = _measure_extraction(result.seed_like, paths, make_loader("pil", dev),
                                                              seed_bb, bs, dev)
        times = _seed_like_clustering(seed_extraction.features, config)
        for stage, seconds in times.items():
            _record(result.seed_like, Stage(stage, seconds, n))
        _record(result.seed_like, Stage("end_to_end", seed_extract_s + sum(times.values()), n))
    return result


def print_bench(result: BenchResult, console) -> None:
    from rich.table import Table

    table = Table(title=f"imgcluster bench — {result.n_images} images, {result.model}, {result.device}, "
                        f"K={result.ks[0]}..{result.ks[-1]}")
    table.add_column("stage")
    table.add_column("ours img/s", justify="right")
    table.add_column("ours s", justify="right")
    table.add_column("seed-like img/s", justify="right")
    table.add_column("seed-like s", justify="right")
    for stage in ("read", "decode_resize", "backbone", "extract", "pca", "kmeans", "silhouette", "end_to_end"):
        ours = result.ours.get(stage)
        seed = result.seed_like.get(stage)
        table.add_row(stage,
                      f"{ours['images_per_s']:,.1f}" if ours else "—", f"{ours['seconds']:.3f}" if ours else "—",
                      f"{seed['images_per_s']:,.1f}" if seed else "—", f"{seed['seconds']:.3f}" if seed else "—")
    console.print(table)
    measured = result.ours.get("backbone", {}).get("measured")
    if measured and measured["images"] != result.n_images:
        console.print(f"backbone row: the model alone on {measured['images']:,} random 224x224 images "
                      f"({measured['seconds']:.3f} s), scaled to {result.n_images:,}", highlight=False)
    for side, table_of in (("ours", result.ours), ("seed-like", result.seed_like)):
        extract = table_of.get("extract") or {}
        if "waited_for_loader_s" in extract:
            console.print(f"extract ({side}): the model's thread waited {extract['waited_for_loader_s']:.3f} s of "
                          f"{extract['seconds']:.3f} s for decoded batches (host time; on a GPU it queues work "
                          "ahead, so this counts only the waits that left it nothing to queue)", highlight=False)
    console.print("Backends: " + ", ".join(f"{k}={v}" for k, v in result.backends.items()), highlight=False)
    if result.seed_like:
        console.print(f"End to end: ours is [bold]{result.ratio:.2f}×[/bold] the seed-like configuration "
                      "(PIL + fp32 model + scikit-learn), measured in this run.")
