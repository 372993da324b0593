"""Run a loader into a backbone and collect features in one preallocated buffer on the device.

Out-of-memory handling: a torch.OutOfMemoryError while running the model halves the model's
micro-batch and retries the same images (logged once per halving); it is re-raised only when a
single image does not fit. With a FeatureStore, already-cached images are not decoded again and
new features are written to disk shards as they are produced (resume after a crash).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .backbones import Backbone
from .cluster import is_oom
from .errors import InputError
from .loaders.base import Loader, index_on


def auto_batch_size(device: torch.device, model: str) -> int:
    """Images per loader batch: 32 on the CPU; on CUDA from free memory (ResNet-152 bf16 at 224
    needs roughly 60 MB per image of activations in inference, so 256 fits well in 20 GB)."""
    if device.type != "cuda":
        return 32
    free, _ = torch.cuda.mem_get_info(device)
    per_image = 60e6 if model != "pixels" else 1e6
    return int(max(16, min(512, 2 ** int(np.log2(max(16, free * 0.5 / per_image))))))


class OOMBackoff:
    """Runs the backbone on a batch in micro-batches, halving the micro-batch on out-of-memory.

    `is_oom` decides which exceptions count as out-of-memory (tests inject their own failure on
    the CPU). The halved size is kept for later batches: memory pressure rarely goes away.
    """

    def __init__(self, backbone: Callable[..., torch.Tensor], micro_batch: int,
                 notify: Callable[[str], None] | None = None, pad_to_micro_batch: bool = False):
        self.backbone = backbone
        self.micro_batch = max(1, micro_batch)
        self.notify = notify
        self.halvings = 0
        # For a compiled or graphed backbone: call it with pad_to=micro_batch, so every chunk (a short last
        # batch, a batch with skipped files) runs at the one compiled size instead of compiling more.
        self.pad_to_micro_batch = pad_to_micro_batch

    @staticmethod
    def is_oom(exc: BaseException) -> bool:
        return is_oom(exc)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: (b, 3, 224, 224) -> (b, dim) float32."""
        outputs = []
        start = 0
        while start < images.shape[0]:
            chunk = images[start:start + self.micro_batch]
            try:
                outputs.append(self.backbone(chunk, pad_to=self.micro_batch) if self.pad_to_micro_batch
                               else self.backbone(chunk))
            except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
                if not self.is_oom(exc) and not isinstance(exc, MemoryError):
                    raise
                if self.micro_batch == 1:
                    raise
                self.micro_batch = max(1, self.micro_batch // 2)
                self.halvings += 1
                if images.is_cuda:
                    torch.cuda.empty_cache()
                if self.notify:
                    self.notify(f"Out of memory in the backbone: retrying with batch size {self.micro_batch}")
                continue
            start += chunk.shape[0]
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


@dataclass
class Extraction:
    """Features of the good images, in input order.

    features: (n_good, dim) float32 on the backbone's device; (n_good, n_components) when `pca` is set
    good:     (n_good,) int64 positions into the input path list
    failures: [(position, reason)] of images that could not be decoded
    resumed:  how many images came from the feature cache instead of being decoded
    resumed_failed: how many of those the cache recorded as unusable (they stay skipped)
    extracted: how many images were given to the loader (decoded or failed) in this call
    shards_written: cache shards written to disk in this call (0 without a store)
    waited_for_loader: seconds the model's thread spent waiting for the loader's next batch (host
        time: on a GPU the thread queues work ahead of the device, so a wait here may overlap
        device work, and a wait on the device for a decode event is not counted); a large share
        of `seconds` means decoding, not the model, sets the pace
    """

    features: torch.Tensor
    good: np.ndarray
    failures: list[tuple[int, str]]
    seconds: float
    resumed: int = 0
    resumed_failed: int = 0
    extracted: int = 0
    micro_batch: int = 0
    oom_halvings: int = 0
    shards_written: int = 0
    waited_for_loader: float = 0.0
    pca: object | None = None  # engine.reduce.PCAResult when features were reduced while streaming

    def drop_non_finite(self) -> int:
        """Move rows with NaN or inf features to `failures` (a damaged cache shard, a numeric
        overflow) so PCA and KMeans never see them; returns how many. One device reduction."""
        finite = torch.isfinite(self.features).all(dim=1)
        if bool(finite.all()):
            return 0
        keep = finite.cpu().numpy()
        reason = ("features are not finite (NaN or inf): a damaged feature cache, or an fp16 overflow "
                  "(rerun with --no-cache, or --precision bf16 / fp32)")
        self.failures = sorted(self.failures + [(int(p), reason) for p in self.good[~keep]])
        self.features = self.features[finite]
        self.good = self.good[keep]
        return int((~keep).sum())


@dataclass
class StreamingPCA:
    """Reduce features as they stream in, for collections too large to hold at full width.

    A seeded sample of `fit_rows` images, spread over the whole input (the rows fit_pca's
    'sampled' mode would take: engine.reduce._sample_rows), is extracted first and kept at full
    width; PCA is fitted on the good ones; then they and every other batch are projected, so the
    device holds only n x n_components. Not the first images: inputs are sorted by folder, and
    the first 200,000 of a photo tree are often one folder (one event, one camera), whose
    principal axes miss what tells the folders apart. request / backend / seed are fit_pca's.
    """

    request: float | int
    fit_rows: int
    backend: str = "torch"
    seed: int = 0


class _Extractor:
    """The loop shared by both modes: cache hits, then the loader, each row handed to `write`."""

    def __init__(self, paths, loader, backbone, batch_size, progress, store, notify):
        self.paths, self.loader, self.backbone = paths, loader, backbone
        self.batch_size, self.progress, self.store = batch_size, progress, store
        self.notify = notify
        self.device = backbone.device
        self.ok = np.zeros(len(paths), dtype=bool)
        self.failures: dict[int, str] = {}
        self.resumed = self.extracted = self.resumed_failed = 0
        self.waited = [0.0]  # seconds spent waiting for the loader (a list: _waiting adds to it)
        self.runner = OOMBackoff(backbone, batch_size, notify, pad_to_micro_batch=getattr(backbone, "static_shapes", False))
        # Test-only hook (tests/test_resume.py): sleep this long per batch so a kill lands mid-extraction.
        self.slow = float(os.environ.get("IMGCLUSTER_TEST_SLOW_BATCH_S", "0") or 0)

    def _from_cache(self, positions: np.ndarray, write, chunk: int = 65_536) -> np.ndarray:
        """Write cached rows of `positions`; return the positions still to extract."""
        cached = np.zeros(len(positions), dtype=bool)
        for start in range(0, len(positions), chunk):
            part = positions[start:start + chunk]
            staging = torch.empty((len(part), self.backbone.dim), dtype=torch.float32, device=self.device)
            hits, _, failed = self.store.gather([self.paths[p] for p in part], out=staging)
            if len(hits):
                write(part[hits], staging[torch.as_tensor(hits, device=self.device)])
                self.ok[part[hits]] = True
                cached[start + hits] = True
            for rel, reason in failed.items():
                self.failures[int(part[rel])] = reason
                cached[start + rel] = True
            self.resumed_failed += len(failed)
        done = int(cached.sum())
        self.resumed += done
        if self.progress and done:
            # not work done now: counted out of the total, not into the rate and ETA (a resumed
            # run's first seconds read 1,290 images/s and an ETA of 17 s for a 71 s job)
            getattr(self.progress, "fewer", self.progress)(done)
        return positions[~cached]

    def run(self, positions: np.ndarray, write) -> None:
        """Extract `positions` (int64, ascending); write(positions (b,), feats (b, dim) float32)."""
        todo = self._from_cache(positions, write) if self.store is not None else positions
        if self.notify and len(todo) and len(todo) < len(positions):  # said now, not only when it is over
            self.notify(f"Feature cache: {len(positions) - len(todo):,} of these {len(positions):,} images are "
                        f"already extracted; extracting the other {len(todo):,}")
        self.extracted += len(todo)
        if len(todo) and getattr(self.backbone, "cuda_graphs", False):
            # capture at the batch size now, while no loader thread uses the GPU (engine.cuda_graphs)
            self.backbone.prepare_graphs(self.runner.micro_batch, runner=self.runner)
        try:
            for batch in _waiting(self.loader.batches(_subset(self.paths, todo), self.batch_size), self.waited):
                if self.slow > 0:
                    time.sleep(self.slow)
                done = todo[batch.indices] if len(batch.indices) else np.zeros(0, dtype=np.int64)
                failed = [(int(todo[i]), reason) for i, reason in batch.failures]
                feats = None
                if len(done):
                    feats = self.runner(batch.images)
                    write(done, feats)
                    self.ok[done] = True
                for pos, reason in failed:
                    self.failures[pos] = reason
                if self.store is not None:
                    self.store.add([self.paths[p] for p in done], feats, [(self.paths[p], r) for p, r in failed])
                if self.progress:
                    self.progress(len(batch.indices) + len(batch.failures))
        except KeyboardInterrupt:
            # Ctrl-C: the rows already queued are complete, so write them; the rerun resumes after them.
            if self.store is not None:
                self.store.flush()
            raise


def _waiting(items, clock: list[float]):
    """Yield from `items`, adding the seconds spent waiting for each one to clock[0]."""
    iterator = iter(items)
    try:
        while True:
            t0 = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                clock[0] += time.perf_counter() - t0
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # stop the loader's threads now, not when the iterator is collected
            close()


def _subset(paths: Sequence, positions: np.ndarray) -> Sequence:
    """paths[positions] (positions: (m,) int64, ascending, unique) for a loader, without a Path
    object per image up front: a PathList's take() shares its bytes (16 bytes an image), and all
    positions (the usual case: nothing cached) are `paths` itself. A plain list of paths (the API,
    tests) gives a list."""
    if len(positions) == len(paths):
        return paths
    if hasattr(paths, "take"):
        return paths.take(positions)
    return [paths[i] for i in positions]


def _row_index(positions: np.ndarray, device: torch.device):
    """Rows to write, without a host sync on CUDA: a slice when they are consecutive (the usual
    case), else an index uploaded from pinned memory without blocking. A plain torch.as_tensor
    upload from pageable memory would wait for the GPU and stop decode/model overlap."""
    if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return index_on(positions, device)


def extract_features(paths: Sequence, loader: Loader, backbone: Backbone, batch_size: int,
                     progress: Callable[[int], None] | None = None, store=None,
                     notify: Callable[[str], None] | None = None,
                     streaming: StreamingPCA | None = None) -> Extraction:
    """Decode `paths` with `loader`, run `backbone`, return features for every decodable image.

    progress(n) is called with the number of images finished after each batch.
    store: an optional engine.store.FeatureStore (cache lookup + shard writing; it always holds
    full-width features, so a re-clustering can choose another PCA).
    streaming: when given and there are more than streaming.fit_rows paths, the returned features
    are already PCA-reduced, (n_good, n_components), and Extraction.pca is the fitted PCA.
    """
    from .reduce import fit_pca

    started = time.perf_counter()
    n = len(paths)
    device = backbone.device
    shards_before = store.shards_written if store is not None else 0
    ex = _Extractor(paths, loader, backbone, batch_size, progress, store, notify)
    everything = np.arange(n, dtype=np.int64)
    pca = None

    def writer(buffer, transform=None):
        def write(positions, feats):
            buffer[_row_index(positions, device)] = feats if transform is None else transform(feats)
        return write

    if streaming is None or n <= streaming.fit_rows:
        buffer = torch.empty((n, backbone.dim), dtype=torch.float32, device=device)
        ex.run(everything, writer(buffer))
    else:
        from .reduce import _sample_rows

        m = streaming.fit_rows
        sample = _sample_rows(n, m, streaming.seed)  # (m,) ascending positions over the whole input
        raw = torch.empty((m, backbone.dim), dtype=torch.float32, device=device)

        def write_raw(positions, feats):  # position in the input -> row of `raw`
            raw[index_on(np.searchsorted(sample, positions), device)] = feats

        ex.run(sample, write_raw)
        fit_on = raw[torch.as_tensor(np.flatnonzero(ex.ok[sample]), device=device)]
        # a NaN row (a damaged cache shard) would make the whole fit NaN; its own projection stays
        # NaN and Extraction.drop_non_finite moves it to the failures afterwards
        fit_on = fit_on[torch.isfinite(fit_on).all(dim=1)]
        if fit_on.shape[0] < 2:
            raise InputError(f"fewer than 2 of the {m} images sampled to fit PCA could be used: cannot fit PCA on them")
        pca = fit_pca(fit_on, streaming.request, streaming.backend, seed=streaming.seed)
        pca.mode = "streamed"
        del fit_on
        buffer = torch.empty((n, pca.n_components), dtype=torch.float32, device=device)
        buffer[index_on(sample, device)] = pca.transform(raw)
        del raw
        if notify:
            notify(f"PCA fitted on a seeded sample of {m} of the {n} images (extracted first); the other "
                   f"{n - m} are reduced as they stream in")
        rest = np.ones(n, dtype=bool)
        rest[sample] = False
        ex.run(everything[rest], writer(buffer, pca.transform))
    if store is not None:
        store.flush()
    if getattr(backbone, "cuda_graphs", False):
        backbone.release_graphs()  # their activation memory is the clustering's now
    good = np.flatnonzero(ex.ok)
    features = buffer[torch.as_tensor(good, device=device)] if len(good) < n else buffer
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Extraction(features, good, sorted(ex.failures.items()), time.perf_counter() - started,
                      resumed=ex.resumed, resumed_failed=ex.resumed_failed, extracted=ex.extracted, micro_batch=ex.runner.micro_batch,
                      oom_halvings=ex.runner.halvings, waited_for_loader=ex.waited[0],
                      shards_written=(store.shards_written - shards_before) if store is not None else 0,
                      pca=pca)
