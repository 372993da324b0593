"""Run a loader into a backbone and collect features in one preallocated buffer on the device.

Out-of-memory handling: a torch.OutOfMemoryError while running the model halves the model's
micro-batch and retries the same images (logged once per halving); it is re-raised only when a
single image does not fit. With a FeatureStore, already-cached images are not decoded again and
new features are written to disk shards as they are produced (resume after a crash).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .backbones import Backbone
from .cluster import is_oom
from .loaders.base import Loader


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

    def __init__(self, backbone: Callable[[torch.Tensor], torch.Tensor], micro_batch: int,
                 notify: Callable[[str], None] | None = None):
        self.backbone = backbone
        self.micro_batch = max(1, micro_batch)
        self.notify = notify
        self.halvings = 0

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
                outputs.append(self.backbone(chunk))
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

    features: (n_good, dim) float32 on the backbone's device
    good:     (n_good,) int64 positions into the input path list
    failures: [(position, reason)] of images that could not be decoded
    resumed:  how many images came from the feature cache instead of being decoded
    extracted: how many images were given to the loader (decoded or failed) in this call
    shards_written: cache shards written to disk in this call (0 without a store)
    """

    features: torch.Tensor
    good: np.ndarray
    failures: list[tuple[int, str]]
    seconds: float
    resumed: int = 0
    extracted: int = 0
    micro_batch: int = 0
    oom_halvings: int = 0
    shards_written: int = 0
    notes: list[str] = field(default_factory=list)


def extract_features(paths: Sequence, loader: Loader, backbone: Backbone, batch_size: int,
                     progress: Callable[[int], None] | None = None, store=None,
                     notify: Callable[[str], None] | None = None) -> Extraction:
    """Decode `paths` with `loader`, run `backbone`, return features for every decodable image.

    progress(n) is called with the number of images finished after each batch.
    store: an optional engine.store.FeatureStore (cache lookup + shard writing).
    """
    started = time.perf_counter()
    n = len(paths)
    device = backbone.device
    buffer = torch.empty((n, backbone.dim), dtype=torch.float32, device=device)
    ok = np.zeros(n, dtype=bool)
    failures: dict[int, str] = {}

    todo = np.arange(n, dtype=np.int64)
    resumed = 0
    shards_before = 0
    if store is not None:
        shards_before = store.shards_written
        hit_positions, _, cached_failures = store.gather(paths, out=buffer)
        ok[hit_positions] = True
        failures.update(cached_failures)
        resumed = len(hit_positions) + len(cached_failures)
        cached = np.zeros(n, dtype=bool)
        cached[hit_positions] = True
        cached[list(cached_failures)] = True
        todo = np.flatnonzero(~cached).astype(np.int64)
        if progress and resumed:
            progress(resumed)

    runner = OOMBackoff(backbone, batch_size, notify)
    todo_paths = [paths[i] for i in todo]
    # Test-only hook (tests/test_resume.py): sleep this long per batch so a kill lands mid-extraction.
    slow = float(os.environ.get("IMGCLUSTER_TEST_SLOW_BATCH_S", "0") or 0)
    try:
        for batch in loader.batches(todo_paths, batch_size):
            if slow > 0:
                time.sleep(slow)
            positions = todo[batch.indices] if len(batch.indices) else np.zeros(0, dtype=np.int64)
            failed = [(int(todo[i]), reason) for i, reason in batch.failures]
            feats = None
            if len(positions):
                feats = runner(batch.images)
                buffer[torch.as_tensor(positions, device=device)] = feats
                ok[positions] = True
            for pos, reason in failed:
                failures[pos] = reason
            if store is not None:
                store.add([paths[p] for p in positions], feats, [(paths[p], r) for p, r in failed])
            if progress:
                progress(len(batch.indices) + len(batch.failures))
    except KeyboardInterrupt:
        # Ctrl-C: the rows already queued are complete, so write them; the rerun resumes after them.
        if store is not None:
            store.flush()
        raise
    if store is not None:
        store.flush()
    good = np.flatnonzero(ok)
    features = buffer[torch.as_tensor(good, device=device)] if len(good) < n else buffer
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Extraction(features, good, sorted(failures.items()), time.perf_counter() - started,
                      resumed=resumed, extracted=len(todo), micro_batch=runner.micro_batch,
                      oom_halvings=runner.halvings,
                      shards_written=(store.shards_written - shards_before) if store is not None else 0)
