"""The GPU loaders' CPU front end: read every file, probe its header, and send the files the GPU
decoder must not take to the PIL reference; results per batch, in input order, `prefetch`
batches ahead of the consumer.

Two thread pools, because the work is of two kinds:
- io (read + header probe, `io_threads`): mostly Python holding the GIL. Threads beyond one or two
  lose more to GIL hand-offs than they gain. On the 2-core VM, 400x500 q90 JPEGs in the page cache
  (`prepared_batches` as it was: read + probe + tensor), files/s: 1 thread 19.0k, 2 threads
  11.6k-12.9k, 4: 8.2k-9.7k, 8: 8.1k-8.4k, 16: 6.4k-9.2k. Read from a cold page cache: 3.8k-6.6k
  whatever the count (that disk's bandwidth). Hence one io thread (DEFAULT_IO_THREADS) to start.
  With io_threads None ("auto"), the first batch's files are timed on that thread: when they
  spent longer waiting (wall time beyond the thread's CPU time: storage latency) than working,
  later batches get AUTO_MAX_IO_THREADS threads (`auto_io_threads`), since waiting threads do
  not hold the GIL (network file systems, cold disks). A number fixes the count.
- fallback (`fallback_threads`): PIL decode + resize of non-JPEG or unusual files. PIL releases
  the GIL while it decodes, so this pool scales with cores (default min(32, cores)).

Every position of a batch comes back as exactly one of: the fast-path item `finish(probe)` makes
(the loader's own type), or a probe.Prepared with `array` (PIL-decoded) or `reason` (failure).
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

from ..errors import DecodeError
from .base import prefetched
from .probe import ImageProbe, Prepared, pil_fallback, probe_file

DEFAULT_IO_THREADS = 1
AUTO_MAX_IO_THREADS = 16
AUTO_SAMPLE_FILES = 16  # files timed on one thread before "auto" decides
MIN_RUN = 8  # files per io task at least: one task per file cost more in hand-offs than the work


def auto_io_threads(wait_s: float, cpu_s: float, cap: int = AUTO_MAX_IO_THREADS) -> int:
    """io threads for files that, on one thread, waited `wait_s` and worked `cpu_s` in all: 1 while
    they work at least as long as they wait (reading is then GIL-bound Python), else `cap`.
    Not wait / cpu: the first files' CPU time is inflated (fresh buffers fault in), and with 1 ms
    of simulated latency that ratio chose 6 threads, 1.7k files/s against 5.7k with 16; threads
    that wait do not hold the GIL, and from a disk-bound cold cache 16 threads did no worse than 1."""
    return 1 if wait_s <= cpu_s else cap


def default_fallback_threads() -> int:
    return min(32, os.cpu_count() or 1)


class FrontEnd:
    """Owns the two pools; use as a context manager (leaving it cancels what has not started).

    fast_formats: formats the GPU decoder takes (probe_file's `fast_formats`).
    finish(probe) -> the item a fast-path file becomes (runs on an io thread).
    io_threads: a count, or None for "auto" (module doc); `threads_in_use` says what it chose.
    """

    def __init__(self, fast_formats: frozenset[str], max_pixels: int | None,
                 finish: Callable[[ImageProbe], object] = lambda probe: Prepared(probe=probe),
                 io_threads: int | None = None, fallback_threads: int | None = None, name: str = "imgcluster"):
        self.fast_formats, self.max_pixels, self.finish = fast_formats, max_pixels, finish
        self.threads_in_use = max(1, io_threads or DEFAULT_IO_THREADS)
        self.fallback_threads = max(1, fallback_threads or default_fallback_threads())
        self._name = name
        self._io: ThreadPoolExecutor | None = None
        self._retired: list[ThreadPoolExecutor] = []  # the one-thread pool after an auto scale-up
        self._fallback: ThreadPoolExecutor | None = None
        self._timing = io_threads is None  # "auto": time files until it has decided
        self._waited = self._worked = 0.0
        self._timed = 0
        self._generation = 0  # +1 when auto replaces the io pool
        self._lock = threading.Lock()

    def __enter__(self) -> "FrontEnd":
        self._fallback = ThreadPoolExecutor(self.fallback_threads, thread_name_prefix=f"{self._name}-pil")
        self._io = ThreadPoolExecutor(self.threads_in_use, thread_name_prefix=f"{self._name}-read")
        return self

    def __exit__(self, *exc) -> None:
        # io first: its tasks submit to the fallback pool
        for pool in (*self._retired, self._io):
            pool.shutdown(wait=True, cancel_futures=True)
        self._fallback.shutdown(wait=True, cancel_futures=True)

    def batches(self, paths: Sequence, batch_size: int, prefetch: int) -> Iterator[tuple[int, list]]:
        """(start, [item per path]) for consecutive batches of `paths`, in order (base.prefetched)."""
        if self._io is None:
            raise RuntimeError("FrontEnd.batches needs `with FrontEnd(...) as front:`")
        return prefetched(paths, batch_size, prefetch, self._submit)

    def _decide(self) -> None:
        """auto: once enough files were timed on one thread, keep one thread or scale up (once).
        Called by the consumer (submitting a batch) and by the io thread (mid-run)."""
        with self._lock:
            if not self._timing or self._timed < AUTO_SAMPLE_FILES:
                return
            self._timing = False
            want = auto_io_threads(self._waited, self._worked)
            if want > self.threads_in_use:
                self._retired.append(self._io)  # its running task hands the rest of its files over
                self._io = ThreadPoolExecutor(want, thread_name_prefix=f"{self._name}-read")
                self.threads_in_use = want
                self._generation += 1

    def _submit(self, batch_paths: Sequence) -> list:
        """About one io task per thread per batch, each a run of at least MIN_RUN files."""
        self._decide()
        step = max(MIN_RUN, -(-len(batch_paths) // self.threads_in_use))
        parts: list[_ResultAt] = []
        for a in range(0, len(batch_paths), step):
            run = batch_paths[a:a + step]
            future = self._io.submit(self._prepare_run, run, self._generation)
            parts += [_ResultAt(future, j) for j in range(len(run))]
        return parts

    def _prepare_run(self, paths: Sequence, generation: int) -> list:
        """Items for a run of files. A run queued before an auto scale-up hands its remaining files
        to the new pool, one task each (their items are Futures, which _ResultAt resolves)."""
        out: list = []
        for i, path in enumerate(paths):
            if generation != self._generation:
                out += [self._io.submit(self._prepare_one, p) for p in paths[i:]]
                break
            if self._timing:  # wall minus this thread's CPU time = what the read waited for
                wall, cpu = time.perf_counter(), time.thread_time()
                out.append(self._prepare_one(path))
                worked = time.thread_time() - cpu
                self._worked += worked
                self._waited += max(0.0, time.perf_counter() - wall - worked)
                self._timed += 1
                self._decide()
            else:
                out.append(self._prepare_one(path))
        return out

    def _prepare_one(self, path):
        """One file's item: finish(probe) for the fast path, a Future of the PIL decode for the
        others, a Prepared with the reason for a failure."""
        try:
            probe = probe_file(path, self.max_pixels, self.fast_formats)
        except DecodeError as exc:
            return Prepared(reason=str(exc))
        if probe.fast_ok:
            return self.finish(probe)
        # decoded by the reference on the fallback pool, off the GIL-bound io thread
        return self._fallback.submit(pil_fallback, probe.data, self.max_pixels)


class _ResultAt:
    """The j-th item of an io task's list, with the .result() that base.prefetched calls (waiting
    for the item's PIL decode when it went to the fallback pool)."""

    __slots__ = ("future", "j")

    def __init__(self, future: Future, j: int):
        self.future, self.j = future, j

    def result(self):
        item = self.future.result()[self.j]
        while isinstance(item, Future):  # a file handed to the new io pool, or a PIL decode
            item = item.result()
        return item
