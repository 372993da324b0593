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
    if name == "load_model":
        from .model import load_model

        return load_model
    if name == "export_clusters":
        from .export import export_clusters

        return export_clusters
    if name == "__version__":
        from .versions import imgcluster_version

        return imgcluster_version()
    raise AttributeError(name)
