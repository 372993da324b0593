"""imgcluster: cluster large unlabeled image collections (ResNet features -> PCA -> KMeans -> silhouette).

Public API: ImageClusterer, cluster_images, load_model, export_clusters. Heavy modules import lazily so that
`import engine` is cheap and creates no CUDA context.
"""
from __future__ import annotations

__all__ = ["ImageClusterer", "cluster_images", "load_model", "export_clusters", "__version__"]


def __getattr__(name):
    if name in ("ImageClusterer", "cluster_images"):
        from . import api

        return getattr(api, name)
    # these two are the CLI's too: the Python-terms wrapper is added here, for API callers only
    if name == "load_model":
        from .api_wording import python_errors
        from .model import load_model

        return python_errors(load_model)
    if name == "export_clusters":
        from .api_wording import python_errors
        from .export import export_clusters

        return python_errors(export_clusters)
    if name == "__version__":
        from .versions import imgcluster_version

        return imgcluster_version()
    raise AttributeError(name)
