"""nvImageCodec loader (--decoder nvimgcodec, CUDA only): the nvJPEG loader's pipeline (front end,
decode thread, `batched_resize_crop`, PIL fallbacks; nvjpeg.py) with the JPEG decode done by
NVIDIA nvImageCodec instead of torchvision.

Why another JPEG decoder: on the H100 the compiled model (10.7k img/s) outruns torchvision's
batched nvJPEG decode (11.4k-13.4k img/s alone, fewer beside the model; benchmarks/RESULTS.md run
4), which makes one call at a time under a global lock on the hardware decoder. nvImageCodec is
the library DALI's mixed decoder is built on: it splits a batch between the hardware JPEG engines,
CUDA decoding and CPU Huffman decoding on its own threads, without the GIL. Its wheel (25 MB,
plus nvidia-nvjpeg) is small enough to take to a GPU machine that has no DALI.

Not measured on a GPU yet, so `--decoder auto` does not choose it (device.resolve_decoder).
What the loader asks of nvImageCodec:
- planar RGB (P_RGB: nvJPEG's native output, no interleave step), EXIF orientation NOT applied
  (the loader applies the orientation its header probe read, as for torchvision's output);
- on CUDA, the GPU backends only (hardware, CUDA, hybrid CPU/GPU Huffman): a CPU-only decode
  would come back in host memory; on the CPU (the tests) its libjpeg-turbo backend;
- a file it cannot decode comes back as None: the PIL reference tries it, as in the nvJPEG path.
The decoded images live in nvImageCodec's own device memory, shared with torch through DLPack;
each group's images are held until an event recorded after their resize has completed, so no
allocator (whatever its stream semantics) reuses memory a queued resize still reads.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np
import torch

from ..device import quiet_nvimgcodec
from ..errors import BackendUnavailable
from .decode import DEFAULT_MAX_PIXELS
from .nvjpeg import DEFAULT_DECODE_AHEAD, DEFAULT_PIXEL_BUDGET, NvJpegLoader, send_to_pil
from .probe import short_error

quiet_nvimgcodec()  # before nvImageCodec's first import

# Decoded groups whose resize may still be queued on the GPU, held before the oldest is waited for.
MAX_HELD_GROUPS = 4


class NvImageCodecJpegs:
    """A JpegDecoder (nvjpeg.py) backed by one `nvidia.nvimgcodec.Decoder` (made on first use),
    called by one thread at a time (a lock: nvImageCodec's decoders keep per-instance state).

    device: CUDA (GPU backends; images in device memory) or CPU (libjpeg-turbo on `cpu_threads`
    threads; what CI tests). Returns uint8 (3, H, W) tensors, ready on the caller's current stream.
    own_stream (CUDA): decode on a stream of its own instead of the caller's. nvImageCodec makes
    its decode wait for the stream it is given, so on the caller's stream group i+1's decode
    waits on the GPU for group i's resize; on its own stream it does not, and the caller's stream
    waits for the decode instead.
    """

    def __init__(self, device: torch.device, cpu_threads: int = 0, own_stream: bool = False):
        self.device = device
        self.cpu_threads = cpu_threads  # 0: nvImageCodec's default, one per core
        self.own_stream = own_stream and device.type == "cuda"
        self._decoder = None
        self._params = None
        self._lock = threading.Lock()
        self._decode_stream: "torch.cuda.Stream | None" = None
        # (event, images) per decoded group, released once the event (recorded on the caller's
        # stream after the group's resize was queued there) has completed: nvImageCodec frees an
        # image on the stream it was decoded on, which (own_stream) is not the one that reads it
        self._held: deque = deque()
        self._last: list = []

    def __call__(self, items: list, max_pixels, slow: dict, failures: list) -> list:
        with self._lock:
            decoder = self._ready_decoder()
            consumer = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
            self._hold_last(consumer)
            stream = self._decode_stream or consumer
            handle = stream.cuda_stream if stream is not None else 0
            decoded = _decode_each_on_error(decoder, items, self._params, handle)
            if consumer is not None and stream is not consumer:
                consumer.wait_stream(stream)  # the decode (nvImageCodec queued its end on `stream`)
            results = []
            for (k, p, _), image in zip(items, decoded):
                if not hasattr(image, "shape"):  # None, or why the one-by-one retry failed
                    send_to_pil(k, p, max_pixels, slow, failures,  # nvImageCodec-only failures stay decodable
                                "decode failed (nvimgcodec)" + (f": {image}" if image else ""))
                    continue
                results.append((k, p, self._as_tensor(image)))
            self._last = [image for image in decoded if hasattr(image, "shape")]
            return results

    def release(self, stream: "torch.cuda.Stream | None" = None) -> None:
        """Let go of the decoded images still held (the end of a loader's batches()), after the
        work queued on `stream` (the one their resize was queued on; default: the current one)."""
        with self._lock:
            if self.device.type == "cuda" and (self._held or self._last):
                (stream or torch.cuda.current_stream(self.device)).synchronize()
                for event, _ in self._held:
                    event.synchronize()
            self._held.clear()
            self._last = []

    def _as_tensor(self, image) -> torch.Tensor:
        """uint8 (3, H, W) sharing the nvImageCodec image's memory (DLPack on CUDA, NumPy on the CPU)."""
        if self.device.type == "cuda":
            return torch.from_dlpack(image)  # __dlpack__(stream=current): ordered after the decode too
        return torch.from_numpy(np.asarray(image))

    def _hold_last(self, stream: "torch.cuda.Stream | None") -> None:
        """Before decoding the next group: the previous one's resize is queued on `stream` by now,
        so an event recorded there marks the end of its use. Release the groups already done."""
        if stream is None:
            self._last = []
            return
        if self._last:
            done = torch.cuda.Event()
            done.record(stream)
            self._held.append((done, self._last))
            self._last = []
        while self._held and (len(self._held) > MAX_HELD_GROUPS or self._held[0][0].query()):
            event, _ = self._held.popleft()
            event.synchronize()

    def _ready_decoder(self):
        if self._decoder is None:
            self._decoder, self._params = make_decoder(self.device, self.cpu_threads)
            if self.own_stream:
                self._decode_stream = torch.cuda.Stream(self.device)
        return self._decoder


def _decode_each_on_error(decoder, items: list, params, stream_handle: int) -> list:
    """decoder.decode over the group's bytes (NumPy views, no copy); if the call raises (an
    allocation that failed, say), file by file, a file whose call raises standing as the error's
    text. Returns one entry per item: an nvimgcodec.Image, None (not decodable) or a str."""
    try:
        return decoder.decode([t.numpy() for _, _, t in items], params=params, cuda_stream=stream_handle)
    except Exception:  # noqa: BLE001 - retried one by one below, each failure reported with its file
        out = []
        for _, _, t in items:
            try:
                out.append(decoder.decode([t.numpy()], params=params, cuda_stream=stream_handle)[0])
            except Exception as exc:  # noqa: BLE001 - the file goes to PIL with this reason
                out.append(short_error(exc) or type(exc).__name__)
        return out


def make_decoder(device: torch.device, cpu_threads: int = 0):
    """(nvimgcodec.Decoder, DecodeParams) for `device`, after one test decode: a GPU whose
    nvJPEG library is missing decodes nothing, which must be an error, not every file to PIL."""
    from nvidia import nvimgcodec

    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.SRGB,
                                     sample_format=nvimgcodec.P_RGB)
    if device.type == "cuda":
        backends = [nvimgcodec.Backend(kind) for kind in
                    (nvimgcodec.HW_GPU_ONLY, nvimgcodec.GPU_ONLY, nvimgcodec.HYBRID_CPU_GPU)]
        index = device.index if device.index is not None else torch.cuda.current_device()
        decoder = nvimgcodec.Decoder(device_id=index, max_num_cpu_threads=cpu_threads, backends=backends)
    else:
        decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                                     max_num_cpu_threads=cpu_threads,
                                     backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)])
    if decoder.decode([_TEST_JPEG], params=params)[0] is None:
        raise BackendUnavailable(
            f"--decoder nvimgcodec: nvImageCodec could not decode a JPEG on {device} (is the nvJPEG "
            "library installed? pip install nvidia-nvjpeg; is NVIMGCODEC_MAX_IMAGE_SIZE set? nvImageCodec "
            "0.9 then refuses every image; or use --decoder nvjpeg)")
    return decoder, params


class NvImageCodecLoader(NvJpegLoader):
    """paths -> Batch of float16 (b, 3, 224, 224) normalized images on a CUDA `device`, as
    NvJpegLoader, with the JPEGs decoded by nvImageCodec (NvImageCodecJpegs).

    cpu_threads: nvImageCodec's own threads (its CPU Huffman decoding; 0: one per core).
    own_stream: nvImageCodec decodes on a stream of its own (NvImageCodecJpegs), so the next
    group's decode does not wait on the GPU for the previous group's resize. Off until measured.
    """

    name = "nvimgcodec"

    def __init__(self, device: torch.device | str = "cuda", num_threads: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, prefetch: int = 2,
                 pixel_budget: int = DEFAULT_PIXEL_BUDGET, io_threads: int | None = None, *,
                 decode_ahead: int = DEFAULT_DECODE_AHEAD, high_priority: bool = False, cpu_threads: int = 0,
                 own_stream: bool = False):
        super().__init__(device, num_threads, max_pixels, prefetch, pixel_budget, io_threads,
                         decode_ahead=decode_ahead, high_priority=high_priority)
        self.cpu_threads = cpu_threads
        self.own_stream = own_stream
        self._jpegs: NvImageCodecJpegs | None = None

    def _jpeg_decoder(self) -> NvImageCodecJpegs:
        """Made (and checked) on first use, before the first batch: a missing nvJPEG library fails here."""
        if self._jpegs is None:
            jpegs = NvImageCodecJpegs(self.device, self.cpu_threads, self.own_stream)
            with torch.cuda.device(self.device):
                jpegs._ready_decoder()
            self._jpegs = jpegs
        return self._jpegs

    def _batches_done(self) -> None:
        # the last groups' decoded images (up to a decode budget each) are not kept for the next call
        if self._jpegs is not None:
            self._jpegs.release(self._stream)


def _smallest_jpeg() -> bytes:
    """A valid 8 x 8 baseline JPEG (made once with Pillow) for make_decoder's test decode."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


_TEST_JPEG = _smallest_jpeg()
