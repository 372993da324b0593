"""Loaders: image files -> normalized NCHW batches. `make_loader` is the one place that maps a
decoder name (already resolved by engine.device.resolve_decoder) to its implementation."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .decode import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # torch loads with the loaders themselves, not with the package (the report's
    import torch  # thumbnails need only loaders.decode, and importing torch costs 2 s)

    from .base import Batch, Loader


def make_loader(decoder: str, device: torch.device, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                num_threads: int | None = None, io_threads: int | None = None) -> Loader:
    """decoder: 'pil' | 'dali' | 'nvjpeg' | 'nvimgcodec' (resolved, not 'auto'). io_threads: the GPU decoders'
    file-reading threads (frontend.py); the PIL loader reads in its decode threads."""
    if decoder == "pil":
        from .pil import PILLoader

        return PILLoader(device, num_threads=num_threads, max_pixels=max_pixels)
    if decoder == "dali":
        from .dali import DALILoader

        return DALILoader(device, num_threads=num_threads, max_pixels=max_pixels, io_threads=io_threads)
    if decoder == "nvjpeg":
        from .nvjpeg import NvJpegLoader

        return NvJpegLoader(device, num_threads=num_threads, max_pixels=max_pixels, io_threads=io_threads)
    if decoder == "nvimgcodec":
        from .nvimgcodec import NvImageCodecLoader

        return NvImageCodecLoader(device, num_threads=num_threads, max_pixels=max_pixels, io_threads=io_threads)
    raise ValueError(f"unknown decoder {decoder!r}")


def __getattr__(name):
    if name in ("Batch", "Loader"):
        from . import base

        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["Batch", "Loader", "make_loader"]
