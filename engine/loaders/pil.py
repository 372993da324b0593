"""The CPU reference loader: PIL decode + resize + crop in a thread pool (PIL releases the GIL).

Batches are prefetched: while the caller runs the model on batch i, the pool decodes batch i+1.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import DecodeError
from .base import Batch, prefetched
from .decode import DEFAULT_MAX_PIXELS, load_and_preprocess
from .preprocess import normalize_uint8


def _decode_one(path, max_pixels):
    """(uint8 (3, 224, 224) array, None) or (None, reason). Never raises for one bad file."""
    try:
        return load_and_preprocess(path, max_pixels), None
    except DecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # a decoder bug must cost one image, not the run (decode_image should not let any out)
        return None, f"unexpected decoder error: {type(exc).__name__}: {str(exc)[:120]}"


class PILLoader:
    """paths -> Batch of float32 (b, 3, 224, 224) normalized tensors on `device` (default CPU)."""

    name = "pil"

    def __init__(self, device: torch.device | str = "cpu", num_threads: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, prefetch: int = 2):
        self.device = torch.device(device)
        self.num_threads = num_threads or min(32, os.cpu_count() or 1)
        self.max_pixels = max_pixels
        self.prefetch = max(1, prefetch)

    def _assemble(self, start: int, results) -> Batch:
        images, indices, failures = [], [], []
        for offset, (array, reason) in enumerate(results):
            if array is None:
                failures.append((start + offset, reason))
            else:
                images.append(array)
                indices.append(start + offset)
        if images:
            tensor = torch.from_numpy(np.stack(images))
            if self.device.type == "cuda":
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            tensor = normalize_uint8(tensor, torch.float16 if self.device.type == "cuda" else torch.float32)
        else:
            tensor = torch.empty((0, 3, 224, 224), device=self.device)
        return Batch(np.asarray(indices, dtype=np.int64), tensor, failures)

    def batches(self, paths: Sequence[Path], batch_size: int) -> Iterator[Batch]:
        with ThreadPoolExecutor(self.num_threads, thread_name_prefix="imgcluster-decode") as pool:
            def submit(batch_paths):
                return [pool.submit(_decode_one, p, self.max_pixels) for p in batch_paths]

            for start, results in prefetched(paths, batch_size, self.prefetch, submit):
                yield self._assemble(start, results)
