"""The loader protocol: image paths -> normalized batches on the loader's device.

Every loader yields Batch objects in input order. A file that fails to decode never kills a
batch: it is reported in `failures` with a short reason and is absent from `indices`.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

import numpy as np
import torch


@dataclass
class Batch:
    """One batch of decoded images.

    indices:  (b,) int64 positions, into the path list given to the loader, of the images in `images`.
    images:   (b, 3, CROP, CROP) normalized; float32 on the CPU, float16 (or float32) on CUDA; on loader.device.
    failures: [(position, reason)] for files of this batch that could not be decoded.
    """

    indices: np.ndarray
    images: torch.Tensor
    failures: list[tuple[int, str]] = field(default_factory=list)


class Loader(Protocol):
    name: str
    device: torch.device

    def batches(self, paths: Sequence[Path], batch_size: int) -> Iterator[Batch]:
        """Yield batches covering every position of `paths` once (as an index or as a failure)."""
        ...


def prefetched(paths: Sequence, batch_size: int, depth: int,
               submit: Callable[[Sequence], list[Future]]) -> Iterator[tuple[int, list]]:
    """Yield (start, [result per path]) for consecutive batches of `paths`, in order, keeping
    `depth` batches submitted ahead (submit(batch_paths) -> one Future, or anything with
    .result(), per path), so the CPU work of the next batches overlaps whatever the caller does
    with this one."""
    starts = list(range(0, len(paths), batch_size))
    pending = [(s, submit(paths[s:s + batch_size])) for s in starts[:depth]]
    upcoming = iter(starts[depth:])
    while pending:
        start, futures = pending.pop(0)
        nxt = next(upcoming, None)
        if nxt is not None:
            pending.append((nxt, submit(paths[nxt:nxt + batch_size])))
        yield start, [f.result() for f in futures]


T = TypeVar("T")


def decoded_ahead(items: Iterable, decode: Callable[..., T], ahead: int = 1,
                  thread_name: str = "imgcluster-decode") -> Iterator[T]:
    """Yield decode(*item) for each item, in order, computed on one background thread that runs
    `ahead` items ahead of the consumer.

    For decoders that block their calling thread (torchvision's nvJPEG call waits for its own CUDA
    stream): on this thread the wait does not hold up the consumer, which meanwhile queues the model
    on the previous batch. An exception in decode is raised here, at that item. Closing the
    generator early waits for the item in flight, cancels the ones queued behind it, then stops.
    """
    worker = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
    try:
        in_flight: deque[Future] = deque()
        for item in items:
            in_flight.append(worker.submit(decode, *item))
            if len(in_flight) > ahead:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        worker.shutdown(wait=True, cancel_futures=True)


def index_on(values, device: torch.device) -> torch.Tensor:
    """An int64 index tensor on `device` without a host sync: on CUDA it is uploaded from pinned
    memory with non_blocking=True (torch.tensor(list, device=cuda) copies from pageable memory
    and waits for the stream, which would stop decoding from overlapping the model)."""
    return tensor_on(values, device, np.int64)


def tensor_on(values, device: torch.device, dtype=np.float32) -> torch.Tensor:
    """`values` (array-like) as a tensor of numpy `dtype` on `device`, uploaded without a host
    sync on CUDA (pinned memory, non_blocking; the pinned allocator keeps the host copy until the
    upload is done)."""
    host = torch.from_numpy(np.ascontiguousarray(values, dtype=dtype))
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host
