"""Version strings recorded in summary.json and model files."""
from __future__ import annotations

import platform
from importlib import metadata


def imgcluster_version() -> str:
    try:
        return metadata.version("imgcluster")
    except metadata.PackageNotFoundError:
        return "0.1.0+source"


def versions() -> dict[str, str]:
    out = {"imgcluster": imgcluster_version(), "python": platform.python_version()}
    for dist in ("torch", "torchvision", "numpy", "scikit-learn", "pillow", "pillow-heif", "nvidia-dali-cuda130", "cuml-cu13", "triton"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
