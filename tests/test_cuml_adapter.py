"""The cuML adapter: gated on cuML + CUDA; without them, asking for it is a clear error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, silhouette_score

from engine.device import capabilities
from engine.errors import BackendUnavailable

HAVE_CUML = capabilities()["cuml"].available


@pytest.mark.skipif(HAVE_CUML, reason="checks the error when cuML is unusable")
def test_cuml_unavailable_is_an_error():
    from engine.cuml_adapter import kmeans_cuml

    with pytest.raises(BackendUnavailable, match="cuML backend"):
        kmeans_cuml(torch.zeros(4, 2), 2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUML, reason="needs cuML and a CUDA GPU")
def test_cuml_backend_matches_sklearn():
    from engine.cuml_adapter import kmeans_cuml, pca_cuml, silhouette_cuml

    x, y = make_blobs(5000, centers=5, n_features=30, random_state=0)
    t = torch.from_numpy(x.astype(np.float32)).cuda()
    fit = kmeans_cuml(t, 5)
    assert adjusted_rand_score(y, fit.labels.cpu().numpy()) >= 0.99
    pca = pca_cuml(t, 10)
    assert pca.components.is_cuda and pca.components.shape == (10, 30)
    sil = silhouette_cuml(t, fit.labels, None, 0)
    assert sil.mean == pytest.approx(silhouette_score(x, fit.labels.cpu().numpy()), abs=1e-4)


def test_silhouette_chunk_fits_two_tiles_in_half_the_free_memory():
    """cuML's batched silhouette works on chunk x chunk float32 tiles: a fixed 40,000 (6.4 GB a
    tile) would not fit a 16 GB card beside the features; the chunk follows the free memory."""
    from engine.cuml_adapter import silhouette_chunk

    assert silhouette_chunk(80 * 2**30, 10**6) == 40_000  # an H100: capped
    c = silhouette_chunk(8 * 2**30, 10**6)
    assert 2 * c * c * 4 <= 4 * 2**30 < 2 * (c + 1) ** 2 * 4  # the largest that fits in half of 8 GB
    assert silhouette_chunk(2**20, 10**6) == 1_000  # almost nothing free: a floor, cuML's own problem
    assert silhouette_chunk(80 * 2**30, 500) == 500  # never more than the rows
