"""The CPU decode entry point: bytes or a path -> an RGB PIL image, or DecodeError with a reason.

Everything a file can throw at PIL is caught here and turned into a short reason string, so one
bad file never escapes a loader. EXIF orientation is applied; grayscale, CMYK, palette, 16-bit and
alpha images become 8-bit RGB (alpha composited on white); a GIF gives its first frame.

HEIC/HEIF (iPhone photos) are read through the optional pillow-heif plugin (`pip install
pillow-heif`, the `heif` extra), registered on the first file that looks like one; AVIF through Pillow's
own plugin. Without them such files are skipped with the install hint as the reason, never
silently passed over.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import stat
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import DecodeError
from .preprocess import CROP, RESIZE, center_crop_offsets, resized_size, source_crop_box

# Formats we accept by content (whatever the file extension says). HEIF needs pillow-heif, AVIF a
# Pillow built with libavif (recent PyPI wheels are; 13.0 here).
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO", "HEIF", "AVIF"}
# HEIF/AVIF names are discovered even when they cannot be read here, so that they are listed in
# skipped.csv with the install hint rather than counted as "not named like images".
EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif",
              ".heic", ".heif", ".hif", ".avif"}
HEIF_HINT = "install pillow-heif to read HEIC/HEIF images (pip install pillow-heif)"
AVIF_HINT = "this Pillow has no AVIF support (upgrade Pillow: recent wheels include it)"
# ISO base media file brands (bytes 8..12 of the file) of HEIF images (HEVC-coded: iPhone photos)
# and of AVIF images (AV1-coded).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit (2x its warning level)

# A truncated file is an error, not a half-grey image: Pillow's default (ImageFile.
# LOAD_TRUNCATED_IMAGES = False). It is process-wide and the embedding program's to set, so it is
# left alone here (a program that sets it True gets truncated files decoded as Pillow pads them).


def read_bytes(path: str | os.PathLike) -> bytearray:
    """Read a whole file; OSError (missing, permissions, loops, directories) becomes DecodeError.

    A bytearray, read straight into a buffer of the file's size: the GPU loaders hand it to
    torch.frombuffer without a copy (which needs a writable buffer); everything else reads it
    like bytes. A file that changes size while being read gets what a plain read() would get."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; then only regular files are read
        # (a FIFO would block, /dev/zero would never end)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb", buffering=0) as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise DecodeError("not a regular file")
            data = bytearray(info.st_size)
            got = handle.readinto(data)
            if got < len(data):  # shrank meanwhile
                del data[got:]
            more = handle.read()  # grew meanwhile (or a size fstat does not know)
            if more:
                data += more
    except OSError as exc:
        raise DecodeError(f"unreadable: {exc.strerror or type(exc).__name__}") from None
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited on white so transparent areas are not black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the actual range of the type, not a clip.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.nan_to_num(arr).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


@contextlib.contextmanager
def pil_errors_as_decode_errors():
    """Run PIL code on untrusted bytes: its warnings are silenced and every exception becomes a
    DecodeError with a short reason (PIL raises many types on hostile data; none may escape)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"too large: {exc}") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised content)") from None
    except Exception as exc:
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DecodeError(f"corrupt or truncated image: {msg}") from None


def check_header(img: Image.Image, max_pixels: int | None) -> str:
    """The checks every decoder makes on an opened (not yet decoded) image: an accepted format,
    positive dimensions, at most max_pixels pixels. Returns the format; raises DecodeError."""
    fmt = img.format or "?"
    if fmt not in ACCEPTED_FORMATS:
        raise DecodeError(f"unsupported image format {fmt}")
    width, height = img.size
    if width < 1 or height < 1:
        raise DecodeError(f"invalid dimensions {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(f"too large: {width}x{height} exceeds max_pixels={max_pixels}")
    return fmt


def avif_available() -> bool:
    """True when this Pillow reads AVIF (its own plugin, built with libavif)."""
    from PIL import features

    return bool(features.check("avif"))


_heif_lock = threading.Lock()
_heif_state: str | None = None  # None: not tried yet; "": the opener is registered; else why not


def heif_status() -> str:
    """'' when HEIC/HEIF can be read, else why not (a reason carrying HEIF_HINT).

    The first call registers pillow-heif's opener with PIL (not at import: importing it costs
    ~45 ms that JPEG-only runs need not pay); later calls return the remembered answer, so a
    broken install is tried once, not once a file. Thread-safe (decoder threads call it)."""
    global _heif_state
    with _heif_lock:
        if _heif_state is None:
            if importlib.util.find_spec("pillow_heif") is None:
                _heif_state = HEIF_HINT
            else:
                try:
                    import pillow_heif

                    # HEIF's own rotation (irot/imir) is applied on open and the EXIF orientation
                    # reset to 1, so ImageOps.exif_transpose does not turn the image a second time.
                    pillow_heif.register_heif_opener()
                    _heif_state = ""
                except Exception as exc:  # an ABI mismatch, a missing shared library...
                    detail = str(exc).splitlines()[0][:100] if str(exc) else ""
                    _heif_state = (f"pillow-heif is installed but does not load ({type(exc).__name__}"
                                   f"{': ' + detail if detail else ''}); {HEIF_HINT}")
        return _heif_state


def _iso_brand(data) -> bytes | None:
    """The major brand of an ISO base media file (HEIF, AVIF, MP4...), or None for other files."""
    return bytes(data[8:12]) if len(data) >= 12 and bytes(data[4:8]) == b"ftyp" else None


def open_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """Image.open on bytes; an image PIL refuses as a decompression bomb gets max_pixels' wording.

    PIL's own limit (Image.MAX_IMAGE_PIXELS, process-wide: the embedding program's) refuses
    images over twice it, which with PIL's default is exactly DEFAULT_MAX_PIXELS: left alone, and
    so is a stricter limit the program set. Only a max_pixels above both (or None: no limit), an
    explicit choice, raises it, so that max_pixels is the limit that applies. (Between once and twice it, PIL only warns;
    pil_errors_as_decode_errors silences that.)

    A HEIF/AVIF file that no installed plugin reads raises DecodeError with the install hint."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    # only a max_pixels the caller chose (not the default) lifts a limit the program may have lowered
    if pil_limit is not None and (max_pixels is None or (max_pixels > DEFAULT_MAX_PIXELS and max_pixels > 2 * pil_limit)):
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else -(-max_pixels // 2)
    brand = _iso_brand(data)
    if brand is not None:
        heif_status()  # registers the opener on the first such file
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        if pixels and max_pixels is not None and int(pixels.group(1)) > max_pixels:
            raise DecodeError(f"too large: {int(pixels.group(1))} pixels exceeds max_pixels={max_pixels}") from None
        raise DecodeError(f"too large: {exc}") from None  # under a lower limit the program set
    except Image.UnidentifiedImageError:
        if brand in _HEIF_BRANDS and heif_status():
            raise DecodeError(f"HEIF image: {heif_status()}") from None
        if brand in _AVIF_BRANDS and not avif_available():
            raise DecodeError(f"AVIF image: {AVIF_HINT}") from None
        raise


def depends_on_environment(reason: str) -> bool:
    """True for a decode failure that installing a plugin can cure (the feature cache must not
    remember it: the next run, with the plugin, reads the file)."""
    return HEIF_HINT in reason or AVIF_HINT in reason


def decode_image(source: bytes | str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 min_size: int | None = None) -> Image.Image:
    """Decode `source` (file bytes or a path) into an 8-bit RGB PIL image.

    min_size: a JPEG whose sides are both at least twice this is decoded by libjpeg at 1/2, 1/4
    or 1/8 scale (DCT scaling: PIL's Image.draft), never below min_size on either side. None:
    full size. max_pixels applies to the size in the file.

    Raises DecodeError (with a short, human reason) for anything that is not a readable image:
    empty/truncated/corrupt data, unsupported formats, images over `max_pixels` pixels
    (decompression bombs; None disables the limit). Never raises anything else.
    """
    data = source if isinstance(source, (bytes, bytearray, memoryview)) else read_bytes(source)
    if len(data) == 0:
        raise DecodeError("empty file (0 bytes)")
    with pil_errors_as_decode_errors():
        img = open_image(data, max_pixels)
        check_header(img, max_pixels)
        if getattr(img, "n_frames", 1) > 1 and img.format != "HEIF":
            # animated GIF/WebP/TIFF: first frame. A HEIF file opens at its primary image, which
            # is the picture; image 0 may be another (a burst's frame, a depth map's source).
            img.seek(0)
        if min_size is not None and img.format in ("JPEG", "MPO"):
            img.draft(img.mode, (min_size, min_size))  # no-op unless a 1/2..1/8 scale keeps >= min_size
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


# Above this many pixels in the resized (pre-crop) image, resize only the crop window (see preprocess_pil).
_RESIZED_PIXELS_LIMIT = 16 * RESIZE * RESIZE


def preprocess_pil(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> uint8 (3, CROP, CROP): shorter side to RESIZE (bilinear, antialiased), center crop.

    A very elongated image (say 1 x 60,000, a few hundred bytes as a PNG) would be resized to
    256 x 15 million pixels before the crop. Then only the crop window is resized (PIL's `box`),
    which gives the same filter centres and scale, so the same pixels up to float rounding.
    """
    height, width = img.height, img.width
    rh, rw = resized_size(height, width)
    if rh * rw > _RESIZED_PIXELS_LIMIT:
        cropped = img.resize((CROP, CROP), Image.BILINEAR, box=source_crop_box(height, width))
    else:
        resized = img.resize((rw, rh), Image.BILINEAR)
        top, left = center_crop_offsets(rh, rw)
        cropped = resized.crop((left, top, left + CROP, top + CROP))
    return np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1)


# JPEGs are decoded at a reduced scale (DCT scaling) down to twice the resize target, so the
# antialiased resize still does the final filtering: on a 4000 x 3000 q90 photo 261 -> 100 ms
# and 0.2 levels mean difference in the crop (max 2); 2000 x 1500: 48 -> 29 ms (2-core VM).
DRAFT_MIN_SIZE = 2 * RESIZE


def load_and_preprocess(source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """decode_image then preprocess_pil: uint8 (3, CROP, CROP). Raises DecodeError only.
    Large JPEGs are decoded at reduced scale first (DRAFT_MIN_SIZE)."""
    img = decode_image(source, max_pixels, min_size=DRAFT_MIN_SIZE)
    try:
        return preprocess_pil(img)
    except (OSError, ValueError, MemoryError) as exc:
        raise DecodeError(f"could not resize: {exc}") from None


def name_suffix(name: str) -> str:
    """A file name's lower-case suffix as pathlib takes it ("..jpg" has ".jpg"; ".jpg" and "a."
    have none: ""), not as os.path.splitext does (which gives "..jpg" none). A string, no Path:
    discovery calls it per file."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def has_image_extension(name: str) -> bool:
    """Folder and glob discovery's filter: the file name has an image suffix (case-insensitive)."""
    return name_suffix(name) in EXTENSIONS
