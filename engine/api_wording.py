"""Errors that reach a Python caller name the ImageClusterer parameters, not only the CLI flags.

The engine's messages are written for the command line ("Use --weights PATH ... or --weights
random"), which is where most users meet them. Raised through the Python API (ImageClusterer,
cluster_images, load_model, export_clusters), the same exception gets a short translation of
the flags it names appended: "... [in Python: weights=...]". The exception's type is unchanged.
"""
from __future__ import annotations

import functools
import re

from .errors import ImgclusterError

# CLI flag -> what a Python caller writes instead ("name=..." when the flag takes a value).
PYTHON_FORM = {
    "--out": "out_dir=...", "--weights": "weights=...", "--device": "device=...", "--decoder": "decoder=...",
    "--k": "k=...", "--pca": "pca=...", "--pca-fit-limit": "pca_fit_limit=...", "--model": "model=...",
    "--cluster-backend": "cluster_backend=...", "--precision": "precision=...", "--select": "select=...",
    "--silhouette-sample": "silhouette_sample=...", "--seed": "seed=...", "--n-init": "n_init=...",
    "--max-pixels": "max_pixels=...", "--io-threads": "io_threads=...", "--batch-size": "batch_size=...",
    "--compile": "compile=True", "--cuda-graphs": "cuda_graphs=True", "--include-hidden": "include_hidden=True",
    "--exclude-hidden": "include_hidden=False", "--save-features": "fit(..., save_features=True)",
    "--report": "fit(..., report=True)", "--no-report": "fit(..., report=False)",
    "--cache": "fit(..., cache=True)", "--no-cache": "fit(..., cache=False)",
    "--save-model": "save(path)", "--allow-fingerprint-mismatch": "allow_fingerprint_mismatch=True",
    "--to": "to=...", "--mode": "mode=...",
}
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_MARK = " [in Python: "


def in_python_terms(message: str) -> str:
    """`message` with the Python form of each known flag it names appended (once each, in order);
    unchanged when it names none or was translated already."""
    if _MARK in message:
        return message
    forms = dict.fromkeys(PYTHON_FORM[flag] for flag in _FLAG.findall(message) if flag in PYTHON_FORM)
    return f"{message}{_MARK}{', '.join(forms)}]" if forms else message


def without_python_terms(message: str) -> str:
    """`message` as the CLI prints it: without what in_python_terms appended."""
    at = message.rfind(_MARK)
    return message[:at] if at >= 0 and message.endswith("]") else message


def python_errors(function):
    """Decorator for the API's entry points: an ImgclusterError leaving `function` has its message
    put in Python terms (in_python_terms); everything else passes through untouched."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ImgclusterError as exc:
            if exc.args and isinstance(exc.args[0], str):
                exc.args = (in_python_terms(exc.args[0]), *exc.args[1:])
            raise
    return wrapper
