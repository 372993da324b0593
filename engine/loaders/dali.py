"""DALI loader: encoded bytes -> decode -> antialiased resize + center crop -> normalized NCHW.

One DALI pipeline does the whole preprocessing (see preprocess.py for its definition):

    external_source(encoded bytes, per-sample crop ROI)
      -> fn.decoders.image(RGB; "mixed" on CUDA, "cpu" on the CPU; EXIF orientation applied)
      -> fn.resize(ROI = the final crop window in source pixels, size 224x224, linear, antialias)
      -> fn.crop_mirror_normalize(ImageNet mean/std * 255, CHW, float16 on CUDA / float32 on the CPU)

Why a ROI resize instead of "resize_shorter=256, then crop 224": DALI keeps the sub-pixel scale
for the fractional side (`subpixel_scale`) where torchvision/PIL round the resized size down, so
for e.g. a 333x517 image the two disagree by up to half a resized pixel (mean abs diff ~1 level,
edges off by >100 levels). Resizing exactly the window `preprocess.source_crop_box` gives to
224x224 is the same geometry and the same filter scale as the PIL reference, and it resamples
fewer pixels. The window needs the decoded (EXIF-oriented) size, which the CPU header probe
gives; the pipeline also returns the decoded shape, and any sample whose shape disagrees with
the probe is redone by PIL, so a misread orientation can never produce a stretched crop.

Robustness (DALI stops a whole pipeline run on one corrupt file):
  * every file is read and its header probed on the CPU (frontend.FrontEnd), one or two batches
    ahead of the pipeline (`probe_file`): unreadable/empty/unidentifiable/oversized files become
    failures with the same reasons the PIL reference gives, without a full decode;
  * files DALI would decode differently from the reference, or not at all, go to the PIL path
    (`load_and_preprocess`, on the front end's fallback pool): GIF, TIFF, extended WebP,
    palette/alpha/CMYK/16-bit modes, PNG with bit depth != 8, tRNS or eXIf, multi-frame files,
    JPEGs without an end-of-image marker after the scan (truncated) and PNGs without IEND (so
    truncated files fail exactly as they do in the reference);
  * if a pipeline run still raises, the pipeline is rebuilt and the batch retried file by file;
    a file DALI rejects alone is tried once more with PIL and reported as a failure
    ("decode failed (dali): ...") only if that fails too.
CPU-decoded images are normalized and merged into the batch at their positions, so batches are
always in input order.

EXIF orientation: DALI 2.4's decoder applies it (`adjust_orientation=True`, the default, set
explicitly here), matching PIL's `ImageOps.exif_transpose`.

The module imports without DALI; the constructor raises BackendUnavailable when it is missing.
The CPU probe and the PIL-path merge are shared with the nvJPEG loader (probe.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..cluster import is_oom
from ..errors import BackendUnavailable
from .base import Batch, index_on
from .decode import DEFAULT_MAX_PIXELS
from .frontend import FrontEnd, default_fallback_threads
from .preprocess import CROP, MEAN, STD, source_crop_box
from .probe import ImageProbe, assemble, pil_fallback, short_error

# --------------------------------------------------------------------------------------------
# The DALI pipeline
# --------------------------------------------------------------------------------------------

# Formats DALI's decoder reproduces the reference for (TIFF variants, GIF and extended WebP go to PIL).
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP"})


def _build_pipeline(batch_size: int, num_threads: int, device_id: int | None):
    """The one DALI pipeline definition. Outputs: images (b, 3, CROP, CROP) normalized (float16 on
    the GPU, float32 on the CPU, layout CHW) and decoded shapes (b, 3) int64 (H, W, C) on the CPU."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def preprocess():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)  # (y1, x1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)  # (y2, x2)
        decoder_args = {"jpeg_fancy_upsampling": True} if gpu else {}  # closer to libjpeg's chroma
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                   adjust_orientation=True, **decoder_args)
        shapes = images.shape()  # to the CPU (needs the dynamic executor) for the sanity check
        # The crop window in source pixels resized straight to CROP x CROP == resize-then-crop.
        images = fn.resize(images, size=[CROP, CROP], roi_start=roi_start, roi_end=roi_end,
                           roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True)
        images = fn.crop_mirror_normalize(
            images, crop=(CROP, CROP), output_layout="CHW",
            mean=[m * 255.0 for m in MEAN], std=[s * 255.0 for s in STD],
            dtype=types.FLOAT16 if gpu else types.FLOAT)
        return images, shapes

    pipe = preprocess()
    pipe.build()
    return pipe


class _HeldUntilUsed:
    """Keeps DALI's output buffers alive until the consumer's GPU work on them has finished.

    torch.from_dlpack shares DALI's memory; when the tensor is dropped DALI may reuse the buffer
    in its own stream order, which knows nothing of the consumer stream still reading it. When
    the generator resumes, the consumer has *enqueued* all its work on the previous batch, so an
    event recorded then marks its end; buffers are released only once their event completed
    (waiting on the oldest when `depth` are held, which also bounds how far the host runs ahead).
    """

    def __init__(self, device: torch.device, depth: int = 2):
        self.device, self.depth, self.held = device, depth, []

    def hold(self, tensors: list[torch.Tensor]) -> None:
        """Keep `tensors` (DALI outputs of the batch just consumed) until the consumer's work so
        far has run on the GPU."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self.held.append((tensors, event))
        self.held = [(t, e) for t, e in self.held if not e.query()]
        while len(self.held) > self.depth:
            self.held.pop(0)[1].synchronize()

    def release_all(self) -> None:
        """Wait for every held batch's consumer work, then let the buffers go."""
        for _, event in self.held:
            event.synchronize()
        self.held = []


class DALILoader:
    """paths -> Batch of (b, 3, 224, 224) normalized images on `device`, decoded by DALI.

    On CUDA: mixed (nvJPEG) decoding on that GPU, float16 output, handed to torch through DLPack
    (zero copy, no host round trip). On the CPU
    (`device_id=None`, used by the tests): DALI CPU operators, float32 output.
    num_threads: CPU threads for PIL fallbacks and DALI's own threads (default min(32, cores)).
    io_threads: threads that read and probe files (None: "auto", see frontend.py);
    io_threads_used: what the last batches() call ran with.
    """

    name = "dali"

    def __init__(self, device: torch.device | str = "cuda", num_threads: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, prefetch: int = 2, io_threads: int | None = None):
        try:
            import nvidia.dali  # noqa: F401
        except Exception as exc:
            raise BackendUnavailable(
                f"--decoder dali: nvidia.dali is not importable ({type(exc).__name__}: {exc}); "
                "install it with: pip install -e '.[gpu]' in the imgcluster folder") from None
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("--decoder dali on cuda: no CUDA GPU is available; use --device cpu")
            device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
            self._device_id: int | None = device.index
        elif device.type == "cpu":
            self._device_id = None
        else:
            raise BackendUnavailable(f"--decoder dali supports cuda and cpu devices, not {device.type}")
        self.device = device
        self.num_threads = num_threads or default_fallback_threads()
        self.io_threads = io_threads
        self.io_threads_used: int | None = None
        self.max_pixels = max_pixels
        self.prefetch = max(1, prefetch)
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self._dali_outputs: list[torch.Tensor] = []  # raw DALI outputs of the batch being assembled
        self._pipe = None
        self._pipe_batch = 0
        # Images per pipeline run: the batch, until DALI runs out of memory (it decodes a whole
        # run at full resolution, ~36 MB a 12 MP photo, more than the model needs per image).
        # Halved then and kept, as the model's micro-batch (features.OOMBackoff).
        self.run_limit: int | None = None
        self.oom_halvings = 0

    # -- pipeline management ------------------------------------------------------------------
    def _pipeline(self, batch_size: int):
        if self._pipe is None or batch_size > self._pipe_batch:
            self._pipe = None
            self._pipe = _build_pipeline(batch_size, max(1, min(self.num_threads, 16)), self._device_id)
            self._pipe_batch = batch_size
        return self._pipe

    def _reset(self) -> None:
        """After an error DALI declares the pipeline object invalid: drop it, build anew on next use."""
        self._pipe = None

    def _run(self, probes: list[ImageProbe], capacity: int) -> tuple[torch.Tensor, np.ndarray]:
        """Run the pipeline on `probes`: (n, 3, CROP, CROP) normalized self.dtype on self.device,
        and the decoded (H, W) per sample, int64 (n, 2). Raises whatever DALI raises."""
        pipe = self._pipeline(capacity)
        starts, ends = [], []
        for p in probes:
            x1, y1, x2, y2 = source_crop_box(*p.oriented_size)
            starts.append(np.array([y1, x1], dtype=np.float32))
            ends.append(np.array([y2, x2], dtype=np.float32))
        pipe.feed_input("encoded", [np.frombuffer(p.data, dtype=np.uint8) for p in probes])
        pipe.feed_input("roi_start", starts)
        pipe.feed_input("roi_end", ends)
        # Host-synchronous outputs: this waits for DALI's work on *this* batch only; the model on
        # the previous batch, already queued on torch's stream, keeps the GPU busy meanwhile.
        images, shapes = pipe.run()
        if self.device.type == "cuda":
            # Zero copy: DLPack keeps DALI's buffer alive (dynamic executor) and orders torch's
            # current stream after DALI's (what DALI's own PyTorch iterator does).
            with torch.cuda.device(self.device):
                out = torch.from_dlpack(images.as_tensor())
            self._dali_outputs.append(out)  # held until the consumer is done (see _HeldUntilUsed)
        else:
            out = torch.from_numpy(np.array(images.as_tensor()))
        return out, np.array(shapes.as_tensor())[:, :2].astype(np.int64)

    def _run_in_parts(self, probes: list[ImageProbe], capacity: int) -> tuple[torch.Tensor, np.ndarray]:
        """_run over `probes` in runs of at most self.run_limit images (the same outputs, in
        order). Out of memory halves the run and tries again; the halved size is kept for later
        batches (memory pressure), unless one image alone runs out of memory: then it was that
        image (a huge photo), the size goes back to what it was before this batch and the batch
        goes file by file (raised), so the next one runs whole, not one image at a time.
        Raises what a run raises otherwise, and out-of-memory for a run of one image."""
        parts, shapes, i = [], [], 0
        before = (self.run_limit, self.oom_halvings)
        limit, halved = self.run_limit or len(probes), False
        while i < len(probes):
            part = probes[i:i + limit]
            try:
                out, shape = self._run(part, capacity)
            except Exception as exc:
                if is_oom(exc) and len(part) == 1:
                    self.run_limit, self.oom_halvings = before
                if not is_oom(exc) or len(part) == 1:
                    raise
                self._reset()
                limit, halved = max(1, len(part) // 2), True
                continue
            if halved and len(part) == limit and (self.run_limit is None or limit < self.run_limit):
                self.run_limit = limit
                self.oom_halvings += 1
            parts.append(out)
            shapes.append(shape)
            i += len(part)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), np.concatenate(shapes)

    def _decode(self, items: list[tuple[int, ImageProbe]], capacity: int):
        """DALI-decode `items` [(offset, probe)].

        Returns ((offsets, tensor (len(offsets), 3, CROP, CROP) or None), slow, failures): slow maps
        offset -> uint8 (3, CROP, CROP) for files redone by PIL, failures are (offset, reason).
        """
        slow: dict[int, np.ndarray] = {}
        failures: list[tuple[int, str]] = []
        if not items:
            return ([], None), slow, failures
        try:
            whole, shapes = self._run_in_parts([p for _, p in items], capacity)
            rows = [(k, r, shapes[r]) for r, (k, _) in enumerate(items)]
        except Exception:  # one bad file stops DALI's whole run: retry the batch one file at a time
            self._reset()
            singles, rows = [], []
            for k, p in items:
                try:
                    one, shape = self._run([p], capacity)
                except Exception as exc:
                    self._reset()
                    redo = pil_fallback(p.data, self.max_pixels)  # DALI-only failures stay decodable
                    if redo.array is not None:
                        slow[k] = redo.array
                    else:
                        failures.append((k, f"decode failed (dali): {short_error(exc)}; PIL: {redo.reason}"))
                    continue
                rows.append((k, len(singles), shape[0]))
                singles.append(one)
            whole = torch.cat(singles) if singles else None
        probes = dict(items)
        keep_offsets, keep_rows = [], []
        for k, r, shape in rows:
            if (int(shape[0]), int(shape[1])) != probes[k].oriented_size:
                # DALI decoded another size/orientation than the header says: the crop window
                # would be wrong, so the reference decodes this one.
                redo = pil_fallback(probes[k].data, self.max_pixels)
                if redo.array is not None:
                    slow[k] = redo.array
                else:
                    failures.append((k, redo.reason))
                continue
            keep_offsets.append(k)
            keep_rows.append(r)
        if whole is not None and len(keep_rows) < len(whole):
            whole = whole[index_on(keep_rows, whole.device)] if keep_rows else None
        return (keep_offsets, whole), slow, failures

    def batches(self, paths: Sequence[Path], batch_size: int) -> Iterator[Batch]:
        """Yield Batches in input order; every position is in `indices` or in `failures`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with FrontEnd(DALI_FORMATS, self.max_pixels, io_threads=self.io_threads,
                      fallback_threads=self.num_threads, name="imgcluster-dali") as front:
            in_use = _HeldUntilUsed(self.device) if self.device.type == "cuda" else None
            try:
                # Reads, probes and PIL fallbacks of the next batches run while DALI does this one.
                for start, prepared in front.batches(paths, batch_size, self.prefetch):
                    fast = [(k, p.probe) for k, p in enumerate(prepared) if p.probe is not None]
                    slow = {k: p.array for k, p in enumerate(prepared) if p.array is not None}
                    failures = [(start + k, p.reason) for k, p in enumerate(prepared) if p.reason is not None]
                    (offsets, tensor), more_slow, more_failures = self._decode(fast, batch_size)
                    slow.update(more_slow)
                    failures += [(start + k, reason) for k, reason in more_failures]
                    self.io_threads_used = front.threads_in_use
                    yield assemble(start, (offsets, tensor), slow, failures, self.device, self.dtype)
                    if in_use is not None:
                        in_use.hold(self._dali_outputs)
                        self._dali_outputs = []
            finally:
                # Ended, stopped early or failed: DALI may reuse these buffers in its next run (a
                # second pass, another call), so the work queued on them must be done first.
                if in_use is not None:
                    in_use.hold(self._dali_outputs)
                    in_use.release_all()
                self._dali_outputs = []

    def close(self) -> None:
        """Drop the pipeline and give DALI's unused device memory back (its pool never shrinks
        by itself), so clustering after extraction has it. The loader builds a new pipeline if
        used again."""
        self._pipe = None
        if self.device.type == "cuda":
            from nvidia.dali.backend import ReleaseUnusedMemory

            ReleaseUnusedMemory()
