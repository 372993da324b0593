"""The Python API, scikit-learn style.

    from engine import ImageClusterer
    clusterer = ImageClusterer(model="pixels", k="2:10").fit(["photos/"])
    clusterer.labels_, clusterer.k_, clusterer.scores_
    clusterer.predict(["new/a.jpg"])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .cluster import assign
from .config import Config
from .errors import ConfigError
from .features import auto_batch_size, extract_features
from .loaders import make_loader
from .pipeline import RunResult, run_pipeline
from .progress import Reporter
from .sources import discover

_PARAMS = Config.parameter_names()


class ImageClusterer:
    """Cluster image files: backbone features -> PCA -> KMeans over K -> best K by silhouette.

    Parameters (all keyword; validated in fit): see engine.config — model, weights, device,
    decoder, precision, compile, batch_size, num_threads, max_pixels, pca, pca_fit_limit, k,
    n_init, max_iter, cluster_backend, select, silhouette_sample, seed.

    Fitted attributes: labels_ (n,) int64, k_, scores_ (list of per-K dicts), paths_ (n good
    image paths, input order), skipped_ [(path, reason)], cluster_centers_ (k, n_components)
    float32, result_ (the full engine.pipeline.RunResult).
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
        params = self.get_params()
        if isinstance(params["k"], list):
            params["k"] = tuple(params["k"])
        return Config.from_kwargs(**params)

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

    def fit_predict(self, paths, y=None, **kwargs) -> np.ndarray:
        return self.fit(paths, **kwargs).labels_

    def _check_fitted(self) -> None:
        if not hasattr(self, "result_"):
            raise ConfigError("this ImageClusterer is not fitted yet: call fit(paths) first")

    def _reduce_files(self, files: list[Path]) -> tuple[np.ndarray, torch.Tensor, list[tuple[int, str]]]:
        """Image files -> (good positions (m,) int64, reduced features (m, n_components) float32 on
        the device, failures [(position, reason)])."""
        self._check_fitted()
        result = self.result_
        loader = make_loader(result.backends.decoder, result.backends.device,
                             max_pixels=result.config.features.max_pixels,
                             num_threads=result.config.features.num_threads)
        batch = result.config.features.batch_size or auto_batch_size(result.backends.device, result.backbone.name)
        extraction = extract_features(files, loader, result.backbone, batch)
        return extraction.good, result.pca.transform(extraction.features), extraction.failures

    def predict(self, paths) -> np.ndarray:
        """Assign new images to the fitted clusters: (m,) int64 labels, one per image found in `paths`
        (input order); an image that cannot be decoded gets -1."""
        self._check_fitted()
        found = discover(paths if not isinstance(paths, (str, os.PathLike)) else [paths])
        good, reduced, _ = self._reduce_files(found.paths)
        labels = np.full(len(found.paths), -1, dtype=np.int64)
        if len(good):
            labels[good] = assign(reduced, self.result_.centroids)[0].cpu().numpy()
        return labels


def cluster_images(paths, out_dir=None, **config) -> RunResult:
    """One call: cluster the images under `paths` and return the RunResult (labels, k, scores, ...)."""
    clusterer = ImageClusterer(**config).fit(paths, out_dir=out_dir)
    return clusterer.result_
