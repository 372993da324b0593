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
