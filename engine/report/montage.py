"""Cluster montages: pick which members to show, decode only those, and draw the thumbnail grid.

A montage shows up to `max_montage` images of one cluster: the member nearest the centroid, then
members at even steps of distance rank out to the edge of the cluster (row by row; all of them when
they fit), so a cluster that mixes kinds of image shows each kind in proportion, not only its most
typical images; then, under a red "farthest from centre" label, a strip of the `n_outliers` members
farthest from it (farthest first, red borders), where its outliers are if it has any. Thumbnails are decoded on the
CPU in a thread pool (PIL releases the GIL while decoding), JPEGs at reduced size through
libjpeg's DCT scaling (Image.draft). A file that cannot be decoded becomes a grey placeholder tile.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..errors import ConfigError, DecodeError
from ..loaders.decode import DEFAULT_MAX_PIXELS, decode_image
from .outputs import file_for_text

TILE = 128          # thumbnail box, pixels (square; images are letterboxed inside it)
COLUMNS = 6
PAD = 6             # gap between tiles and around the edge
CAPTION = 16        # text line under each tile
LABEL = 26          # height of the "farthest from centre" label bar
BORDER = 3          # red border around outlier tiles (2 * BORDER == PAD: neighbouring frames just touch)
BACKGROUND = (255, 255, 255)
TILE_BACKGROUND = (238, 238, 238)
PLACEHOLDER = (150, 150, 150)
OUTLIER_RED = (214, 39, 40)
OUTLIER_LABEL = "farthest from centre"


def check_limits(max_montage: int, n_outliers: int) -> None:
    """ConfigError unless 1 <= max_montage and 0 <= n_outliers < max_montage."""
    if not isinstance(max_montage, (int, np.integer)) or max_montage < 1:
        raise ConfigError(f"max_montage must be an integer >= 1, got {max_montage!r}")
    if not isinstance(n_outliers, (int, np.integer)) or not 0 <= n_outliers < max_montage:
        raise ConfigError(f"n_outliers must be an integer in 0..max_montage-1 ({max_montage - 1}), got {n_outliers!r}")


def order_by_distance(distances: np.ndarray) -> np.ndarray:
    """(m,) int64 positions sorting one cluster's members nearest-first; NaN distances go last (stable)."""
    return np.argsort(np.asarray(distances, dtype=np.float64), kind="stable")  # argsort puts NaN last


def select_members(distances: np.ndarray, max_montage: int = 36, n_outliers: int = 6,
                   order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which members of one cluster a montage shows.

    distances: (m,) float distance of each member to the centroid (NaN = unknown).
    Returns (spread, farthest), int64 positions into `distances`: `spread` are
    min(m, max_montage - n_outliers) members in distance order, nearest first: every member outside
    the strip when they fit, else the nearest one and then even steps of distance rank out to the
    farthest member outside the strip; `farthest` are the up-to-n_outliers members with the largest
    known distances, farthest first, never repeating one of `spread` (a cluster of at most
    max_montage - n_outliers members has no outlier strip).
    """
    check_limits(max_montage, n_outliers)
    distances = np.asarray(distances, dtype=np.float64)
    order = order_by_distance(distances) if order is None else np.asarray(order)
    m = distances.size
    n_near = min(m, max_montage - n_outliers)
    n_known = int(np.isfinite(distances).sum())  # unknown distances cannot be called outliers
    n_far = max(0, min(n_outliers, n_known - n_near))
    known = order[:n_known - n_far]  # known distances outside the strip, nearest first
    if known.size >= n_near:  # even steps of rank over them (all of them when they fit)
        spread = known[np.round(np.linspace(0, known.size - 1, n_near)).astype(np.int64)] if n_near else known[:0]
    else:  # too few known: all of them, then members whose distance is unknown
        spread = np.concatenate([known, order[n_known:n_known + n_near - known.size]])
    spread = spread.astype(np.int64)
    farthest = order[n_known - n_far:n_known][::-1].astype(np.int64)
    return spread, farthest


def _fit(img: Image.Image, tile: int) -> Image.Image:
    """Scale to fit tile x tile keeping aspect; small images are enlarged too, so every tile is readable."""
    return ImageOps.contain(img, (tile, tile), Image.BILINEAR)


def load_thumbnail(path: str | os.PathLike, tile: int = TILE, max_pixels: int | None = DEFAULT_MAX_PIXELS
                   ) -> Image.Image | None:
    """An RGB thumbnail fitting in tile x tile, or None when the file cannot be decoded.

    JPEGs are opened with Image.draft, which lets libjpeg decode at 1/2, 1/4 or 1/8 scale (several
    times faster on camera-sized photos); anything else, or any problem on that path, goes through
    decode_image, the pipeline's decoder with all its checks. Never raises for a bad file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: the size check is below
            with Image.open(path) as img:
                if img.format in ("JPEG", "MPO") and (max_pixels is None or img.width * img.height <= max_pixels):
                    img.draft("RGB", (tile, tile))
                    img.load()
                    return _fit(ImageOps.exif_transpose(img).convert("RGB"), tile)
    except Exception:  # noqa: BLE001 - fall through to the full decoder, which names the problem
        pass
    try:
        return _fit(decode_image(path, max_pixels), tile)
    except DecodeError:
        return None
    except Exception:  # noqa: BLE001 - a thumbnail must never crash the report (e.g. resize of a 1x100000 image)
        return None


def submit_thumbnails(pool: Executor, paths, tile: int = TILE, base: str | None = None) -> dict[str, Future]:
    """Start decoding each distinct path in `pool`; {path: Future[Image | None]}.
    Relative paths are read relative to `base` (the run's working directory) when given."""
    return {p: pool.submit(lambda p=p: load_thumbnail(file_for_text(p, base), tile))
            for p in dict.fromkeys(paths)}


@dataclass
class Layout:
    """Pixel geometry of one montage. Boxes are (x0, y0, x1, y1) of each tile's image area."""

    size: tuple[int, int]
    near_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    far_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    label_box: tuple[int, int, int, int] | None = None


def layout(n_near: int, n_far: int, columns: int = COLUMNS, tile: int = TILE) -> Layout:
    """Where each tile goes: nearest members in rows of `columns`, then the label bar and the outlier strip."""
    cell_w, cell_h = tile + PAD, tile + CAPTION + PAD
    width = PAD + columns * cell_w

    def grid(count: int, top: int) -> tuple[list, int]:
        boxes = []
        for i in range(count):
            row, col = divmod(i, columns)
            x0, y0 = PAD + col * cell_w, top + row * cell_h
            boxes.append((x0, y0, x0 + tile, y0 + tile))
        return boxes, top + math.ceil(count / columns) * cell_h

    near_boxes, y = grid(n_near, PAD)
    label_box = None
    far_boxes: list = []
    if n_far:
        label_box = (PAD, y + PAD, width - PAD, y + PAD + LABEL)
        far_boxes, y = grid(n_far, y + 2 * PAD + LABEL + BORDER)
    return Layout(size=(width, max(y, PAD + cell_h)), near_boxes=near_boxes, far_boxes=far_boxes,
                  label_box=label_box)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _paste_tile(canvas: Image.Image, box, thumb: Image.Image | None, font) -> None:
    x0, y0, x1, y1 = box
    draw = ImageDraw.Draw(canvas)
    if thumb is None:  # undecodable file: a grey tile that says so
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=PLACEHOLDER)
        draw.text(((x0 + x1) // 2, (y0 + y1) // 2), "unreadable", fill=(255, 255, 255), font=font, anchor="mm")
        return
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=TILE_BACKGROUND)
    canvas.paste(thumb, (x0 + (x1 - x0 - thumb.width) // 2, y0 + (y1 - y0 - thumb.height) // 2))


def render_montage(near: list[Image.Image | None], far: list[Image.Image | None],
                   near_captions: list[str] | None = None, far_captions: list[str] | None = None,
                   columns: int = COLUMNS, tile: int = TILE) -> Image.Image:
    """Draw a montage (RGB image, size layout(len(near), len(far)).size). None entries become placeholders."""
    geo = layout(len(near), len(far), columns, tile)
    canvas = Image.new("RGB", geo.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    small, label_font = _font(11), _font(14)
    for thumbs, boxes, captions in ((near, geo.near_boxes, near_captions), (far, geo.far_boxes, far_captions)):
        for i, (thumb, box) in enumerate(zip(thumbs, boxes, strict=True)):
            _paste_tile(canvas, box, thumb, small)
            if captions:
                draw.text(((box[0] + box[2]) // 2, box[3] + BORDER + 1), captions[i], fill=(60, 60, 60), font=small,
                          anchor="ma")
    if geo.label_box:
        x0, y0, x1, y1 = geo.label_box
        draw.rectangle(geo.label_box, fill=(253, 226, 226), outline=OUTLIER_RED, width=2)
        draw.text((x0 + 8, (y0 + y1) // 2), OUTLIER_LABEL, fill=OUTLIER_RED, font=label_font, anchor="lm")
        for x0, y0, x1, y1 in geo.far_boxes:  # red frame just outside each outlier tile
            draw.rectangle((x0 - BORDER, y0 - BORDER, x1 + BORDER - 1, y1 + BORDER - 1), outline=OUTLIER_RED,
                           width=BORDER)
    return canvas

