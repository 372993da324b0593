"""CUDA graphs for the backbone's forward: capture it once per input shape, then replay it.

Why: an eager bf16 ResNet-152 forward is 672 kernel launches, each one Python -> dispatcher ->
driver on the thread that runs the model, which must win the GIL back from the loader's threads
for every one of them (benchmarks/RESULTS.md, "The front end's GIL tax"). A replayed graph is one
launch per batch, so the model's host time no longer grows with the loader's load.

Rules a graph imposes, and how GraphedForward meets them:
- fixed shapes and addresses: one graph per (shape, dtype, layout) of the input, with a static
  input buffer the caller's batch is copied into; callers pad batches to a few sizes (Backbone does);
- the output is a static buffer that the next replay overwrites: `__call__` returns it, and the
  caller must copy it before calling again (Backbone converts it to float32, a copy);
- no allocation or host sync inside: warm-up runs first (cuDNN's autotuning, cuBLAS handles,
  the caching allocator) on the capture stream, and autocast's weight-cast cache is off while
  capturing (cached casts would be freed when the autocast block ends, under the graph's feet);
- no other CUDA work in the process while capturing: a device-wide sync or a cudaMalloc from
  another thread (nvJPEG allocates with its own allocators; DALI runs its own threads) can
  invalidate the capture. So extraction captures before its loader starts (`prepare`), and
  after that (`capture_new = False`) a batch of a new shape (after an out-of-memory halving)
  runs the plain forward instead of capturing next to a running loader.
  capture_error_mode="thread_local" checks only this thread's calls.
- the capture stream is a high-priority stream (torch.cuda.Stream takes it from the
  high-priority half of torch's stream pool; torchvision's decoder draws from the normal-priority
  half, so the two never coincide). Capture runs before the loader starts, so sharing that half
  with the nvJPEG loader's high-priority stream (a knob, off by default) is harmless.
Measured on an H100 (benchmarks/RESULTS.md, run 3): correct (tests/test_cuda_graphs.py passed there)
but not faster: the backbone alone ran 6,536 img/s against eager's 6,452, and end to end 3,716
against 4,061. The launch tax it removes was not what held the eager run back, so it stays opt-in.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

# Graphs kept at once, most recent first out. Each holds its own activation memory; a run uses one
# size (plus the last batch's, and the halved size after an out-of-memory back-off).
MAX_GRAPHS = 2
WARMUP_RUNS = 2


def _caused_by_oom(exc: BaseException | None) -> bool:
    """exc or any exception it was raised during the handling of is an allocation failure."""
    from .cluster import is_oom

    seen = 0
    while exc is not None and seen < 8:
        if is_oom(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class _Captured:
    __slots__ = ("graph", "static_in", "static_out")

    def __init__(self, graph: torch.cuda.CUDAGraph, static_in: torch.Tensor, static_out: torch.Tensor):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out


def _key(x: torch.Tensor) -> tuple:
    layout = "channels_last" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else "contiguous"
    return (tuple(x.shape), x.dtype, layout, x.device)


class GraphedForward:
    """forward(x) -> y, replayed from a CUDA graph captured for x's shape on first use.

    forward: a function of one CUDA tensor that returns one tensor and does no host sync
    (a module under inference mode, autocast inside it). __call__(x) returns the graph's static
    output: valid until the next call (copy it). Not thread-safe: callers serialize (the
    backbone runs on one thread, FittedModel holds a lock).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_graphs: int = MAX_GRAPHS,
                 warmup_runs: int = WARMUP_RUNS):
        self.forward = forward
        self.max_graphs = max(1, max_graphs)
        self.warmup_runs = max(1, warmup_runs)
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._stream: torch.cuda.Stream | None = None
        self.captures = 0  # graphs captured so far (tests and the bench read it)
        # False once a loader may be running: a new shape then runs the plain forward (see above)
        self.capture_new = True

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = _key(x)
        captured = self._graphs.get(key)
        if captured is None:
            if not self.capture_new:
                return self.forward(x)
            while len(self._graphs) >= self.max_graphs:  # first: a pool fewer at the peak
                self._graphs.popitem(last=False)  # freed once its last replay has run
            captured = self._capture(x)
            self.captures += 1
            self._graphs[key] = captured
        else:
            self._graphs.move_to_end(key)
        captured.static_in.copy_(x)
        captured.graph.replay()
        return captured.static_out

    def _capture(self, x: torch.Tensor) -> _Captured:
        """Warm up and capture forward for x's shape: static input (a copy of x), graph, static output."""
        if not x.is_cuda:
            raise RuntimeError("CUDA graphs need CUDA tensors")
        static_in = x.detach().clone(memory_format=torch.preserve_format)
        if self._stream is None:
            self._stream = torch.cuda.Stream(x.device, priority=-1)
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_runs):  # autotuning and lazy handles happen here, not in the capture
                self.forward(static_in)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            # the same stream for warm-up and capture: the BLAS handles made in warm-up are the ones used
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                static_out = self.forward(static_in)
        except Exception as exc:
            # An allocator OOM comes out as OutOfMemoryError itself (and the partial capture is
            # ended cleanly); one that surfaces as the capture's own error is re-raised as an OOM
            # so the caller's back-off halves the batch. (An OOM that cuDNN catches and recovers
            # from by syncing invalidates the capture with no OOM in the chain: that run fails.)
            if _caused_by_oom(exc):
                raise torch.OutOfMemoryError(f"out of memory while capturing a CUDA graph for {tuple(x.shape)}") from exc
            raise
        torch.cuda.current_stream(x.device).wait_stream(stream)
        return _Captured(graph, static_in, static_out)

    def clear(self) -> None:
        """Drop every captured graph (and its memory)."""
        self._graphs.clear()
