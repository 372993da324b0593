"""What the GPU loaders need from a plain JPEG's header, without PIL: size, mode, EXIF orientation,
completeness.

Why: the header probe runs for every file on the CPU, in Python threads that share the GIL. With
PIL (Image.open + getexif) it cost ~147 us a file on the development VM, which caps the GPU
loaders' front end at a few thousand files per second however many threads it has. Walking the
marker segments here costs a fraction of that.

Only the common case is answered: SOI, then 8-bit baseline/extended/progressive frames with 1
(grayscale, PIL mode "L") or 3 (PIL mode "RGB") components, at most one EXIF segment that parses
cleanly, no Adobe APP14 and no MPF (multi-picture) segment. Anything else returns None and the
caller asks PIL, so for every file this answers, the answer is the one PIL's probe gives
(tests/test_jpeg_header.py checks that on a corpus of odd files).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

_SOF_OK = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive (Huffman)
_SOF_ALL = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """height/width as stored (before EXIF orientation); mode "L" or "RGB"; orientation 1..8 as
    PIL's getexif would report it (unknown values are passed through); complete: an end-of-image
    marker follows the first scan header."""

    height: int
    width: int
    mode: str
    orientation: int
    complete: bool


def marker_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment of a JPEG after its SOI, in file order, up to
    and including the first SOS (start of scan); data[start] is the segment's 0xFF, data[end] the
    byte after it. Fill bytes and stand-alone markers are skipped. Stops early, silently, at
    anything malformed (no 0xFF where a marker belongs, a length < 2 or past the end)."""
    n = len(data)
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        end = i + 2 + length
        if length < 2 or end > n:
            return
        yield marker, i, end
        if marker == 0xDA:
            return
        i = end


def parse_jpeg_header(data: bytes) -> JpegHeader | None:
    """`data`: a whole file. Returns the header of a plain JPEG, or None (ask PIL; see module doc)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8 or data[2] != 0xFF:
        return None
    frame = None
    orientation = 1
    exif_seen = False
    for marker, start, end in marker_segments(data):
        body = start + 4
        length = end - start - 2
        if marker == 0xDA:  # start of scan: the header is over
            if frame is None:
                return None
            height, width, mode = frame
            # searched from the end: a complete file ends with it (see probe.jpeg_is_complete)
            return JpegHeader(height, width, mode, orientation, data.rfind(b"\xff\xd9", start) != -1)
        if marker in _SOF_ALL:
            if marker not in _SOF_OK or frame is not None or length < 8:
                return None
            precision, components = data[body], data[body + 5]
            height = (data[body + 1] << 8) | data[body + 2]
            width = (data[body + 3] << 8) | data[body + 4]
            if precision != 8 or components not in (1, 3) or height == 0 or width == 0:
                return None
            frame = (height, width, "L" if components == 1 else "RGB")
        elif marker == 0xE1 and data[body:body + 6] == b"Exif\x00\x00":
            if exif_seen:
                return None  # which one PIL reads is its business
            exif_seen = True
            found = _exif_orientation(data[body + 6:end])
            if found is None:
                return None
            orientation = found
        elif marker == 0xE2 and data[body:body + 4] == b"MPF\x00":
            return None  # PIL calls it MPO
        elif marker == 0xEE and data[body:body + 5] == b"Adobe":
            return None  # colour transform flags: leave them to PIL
        elif marker == 0xD9:
            return None
    return None  # malformed before the scan: PIL gives the reason


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation from a TIFF-structured EXIF block (IFD0 tag 0x0112, a SHORT): 1 when IFD0 has
    none, None when the block is anything but clean."""
    if len(tiff) < 8:
        return None
    order = tiff[:2]
    if order == b"II":
        little = True
    elif order == b"MM":
        little = False
    else:
        return None

    def u16(at: int) -> int:
        a, b = tiff[at], tiff[at + 1]
        return a | (b << 8) if little else (a << 8) | b

    def u32(at: int) -> int:
        return u16(at) | (u16(at + 2) << 16) if little else (u16(at) << 16) | u16(at + 2)

    if u16(2) != 42:
        return None
    ifd = u32(4)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    count = u16(ifd)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    found = []
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if u16(entry) == _ORIENTATION:
            if u16(entry + 2) != 3 or u32(entry + 4) != 1:  # SHORT, one value
                return None
            found.append(u16(entry + 8))
    if len(found) > 1:
        return None
    return found[0] if found else 1


__all__ = ["JpegHeader", "marker_segments", "parse_jpeg_header"]
