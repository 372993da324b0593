"""Fitted models you can ship: save/load one safetensors file, assign new images to the clusters.

    from engine import load_model
    model = load_model("photos.imgc", device="cuda")      # backbone stays resident
    result = model.predict_bytes([jpeg_bytes, png_bytes])  # labels, distances, confidences, errors

The file format is engine.model_file's docstring.

Prediction: features from the recorded backbone -> PCA -> squared distances to the centroids
(fp32) -> nearest centroid. distance = Euclidean distance to it; confidence = 1 - d1/d2 with d1, d2
the nearest and second-nearest centroid distances (silhouette-style, in [0, 1]; 0 on a boundary).
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .backbones import Backbone, load_backbone
from .errors import ConfigError, DecodeError, InputError, ModelFileError, WeightsUnavailable
from .features import OOMBackoff, auto_batch_size
from .loaders.decode import DEFAULT_MAX_PIXELS, load_and_preprocess, preprocess_pil
from .loaders.preprocess import CROP, describe as describe_preprocess, normalize_uint8
from .model_file import FORMAT_VERSION, ModelState, read_model_file
from .pathlist import PathList

# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class Prediction:
    """Per-item results of one predict call (n items, in request order).

    labels:      (n,) int64 cluster ids; -1 where the item failed
    distances:   (n,) float32 Euclidean distance to the assigned centroid (PCA space); NaN where failed
    confidences: (n,) float32 in [0, 1], 1 - d1/d2 (nearest / second-nearest centroid); NaN where failed
    errors:      n entries: None, or a one-line reason why the item failed
    """

    labels: np.ndarray
    distances: np.ndarray
    confidences: np.ndarray
    errors: list[str | None]

    @classmethod
    def empty(cls, n: int) -> "Prediction":
        return cls(np.full(n, -1, dtype=np.int64), np.full(n, np.nan, dtype=np.float32),
                   np.full(n, np.nan, dtype=np.float32), [None] * n)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def ok(self) -> np.ndarray:
        """(n,) bool: items that got a label."""
        return self.labels >= 0

    def to_dict(self) -> dict[str, list]:
        """JSON-able lists; failed items have null distance/confidence."""
        def floats(a):
            return [None if not math.isfinite(v) else float(v) for v in a.tolist()]
        return {"labels": self.labels.tolist(), "distances": floats(self.distances),
                "confidences": floats(self.confidences), "errors": list(self.errors)}


# ----------------------------------------------------------------------------------------------
# The predictor


class FittedModel:
    """A fitted clustering with its backbone resident: assigns new images to the clusters.

    Thread-safe: any number of threads may call the predict_* methods at once. Decoding runs in a
    small shared thread pool; the backbone forward and the centroid assignment run under one lock
    (one batch at a time on the device, and the OOM back-off state is shared). Nothing grows
    between calls: no caches, no per-call model reloads.

    Attributes: state (ModelState), backbone (engine.backbones.Backbone), device, decoder (for
    predict_paths), batch_size (largest micro-batch one forward sees), k, centroids (k, n_components)
    float32 on the device.
    """

    def __init__(self, state: ModelState, backbone: Backbone, decoder: str = "pil", batch_size: int | None = None,
                 num_threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 io_threads: int | None = None):
        self.state = state
        if getattr(backbone, "cuda_graphs", False):
            # a run's graphed backbone, reused: requests come in every size, and a graph per size
            # (captured, evicted, captured again) would cost more than the launches it saves
            backbone = dataclasses.replace(backbone, cuda_graphs=False)
        self.backbone = backbone
        self.device = backbone.device
        self.decoder = decoder
        self.max_pixels = max_pixels
        self.num_threads = num_threads
        self.io_threads = io_threads  # the GPU decoders' file-reading threads (loaders/frontend.py)
        self.batch_size = batch_size or auto_batch_size(self.device, backbone.name)
        self.pca = state.pca_result(self.device)
        self.centroids = state.centroids.to(self.device).float()
        self._c_sq = (self.centroids * self.centroids).sum(1)
        self._runner = OOMBackoff(backbone, self.batch_size)
        self._lock = threading.Lock()  # one forward at a time; guards the OOM back-off state
        self._pool_lock = threading.Lock()  # lazy creation of the decode pool (not behind a forward)
        self._pool: ThreadPoolExecutor | None = None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_result(cls, result) -> "FittedModel":
        """The model of a finished run (engine.pipeline.RunResult), reusing its resident backbone.
        A run re-clustered from cached features has only a record of its backbone: the backbone is
        then loaded from the recorded weights and its fingerprint checked, as load_model does."""
        fc = result.config.features
        state = ModelState.from_result(result)
        backbone, decoder = result.backbone, result.backends.decoder
        if not isinstance(backbone, Backbone):
            from .device import resolve_decoder

            backbone = _checked_backbone(state, result.backends.device, None, False, "this run",
                                         precision=fc.precision, compile=fc.compile)
            decoder = resolve_decoder(fc.decoder, backbone.device)
        return cls(state, backbone, decoder=decoder, batch_size=fc.batch_size, num_threads=fc.num_threads,
                   max_pixels=fc.max_pixels, io_threads=fc.io_threads)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file (see the module docstring); atomic."""
        return self.state.save(path)

    @property
    def k(self) -> int:
        return self.state.k

    def __repr__(self) -> str:
        return (f"FittedModel(k={self.k}, backbone={self.backbone.name} ({self.backbone.weights}), "
                f"pca={self.state.pca['mode']}:{self.state.n_components}, device={self.device})")

    def __getstate__(self) -> dict:
        # locks and the thread pool are per process: dropped here, made again on unpickling
        state = dict(self.__dict__)
        for name in ("_lock", "_pool_lock", "_pool"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pool = None

    def close(self) -> None:
        """Stop the decode thread pool once no request is running (a later call starts a new one)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> "FittedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the one assignment path ---------------------------------------------------------------
    def _predict_normalized(self, images: torch.Tensor) -> Prediction:
        """images: (n, 3, CROP, CROP) normalized float on any device -> Prediction (n items).

        An item whose features are not finite (a half-precision overflow) fails alone.
        """
        n = images.shape[0]
        out = Prediction.empty(n)
        if n == 0:
            return out
        with self._lock:
            feats = self._runner(images.to(self.device, non_blocking=True))  # (n, dim) float32
            reduced = self.pca.transform(feats)  # (n, n_components) float32
            # ||x||^2 - 2 x.c + ||c||^2 exactly as KMeans assigned the training images (engine.cluster)
            d2 = ((reduced * reduced).sum(1)[:, None] - 2.0 * (reduced @ self.centroids.T)
                  + self._c_sq[None, :]).clamp_min_(0)
            labels = d2.argmin(1)
            two = d2.topk(2, dim=1, largest=False).values.sqrt()  # (n, 2): nearest, second nearest
            d1, d2nd = two[:, 0], two[:, 1]
            conf = torch.where(d2nd > 0, 1.0 - d1 / d2nd.clamp_min(1e-30), torch.zeros_like(d1)).clamp_(0, 1)
            finite = torch.isfinite(feats).all(1) & torch.isfinite(d1)
            labels, d1, conf, finite = (t.cpu().numpy() for t in (labels, d1, conf, finite))
        out.labels[finite] = labels[finite]
        out.distances[finite] = d1[finite]
        out.confidences[finite] = conf[finite]
        half = getattr(self.backbone, "precision", "fp32") != "fp32"
        reason = ("non-finite features (the backbone overflowed in " + self.backbone.precision
                  + "; load the model with precision='fp32')" if half
                  else "non-finite features (NaN or inf in the input, or in the weights)")
        for i in np.flatnonzero(~finite):
            out.errors[i] = reason
        return out

    def _predict_uint8(self, items: list[tuple[np.ndarray | None, str | None]]) -> Prediction:
        """items: per request item, (uint8 (3, CROP, CROP), None) or (None, reason)."""
        n = len(items)
        good = [i for i, (arr, _) in enumerate(items) if arr is not None]
        if good:
            batch = torch.from_numpy(np.stack([items[i][0] for i in good]))
            if self.device.type == "cuda":  # upload uint8 (4x fewer bytes), normalize on the GPU in fp16
                batch = normalize_uint8(batch.pin_memory().to(self.device, non_blocking=True), torch.float16)
            else:
                batch = normalize_uint8(batch, torch.float32)
            part = self._predict_normalized(batch)
        out = Prediction.empty(n)
        for i, (_, reason) in enumerate(items):
            out.errors[i] = reason
        if good:
            idx = np.asarray(good, dtype=np.int64)
            out.labels[idx], out.distances[idx], out.confidences[idx] = part.labels, part.distances, part.confidences
            for j, i in enumerate(good):
                out.errors[i] = part.errors[j]
        return out

    def _map(self, fn: Callable[[Any], tuple], items: Sequence) -> list[tuple]:
        if len(items) <= 1:  # no pool hop for single-image requests (latency)
            return [fn(x) for x in items]
        while True:
            with self._pool_lock:
                if self._pool is None:
                    workers = self.num_threads or min(8, os.cpu_count() or 1)
                    self._pool = ThreadPoolExecutor(workers, thread_name_prefix="imgcluster-predict")
                pool = self._pool
            try:
                futures = [pool.submit(fn, x) for x in items]
            except RuntimeError:
                with self._pool_lock:
                    if self._pool is pool:  # not close(): interpreter shutdown, no threads left, ...
                        raise
                continue  # close() shut this pool down after we took it: a new one serves us
            return [f.result() for f in futures]

    # -- public predict API --------------------------------------------------------------------
    def predict_tensors(self, images: torch.Tensor) -> Prediction:
        """images: (n, 3, 224, 224) ImageNet-normalized float (engine.loaders.preprocess.normalize_uint8),
        any float dtype, on any device (moved to the model's device) -> Prediction with n items."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, CROP, CROP):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"predict_tensors expects a (n, 3, {CROP}, {CROP}) normalized float tensor, got {shape}")
        if not images.is_floating_point():
            raise ConfigError(f"predict_tensors expects a float tensor (normalized), got {images.dtype}; "
                              "use predict_arrays for uint8 pixels")
        return self._predict_normalized(images)

    def predict_arrays(self, arrays: Sequence[np.ndarray]) -> Prediction:
        """arrays: n uint8 images (any H, W): (H, W, 3) RGB, (H, W) or (H, W, 1) grayscale, (H, W, 4)
        RGBA (alpha on white, as for files) -> Prediction with n items. Each is resized and
        center-cropped like training; an item of another dtype or shape fails alone."""
        if isinstance(arrays, np.ndarray) and arrays.ndim in (2, 3):  # one image: list() would split its rows
            raise TypeError("predict_arrays takes a list of images: predict_arrays([image])")
        return self._predict_in_chunks(self._prepare_array, list(arrays))

    def predict_bytes(self, blobs: Sequence[bytes]) -> Prediction:
        """blobs: n encoded images (JPEG, PNG, WebP, BMP, TIFF, GIF bytes) -> Prediction with n items.
        Decoded on the CPU in the model's thread pool; an undecodable item fails alone."""
        if isinstance(blobs, (bytes, bytearray, memoryview)):  # one image, not a list of byte values
            raise TypeError("predict_bytes takes a list of encoded images: predict_bytes([data])")
        return self._predict_in_chunks(self._prepare_bytes, list(blobs))

    def _predict_in_chunks(self, prepare: Callable[[Any], tuple], items: list) -> Prediction:
        """prepare (in the pool) and predict `items` batch_size at a time: a request's memory is
        one batch of decoded pixels, not all of them (3,000 tiny images held 4 GB), and other
        callers' forwards can run between its batches instead of after the whole request."""
        step = max(1, self.batch_size)
        if len(items) <= step:
            return self._predict_uint8(self._map(prepare, items))
        out = Prediction.empty(len(items))
        for start in range(0, len(items), step):
            part = self._predict_uint8(self._map(prepare, items[start:start + step]))
            stop = start + len(part)
            out.labels[start:stop], out.distances[start:stop] = part.labels, part.distances
            out.confidences[start:stop] = part.confidences
            out.errors[start:stop] = part.errors
        return out

    def predict_paths(self, paths: Sequence[str | os.PathLike], progress: Callable[[int], None] | None = None
                      ) -> Prediction:
        """Image files (exact paths, not folders) -> Prediction, one item per path, decoded with the
        model's decoder through the same loaders as `imgcluster run`. progress(n) after each batch."""
        from .loaders import make_loader

        if isinstance(paths, (str, bytes, os.PathLike)):  # one path, not a list of its characters
            raise TypeError("predict_paths takes a list of paths: predict_paths([path])")
        if not isinstance(paths, PathList):  # a PathList already gives Paths, without one per image up front
            paths = [Path(p) for p in paths]
        out = Prediction.empty(len(paths))
        loader = make_loader(self.decoder, self.device, max_pixels=self.max_pixels, num_threads=self.num_threads,
                             io_threads=self.io_threads)
        for batch in loader.batches(paths, self.batch_size):
            for i, reason in batch.failures:
                out.errors[i] = reason
            if len(batch.indices):
                part = self._predict_normalized(batch.images)
                idx = batch.indices
                out.labels[idx], out.distances[idx], out.confidences[idx] = part.labels, part.distances, part.confidences
                for j, i in enumerate(idx.tolist()):
                    out.errors[i] = part.errors[j]
            if progress:
                progress(len(batch.indices) + len(batch.failures))
        return out

    # -- per-item preparation (runs in the pool; no shared state) -----------------------------
    def _prepare_bytes(self, blob) -> tuple[np.ndarray | None, str | None]:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            # never treat a str as a file path: request data must not open files on the server
            return None, f"expected encoded image bytes, got {type(blob).__name__}"
        try:
            return load_and_preprocess(bytes(blob), self.max_pixels), None
        except DecodeError as exc:
            return None, str(exc)
        except Exception as exc:  # defensive: one item must never fail the batch
            return None, f"could not decode: {type(exc).__name__}"

    def _prepare_array(self, array) -> tuple[np.ndarray | None, str | None]:
        """uint8 (H, W) or (H, W, 1) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA -> the model's
        input, converted as image files of those kinds are (alpha composited on white)."""
        from PIL import Image

        from .loaders.decode import _to_rgb

        arr = given = np.asarray(array) if not isinstance(array, np.ndarray) else array
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        mode = None  # a PIL mode for the shapes taken
        if arr.ndim == 2:
            mode = "L"
        elif arr.ndim == 3:
            mode = {3: "RGB", 4: "RGBA"}.get(arr.shape[2])
        if arr.dtype != np.uint8 or mode is None or min(arr.shape[:2]) < 1:
            return None, (f"expected a uint8 (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA array, got "
                          f"{given.dtype} {tuple(given.shape)}")
        if self.max_pixels is not None and arr.shape[0] * arr.shape[1] > self.max_pixels:
            return None, f"too large: {arr.shape[1]}x{arr.shape[0]} exceeds max_pixels={self.max_pixels}"
        try:
            return preprocess_pil(_to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode))), None
        except Exception as exc:
            return None, f"could not resize: {type(exc).__name__}"


# ----------------------------------------------------------------------------------------------
# Loading


def _weights_argument(state: ModelState, override, path) -> tuple[str, int]:
    """(weights argument for load_backbone, seed) from the recorded spec or the override."""
    spec = state.backbone.get("weights") or {}
    # `is not None`, not `or`: seed 0 is a seed (a re-clustered model's config may hold another)
    seed = int(spec["seed"] if spec.get("seed") is not None else state.config.get("seed") or 0)
    if override is not None:
        return os.fspath(override), seed
    kind = spec.get("kind")
    if kind == "random":
        return "random", seed
    if kind in ("auto", "none"):
        return "auto", seed
    if kind == "path":
        recorded = spec.get("path") or ""
        if not Path(recorded).is_file():
            raise WeightsUnavailable(f"{path}: the model's weights file {recorded} is not here; pass weights=PATH "
                                     "(CLI: --weights PATH) pointing at a copy of it")
        return recorded, seed
    raise ModelFileError(f"{path}: unknown weights kind {kind!r} in the model metadata")


def _checked_backbone(state: ModelState, device: torch.device, weights, allow_mismatch: bool, source,
                      precision: str = "auto", compile: bool = False,
                      warn: Callable[[str], None] | None = None) -> Backbone:
    """Load the state's backbone (recorded weights, or `weights`) on `device` and check its
    fingerprint against the recorded one: ModelFileError on a mismatch unless allow_mismatch."""
    warn = warn or (lambda m: warnings.warn(m, stacklevel=4))
    weights_arg, seed = _weights_argument(state, weights, source)
    name = state.backbone["name"]
    # a random-weights warning at load time is noise: the user chose this model already
    backbone = load_backbone(name, weights_arg, device, seed=seed, precision=precision, compile=compile,
                             warn=lambda m: None)
    recorded = state.backbone.get("fingerprint")
    if backbone.fingerprint != recorded:
        why = ("the preprocessing differs from this imgcluster's"
               if state.preprocess != describe_preprocess() else "the weights differ")
        message = (f"{source}: backbone fingerprint mismatch ({why}): the model was fitted with {name} weights "
                   f"{state.backbone['weights'].get('description')} ({str(recorded)[:12]}), but the weights loaded "
                   f"now ({backbone.weights}) have fingerprint {backbone.fingerprint[:12]}, so features will not "
                   "match the clusters")
        if not allow_mismatch:
            raise ModelFileError(message + "; pass the original weights (--weights PATH) or allow it with "
                                 "--allow-fingerprint-mismatch")
        warn(message + " (allowed by allow_fingerprint_mismatch)")
    return backbone


def load_model(path: str | os.PathLike, device: str = "auto", weights: str | os.PathLike | None = None,
               allow_fingerprint_mismatch: bool = False, *, decoder: str = "auto", precision: str = "auto",
               batch_size: int | None = None, num_threads: int | None = None, io_threads: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, compile: bool = False,
               warn: Callable[[str], None] | None = None, notify: Callable[[str], None] | None = None) -> FittedModel:
    """Load a model file and its backbone (kept resident on `device`).

    weights: None = the weights the model records (ImageNet 'auto', the recorded file, or the
    recorded random seed); a path (or 'auto' / 'random') overrides it. The loaded backbone's
    fingerprint must equal the recorded one (same architecture, weights and preprocessing), else
    ModelFileError, unless allow_fingerprint_mismatch=True (then a warning through `warn`).
    precision 'auto' -> bf16 on CUDA and on CPUs with native bf16, else fp32. decoder: for predict_paths ('auto' picks as `run`).
    """
    from .device import resolve_decoder, resolve_device

    from .config import check_integer

    batch_size, num_threads, io_threads, max_pixels = (
        check_integer(name, value, 1, optional=True) for name, value in
        (("batch_size", batch_size), ("num_threads", num_threads), ("io_threads", io_threads),
         ("max_pixels", max_pixels)))
    state = read_model_file(path)
    dev = resolve_device(device, notify)
    resolved_decoder = resolve_decoder(decoder, dev, notify)
    backbone = _checked_backbone(state, dev, weights, allow_fingerprint_mismatch, path, precision=precision,
                                 compile=compile, warn=warn)
    return FittedModel(state, backbone, decoder=resolved_decoder, batch_size=batch_size, num_threads=num_threads,
                       max_pixels=max_pixels, io_threads=io_threads)


# ----------------------------------------------------------------------------------------------
# Files in, CSV out (what `imgcluster predict` does)


@dataclass
class PredictFilesResult:
    """paths: the images that got a cluster (CSV rows); prediction: their Prediction (all ok);
    skipped: [(path, reason)] found but unusable; out / skipped_csv: the files written."""

    paths: Sequence[Path]
    prediction: Prediction
    skipped: list[tuple[Path, str]]
    out: Path
    skipped_csv: Path


def predict_files(model: FittedModel, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                  reporter=None, include_hidden: bool | None = None) -> PredictFilesResult:
    """Discover images under `inputs` (folders, files, @lists, globs) as `run` does, assign them,
    and write `out` (CSV: path,cluster,distance,confidence; one row per assigned image, input
    order) and <out's stem>.skipped.csv (path,reason) beside it (named after `out`, so a predict
    into a run's folder never replaces the run's skipped.csv). reporter: an engine.progress.Reporter.
    include_hidden: as discover's; None: as the model was fitted (hidden and system folders are
    left out unless the fit took them)."""
    from .progress import Reporter
    from .report import outputs
    from .sources import discover, no_images_message

    out = outputs.check_out_file(out, "--out")  # before the work, not after it
    reporter = reporter or Reporter()
    if include_hidden is None:
        include_hidden = bool(model.state.config.get("include_hidden", False))
    with reporter.task("Finding images", None, transient=True) as advance:
        found = discover(list(inputs), include_hidden=include_hidden, progress=advance)
    if not found.paths:
        raise InputError(no_images_message(inputs, found))
    if found.left_out:
        reporter.notify(found.left_out.note())
    with reporter.task("Predicting", len(found.paths)) as advance:
        pred = model.predict_paths(found.paths, progress=advance)
    ok = pred.ok
    idx = np.flatnonzero(ok)
    good = found.paths.take(idx)  # a PathList sharing found.paths' bytes
    skipped = list(found.skipped) + [(found.paths[i], pred.errors[i]) for i in np.flatnonzero(~ok).tolist()]
    rows = ((outputs.path_to_text(p), int(pred.labels[i]), f"{float(pred.distances[i]):.6g}",
             f"{float(pred.confidences[i]):.6g}") for p, i in zip(good, idx))
    outputs.write_csv(out, ["path", "cluster", "distance", "confidence"], rows, check_cr=good.may_hold("\r"))
    skipped_csv = outputs.write_skipped(out.parent, skipped, name=f"{out.stem}.skipped.csv")
    part = Prediction(pred.labels[idx], pred.distances[idx], pred.confidences[idx], [None] * len(idx))
    return PredictFilesResult(good, part, skipped, out, skipped_csv)


__all__ = ["FittedModel", "ModelState", "Prediction", "PredictFilesResult", "load_model", "predict_files",
           "read_model_file", "FORMAT_VERSION"]
