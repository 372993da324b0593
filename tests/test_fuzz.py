"""Fuzz the CPU decode entry point: whatever the bytes, the result is an RGB image or DecodeError.

Seeds are small valid files of every accepted format and colour mode; hypothesis mutates them
(overwritten bytes, weighted towards the headers; truncation; inserted and deleted runs) and also
feeds plain random bytes. max_pixels is lowered to 4 Mpixels so a mutated header that claims a
large (but allowed) size fails fast instead of allocating hundreds of MB per example.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.errors import DecodeError
from engine.loaders.decode import decode_image, load_and_preprocess

MAX_PIXELS = 1 << 22


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    out = []

    def save(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out.append(buf.getvalue())

    save(rgb, "JPEG", quality=80)
    save(rgb, "JPEG", quality=80, progressive=True)
    save(rgb.convert("CMYK"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    save(rgb, "JPEG", exif=exif.tobytes())
    save(rgb, "PNG")
    save(rgb.convert("RGBA"), "PNG")
    save(rgb.convert("P"), "PNG", transparency=0)
    save(Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16)), "PNG")
    save(rgb.convert("L"), "PNG")
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=30, loop=0)
    save(rgb, "BMP")
    save(rgb, "TIFF")
    save(rgb, "WEBP", quality=70)
    return out


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["set", "set_header", "truncate", "insert", "delete"]))
        if not data:
            break
        if kind in ("set", "set_header"):
            hi = min(len(data), 64) if kind == "set_header" else len(data)
            pos = draw(st.integers(0, hi - 1))
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01])) if draw(st.booleans()) \
                else draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "insert":
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        else:
            pos = draw(st.integers(0, len(data) - 1))
            del data[pos:pos + draw(st.integers(1, 32))]
    return bytes(data)


def _check(data: bytes) -> None:
    try:
        arr = load_and_preprocess(data, MAX_PIXELS)
    except DecodeError as exc:
        assert str(exc)  # always a reason for skipped.csv
        return
    assert arr.shape == (3, 224, 224) and arr.dtype == np.uint8
    img = decode_image(data, MAX_PIXELS)
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_every_seed_is_valid(index):
    assert load_and_preprocess(SEEDS[index]).shape == (3, 224, 224)


@settings(max_examples=2000, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_images_decode_or_raise_decode_error(data):
    _check(data)


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(st.one_of(
    st.binary(max_size=512),
    # the magic numbers of accepted formats followed by junk: gets past format detection
    st.tuples(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"BM",
                               b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
              st.binary(max_size=256)).map(lambda t: t[0] + t[1]),
))
def test_random_bytes_decode_or_raise_decode_error(data):
    _check(data)


@settings(max_examples=1500, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_jpeg_headers_match_pil_or_fall_back(data):
    """The PIL-free JPEG probe never raises; where it answers, PIL either agrees (mode, size,
    orientation, completeness) or rejects the file, which the GPU loaders then report through
    their PIL fallback (nothing is silently dropped)."""
    from engine.loaders.jpeg_header import parse_jpeg_header
    from engine.loaders.nvjpeg import NVJPEG_FORMATS
    from engine.loaders.probe import TRUNCATED_JPEG, probe_with_pil

    header = parse_jpeg_header(data)
    if header is None:
        return
    try:
        probe = probe_with_pil(data, MAX_PIXELS, NVJPEG_FORMATS)
    except DecodeError:
        return
    orientation = header.orientation if 1 <= header.orientation <= 8 else 1
    assert (probe.format, probe.mode, probe.height, probe.width) == ("JPEG", header.mode, header.height, header.width)
    assert probe.why_slow in ("", TRUNCATED_JPEG), probe.why_slow  # e.g. not "unreadable EXIF"
    assert probe.orientation == orientation and probe.fast_ok == header.complete
