"""The built-in sample set: deterministic synthetic images in visually distinct groups.

Generated on demand (nothing is shipped): `generate_sample_set(folder)` writes
folder/<group>/<group>_NNN.jpg (`sample_set_files(folder)` finds them again, to replace a set).
Each group has its own colour palette and structure (stripes, circles, checkerboards, gradients,
noise), with per-image jitter in size, phase, position and noise, so the groups are clear to the
eye and to plain pixel features alike.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import ConfigError
from .loaders.decode import has_image_extension

GROUPS = ("red_stripes", "blue_columns", "green_disc", "checkerboard", "sunset_gradient", "purple_noise")


def _canvas(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(180, 320)), int(rng.integers(180, 320))  # height, width


def _noise(rng, h, w, scale):
    return rng.normal(0.0, scale, (h, w, 3))


def render(group: str, rng: np.random.Generator) -> Image.Image:
    """One image of `group` (a name from GROUPS) as RGB, random variation drawn from `rng`."""
    h, w = _canvas(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if group == "red_stripes":
        period = rng.uniform(18, 30)
        band = (np.sin(2 * np.pi * (yy / period + rng.uniform(0, 1))) > 0)[..., None]
        img = np.where(band, [220, 30, 30], [250, 235, 235]).astype(np.float64)
    elif group == "blue_columns":
        period = rng.uniform(18, 30)
        band = (np.sin(2 * np.pi * (xx / period + rng.uniform(0, 1))) > 0)[..., None]
        img = np.where(band, [20, 40, 200], [70, 190, 235]).astype(np.float64)
    elif group == "green_disc":
        cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
        radius = min(h, w) * rng.uniform(0.3, 0.4)
        inside = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2)[..., None]
        img = np.where(inside, [40, 200, 70], [20, 25, 35]).astype(np.float64)
    elif group == "checkerboard":
        cell = rng.uniform(8, 14)
        off = rng.uniform(0, cell, 2)
        checks = ((np.floor((yy + off[0]) / cell) + np.floor((xx + off[1]) / cell)) % 2 == 0)[..., None]
        img = np.where(checks, [245, 245, 245], [15, 15, 15]).astype(np.float64)
    elif group == "sunset_gradient":
        t = (yy / h)[..., None] + rng.uniform(-0.1, 0.1)
        top, bottom = np.array([255, 170, 40]), np.array([120, 20, 90])
        img = top * (1 - t) + bottom * t
    elif group == "purple_noise":
        base = np.array([150, 60, 190]) + rng.uniform(-15, 15, 3)
        img = np.broadcast_to(base, (h, w, 3)) + _noise(rng, h, w, 45)
    else:
        raise ValueError(f"unknown group {group!r}")
    img = np.clip(img + _noise(rng, h, w, 8), 0, 255).astype(np.uint8)
    picture = Image.fromarray(img)
    if group == "green_disc":  # a small highlight so the disc reads as an object, not a flat shape
        draw = ImageDraw.Draw(picture)
        r = min(h, w) * 0.05
        draw.ellipse([w * 0.45 - r, h * 0.42 - r, w * 0.45 + r, h * 0.42 + r], fill=(200, 255, 200))
    return picture


def generate_sample_set(folder, per_group: int = 24, groups=GROUPS, seed: int = 0, start_index: int = 0,
                        quality: int = 90) -> list[Path]:
    """Write `per_group` JPEGs for each group under folder/<group>/; returns the paths (sorted).

    The same (seed, start_index) always gives the same bytes; a different start_index gives new
    images of the same groups (held-out sets for predict).
    """
    folder = Path(folder)
    written = []
    for g_index, group in enumerate(groups):
        sub = folder / group
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(start_index, start_index + per_group):
            rng = np.random.default_rng([seed, g_index, i])
            path = sub / f"{group}_{i:03d}.jpg"
            render(group, rng).save(path, "JPEG", quality=quality)
            written.append(path)
    return sorted(written)


def sample_set_files(folder, groups=GROUPS) -> list[Path]:
    """The files generate_sample_set wrote under `folder` (folder/<group>/<group>_NNN.jpg), to
    delete before writing a new set, so that a smaller set does not keep an older one's images.

    Raises ConfigError when `folder` holds any other image file (anywhere below it): it would be
    clustered with the sample set, and it is not the demo's to delete. Other files are ignored.
    """
    folder = Path(folder)
    ours, others = [], []
    for root, _dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder).parts
        group = rel[0] if len(rel) == 1 and rel[0] in groups else None
        for name in files:
            if group is not None and re.fullmatch(rf"{re.escape(group)}_\d{{3,}}\.jpg", name):
                ours.append(Path(root) / name)
            elif has_image_extension(name):
                others.append(Path(root) / name)
    if others:
        raise ConfigError(f"{folder} holds {len(others)} image file(s) the demo did not generate (e.g. "
                          f"{sorted(others)[0]}): it is the demo's own folder, rewritten on every run; "
                          "move them out or give the demo another --out")
    return sorted(ours)
