"""nvJPEG loader (CUDA only): batched GPU JPEG decode through torchvision, then ONE batched
resize + center crop with `torchvision.ops.roi_align` over a padded batch.

Data path per batch:
  CPU front end (frontend.FrontEnd, one or two batches ahead): read bytes, probe the header
      (probe.probe_file); non-JPEG and JPEGs nvJPEG would not reproduce (CMYK, truncated,
      unreadable EXIF, ...) are decoded + resized by the PIL reference on its own pool.
  decode thread, one batch ahead, on a side CUDA stream (torchvision's nvJPEG call blocks its
      thread until the decode is done, so it must not be the thread that queues the model):
      `torchvision.io.decode_jpeg(list, device="cuda")` in one call (if the call
      fails, retry file by file; a file nvJPEG rejects alone goes to PIL), EXIF orientation
      applied on the GPU (nvJPEG ignores it), `batched_resize_crop`, normalize to float16, and the
      PIL-path images uploaded from pinned memory. The consumer's stream waits on an event of the
      side stream before the batch is handed over, so decoding batch i+1 overlaps the model on batch i.

Known difference from the reference: nvJPEG's chroma upsampling differs from libjpeg's by a few
levels, and it is lenient with corrupt entropy-coded data (PIL rejects such files; nvJPEG may
return a damaged image). Compare features, not pixels.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from ..errors import BackendUnavailable
from .base import Batch, decoded_ahead, index_on, tensor_on
from .frontend import FrontEnd, default_fallback_threads
from .probe import ImageProbe, assemble, pil_fallback, prepare_file, short_error
from .decode import DEFAULT_MAX_PIXELS
from .preprocess import CROP, normalize_uint8, source_crop_box

NVJPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: a JPEG with extra frames; its first is the image

# Padded float32 pixels (per channel) one roi_align call may hold: 2**25 -> 3 * 4 B * 32 Mi = 384 MiB.
DEFAULT_PIXEL_BUDGET = 1 << 25
# Decoded uint8 bytes one nvJPEG call may produce (1 GiB: ~500 ImageNet-sized or ~90 12-MP images).
DEFAULT_DECODE_BUDGET = 1 << 30
# roi_align samples ceil(scale)^2 points per output pixel; above this scale the image is first
# box-averaged by an integer factor k (exact area filter) so the grid stays <= MAX_SAMPLING^2.
MAX_SAMPLING = 4
# Batches the decode thread may finish ahead of the model. More than 1 may keep the model busy when
# one batch decodes slowly (a larger file, a busy GPU) though decoding is faster on average; each
# costs a batch of fp16 crops in device memory (154 MB at the H100's auto batch of 512). 1 until a
# GPU run shows another value pays (benchmarks/profile_nvjpeg.py has the rows; run 4: 2 ahead had
# the best median, inside the defaults' spread).
DEFAULT_DECODE_AHEAD = 1


class JpegDecoder(Protocol):
    """Decodes a group of JPEGs for decode_batch in place of torchvision (nvimgcodec.NvImageCodecJpegs).

    items: [(offset, probe, encoded uint8 CPU tensor)]. Returns [(offset, probe, uint8 (3, H, W)
    as stored, on the loader's device, ready on the current stream)] for the files it decoded;
    each file it could not decode goes to `slow` (PIL decoded it: offset -> uint8 (3, CROP, CROP))
    or `failures` ((offset, reason)).
    """

    def __call__(self, items: list, max_pixels, slow: dict, failures: list) -> list: ...


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) tensor as stored -> as displayed, for EXIF orientation 1..8 (PIL exif_transpose).

    Returns a (C, H', W') tensor on image's device (flips copy); orientation 1 or unknown returns `image`.
    """
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.transpose(-2, -1).flip(-1)
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.transpose(-2, -1).flip(-2)
    return image


def _sub_batches(sizes: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Group image indices (sorted by size) so each group's padded area count*Hmax*Wmax <= budget
    (a single image larger than the budget forms its own group)."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    groups: list[list[int]] = []
    current: list[int] = []
    hmax = wmax = 0
    for i in order:
        h, w = sizes[i]
        nh, nw = max(hmax, h), max(wmax, w)
        if current and (len(current) + 1) * nh * nw > budget:
            groups.append(current)
            current, nh, nw = [], h, w
        current.append(i)
        hmax, wmax = nh, nw
    if current:
        groups.append(current)
    return groups


def _padded(prepared, group, sizes, hmax, wmax, device) -> torch.Tensor:
    """float32 (len(group), 3, hmax, wmax): the group's images top-left, edges replicated one pixel."""
    # zeros, not empty: padding that is never sampled must still not hold NaN garbage
    padded = torch.zeros((len(group), 3, hmax, wmax), dtype=torch.float32, device=device)
    for row, i in enumerate(group):
        img = prepared[i][0]
        h, w = sizes[i]
        padded[row, :, :h, :w] = img
        # Replicate the last row/column one pixel into the padding: a bilinear sample in the
        # image's last half pixel also reads the next one, which must not be 0 (PIL clamps).
        if h < hmax:
            padded[row, :, h, :w] = padded[row, :, h - 1, :w]
        if w < wmax:
            padded[row, :, : min(h + 1, hmax), w] = padded[row, :, : min(h + 1, hmax), w - 1]
    return padded


def batched_resize_crop(images: Sequence[torch.Tensor], pixel_budget: int = DEFAULT_PIXEL_BUDGET,
                        max_sampling: int = MAX_SAMPLING) -> torch.Tensor:
    """Resize the shorter side to 256 and center-crop 224, for a list of images, with one
    `roi_align` per size group (see preprocess.py for the geometry).

    images: list of (3, h_i, w_i) tensors (uint8 or float, 0..255) on one device (CPU or CUDA).
    Returns float32 (len(images), 3, CROP, CROP), 0..255 scale, on that device, in input order.

    How it approximates PIL's antialiased bilinear resize: for each image the crop window in
    source pixels (`source_crop_box`) is one ROI; roi_align(aligned=True) averages an s x s grid
    of bilinear samples in every output bin, with s = ceil(source/target scale) per axis
    (sampling_ratio=0, torchvision's adaptive mode). That is a box filter of the bin width on top
    of bilinear interpolation (PIL: a triangle of half-width = scale), i.e. an antialiased
    downscale; upscaling (scale <= 1) is plain bilinear, as in PIL. Images with scale >
    max_sampling are first average-pooled by an integer factor so the grid is bounded.
    Portrait images are transposed to landscape (and their output transposed back) so groups of
    similar sizes pad little; groups are bounded by `pixel_budget` padded pixels.
    """
    from torchvision.ops import roi_align

    if len(images) == 0:
        raise ValueError("batched_resize_crop needs at least one image")
    device = images[0].device
    out = torch.empty((len(images), 3, CROP, CROP), dtype=torch.float32, device=device)
    prepared: list[tuple[torch.Tensor, tuple[float, float, float, float], bool]] = []
    for img in images:
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected (3, h, w) images, got {tuple(img.shape)}")
        h, w = int(img.shape[1]), int(img.shape[2])
        x1, y1, x2, y2 = source_crop_box(h, w)
        transposed = h > w
        if transposed:  # work in landscape: swap axes of the image and of its box
            img = img.transpose(1, 2)
            x1, y1, x2, y2 = y1, x1, y2, x2
        scale = max((x2 - x1) / CROP, (y2 - y1) / CROP)
        if scale > max_sampling:
            k = math.ceil(scale / max_sampling)
            if k > 1:  # exact area average by k (crop box scaled too; remainder rows dropped)
                img = torch.nn.functional.avg_pool2d(img.unsqueeze(0).float(), k, k).squeeze(0)
                x1, y1, x2, y2 = x1 / k, y1 / k, x2 / k, y2 / k
        prepared.append((img, (x1, y1, x2, y2), transposed))

    sizes = [(int(img.shape[1]), int(img.shape[2])) for img, _, _ in prepared]
    for group in _sub_batches(sizes, pixel_budget):
        hmax = max(sizes[i][0] for i in group)
        wmax = max(sizes[i][1] for i in group)
        if all(sizes[i] == (hmax, wmax) for i in group):
            # one size (a camera's or a dataset's): one stack, no per-image copies
            padded = torch.stack([prepared[i][0] for i in group]).to(torch.float32)
        else:
            padded = _padded(prepared, group, sizes, hmax, wmax, device)
        # uploads without a host sync (tensor_on): a plain torch.tensor(..., device=cuda) waits for
        # this stream, i.e. for the resize work queued so far
        boxes = tensor_on([[row, *prepared[i][1]] for row, i in enumerate(group)], device)
        pooled = roi_align(padded, boxes, output_size=(CROP, CROP), spatial_scale=1.0,
                           sampling_ratio=0, aligned=True)
        del padded
        for flip in (False, True):
            rows = [row for row, i in enumerate(group) if prepared[i][2] == flip]
            if rows:
                part = pooled if len(rows) == len(group) else pooled[index_on(rows, device)]
                part = part.transpose(2, 3) if flip else part
                out.index_copy_(0, index_on([group[r] for r in rows], device), part)
    return out


def _decode_jpegs(items: list[tuple[int, ImageProbe, torch.Tensor]], device: torch.device, max_pixels,
                  alloc_stream: "torch.cuda.Stream | None" = None, jpeg_decoder: "JpegDecoder | None" = None):
    """Decode [(offset, probe, encoded uint8 CPU tensor)] onto `device`: with `jpeg_decoder` when
    given (nvimgcodec.NvImageCodecJpegs), else with torchvision (nvJPEG on CUDA, in one batched
    call; libjpeg on the CPU, which the tests use).

    On CUDA, torchvision allocates its outputs on the current stream but writes them on a stream
    of its own, so the memory it is handed must not still be read by queued work. Two ways:
    - alloc_stream None: wait on the host for everything queued on the current stream (the
      previous batch's resize), so decoding and that resize never overlap on the GPU;
    - alloc_stream given: decode with alloc_stream current, so the outputs come from that
      stream's pool, which only ever holds earlier decode outputs; each output is marked as used
      on the current stream (record_stream), so the allocator hands it out again only after the
      resize queued there has read it. No host wait: the resize of one batch runs on the GPU
      while the next batch decodes.

    Returns (decoded, slow, failures): decoded [(offset, uint8 (3, H, W) on device, EXIF-oriented)],
    slow {offset: uint8 (3, CROP, CROP)} for files PIL had to redo, failures [(offset, reason)].
    """
    slow: dict[int, np.ndarray] = {}
    failures: list[tuple[int, str]] = []
    if not items:
        return [], slow, failures
    if jpeg_decoder is not None:  # its own memory and stream order (nvimgcodec.py)
        results = jpeg_decoder(items, max_pixels, slow, failures)
    else:
        results = _decode_with_torchvision(items, device, max_pixels, slow, failures, alloc_stream)
    decoded = []
    for k, p, img in results:
        if img.dim() != 3 or img.shape[0] != 3 or (int(img.shape[1]), int(img.shape[2])) != (p.height, p.width):
            send_to_pil(k, p, max_pixels, slow, failures)  # the decoder saw another image than PIL did
            continue
        decoded.append((k, apply_exif_orientation(img, p.orientation)))
    return decoded, slow, failures


def _decode_with_torchvision(items, device: torch.device, max_pixels, slow: dict, failures: list,
                             alloc_stream: "torch.cuda.Stream | None") -> list:
    """_decode_all with the stream handling _decode_jpegs describes (host wait, or alloc_stream)."""
    consumer = torch.cuda.current_stream(device) if device.type == "cuda" else None
    if consumer is None:
        return _decode_all(items, device, max_pixels, slow, failures)
    if alloc_stream is None:
        consumer.synchronize()
        return _decode_all(items, device, max_pixels, slow, failures)
    with torch.cuda.stream(alloc_stream):
        results = _decode_all(items, device, max_pixels, slow, failures)
    consumer.wait_stream(alloc_stream)  # torchvision made alloc_stream wait for its decode
    for _, _, img in results:
        img.record_stream(consumer)
    return results


def _decode_all(items, device: torch.device, max_pixels, slow: dict, failures: list) -> list:
    """[(offset, probe, uint8 (c, H, W) on device)] for the items torchvision decodes, in one
    batched call, or one by one when that call fails (one file nvJPEG rejects fails the whole
    call). Files it rejects go to `slow` (PIL could decode them) or `failures`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; still what we use
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            images = decode_jpeg([t for _, _, t in items], mode=ImageReadMode.RGB, device=device)
            results = [(k, p, img) for (k, p, _), img in zip(items, images)]
        except Exception:  # one file nvJPEG rejects fails the whole call: retry one by one
            results = []
            for k, p, t in items:
                try:
                    results.append((k, p, decode_jpeg([t], mode=ImageReadMode.RGB, device=device)[0]))
                except Exception as exc:  # nvJPEG-only failures stay decodable
                    send_to_pil(k, p, max_pixels, slow, failures, f"decode failed (nvjpeg): {short_error(exc)}")
    return results


def send_to_pil(k: int, probe: ImageProbe, max_pixels, slow: dict, failures: list, why: str | None = None) -> None:
    """A file the GPU decoder rejected or misread: the PIL reference decodes it into `slow`
    (offset -> uint8 (3, CROP, CROP)), or it goes to `failures` as (offset, "why; PIL: reason")."""
    redo = pil_fallback(probe.data, max_pixels)
    if redo.array is not None:
        slow[k] = redo.array
    else:
        failures.append((k, f"{why}; PIL: {redo.reason}" if why else redo.reason))


def decode_batch(start: int, prepared: Sequence["PreparedJpeg"], device: torch.device, dtype: torch.dtype,
                 max_pixels, pixel_budget: int = DEFAULT_PIXEL_BUDGET,
                 decode_budget: int = DEFAULT_DECODE_BUDGET, alloc_stream: "torch.cuda.Stream | None" = None,
                 jpeg_decoder: JpegDecoder | None = None) -> Batch:
    """Everything after the CPU stage for one batch (positions start .. start+len(prepared)-1):
    batched JPEG decode on `device`, EXIF orientation, `batched_resize_crop`, normalization, and
    merging of the PIL-path images in input order. Device-agnostic (the loader calls it on CUDA
    inside its side stream; tests call it on the CPU, where torchvision decodes with libjpeg).

    alloc_stream: the CUDA stream whose memory pool receives the decoded images (_decode_jpegs).
    jpeg_decoder: decodes the JPEGs instead of torchvision (None: torchvision).
    Returns a Batch with images `dtype` (b, 3, CROP, CROP) on `device`.
    """
    fast = [(k, p.probe, p.tensor) for k, p in enumerate(prepared) if p.probe is not None]
    slow = {k: p.array for k, p in enumerate(prepared) if p.array is not None}
    failures = [(k, p.reason) for k, p in enumerate(prepared) if p.reason is not None]
    offsets: list[int] = []
    parts: list[torch.Tensor] = []
    # Decode + resize in groups bounded by decoded bytes, so a batch of 12 MP photos does not
    # hold the whole batch at full resolution on the device at once.
    for group in _decode_groups(fast, decode_budget):
        decoded, more_slow, more_failures = _decode_jpegs(group, device, max_pixels, alloc_stream, jpeg_decoder)
        slow.update(more_slow)
        failures += more_failures
        if decoded:
            offsets += [k for k, _ in decoded]
            parts.append(normalize_uint8(batched_resize_crop([img for _, img in decoded], pixel_budget), dtype))
            del decoded
    tensor = (parts[0] if len(parts) == 1 else torch.cat(parts)) if parts else None
    failures = [(start + k, reason) for k, reason in failures]
    return assemble(start, (offsets, tensor), slow, failures, device, dtype)


def _decode_groups(items: list, budget: int) -> list[list]:
    """Split [(offset, probe, bytes)] into consecutive groups of at most `budget` decoded bytes
    (height x width x 3 from the header probe); an image larger than the budget goes alone."""
    groups, current, used = [], [], 0
    for item in items:
        size = item[1].height * item[1].width * 3
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        groups.append(current)
    return groups


class NvJpegLoader:
    """paths -> Batch of float16 (b, 3, 224, 224) normalized images on a CUDA `device`.

    JPEGs are decoded by nvJPEG (torchvision.io.decode_jpeg, batched) and resized by
    `batched_resize_crop`; everything else by the PIL reference on the CPU.
    num_threads: CPU threads for PIL fallbacks (default min(32, cores)). io_threads: threads that
    read and probe files (None: "auto", frontend.py says why it starts with one);
    io_threads_used: what the last batches() call ran with.
    prefetch: batches read ahead.
    Tuning knobs: the defaults are the loader H100 run 3 measured (benchmarks/RESULTS.md), and
    benchmarks/profile_nvjpeg.py times each change under the model. Run 4 found every knob correct
    (bit-identical pixels) but the timings inconclusive (the defaults' own spread was larger than
    any difference). Make one the default only when a GPU run shows it pays.
    decode_ahead: batches decoded ahead of the consumer (DEFAULT_DECODE_AHEAD);
    high_priority: the decode stream's kernels (resize, normalize) go before the model's queued
      ones, so a batch may be ready sooner while the model keeps the GPU busy;
    overlap_resize: decode into a separate stream's memory pool instead of waiting on the host
      for the previous batch's resize (_decode_jpegs), so that resize and the next decode overlap.
    """

    name = "nvjpeg"

    def __init__(self, device: torch.device | str = "cuda", num_threads: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, prefetch: int = 2,
                 pixel_budget: int = DEFAULT_PIXEL_BUDGET, io_threads: int | None = None, *,
                 decode_ahead: int = DEFAULT_DECODE_AHEAD, high_priority: bool = False,
                 overlap_resize: bool = False):
        device = torch.device(device)
        if device.type != "cuda":
            raise BackendUnavailable(
                f"--decoder {self.name} decodes on the GPU and needs a CUDA device, got {str(device)!r}; "
                "use --decoder pil (or dali) on the CPU")
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"--decoder {self.name}: CUDA is not available (no NVIDIA GPU visible); "
                                     "use --device cpu --decoder pil")
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self.num_threads = num_threads or default_fallback_threads()
        self.io_threads = io_threads
        self.io_threads_used: int | None = None
        self.max_pixels = max_pixels
        self.prefetch = max(1, prefetch)
        self.pixel_budget = pixel_budget
        self.dtype = torch.float16
        if decode_ahead < 1:
            raise ValueError(f"decode_ahead must be >= 1, got {decode_ahead}")
        self.decode_ahead = decode_ahead
        self.high_priority = high_priority
        self.overlap_resize = overlap_resize
        # created on first use, not at construction (no CUDA context before a run needs one)
        self._stream: torch.cuda.Stream | None = None
        self._alloc_stream: torch.cuda.Stream | None = None

    def batches(self, paths: Sequence[Path], batch_size: int) -> Iterator[Batch]:
        """Yield Batches in input order; every position is in `indices` or in `failures`.

        images: float16 (b, 3, 224, 224) on self.device, ready on the caller's current stream.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        jpeg_decoder = self._jpeg_decoder()
        if self._stream is None:
            self._stream = _loader_stream(self.device, "side-high" if self.high_priority else "side")
            if self.overlap_resize:
                self._alloc_stream = _loader_stream(self.device, "alloc")
        try:
            yield from decode_pipeline(paths, batch_size, self.device, self.dtype, self.max_pixels, self.num_threads,
                                       self.prefetch, self.pixel_budget, side=self._stream, io_threads=self.io_threads,
                                       on_batch=self._record, ahead=self.decode_ahead, alloc_stream=self._alloc_stream,
                                       jpeg_decoder=jpeg_decoder)
        finally:
            self._batches_done()

    def _jpeg_decoder(self) -> JpegDecoder | None:
        """What decodes the JPEGs (decode_batch): None, torchvision. Subclasses give their own."""
        return None

    def _batches_done(self) -> None:
        """Called when a batches() generator ends (exhausted, closed or failed)."""

    def _record(self, front: FrontEnd) -> None:
        self.io_threads_used = front.threads_in_use


_STREAMS: dict[tuple[torch.device, str], "torch.cuda.Stream"] = {}


def _loader_stream(device: torch.device, role: str) -> "torch.cuda.Stream":
    """One stream per (device, role) for the whole process: "side" (the decode thread's work),
    "side-high" (the same at high priority), "alloc" (decode outputs' pool, _decode_jpegs).

    Why cached: torch.cuda.Stream draws from a round-robin pool of 32 streams per priority, which
    torchvision's decoder draws its own stream from too. A new stream per loader would, after 32
    loaders, share torchvision's stream, whose host waits would then stall the decode thread's
    resize work. Cached, the loader takes at most three streams from the pool."""
    key = (device, role)
    if key not in _STREAMS:
        # priority -1: high (CUDA maps it into the device's range; lower numbers go first)
        _STREAMS[key] = torch.cuda.Stream(device, priority=-1 if role == "side-high" else 0)
    return _STREAMS[key]


def decode_pipeline(paths: Sequence[Path], batch_size: int, device: torch.device, dtype: torch.dtype, max_pixels,
                    num_threads: int, prefetch: int, pixel_budget: int = DEFAULT_PIXEL_BUDGET,
                    side: "torch.cuda.Stream | None" = None, io_threads: int | None = None,
                    on_batch: "Callable[[FrontEnd], None] | None" = None, ahead: int = DEFAULT_DECODE_AHEAD,
                    alloc_stream: "torch.cuda.Stream | None" = None,
                    jpeg_decoder: JpegDecoder | None = None) -> Iterator[Batch]:
    """The loader's whole pipeline: the front end (frontend.FrontEnd: read + probe on `io_threads`,
    PIL fallbacks on `num_threads`, `prefetch` batches ahead), decode_batch on one decode thread
    `ahead` batches ahead, Batches yielded in input order. alloc_stream: see _decode_jpegs;
    jpeg_decoder: see decode_batch.

    On CUDA `side` is the decode thread's stream; each batch is handed over with an event the
    caller's stream waits on. Without `side` (the CPU, where torchvision decodes with libjpeg; the
    tests run it so) the same threads and order, and no streams.
    """
    def decode(start, prepared):  # on the decode thread, one batch ahead of the consumer
        if side is None:
            return decode_batch(start, prepared, device, dtype, max_pixels, pixel_budget,
                                jpeg_decoder=jpeg_decoder), None
        with torch.cuda.device(device), torch.cuda.stream(side):
            batch = decode_batch(start, prepared, device, dtype, max_pixels, pixel_budget, alloc_stream=alloc_stream,
                                 jpeg_decoder=jpeg_decoder)
            ready = torch.cuda.Event()
            ready.record(side)
        return batch, ready

    with FrontEnd(NVJPEG_FORMATS, max_pixels, PreparedJpeg, io_threads, num_threads, "imgcluster-nvjpeg") as front:
        for batch, ready in decoded_ahead(front.batches(paths, batch_size, prefetch), decode, ahead=ahead,
                                          thread_name="imgcluster-nvjpeg-decode"):
            if ready is not None:
                # The consumer's stream waits for the batch on the GPU, not the host: the decode of
                # the next batch and the model on this one overlap. (No side.wait_stream(consumer):
                # that would make decoding wait for the model on the previous batch.)
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(ready)
                # The images were allocated on the side stream but live on the consumer's stream:
                # tell the caching allocator, so it does not hand the memory out before use ends.
                if batch.images.numel():
                    batch.images.record_stream(consumer)
            if on_batch is not None:
                on_batch(front)  # e.g. the io thread count "auto" has chosen so far
            yield batch


class PreparedJpeg:
    """A file for the fast path: its probe and its bytes as a uint8 CPU tensor (made on an io
    thread). `array` and `reason` are None, as in probe.Prepared, so a batch's items read alike."""

    __slots__ = ("probe", "tensor")
    array = None
    reason = None

    def __init__(self, probe: ImageProbe):
        self.probe = probe
        # torch.frombuffer needs a writable buffer: read_bytes returns one (shared, no copy)
        data = probe.data if isinstance(probe.data, bytearray) else bytearray(probe.data)
        self.tensor = torch.frombuffer(data, dtype=torch.uint8)


def prepare_jpeg_file(path, max_pixels):
    """One file through the front end's steps, on the calling thread: PreparedJpeg for the fast
    path, else probe.Prepared (PIL-decoded array or failure reason)."""
    prepared = prepare_file(path, max_pixels, NVJPEG_FORMATS)
    return PreparedJpeg(prepared.probe) if prepared.probe is not None else prepared
