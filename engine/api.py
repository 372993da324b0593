"""The Python API, scikit-learn style.

    from engine import ImageClusterer
    clusterer = ImageClusterer(model="pixels", k="2:10").fit(["photos/"])
    clusterer.labels_, clusterer.k_, clusterer.scores_
    clusterer.predict(["new/a.jpg"])
    clusterer.save("photos.imgc"); ImageClusterer.load("photos.imgc").predict(["new/"])
"""
from __future__ import annotations

import glob
import inspect
import os
import threading
import warnings
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np

from sklearn.base import BaseEstimator, ClusterMixin

from .backbones import DEFAULT_MODEL
from .config import DEFAULT_K, DEFAULT_PCA, DEFAULT_PCA_FIT_LIMIT, Config
from .errors import ConfigError, NotFittedError
from .loaders.decode import DEFAULT_MAX_PIXELS
from .model import FittedModel, ModelState
from .pathlist import PathList
from .api_wording import python_errors
from .pipeline import RunResult, run_pipeline
from .progress import Reporter
from .sources import discover

_PARAMS = Config.parameter_names()


class ImageClusterer(ClusterMixin, BaseEstimator):
    """Cluster image files: backbone features -> PCA -> KMeans over K -> best K by silhouette.

    A scikit-learn estimator: get_params/set_params, sklearn.base.clone and
    sklearn.utils.validation.check_is_fitted work. Parameters are stored as given and validated
    (type and range, see engine.config) when fit runs.

    Parameters
        include_hidden: also take hidden folders and files and NAS/OS system folders (Synology's
            @eaDir thumbnails, recycle bins...), which folder walks leave out by default.
        model, weights: backbone name (resnet152, resnet50, ..., pixels) and its weights
            ("auto": ImageNet from torchvision's cache or download; "random"; or a state-dict file).
        device ("auto" | "cpu" | "cuda" | "cuda:N"), decoder ("auto" | "dali" | "nvjpeg" | "nvimgcodec" | "pil"),
        precision ("auto" | "fp32" | "bf16" | "fp16"), compile (torch.compile the backbone),
        cuda_graphs (replay the backbone from CUDA graphs; CUDA only).
        batch_size, num_threads, io_threads: None chooses from the device.
        max_pixels: larger images are skipped (decompression-bomb guard); None: no limit.
        pca: components (int), a variance fraction in (0, 1], or 0 for off.
        pca_fit_limit: above this many images PCA is fitted on a seeded sample.
        k: "2:20", 11, "3,5,8", [3, 5, 8] (values) or (2, 20) (a range).
        n_init, max_iter, cluster_backend ("auto" | "torch" | "cuml" | "sklearn"),
        select ("silhouette" | "calinski" | "davies"), silhouette_sample (None: exact up to the
        device's limit), seed.

    Fitted attributes: labels_ (n,) int64, k_, scores_ (list of per-K dicts), paths_ (n good
    image paths, input order: a read-only sequence of pathlib.Path, an engine.pathlist.PathList,
    ~70 bytes a path instead of ~320 for a list of Path; list(paths_) gives a list), skipped_
    [(path, reason)], cluster_centers_ (k, n_components) float32, result_ (the full
    engine.pipeline.RunResult), model_ (engine.model.FittedModel: the predictor; save() writes it
    to one file, ImageClusterer.load reads it back).
    """

    # The defaults are engine.config's (a test holds them equal); keyword-only, as in scikit-learn.
    def __init__(self, *, include_hidden: bool = False, model: str = DEFAULT_MODEL, weights: str = "auto", device: str = "auto",
                 decoder: str = "auto", precision: str = "auto", compile: bool = False,
                 cuda_graphs: bool = False, batch_size: int | None = None, num_threads: int | None = None,
                 io_threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 pca: float | int = DEFAULT_PCA, pca_fit_limit: int | None = DEFAULT_PCA_FIT_LIMIT,
                 k=DEFAULT_K, n_init: int = 3, max_iter: int = 100, cluster_backend: str = "auto",
                 select: str = "silhouette", silhouette_sample: int | None = None, seed: int = 0):
        self.include_hidden = include_hidden
        self.model = model
        self.weights = weights
        self.device = device
        self.decoder = decoder
        self.precision = precision
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.io_threads = io_threads
        self.max_pixels = max_pixels
        self.pca = pca
        self.pca_fit_limit = pca_fit_limit
        self.k = k
        self.n_init = n_init
        self.max_iter = max_iter
        self.cluster_backend = cluster_backend
        self.select = select
        self.silhouette_sample = silhouette_sample
        self.seed = seed

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        """ImageClusterer(model='pixels', k='2:8'): the parameters that differ from the defaults,
        in signature order (scikit-learn's repr sorts them)."""
        changed = [f"{name}={getattr(self, name)!r}" for name, default in _signature_defaults().items()
                   if not _same(getattr(self, name), default)]
        return f"{type(self).__name__}({', '.join(changed)})"

    def set_params(self, **params) -> "ImageClusterer":
        """scikit-learn's set_params; an unknown name is a ConfigError (a ValueError, as there).

        As in scikit-learn, the new values are for the next fit: a fitted or loaded clusterer's
        predictor (model_) keeps the batch size, max_pixels, decoder... it was built with, and
        says so in a warning; ImageClusterer.load(path, **options) builds one with others."""
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(_PARAMS))}")
        if self.__sklearn_is_fitted__():
            current = self.get_params()
            changed = sorted(name for name, value in params.items() if not _same(value, current[name]))
            if changed:
                warnings.warn(f"set_params({', '.join(changed)}) changes the next fit, not this fitted model's "
                              "predictor (model_); load the model again with the new options", stacklevel=2)
        return super().set_params(**params)

    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, "_model", None) is not None or hasattr(self, "result_")

    def _config(self) -> Config:
        # k: "2:20", 11, [3, 5, 8] (explicit values) or (2, 20) (a range); see config.parse_k
        return Config.from_kwargs(**self.get_params())

    @python_errors
    def fit(self, paths: Sequence[str | os.PathLike] | str | os.PathLike, y=None, *, out_dir=None,
            reporter: Reporter | None = None, save_features: bool = False, report: bool = False,
            cache: bool = True) -> "ImageClusterer":
        """paths: folders, files, @lists or globs. With out_dir, the run's files are written there."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if out_dir is None and (report or save_features):
            raise ConfigError("report=True and save_features=True write into out_dir: pass out_dir=FOLDER")
        config = self._config()
        result = run_pipeline(list(paths), config, out_dir=out_dir, reporter=reporter,
                              save_features=save_features, report=report, cache=cache)
        self._set_fitted(result)
        return self

    def _set_fitted(self, result: RunResult) -> None:
        self.result_ = result
        self.labels_ = result.labels
        self.k_ = result.k
        self.scores_ = result.search.scores_table()
        self.paths_ = result.paths
        self.skipped_ = result.skipped
        self.cluster_centers_ = result.centroids.float().cpu().numpy()
        self.pca_ = result.pca
        self.backbone_ = result.backbone
        self._model = None  # the predictor (model_), built on first use

    def fit_predict(self, paths, y=None, **kwargs) -> np.ndarray:
        return self.fit(paths, **kwargs).labels_

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this ImageClusterer is not fitted yet: call fit(paths) first (or ImageClusterer.load(path))")

    @property
    def model_(self) -> FittedModel:
        """The fitted model (engine.model.FittedModel): predict_bytes / predict_arrays / predict_tensors /
        predict_paths with distances and confidences, and save(). Built on first use from result_
        (once, under a lock: concurrent first requests share one model and its device lock)."""
        self._check_fitted()
        if getattr(self, "_model", None) is None:
            with _MODEL_BUILD_LOCK:
                if getattr(self, "_model", None) is None:
                    self._model = FittedModel.from_result(self.result_)
        return self._model

    def close(self) -> None:
        """Stop the predictor's decode threads (model_.close()); the clusterer still predicts
        afterwards (a new pool starts on demand). Also `with ImageClusterer.load(path) as c: ...`."""
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()

    def __enter__(self) -> "ImageClusterer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # the predictor holds a thread pool and locks: pickle the fitted results, rebuild it on use
        state = dict(self.__dict__)
        if "result_" in state:
            state["_model"] = None
        return state

    @python_errors
    def predict(self, paths) -> np.ndarray:
        """Assign new images to the fitted clusters: (m,) int64 labels in input order. A file given
        by name gets exactly one label (-1 when it is missing or cannot be decoded), so the labels
        line up with a list of files; a folder, glob or @list contributes one label per image it
        holds (prediction_paths(paths) lists them). Same code path as
        engine.model.FittedModel.predict_paths (model_ has distances, confidences and the reasons for -1)."""
        self._check_fitted()
        return self.model_.predict_paths(self.prediction_paths(paths, self.include_hidden)).labels

    @python_errors
    def predict_bytes(self, blobs) -> np.ndarray:
        """Encoded images (a list of bytes: JPEG, PNG, WebP, ...) -> (n,) int64 labels, -1 for one
        that cannot be decoded (model_.predict_bytes gives distances, confidences and reasons)."""
        self._check_fitted()
        return self.model_.predict_bytes(blobs).labels

    @python_errors
    def predict_arrays(self, arrays) -> np.ndarray:
        """uint8 arrays ((H, W, 3) RGB, (H, W) grayscale, (H, W, 4) RGBA) -> (n,) int64 labels, -1
        for one of another dtype or shape (model_.predict_arrays gives the reasons)."""
        self._check_fitted()
        return self.model_.predict_arrays(arrays).labels

    @staticmethod
    @python_errors
    def prediction_paths(paths, include_hidden: bool = False) -> Sequence[Path]:
        """The files predict(paths) labels, in its order (see predict): a sequence of Path, as a
        PathList (~70 bytes a path: engine.pathlist) unless a name cannot be a file's ('\\ud800').
        include_hidden: as the parameter of that name (predict passes the clusterer's)."""
        return _prediction_paths(paths, include_hidden)

    @python_errors
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to ONE file (safetensors arrays + JSON metadata, no pickle; see
        engine.model_file), atomically. Load it with ImageClusterer.load or engine.load_model."""
        self._check_fitted()
        if getattr(self, "_model", None) is None:  # no backbone needed just to write the file
            return ModelState.from_result(self.result_).save(path)
        return self._model.save(path)

    @classmethod
    @python_errors
    def load(cls, path: str | os.PathLike, device: str = "auto", weights: str | os.PathLike | None = None,
             allow_fingerprint_mismatch: bool = False, **options) -> "ImageClusterer":
        """A fitted ImageClusterer from a model file (see engine.model.load_model for the checks and
        `options`). It has model_, k_, scores_, cluster_centers_, pca_ and backbone_, and predicts;
        the training images' labels_/paths_ are not stored in the file."""
        from .model import load_model

        model = load_model(path, device=device, weights=weights,
                           allow_fingerprint_mismatch=allow_fingerprint_mismatch, **options)
        params = {name: value for name, value in model.state.config.items() if name in _PARAMS}
        # the predictor's options (max_pixels, batch_size, decoder, ...) are this load's, given or
        # load_model's defaults, not the fit's: get_params() describes the model that predicts
        loaded_with = {name: p.default for name, p in inspect.signature(load_model).parameters.items()
                       if p.kind is inspect.Parameter.KEYWORD_ONLY}
        loaded_with.update(options)
        params.update({name: value for name, value in loaded_with.items() if name in _PARAMS})
        params["device"] = device
        if weights is not None:
            params["weights"] = os.fspath(weights)
        clusterer = cls(**params)
        clusterer._set_loaded(model)
        return clusterer

    def _set_loaded(self, model) -> None:
        self._model = model
        self.k_ = model.k
        self.scores_ = model.state.scores
        self.cluster_centers_ = model.state.centroids.float().numpy().copy()
        self.pca_ = model.pca
        self.backbone_ = model.backbone


_MODEL_BUILD_LOCK = threading.Lock()


def _signature_defaults() -> dict:
    return {name: p.default for name, p in inspect.signature(ImageClusterer.__init__).parameters.items()
            if name != "self"}


def _same(value, default) -> bool:
    """A parameter equal to its default ("2:20" and (2, 20) are not compared as equal: shown)."""
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - arrays and odd objects: show them
        return False


def _prediction_paths(inputs, include_hidden: bool = False) -> PathList | list[Path]:
    """The files `ImageClusterer.predict` labels, in order: a named file (existing or not) as
    itself, a folder, glob or @list expanded as `run` does. TypeError for things that are not
    paths (encoded bytes, arrays, images), which have their own FittedModel methods.

    A PathList (no Path per image: discover's own for one folder, glob or @list), or a list of
    Path when a named file's str cannot be a file name at all ('\\ud800': not encodable), which
    predict then labels -1 as any missing file."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    elif isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    pieces: list[PathList | list[str]] = []  # discovered PathLists, and runs of named files between them
    encodable = True

    def named(text: str) -> None:
        nonlocal encodable
        if not pieces or isinstance(pieces[-1], PathList):
            pieces.append([])
        pieces[-1].append(text)
        if encodable:
            try:
                os.fsencode(text)
            except UnicodeEncodeError:
                encodable = False

    for item in inputs:
        if isinstance(item, bytes) and b"\0" in item or not isinstance(item, (str, bytes, os.PathLike)):
            raise TypeError(f"predict takes paths, got {type(item).__name__}: for encoded images use "
                            "model_.predict_bytes, for arrays or PIL images model_.predict_arrays")
        text = os.fsdecode(item)
        if os.path.lexists(text) and not os.path.isdir(text):
            named(text)  # a file, even one named like a glob or an @list
        elif text.startswith("@") or os.path.isdir(text) or glob.glob(text):
            pieces.append(discover([item], include_hidden=include_hidden).paths)
        else:
            named(text)
    if not encodable:
        return [Path(p) for piece in pieces for p in piece]
    if len(pieces) == 1 and isinstance(pieces[0], PathList):
        return pieces[0]
    return PathList.from_strings(chain.from_iterable(
        piece.strings() if isinstance(piece, PathList) else piece for piece in pieces))


@python_errors
def cluster_images(paths, out_dir=None, **config) -> RunResult:
    """One call: cluster the images under `paths` and return the RunResult (labels, k, scores, ...)."""
    clusterer = ImageClusterer(**config).fit(paths, out_dir=out_dir)
    return clusterer.result_
