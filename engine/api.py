"""The Python API, scikit-learn style.

    from engine import ImageClusterer
    clusterer = ImageClusterer(model="pixels", k="2:10").fit(["photos/"])
    clusterer.labels_, clusterer.k_, clusterer.scores_
    clusterer.predict(["new/a.jpg"])
    clusterer.save("photos.imgc"); ImageClusterer.load("photos.imgc").predict(["new/"])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import Config
from .errors import ConfigError
from .model import FittedModel, ModelState
from .pipeline import RunResult, run_pipeline
from .progress import Reporter
from .sources import discover

_PARAMS = Config.parameter_names()


class ImageClusterer:
    """Cluster image files: backbone features -> PCA -> KMeans over K -> best K by silhouette.

    Parameters (all keyword; validated in fit): see engine.config — model, weights, device,
    decoder, precision, compile, batch_size, num_threads, io_threads, max_pixels, pca, pca_fit_limit, k,
    n_init, max_iter, cluster_backend, select, silhouette_sample, seed.

    Fitted attributes: labels_ (n,) int64, k_, scores_ (list of per-K dicts), paths_ (n good
    image paths, input order), skipped_ [(path, reason)], cluster_centers_ (k, n_components)
    float32, result_ (the full engine.pipeline.RunResult), model_ (engine.model.FittedModel: the
    predictor; save() writes it to one file, ImageClusterer.load reads it back).
    """

    def __init__(self, **params):
        unknown = set(params) - set(_PARAMS)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {sorted(unknown)}; known: {', '.join(sorted(_PARAMS))}")
        defaults = Config().flat()
        for name in _PARAMS:
            setattr(self, name, params.get(name, defaults[name]))

    # scikit-learn estimator protocol
    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params) -> "ImageClusterer":
        for name, value in params.items():
            if name not in _PARAMS:
                raise ConfigError(f"unknown parameter {name!r}")
            setattr(self, name, value)
        return self

    def _config(self) -> Config:
        # k: "2:20", 11, [3, 5, 8] (explicit values) or (2, 20) (a range); see config.parse_k
        return Config.from_kwargs(**self.get_params())

    def fit(self, paths: Sequence[str | os.PathLike] | str | os.PathLike, y=None, *, out_dir=None,
            reporter: Reporter | None = None, save_features: bool = False, report: bool = False,
            cache: bool = True) -> "ImageClusterer":
        """paths: folders, files, @lists or globs. With out_dir, the run's files are written there."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
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
        if getattr(self, "_model", None) is None and not hasattr(self, "result_"):
            raise ConfigError("this ImageClusterer is not fitted yet: call fit(paths) first (or ImageClusterer.load(path))")

    @property
    def model_(self) -> FittedModel:
        """The fitted model (engine.model.FittedModel): predict_bytes / predict_arrays / predict_tensors /
        predict_paths with distances and confidences, and save(). Built on first use from result_."""
        self._check_fitted()
        if getattr(self, "_model", None) is None:
            self._model = FittedModel.from_result(self.result_)
        return self._model

    def predict(self, paths) -> np.ndarray:
        """Assign new images to the fitted clusters: (m,) int64 labels, one per image found in `paths`
        (input order); an image that cannot be decoded gets -1. Same code path as
        engine.model.FittedModel.predict_paths (model_ has distances and confidences too)."""
        self._check_fitted()
        found = discover(paths if not isinstance(paths, (str, os.PathLike)) else [paths])
        return self.model_.predict_paths(found.paths).labels

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to ONE file (safetensors arrays + JSON metadata, no pickle; see
        engine.model), atomically. Load it with ImageClusterer.load or engine.load_model."""
        self._check_fitted()
        if getattr(self, "_model", None) is None:  # no backbone needed just to write the file
            return ModelState.from_result(self.result_).save(path)
        return self._model.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", weights: str | os.PathLike | None = None,
             allow_fingerprint_mismatch: bool = False, **options) -> "ImageClusterer":
        """A fitted ImageClusterer from a model file (see engine.model.load_model for the checks and
        `options`). It has model_, k_, scores_, cluster_centers_, pca_ and backbone_, and predicts;
        the training images' labels_/paths_ are not stored in the file."""
        from .model import load_model

        model = load_model(path, device=device, weights=weights,
                           allow_fingerprint_mismatch=allow_fingerprint_mismatch, **options)
        params = {name: value for name, value in model.state.config.items() if name in _PARAMS}
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


def cluster_images(paths, out_dir=None, **config) -> RunResult:
    """One call: cluster the images under `paths` and return the RunResult (labels, k, scores, ...)."""
    clusterer = ImageClusterer(**config).fit(paths, out_dir=out_dir)
    return clusterer.result_
