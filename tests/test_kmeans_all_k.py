"""kmeans_all_k (every K and init in one batched computation) against one kmeans_torch fit per K
and against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from engine import cluster
from engine.cluster import kmeans_torch
from engine.errors import ConfigError
from engine.kmeans_all_k import kmeans_all_k


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(1200, centers=5, n_features=12, cluster_std=1.0, random_state=7)
    return torch.from_numpy(x.astype(np.float32)), y


def test_same_fits_as_one_kmeans_per_k(blobs):
    """Same draws, same algorithm: the true K gives the very same labels, centroids and
    iterations as kmeans_torch, and every K the same inertia up to summation order."""
    x, _ = blobs
    ks = [2, 3, 5, 8, 11]
    together = kmeans_all_k(x, ks, n_init=3, seed=4)
    assert sorted(together) == ks
    for k in ks:
        alone = kmeans_torch(x, k, n_init=3, seed=4)
        fit = together[k]
        assert fit.labels.shape == (len(x),) and fit.labels.dtype == torch.int64
        assert fit.centroids.shape == (k, x.shape[1]) and fit.centroids.dtype == torch.float32
        assert fit.inertia == pytest.approx(alone.inertia, rel=1e-4), k
        if k == 5:
            assert torch.equal(fit.labels, alone.labels)
            torch.testing.assert_close(fit.centroids, alone.centroids, rtol=1e-5, atol=1e-5)
            assert fit.n_iter == alone.n_iter


def test_random_data_matches_one_fit_per_k():
    """No cluster structure (many near-ties): inertia per K still that of kmeans_torch."""
    x = torch.randn(700, 30, generator=torch.Generator().manual_seed(0))
    together = kmeans_all_k(x, [2, 4, 9], n_init=2, seed=1)
    for k in (2, 4, 9):
        assert together[k].inertia == pytest.approx(kmeans_torch(x, k, n_init=2, seed=1).inertia, rel=1e-4)


def test_recovers_separable_blobs_like_sklearn(blobs):
    from sklearn.cluster import KMeans

    x, y = blobs
    fit = kmeans_all_k(x, [5], seed=0)[5]
    ref = KMeans(5, n_init=3, random_state=0).fit(x.numpy())
    assert adjusted_rand_score(y, fit.labels.numpy()) >= 0.99
    assert adjusted_rand_score(ref.labels_, fit.labels.numpy()) >= 0.99
    assert fit.inertia == pytest.approx(ref.inertia_, rel=1e-4)
    sizes = torch.bincount(fit.labels).tolist()
    assert sizes == sorted(sizes, reverse=True)  # ids numbered by size, as every backend


def test_edge_ks_and_empty_clusters():
    """K = 1, K = n, and more clusters than distinct points (empty clusters re-seeded) give
    what kmeans_torch gives."""
    base = torch.tensor([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]])
    x = base.repeat(4, 1)  # 12 points, 3 distinct
    together = kmeans_all_k(x, [1, 3, 5, 12], n_init=2, seed=0)
    for k in (1, 3, 5, 12):
        alone = kmeans_torch(x, k, n_init=2, seed=0)
        assert together[k].inertia == pytest.approx(alone.inertia, abs=1e-6), k
        assert torch.equal(together[k].labels, alone.labels), k
    assert together[3].inertia == pytest.approx(0.0, abs=1e-6)
    assert together[12].labels.unique().numel() <= 12
    with pytest.raises(ConfigError, match="between 1 and the number of samples"):
        kmeans_all_k(x, [13])


def test_row_blocks_and_progress(blobs, monkeypatch):
    """A tiny distance-block budget (many row blocks, as after out-of-memory halvings) changes
    nothing; progress is called once per K; max_iter bounds every fit."""
    x, _ = blobs
    ks = [3, 6]
    reference = kmeans_all_k(x, ks, n_init=2, seed=2)
    monkeypatch.setattr(cluster.CHUNK_BUDGET, "elems", 97 * 12)
    calls = []
    blocked = kmeans_all_k(x, ks, n_init=2, seed=2, progress=calls.append)
    assert calls == [1, 1]
    for k in ks:
        assert torch.equal(blocked[k].labels, reference[k].labels)
        assert blocked[k].inertia == pytest.approx(reference[k].inertia, rel=1e-5)
    assert all(fit.n_iter <= 2 for fit in kmeans_all_k(x, ks, n_init=2, max_iter=2, seed=2).values())


def test_search_k_uses_it_for_torch(blobs):
    from engine.select import search_k

    x, _ = blobs
    search = search_k(x, [3, 5, 7], backend="torch", seed=0)
    together = kmeans_all_k(x, [3, 5, 7], seed=0)
    assert search.chosen_k == 5
    for k in (3, 5, 7):
        assert torch.equal(search.fits[k].labels, together[k].labels)


def test_nan_features_iterate_as_kmeans_torch_does():
    """A NaN shift is not 'converged' in either implementation (both run to max_iter)."""
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(3))
    x[5, 1] = float("nan")
    together = kmeans_all_k(x, [2, 3], n_init=1, max_iter=7, seed=0)
    for k in (2, 3):
        assert together[k].n_iter == kmeans_torch(x, k, n_init=1, max_iter=7, seed=0).n_iter == 7


def test_search_says_when_there_is_no_structure_or_clusters_stay_empty():
    """Noise gets a K anyway: the search says its silhouette is near 0. Near-identical points
    leave clusters empty at the larger Ks, which the scores table alone does not show."""
    import numpy as np
    import torch
    from sklearn.datasets import make_blobs

    from engine.select import WEAK_SILHOUETTE, search_k

    said: list[str] = []
    noise = torch.from_numpy(np.random.default_rng(0).normal(size=(300, 50)).astype(np.float32))
    found = search_k(noise, [2, 3, 4], "torch", notify=said.append)
    assert found.score(found.chosen_k).silhouette < WEAK_SILHOUETTE
    best = max(found.scores, key=lambda s: s.silhouette)
    assert [m for m in said if m.startswith("Weak cluster structure")] == [
        f"Weak cluster structure: mean silhouette at most {best.silhouette:.3f} (K = {best.k}) over the Ks tried "
        "(near 0: the images hardly fall into separate groups; the report's silhouette plot shows each image)"]
    said.clear()  # chosen by another criterion: still judged on the best silhouette of any K
    search_k(noise, [2, 3, 4], "torch", select="calinski", notify=said.append)
    assert any(m.startswith("Weak cluster structure: mean silhouette at most") for m in said)

    said.clear()
    blobs, _ = make_blobs(300, 10, centers=3, random_state=0)
    found = search_k(torch.from_numpy(blobs.astype(np.float32)), [2, 3, 4], "torch", notify=said.append)
    assert found.chosen_k == 3 and found.score(3).silhouette > 0.5 and said == []
    search_k(torch.from_numpy(blobs.astype(np.float32)), [2, 3, 4], "torch", select="davies", notify=said.append)
    assert said == []  # whatever K davies picks, K = 3 separates the blobs

    points = np.zeros((9, 5), np.float32)
    points[6:] += 1e-3  # two groups of identical points
    found = search_k(torch.from_numpy(points), [2, 3, 4], "torch", notify=said.append)
    assert found.score(3).cluster_sizes.count(0) == 1 and found.score(4).cluster_sizes.count(0) == 2
    assert said == ["K = 3, 4: KMeans left some clusters empty (fewer distinct groups than K); their scores "
                    "describe the clusters that are not empty"]


def test_search_says_when_the_chosen_k_is_the_largest_tried_or_has_negative_clusters():
    """Six blobs searched over K = 2..4: the choice sits at the top of the range, so a larger K
    may be better, which the search says (with a wider range to try). Not when the image count
    cut the range, nor when the best K is inside it. A chosen K with clusters whose mean
    silhouette is negative names them."""
    import numpy as np
    import torch
    from sklearn.datasets import make_blobs

    from engine.select import _notify_weak_or_empty, search_k

    blobs, _ = make_blobs(300, 10, centers=6, cluster_std=0.5, random_state=0)
    x = torch.from_numpy(blobs.astype(np.float32))
    said: list[str] = []
    found = search_k(x, [2, 3, 4], "torch", notify=said.append)
    assert found.chosen_k == 4
    assert "K = 4 is the largest K tried: a larger one may score better (try --k 2:8)" in said
    said.clear()
    found = search_k(x, list(range(2, 10)), "torch", notify=said.append)
    assert found.chosen_k == 6 and not [m for m in said if "largest K tried" in m]
    said.clear()
    search_k(x[:5], [2, 3, 4, 5, 6], "torch", notify=said.append)  # 5 images: K above 4 dropped
    assert not [m for m in said if "largest K tried" in m]
    said.clear()
    scores = found.scores
    _notify_weak_or_empty(scores, 6, [], said.append, None, {0: 0.4, 1: -0.02, 2: 0.3, 3: -0.1})
    assert said == ["K = 6: 2 of its clusters (1, 3) have a negative mean silhouette (their images lie closer, on "
                    "average, to another cluster): the report's silhouette plot shows them"]


def test_the_wider_range_suggested_stays_within_what_the_images_allow():
    """The range suggested after "largest K tried" is what search_k computed: capped at n - 1."""
    import numpy as np
    import torch
    from sklearn.datasets import make_blobs

    from engine.select import _notify_weak_or_empty, search_k

    blobs, _ = make_blobs(12, 4, centers=6, cluster_std=0.1, random_state=1)
    said: list[str] = []
    found = search_k(torch.from_numpy(blobs.astype(np.float32)), [2, 3, 4], "torch")
    said.clear()
    _notify_weak_or_empty(found.scores, 4, [], said.append, 4, None, "2:7")  # what search_k passes for n = 8
    assert said == ["K = 4 is the largest K tried: a larger one may score better (try --k 2:7)"]


def test_block_distances_in_reused_scratch_have_the_plain_formulas_bits():
    """The row blocks are computed in place in scratch tensors reused block after block (fresh
    ones cost more in page faults than the arithmetic on the CPU); the values and argmins are
    bit for bit those of block_sq - 2 x.c + c_sq, a smaller last block after a larger one too."""
    from engine.kmeans_all_k import _block_argmin, _BlockScratch, _Ragged

    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 9, generator=g) * 5
    ragged = _Ragged([2, 5, 3], torch.device("cpu"))
    centers = x[torch.randperm(300, generator=g)[: ragged.total]]
    x_sq, c_sq = (x * x).sum(1), (centers * centers).sum(1)
    scratch = _BlockScratch(128, ragged, torch.device("cpu"), onehot=True)
    for a, b in [(0, 128), (128, 256), (256, 300)]:
        values, argmin = _block_argmin(x[a:b], x_sq[a:b], centers, c_sq, ragged, scratch)
        plain = (x_sq[a:b, None] - 2.0 * (x[a:b] @ centers.T) + c_sq[None, :]).clamp_min(0)
        padded = torch.full((b - a, ragged.count * ragged.kmax), float("inf"))
        padded[:, ragged.positions] = plain
        ref_values, ref_argmin = padded.view(-1, ragged.count, ragged.kmax).min(dim=2)
        assert torch.equal(values, ref_values) and torch.equal(argmin, ref_argmin)
