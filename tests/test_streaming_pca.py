"""Large-N mode: PCA fitted on a seeded sample of the images, the rest reduced as they stream in."""
from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import adjusted_rand_score

from engine import ImageClusterer
from engine.backbones import load_backbone
from engine.features import StreamingPCA, extract_features
from engine.loaders.pil import PILLoader
from engine.reduce import fit_pca
from engine.sources import discover


def test_streamed_features_are_the_projection_of_the_full_ones(three_groups):
    paths = discover([three_groups]).paths
    backbone = load_backbone("pixels")
    full = extract_features(paths, PILLoader(), backbone, 16)
    streamed = extract_features(paths, PILLoader(), backbone, 16, streaming=StreamingPCA(10, fit_rows=25))
    assert full.pca is None and streamed.pca is not None
    assert streamed.pca.mode == "streamed" and streamed.pca.fit_rows == 25
    assert streamed.features.shape == (60, 10)
    expected = streamed.pca.transform(full.features)
    np.testing.assert_allclose(streamed.features.numpy(), expected.numpy(), atol=1e-3)


def test_run_above_the_fit_limit_streams_and_still_clusters(three_groups, tmp_path):
    clusterer = ImageClusterer(model="pixels", k="2:5", pca=0.9, pca_fit_limit=30)
    clusterer.fit([three_groups], out_dir=tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pca"]["mode"] == "streamed" and summary["pca"]["fit_rows"] == 30
    # no rate for a stage that ran inside another (it read as billions of images/s)
    assert summary["timings"]["pca"]["images_per_s"] is None and summary["timings"]["pca"]["within"] == "extract"
    assert clusterer.k_ == 3
    truth = [p.parent.name for p in clusterer.paths_]
    assert adjusted_rand_score(truth, clusterer.labels_) >= 0.95
    # Resume: the cached (full-width) features are projected too, same answer.
    again = ImageClusterer(model="pixels", k="2:5", pca=0.9, pca_fit_limit=30).fit([three_groups],
                                                                                 out_dir=tmp_path / "out")
    assert again.result_.extraction.resumed == 60
    assert np.array_equal(again.labels_, clusterer.labels_)


def test_streamed_model_saves_and_predicts(three_groups, tmp_path):
    clusterer = ImageClusterer(model="pixels", k="3", pca=8, pca_fit_limit=30).fit([three_groups])
    clusterer.save(tmp_path / "m.imgc")
    loaded = ImageClusterer.load(tmp_path / "m.imgc", device="cpu")
    assert loaded.pca_.mode == "streamed"
    assert np.array_equal(loaded.predict(clusterer.paths_), clusterer.labels_)


def test_streamed_pca_is_fitted_on_a_sample_spread_over_the_input(three_groups):
    """Inputs are sorted by folder, so 'the first fit_rows images' were one folder here (20 of
    60 = group one only) and PCA learned that folder's axes. The fit must use the seeded sample
    spread over all the input that fit_pca's 'sampled' mode takes, so `run` (streamed) and
    `cluster` (sampled) fit the same PCA."""
    paths = discover([three_groups]).paths
    backbone = load_backbone("pixels")
    full = extract_features(paths, PILLoader(), backbone, 16)
    streamed = extract_features(paths, PILLoader(), backbone, 16, streaming=StreamingPCA(3, fit_rows=20))
    sampled = fit_pca(full.features, 3, fit_limit=20)
    assert sampled.mode == "sampled" and streamed.pca.fit_rows == sampled.fit_rows == 20
    np.testing.assert_allclose(streamed.pca.mean.numpy(), sampled.mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(streamed.pca.components.numpy(), sampled.components.numpy(), atol=1e-4)
    np.testing.assert_allclose(streamed.features.numpy(), sampled.transform(full.features).numpy(), atol=1e-3)
