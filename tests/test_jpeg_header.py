"""The PIL-free JPEG header probe (engine.loaders.jpeg_header) against PIL's probe.

For every file it answers, the probe it gives must equal PIL's (format, mode, size, orientation,
fast-path verdict); the plain files must be answered (or the fast path never runs); the unusual
ones must be left to PIL. Also the nvJPEG loader's CPU front end that runs it (order, bad files).
"""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from engine.loaders.jpeg_header import parse_jpeg_header
from engine.loaders.nvjpeg import NVJPEG_FORMATS
from engine.loaders.probe import probe_file, probe_with_pil


def _jpeg(mode="RGB", size=(40, 30), **save) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    arr = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _exif(orientation, order: bytes = b"II", type_=3, count=1, extra_tag=False, ifd_offset=8) -> bytes:
    """A TIFF-structured EXIF block with IFD0 holding the orientation tag."""
    e = "<" if order == b"II" else ">"
    entries = [(0x0112, type_, count, orientation)] + ([(0x0112, 3, 1, 1)] if extra_tag else [])
    body = struct.pack(e + "H", len(entries))
    for tag, typ, cnt, val in entries:
        body += struct.pack(e + "HHI", tag, typ, cnt) + struct.pack(e + "HH", val, 0)
    body += struct.pack(e + "I", 0)
    return order + struct.pack(e + "HI", 42, ifd_offset) + body


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert an APPn segment right after SOI."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _corpus() -> dict[str, bytes]:
    plain = _jpeg()
    files = {
        "rgb": plain,
        "gray": _jpeg("L"),
        "progressive": _jpeg(progressive=True),
        "odd size": _jpeg(size=(37, 23)),
        "truncated": plain[: len(plain) * 2 // 3],
        "trailing bytes": plain + b"\x00" * 100,
        "cmyk": _jpeg("CMYK"),
        "orientation LONG": _with_segment(plain, 0xE1, b"Exif\x00\x00" + _exif(6, type_=4)),
        "orientation twice": _with_segment(plain, 0xE1, b"Exif\x00\x00" + _exif(6, extra_tag=True)),
        "bad IFD offset": _with_segment(plain, 0xE1, b"Exif\x00\x00" + _exif(6, ifd_offset=5000)),
        "two EXIF": _with_segment(_with_segment(plain, 0xE1, b"Exif\x00\x00" + _exif(3)), 0xE1,
                                  b"Exif\x00\x00" + _exif(6)),
        "MPF": _with_segment(plain, 0xE2, b"MPF\x00" + b"\x00" * 16),
        "Adobe": _with_segment(plain, 0xEE, b"Adobe" + b"\x00" * 7),
        "orientation 9": _with_segment(plain, 0xE1, b"Exif\x00\x00" + _exif(9)),
        "not a JPEG": b"GIF89a" + b"\x00" * 50,
        "SOI only": b"\xff\xd8\xff",
    }
    # an EOI inside the EXIF block, before the scan: a truncated file must still be incomplete
    files["EOI in EXIF, truncated"] = _with_segment(plain, 0xE1, b"Exif\x00\x00" + _exif(1) + b"\xff\xd9")[:-400]
    for orientation in range(1, 9):
        for order in (b"II", b"MM"):
            files[f"exif {orientation} {order.decode()}"] = _with_segment(
                plain, 0xE1, b"Exif\x00\x00" + _exif(orientation, order))
    files["PIL exif 6"] = _jpeg(exif=_pil_exif(6))
    return files


def _pil_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


ANSWERED = {"rgb", "gray", "progressive", "odd size", "truncated", "trailing bytes", "orientation 9",
            "EOI in EXIF, truncated", "PIL exif 6"} | {f"exif {o} {b}" for o in range(1, 9) for b in ("II", "MM")}
LEFT_TO_PIL = {"cmyk", "orientation LONG", "orientation twice", "bad IFD offset", "two EXIF", "MPF", "Adobe",
               "not a JPEG", "SOI only"}


def _fields(probe):
    return (probe.format, probe.mode, probe.height, probe.width, probe.orientation, probe.fast_ok, probe.why_slow)


@pytest.mark.parametrize("name", sorted(ANSWERED | LEFT_TO_PIL))
def test_header_probe_agrees_with_pil(name, tmp_path):
    data = _corpus()[name]
    header = parse_jpeg_header(data)
    assert (header is not None) == (name in ANSWERED), (name, header)
    path = tmp_path / "f.jpg"
    path.write_bytes(data)
    try:
        reference = _fields(probe_with_pil(data, 10**9, NVJPEG_FORMATS))
    except Exception as exc:  # PIL rejects it: so must probe_file, with the same reason
        with pytest.raises(type(exc)) as info:
            probe_file(path, 10**9, NVJPEG_FORMATS)
        assert str(info.value) == str(exc)
        return
    assert _fields(probe_file(path, 10**9, NVJPEG_FORMATS)) == reference
    if name == "truncated":
        assert header.complete is False and reference[5] is False
    if name.startswith("exif 6"):
        assert reference[4] == 6  # the corpus really carries the orientation PIL sees


def test_over_max_pixels_is_left_to_pil(tmp_path):
    """The size limit's error message is PIL's path's, so oversized files take that path."""
    path = tmp_path / "f.jpg"
    path.write_bytes(_jpeg(size=(40, 30)))
    with pytest.raises(Exception, match="exceeds max_pixels=1000"):
        probe_file(path, 1000, NVJPEG_FORMATS)


def test_front_end_keeps_every_file_in_order(tmp_path, monkeypatch):
    """The GPU loaders' front end hands runs of files to each io task and non-JPEGs to the PIL
    pool; every position must come back in order with its own file's result (sizes differ per
    file; some files are bad, some are PNGs), and the PIL decodes run on the fallback pool."""
    import threading

    import engine.loaders.frontend as frontend_module
    from engine.loaders.frontend import FrontEnd
    from engine.loaders.nvjpeg import NVJPEG_FORMATS, PreparedJpeg

    paths, expected = [], []
    for i in range(53):
        if i % 11 == 5:
            path = tmp_path / f"{i:03d}.jpg"
            path.write_bytes(b"not an image")
            expected.append(None)
        elif i % 7 == 3:
            path = tmp_path / f"{i:03d}.png"
            Image.new("RGB", (20 + i, 10 + i), (i, 0, 0)).save(path)
            expected.append("pil")
        else:
            path = tmp_path / f"{i:03d}.jpg"
            path.write_bytes(_jpeg(size=(20 + i, 10 + i)))
            expected.append((10 + i, 20 + i))
        paths.append(path)
    threads = set()
    real_fallback = frontend_module.pil_fallback

    def recording_fallback(data, max_pixels):
        threads.add(threading.current_thread().name)
        return real_fallback(data, max_pixels)

    monkeypatch.setattr(frontend_module, "pil_fallback", recording_fallback)
    with FrontEnd(NVJPEG_FORMATS, 10**9, PreparedJpeg, io_threads=4, fallback_threads=2, name="t") as front:
        got, starts = [], []
        for start, prepared in front.batches(paths, 20, 2):  # 3 runs of 8 files a batch
            starts.append(start)
            for p in prepared:
                if p.probe is not None:
                    assert isinstance(p, PreparedJpeg) and p.tensor.numel() == len(p.probe.data)
                    got.append((p.probe.height, p.probe.width))
                else:
                    got.append("pil" if p.array is not None else None)
                    assert (p.array is None) == (p.reason is not None)
    assert starts == [0, 20, 40]
    assert got == expected
    assert threads and all(name.startswith("t-pil") for name in threads), threads


def test_front_end_bytes_are_read_once_and_shared_with_the_tensor(tmp_path):
    """read_bytes reads into a bytearray, and the nvJPEG loader's tensor is a view of it (no second
    90 KB copy per file on the GIL-bound io thread); an empty file is still a clear failure."""
    from engine.errors import DecodeError
    from engine.loaders.decode import read_bytes
    from engine.loaders.nvjpeg import PreparedJpeg

    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(size=(64, 48)))
    probe = probe_file(path, 10**9, NVJPEG_FORMATS)
    assert isinstance(probe.data, bytearray) and probe.data == path.read_bytes()
    tensor = PreparedJpeg(probe).tensor
    assert tensor.numpy().tobytes() == path.read_bytes()
    assert np.shares_memory(tensor.numpy(), np.frombuffer(probe.data, dtype=np.uint8))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        read_bytes(tmp_path / "empty.jpg")
