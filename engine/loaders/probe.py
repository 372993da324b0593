"""CPU front end shared by the GPU loaders (DALI, nvJPEG): read each file, probe its header
without a full decode, and decide per file: fast path (the GPU decoder reproduces the PIL
reference), PIL path (formats or modes it would decode differently: GIF, TIFF, CMYK, palette,
alpha, 16-bit, truncated files...), or failure with the reason the reference would give.
`assemble` merges both paths into one Batch in input order.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import DecodeError
from .base import Batch, index_on
from .decode import (DEFAULT_MAX_PIXELS, check_header, load_and_preprocess, open_image, pil_errors_as_decode_errors,
                     read_bytes)
from .jpeg_header import marker_segments, parse_jpeg_header
from .preprocess import CROP, normalize_uint8

_EXIF_ORIENTATION = 0x0112
TRUNCATED_JPEG = "JPEG without end-of-image marker (truncated?)"
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that transpose the image (portrait <-> landscape)


# --------------------------------------------------------------------------------------------
# CPU header probe shared by the GPU loaders
# --------------------------------------------------------------------------------------------

@dataclass
class ImageProbe:
    """What the cheap CPU check learned about one file (no pixel decode).

    data:        the whole file.
    format:      PIL format name ("JPEG", "PNG", ...).
    mode:        PIL mode from the header ("RGB", "L", "CMYK", "P", "I;16", ...).
    height/width: size as stored in the file (before EXIF orientation).
    orientation: EXIF orientation tag, 1..8 (1 = none).
    fast_ok:     True when a GPU decoder gives the reference's pixels for this file
                 (8-bit RGB/grayscale, complete, single frame, no transparency, supported format).
    why_slow:    when not fast_ok: why the file goes to the PIL path (for debugging).
    """

    data: bytes
    format: str
    mode: str
    height: int
    width: int
    orientation: int = 1
    fast_ok: bool = False
    why_slow: str = ""

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(height, width) after EXIF orientation, i.e. as the reference sees the image."""
        if self.orientation in _SWAPS_AXES:
            return self.width, self.height
        return self.height, self.width


def jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG has an end-of-image marker after its first scan header.

    Walks the marker segments up to SOS (cheap: a few header segments) and looks for FFD9 after
    it; inside entropy-coded data 0xFF is always stuffed, so any FFD9 there is a real marker.
    An EXIF thumbnail's own EOI sits before the SOS and is therefore not mistaken for ours.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    for marker, start, _ in marker_segments(data):
        if marker == 0xDA:  # start of scan
            # searched from the end: a complete file ends with it, so this is O(1) for them
            # (a forward find stops at every stuffed 0xFF of the entropy-coded data: ~100 us)
            return data.rfind(b"\xff\xd9", start) != -1
    return False


def png_chunks(data: bytes) -> tuple[bool, set[bytes]]:
    """(complete, chunk types) of a PNG, by walking its chunk headers (no decompression).

    complete: the walk reached IEND inside the data (a truncated PNG does not).
    """
    types: set[bytes] = set()
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = bytes(data[i + 4:i + 8])  # hashable even when data is a bytearray
        types.add(kind)
        if kind == b"IEND":
            return True, types
        i += 12 + length
    return False, types


def _fast_path_verdict(probe: ImageProbe, img: Image.Image, formats: frozenset[str]) -> str:
    """Empty string when a GPU decoder reproduces the reference for this file, else the reason."""
    fmt, data = probe.format, probe.data
    if fmt not in formats:
        return f"format {fmt}"
    if probe.mode not in ("RGB", "L"):
        return f"mode {probe.mode}"
    if "transparency" in img.info:
        return "transparency"
    if fmt in ("JPEG", "MPO"):
        if not jpeg_is_complete(data):
            return TRUNCATED_JPEG
        return ""
    if getattr(img, "n_frames", 1) > 1:  # APNG, animated WebP (header-only information)
        return "multi-frame"
    if fmt == "PNG":
        if len(data) < 26 or data[24] != 8:
            return "PNG bit depth != 8"
        complete, chunks = png_chunks(data)
        if not complete:
            return "PNG without IEND (truncated?)"
        if b"eXIf" in chunks:
            # PIL finds PNG EXIF only by decoding the whole image (getexif -> load): too costly
            # for a probe, and rare; the reference handles these files.
            return "PNG with EXIF"
    if fmt == "WEBP" and data[12:16] not in (b"VP8 ", b"VP8L"):
        return "extended WebP"  # DALI decodes only the simple WebP format
    return ""


def probe_file(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               fast_formats: frozenset[str] = frozenset()) -> ImageProbe:
    """Read `path` and check its header without decoding pixels.

    Raises DecodeError (reasons as in decode.decode_image) for empty/unreadable files, content PIL
    cannot identify, formats outside ACCEPTED_FORMATS, bad dimensions and images over max_pixels.
    `fast_formats` are the formats the calling GPU decoder handles; `fast_ok` says whether this
    file may go to it. Never raises anything but DecodeError.
    """
    data = read_bytes(path)
    if "JPEG" in fast_formats:
        header = parse_jpeg_header(data)  # plain JPEGs without PIL (GIL time: see jpeg_header.py)
        if header is not None and (max_pixels is None or header.width * header.height <= max_pixels):
            probe = ImageProbe(data, "JPEG", header.mode, header.height, header.width,
                               header.orientation if 1 <= header.orientation <= 8 else 1)
            probe.why_slow = "" if header.complete else TRUNCATED_JPEG
            probe.fast_ok = header.complete
            return probe
    return probe_with_pil(data, max_pixels, fast_formats)


def probe_with_pil(data: bytes, max_pixels: int | None, fast_formats: frozenset[str]) -> ImageProbe:
    """`probe_file` for bytes already read, with PIL (every format; the reference for the JPEG
    fast path). Raises DecodeError only."""
    with pil_errors_as_decode_errors():
        img = open_image(data, max_pixels)
        fmt = check_header(img, max_pixels)
        width, height = img.size
        probe = ImageProbe(data, fmt, img.mode, height, width)
        if fmt not in fast_formats:
            probe.why_slow = f"format {fmt}"
            return probe
        try:  # PNG: getexif would decode the image; EXIF PNGs go to the reference (verdict)
            orientation = 1 if fmt == "PNG" else int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # unreadable EXIF: let the reference decide what the image is
            probe.why_slow = "unreadable EXIF"
            return probe
        probe.orientation = orientation if 1 <= orientation <= 8 else 1
        probe.why_slow = _fast_path_verdict(probe, img, fast_formats)
        probe.fast_ok = not probe.why_slow
        return probe


@dataclass
class Prepared:
    """One file after the CPU stage: either a probe for the GPU decoder, a PIL-decoded array, or
    a failure reason (exactly one of the three is set)."""

    probe: ImageProbe | None = None
    array: np.ndarray | None = None  # uint8 (3, CROP, CROP) from the PIL path
    reason: str | None = None


def prepare_file(path, max_pixels, fast_formats: frozenset[str]) -> Prepared:
    """CPU stage run in the thread pool: read + probe; PIL-decode files the GPU path must not take."""
    try:
        probe = probe_file(path, max_pixels, fast_formats)
        if probe.fast_ok:
            return Prepared(probe=probe)
        return Prepared(array=load_and_preprocess(probe.data, max_pixels))
    except DecodeError as exc:
        return Prepared(reason=str(exc))


def pil_fallback(data: bytes, max_pixels) -> Prepared:
    """Decode with the reference when a GPU decoder rejected a file the probe let through."""
    try:
        return Prepared(array=load_and_preprocess(data, max_pixels))
    except DecodeError as exc:
        return Prepared(reason=str(exc))


def short_error(exc: BaseException, limit: int = 160) -> str:
    """One informative line from a (possibly long, multi-line) decoder exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if "no longer valid" not in line and "Critical error" not in line]
    picked = next((line for line in lines if "Failed to decode" in line or "Error while decoding" in line),
                  lines[-1] if lines else type(exc).__name__)
    picked = re.sub(r"\s*#\d+\s*:?\s*$", "", picked)  # "sample #0 :" means nothing to a user
    return picked[:limit]


def assemble(start: int, fast: tuple[list[int], torch.Tensor | None],
             slow: dict[int, np.ndarray], failures: list[tuple[int, str]], device: torch.device,
             dtype: torch.dtype) -> Batch:
    """Merge fast-path rows and PIL-path arrays into one batch in input order.

    fast: (offsets, tensor (n, 3, CROP, CROP) normalized `dtype` on `device`) for positions
          start + offsets; slow: offset -> uint8 (3, CROP, CROP); failures: (position, reason).
    """
    fast_offsets, fast_tensor = fast
    ok = sorted(set(fast_offsets) | set(slow))
    indices = np.asarray([start + k for k in ok], dtype=np.int64)
    failures = sorted(failures)
    if not ok:
        return Batch(indices, torch.empty((0, 3, CROP, CROP), dtype=dtype, device=device), failures)
    if not slow and list(fast_offsets) == ok:
        return Batch(indices, fast_tensor, failures)
    row_of = {k: r for r, k in enumerate(ok)}
    out = torch.empty((len(ok), 3, CROP, CROP), dtype=dtype, device=device)
    if fast_offsets:
        rows = index_on([row_of[k] for k in fast_offsets], device)
        out.index_copy_(0, rows, fast_tensor)
    if slow:
        keys = sorted(slow)
        host = torch.from_numpy(np.stack([slow[k] for k in keys]))
        if device.type == "cuda":
            host = host.pin_memory().to(device, non_blocking=True)
        rows = index_on([row_of[k] for k in keys], device)
        out.index_copy_(0, rows, normalize_uint8(host, dtype))
    return Batch(indices, out, failures)
