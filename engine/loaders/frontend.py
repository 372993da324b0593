"""The GPU loaders' CPU front end: read every file, probe its header, and send the files the GPU
decoder must not take to the PIL reference; results per batch, in input order, `prefetch`
batches ahead of the consumer.

Two thread pools, because the work is of two kinds:
- io (read + header probe, `io_threads`): mostly Python holding the GIL. Threads beyond one or two
  lose more to GIL hand-offs than they gain. On the 2-core VM, 400x500 q90 JPEGs in the page cache
  (`prepared_batches` as it was: read + probe + tensor), files/s: 1 thread 19.0k, 2 threads
  11.6k-12.9k, 4: 8.2k-9.7k, 8: 8.1k-8.4k, 16: 6.4k-9.2k. Read from a cold page cache: 3.8k-6.6k
  whatever the count (that disk's bandwidth). Hence DEFAULT_IO_THREADS = 1; raise it
  (`--io-threads`) for storage where each read waits long (network file systems).
- fallback (`fallback_threads`): PIL decode + resize of non-JPEG or unusual files. PIL releases
  the GIL while it decodes, so this pool scales with cores (default min(32, cores)).

Every position of a batch comes back as exactly one of: the fast-path item `finish(probe)` makes
(the loader's own type), or a probe.Prepared with `array` (PIL-decoded) or `reason` (failure).
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

from ..errors import DecodeError
from .base import prefetched
from .probe import ImageProbe, Prepared, pil_fallback, probe_file

DEFAULT_IO_THREADS = 1
MIN_RUN = 8  # files per io task at least: one task per file cost more in hand-offs than the work


def default_fallback_threads() -> int:
    return min(32, os.cpu_count() or 1)


class FrontEnd:
    """Owns the two pools; use as a context manager (leaving it cancels what has not started).

    fast_formats: formats the GPU decoder takes (probe_file's `fast_formats`).
    finish(probe) -> the item a fast-path file becomes (runs on an io thread).
    """

    def __init__(self, fast_formats: frozenset[str], max_pixels: int | None,
                 finish: Callable[[ImageProbe], object] = lambda probe: Prepared(probe=probe),
                 io_threads: int | None = None, fallback_threads: int | None = None, name: str = "imgcluster"):
        self.fast_formats, self.max_pixels, self.finish = fast_formats, max_pixels, finish
        self.io_threads = max(1, io_threads or DEFAULT_IO_THREADS)
        self.fallback_threads = max(1, fallback_threads or default_fallback_threads())
        self._name = name
        self._io: ThreadPoolExecutor | None = None
        self._fallback: ThreadPoolExecutor | None = None

    def __enter__(self) -> "FrontEnd":
        self._fallback = ThreadPoolExecutor(self.fallback_threads, thread_name_prefix=f"{self._name}-pil")
        self._io = ThreadPoolExecutor(self.io_threads, thread_name_prefix=f"{self._name}-read")
        return self

    def __exit__(self, *exc) -> None:
        # io first: its tasks submit to the fallback pool
        self._io.shutdown(wait=True, cancel_futures=True)
        self._fallback.shutdown(wait=True, cancel_futures=True)

    def batches(self, paths: Sequence, batch_size: int, prefetch: int) -> Iterator[tuple[int, list]]:
        """(start, [item per path]) for consecutive batches of `paths`, in order (base.prefetched)."""
        if self._io is None:
            raise RuntimeError("FrontEnd.batches needs `with FrontEnd(...) as front:`")
        return prefetched(paths, batch_size, prefetch, self._submit)

    def _submit(self, batch_paths: Sequence) -> list:
        """About one io task per thread per batch, each a run of at least MIN_RUN files."""
        step = max(MIN_RUN, -(-len(batch_paths) // self.io_threads))
        parts: list[_ResultAt] = []
        for a in range(0, len(batch_paths), step):
            run = batch_paths[a:a + step]
            future = self._io.submit(self._prepare_run, run)
            parts += [_ResultAt(future, j) for j in range(len(run))]
        return parts

    def _prepare_run(self, paths: Sequence) -> list:
        out: list = []
        for path in paths:
            try:
                probe = probe_file(path, self.max_pixels, self.fast_formats)
            except DecodeError as exc:
                out.append(Prepared(reason=str(exc)))
                continue
            if probe.fast_ok:
                out.append(self.finish(probe))
            else:  # decoded by the reference on the fallback pool, off the GIL-bound io thread
                out.append(self._fallback.submit(pil_fallback, probe.data, self.max_pixels))
        return out


class _ResultAt:
    """The j-th item of an io task's list, with the .result() that base.prefetched calls (waiting
    for the item's PIL decode when it went to the fallback pool)."""

    __slots__ = ("future", "j")

    def __init__(self, future: Future, j: int):
        self.future, self.j = future, j

    def result(self):
        item = self.future.result()[self.j]
        return item.result() if isinstance(item, Future) else item
