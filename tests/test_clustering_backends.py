"""The torch backend (on CPU tensors) against scikit-learn: PCA, KMeans, CH/DB, K choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score

from engine.cluster import assign, fit_kmeans, order_by_size
from engine.errors import ConfigError
from engine.metrics import balance, calinski_harabasz, davies_bouldin
from engine.reduce import fit_pca
from engine.select import choose_k, search_k, search_progress_steps


@pytest.fixture(scope="module")
def digits():
    return torch.from_numpy(load_digits().data.astype(np.float32))


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_pca_matches_sklearn_with_signs(digits, backend):
    ours = fit_pca(digits, 20, backend)
    ref = PCA(20, svd_solver="full").fit(digits.numpy())
    np.testing.assert_allclose(ours.components.numpy(), ref.components_, atol=1e-4)
    np.testing.assert_allclose(ours.explained_variance_ratio[:20], ref.explained_variance_ratio_, atol=1e-6)
    np.testing.assert_allclose(ours.transform(digits).numpy(), ref.transform(digits.numpy()), atol=1e-3)
    # svd_flip convention: the largest-magnitude entry of every component is positive
    comps = ours.components.numpy()
    assert (comps[np.arange(20), np.abs(comps).argmax(1)] > 0).all()


def test_pca_variance_fraction_and_off(digits):
    ours = fit_pca(digits, 0.9)
    assert ours.n_components == PCA(0.9, svd_solver="full").fit(digits.numpy()).n_components_
    assert ours.explained_variance >= 0.9
    off = fit_pca(digits, 0)
    assert off.mode == "off" and torch.equal(off.transform(digits), digits)


def test_pca_sampled_fit_is_close(digits):
    sampled = fit_pca(digits, 10, fit_limit=1000, seed=0)
    exact = fit_pca(digits, 10)
    assert sampled.mode == "sampled" and sampled.fit_rows == 1000
    # Same leading subspace: principal angles small for the top components.
    overlap = torch.linalg.svdvals(sampled.components[:3] @ exact.components[:3].T)
    assert overlap.min() > 0.95


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(3000, centers=6, n_features=40, cluster_std=1.0, random_state=3)
    return torch.from_numpy(x.astype(np.float32)), y


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_kmeans_recovers_separable_blobs(blobs, backend):
    x, y = blobs
    fit = fit_kmeans(x, 6, backend, seed=0)
    assert adjusted_rand_score(y, fit.labels.numpy()) >= 0.99
    counts = torch.bincount(fit.labels).tolist()
    assert counts == sorted(counts, reverse=True)


def test_kmeans_torch_agrees_with_sklearn(blobs):
    x, _ = blobs
    ours = fit_kmeans(x, 6, "torch", seed=1)
    ref = KMeans(6, n_init=3, random_state=1).fit(x.numpy())
    assert adjusted_rand_score(ref.labels_, ours.labels.numpy()) >= 0.99
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-3)


def test_kmeans_is_deterministic(blobs):
    x, _ = blobs
    a, b = fit_kmeans(x, 5, seed=4), fit_kmeans(x, 5, seed=4)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)


def test_kmeans_handles_duplicates_and_k_equal_n():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    fit = fit_kmeans(x, 2)
    assert sorted(torch.bincount(fit.labels).tolist()) == [5, 5]
    assert fit_kmeans(x[:3] + torch.arange(3.0)[:, None], 3).labels.unique().numel() == 3
    with pytest.raises(ConfigError):
        fit_kmeans(x[:2], 3)


def test_order_by_size():
    labels = torch.tensor([2, 2, 0, 1, 1, 1])
    centroids = torch.tensor([[0.0], [1.0], [2.0]])
    new_labels, new_centroids = order_by_size(labels, centroids)
    assert new_labels.tolist() == [1, 1, 2, 0, 0, 0]
    assert new_centroids.flatten().tolist() == [1.0, 2.0, 0.0]


def test_metrics_match_sklearn(blobs):
    x, y = blobs
    labels = torch.from_numpy(np.where(y == 2, 9, y))  # non-contiguous ids
    assert calinski_harabasz(x, labels) == pytest.approx(calinski_harabasz_score(x.numpy(), labels.numpy()), rel=1e-6)
    assert davies_bouldin(x, labels) == pytest.approx(davies_bouldin_score(x.numpy(), labels.numpy()), rel=1e-6)
    assert balance(torch.tensor([0, 0, 1, 1, 1, 1]), 2) == 0.5


@pytest.mark.parametrize("offset, apart, spread", [(1e3, 3.0, 1.0), (0.0, 3.0, 1e-3), (50.0, 3.0, 0.01),
                                                   (1e4, 3.0, 1e-3), (1e4, 0.01, 1e-3)])
def test_metrics_match_sklearn_for_tight_clusters_far_from_the_origin(offset, apart, spread):
    """The float32 pass (chunked, centred on the mean) against scikit-learn's float64, where float32
    rounding hurts most: clusters small next to their distance from the origin and from each other.
    More rows than one chunk, so the chunked sums are exercised."""
    from engine import metrics

    rng = np.random.default_rng(0)
    centers = offset + rng.normal(size=(5, 16)) * apart
    y = rng.integers(0, 5, metrics._CHUNK_ROWS + 5000)
    x = (centers[y] + spread * rng.normal(size=(len(y), 16))).astype(np.float32)
    ch, db = metrics.cluster_scores(torch.from_numpy(x), torch.from_numpy(y))
    # the references in float64 on the same values. scikit-learn's DB is not one here: on float32
    # input its centroids are float32 (~4e-5 of the score at offset 1e3), and in float64 its
    # distances use the Gram identity, which cancels at offset 1e4 (1.6e-3 off)
    x64 = x.astype(np.float64)
    assert ch == pytest.approx(calinski_harabasz_score(x64, y), rel=1e-6)
    assert db == pytest.approx(_davies_bouldin_direct(x64, y), rel=1e-6)


def _davies_bouldin_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Davies-Bouldin in float64 with direct differences (no Gram identity)."""
    ids = np.unique(y)
    centers = np.stack([x[y == k].mean(0) for k in ids])
    scatter = np.array([np.linalg.norm(x[y == k] - centers[i], axis=1).mean() for i, k in enumerate(ids)])
    between = np.linalg.norm(centers[:, None] - centers[None], axis=2)
    np.fill_diagonal(between, np.inf)
    return float(((scatter[:, None] + scatter[None]) / between).max(1).mean())


def test_search_k_picks_true_k_and_every_metric(blobs):
    x, _ = blobs
    search = search_k(x, range(2, 10), seed=0)
    assert search.chosen_k == 6
    assert choose_k(search.scores, "calinski") == 6
    assert choose_k(search.scores, "davies") == 6
    assert [s.k for s in search.scores] == list(range(2, 10))
    assert search.silhouette_mode == "exact"


def test_assign_nearest_centroid():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    labels, dist = assign(torch.tensor([[1.0, 0.0], [9.0, 0.0]]), centroids)
    assert labels.tolist() == [0, 1]
    assert dist[0, 0].item() == pytest.approx(1.0)


def test_pca_with_fewer_rows_than_columns_matches_sklearn():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(40, 300)).astype(np.float32))
    ours = fit_pca(x, 10)
    ref = PCA(10, svd_solver="full").fit(x.numpy())
    np.testing.assert_allclose(ours.components.numpy(), ref.components_, atol=1e-4)
    np.testing.assert_allclose(ours.explained_variance_ratio[:10], ref.explained_variance_ratio_, atol=1e-6)
    assert ours.explained_variance_ratio.shape == (40,)


def test_onehot_sums_equal_index_add():
    from engine.cluster import cluster_sums, onehot_sums

    x = torch.randn(3000, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (3000,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(onehot_sums(x, labels, 5, chunk_rows=700), cluster_sums(x, labels, 5),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sample", [None, 1000])
def test_search_k_progress_moves_through_the_silhouettes_and_ends_after_the_metrics(blobs, monkeypatch, sample):
    """The K search's bar read complete while the metrics ran (17 s at 60,000 images on 2 cores)
    and stood on one step through the whole silhouette pass (27 s there). Now the steps add up to
    search_progress_steps, several of them come while the silhouette pass runs, and the last one
    comes after the last metric."""
    import engine.select as select_mod
    import engine.silhouette as silhouette_mod

    x, _ = blobs
    events = []
    real_scores = select_mod.cluster_scores
    monkeypatch.setattr(select_mod, "cluster_scores", lambda *a: events.append("metric") or real_scores(*a))
    real_sums = silhouette_mod._cluster_distance_sums_torch
    monkeypatch.setattr(silhouette_mod, "_cluster_distance_sums_torch",
                        lambda *a: events.append("distances") or real_sums(*a))
    ks = list(range(2, 10))
    search_k(x, ks, seed=0, silhouette_sample=sample, progress=lambda n: events.append(n))
    steps = [e for e in events if isinstance(e, int)]
    assert sum(steps) == search_progress_steps(len(ks)) == 3 * len(ks)
    assert isinstance(events[-1], int) and events.index("metric") > 0
    first_distances = events.index("distances")
    first_metric = events.index("metric")
    during_silhouette = sum(e for e in events[first_distances:first_metric] if isinstance(e, int))
    assert during_silhouette == len(ks)
    if sample is None:  # one exact pass: its steps come while it runs, not all at its end
        assert sum(isinstance(e, int) for e in events[first_distances:first_metric]) > 1


def test_one_k_per_pass_backends_sample_the_silhouette_sooner(blobs, monkeypatch):
    """scikit-learn and cuML score one K per pass (the torch backend every K in one), so their
    exact limit is the all-K limit over sqrt(#K), and scikit-learn takes the CPU's limit even for
    features on a GPU: cuML at 1M images and 19 K would have run 19 exact 1M x 1M passes."""
    import engine.select as select_mod
    from engine.select import exact_silhouette_limit
    from engine.silhouette import default_exact_limit

    cpu, cuda = default_exact_limit("cpu"), default_exact_limit("cuda")
    assert exact_silhouette_limit("torch", torch.device("cuda"), 19) == (cuda, cuda)
    assert exact_silhouette_limit("cuml", torch.device("cuda"), 19) == (int(cuda / 19 ** 0.5), cuda)
    assert exact_silhouette_limit("sklearn", torch.device("cuda"), 16) == (cpu // 4, cpu)
    assert exact_silhouette_limit("sklearn", torch.device("cpu"), 1) == (cpu, cpu)

    x, _ = blobs  # n rows: an all-K limit of n makes torch exact and scikit-learn (8 K) sampled
    n = x.shape[0]
    monkeypatch.setattr(select_mod, "default_exact_limit", lambda device: n)
    notices = []
    assert search_k(x, range(2, 10), "torch", seed=0).silhouette_mode == "exact"
    ref = search_k(x, range(2, 10), "sklearn", seed=0, notify=notices.append)
    assert ref.silhouette_mode == "sampled" and ref.silhouette_sample == int(n / 8 ** 0.5)
    assert ref.chosen_k == 6
    assert any(f"exact limit ({int(n / 8 ** 0.5):,}) of the sklearn backend on cpu" in m for m in notices)


def test_sklearn_sampled_silhouette_keeps_every_cluster():
    """The scikit-learn backend's sample was uniform: a one-image cluster (a far outlier) was left
    out, that K had one label in the sample, and scikit-learn raised 'Number of labels is 1'. It
    is stratified now, as the torch backend's: every cluster keeps min(size, 2) rows."""
    from engine.select import _silhouette_sklearn

    x, _ = make_blobs(2000, centers=1, n_features=5, random_state=0)
    x = np.vstack([x, np.full((1, 5), 1e3)]).astype(np.float32)
    labels = torch.zeros(len(x), dtype=torch.int64)
    labels[-1] = 1  # K = 2: everything, and the outlier alone
    for seed in range(6):
        sil = _silhouette_sklearn(torch.from_numpy(x), labels, 50, seed)
        assert sil.sampled and set(sil.cluster_means) == {0, 1}
        assert np.isfinite(sil.samples).sum() == 50 and np.isfinite(sil.samples[-1])
