"""The K search: KMeans for every candidate K, the metrics per K, and the choice of K.

Silhouettes for all K come from one pass over the pair distances (engine.silhouette) on the
torch backend; the sklearn and cuml backends score one K at a time (the references).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .cluster import CHUNK_BUDGET, KMeansResult, fit_kmeans, is_oom
from .kmeans_all_k import kmeans_all_k
from .errors import InputError
from .metrics import balance, cluster_scores
from .silhouette import SilhouetteResult, _auto_chunk, default_exact_limit, silhouette_all_k, stratified_rows


@dataclass
class KScore:
    """Metrics of one K. balance = smallest / largest cluster; cluster_sizes ordered by id (largest first)."""

    k: int
    silhouette: float
    inertia: float
    calinski_harabasz: float
    davies_bouldin: float
    fraction_negative: float
    balance: float
    cluster_sizes: list[int]


@dataclass
class KSearch:
    """ks: candidate Ks searched; scores: one KScore per K; fits / silhouettes keyed by K."""

    ks: list[int]
    scores: list[KScore]
    fits: dict[int, KMeansResult]
    silhouettes: dict[int, SilhouetteResult]
    chosen_k: int
    select: str
    silhouette_mode: str
    silhouette_sample: int | None
    silhouette_backend: str
    timings: dict[str, float] = field(default_factory=dict)
    oom_halvings: dict[str, int] = field(default_factory=dict)  # {"kmeans": n, "silhouette": n}

    def score(self, k: int) -> KScore:
        return next(s for s in self.scores if s.k == k)

    def scores_table(self) -> list[dict]:
        return [asdict(s) for s in self.scores]


# Below this mean silhouette at the chosen K, the run says the images hardly form groups. Kept
# low, so it does not fire on collections that do have loose groups: random-noise images gave
# 0.007 (a user walkthrough), 300 normal-noise points in 50-d 0.023, three make_blobs groups 0.75
# (tests/test_kmeans_all_k.py).
WEAK_SILHOUETTE = 0.05


def _notify_weak_or_empty(scores: list[KScore], chosen: int, single: list[int], notify,
                          largest_asked: int | None = None, chosen_cluster_means: dict | None = None,
                          wider: str = "") -> None:
    """Notices a result table would not show at a glance: Ks where KMeans left clusters empty
    (fewer distinct groups than K), a chosen K whose mean silhouette is near 0, a chosen K at the
    top of the range asked for (`largest_asked`, None when the images allow no larger K: the best
    may lie above it; `wider`: the --k range to suggest), and clusters of the chosen K with a
    negative mean silhouette (`chosen_cluster_means` {cluster id: mean})."""
    empty = [s.k for s in scores if s.k not in single and 0 in s.cluster_sizes]
    if empty:
        notify(f"K = {', '.join(map(str, empty))}: KMeans left some clusters empty (fewer distinct groups than K); "
               "their scores describe the clusters that are not empty")
    # the best K by silhouette, whatever --select chose: a low value there means no K separates the images
    scored = [s for s in scores if s.k not in single]
    if scored:
        best = max(scored, key=lambda s: s.silhouette)
        if best.silhouette < WEAK_SILHOUETTE:
            notify(f"Weak cluster structure: mean silhouette at most {best.silhouette:.3f} (K = {best.k}) over the "
                   "Ks tried (near 0: the images hardly fall into separate groups; the report's silhouette plot "
                   "shows each image)")
    if largest_asked is not None and chosen == largest_asked and len(scores) > 1:
        notify(f"K = {chosen} is the largest K tried: a larger one may score better (try --k "
               f"{wider})")
    negative = sorted(c for c, mean in (chosen_cluster_means or {}).items() if mean < 0)
    if negative:
        notify(f"K = {chosen}: {len(negative)} of its clusters ({', '.join(map(str, negative[:8]))}"
               f"{', ...' if len(negative) > 8 else ''}) have a negative mean silhouette (their images lie closer, "
               "on average, to another cluster): the report's silhouette plot shows them")


def usable_ks(ks: Sequence[int], n: int, notify: Callable[[str], None] | None = None) -> list[int]:
    """Drop Ks that the data cannot support (silhouette needs 2 <= K <= n - 1)."""
    if n < 3:
        raise InputError(f"only {n} good image(s): clustering needs at least 3 (silhouette analysis needs "
                         "2 <= K <= images - 1)")
    if n < min(ks):
        raise InputError(f"only {n} good image(s), fewer than the smallest K ({min(ks)}): add images or lower --k")
    kept = [k for k in ks if k <= n - 1]
    if not kept:
        raise InputError(f"only {n} good image(s): silhouette analysis needs K <= {n - 1} (images - 1); "
                         f"lower --k to {n - 1} or less")
    if len(kept) < len(ks) and notify:
        notify(f"K above {n - 1} dropped: only {n} good images")
    return kept


def search_progress_steps(n_ks: int) -> int:
    """The progress total of search_k over n_ks usable Ks: KMeans, silhouette and metrics per K."""
    return 3 * n_ks


def choose_k(scores: Sequence[KScore], select: str) -> int:
    """silhouette: highest mean; calinski: highest CH; davies: lowest DB. Ties go to the smaller K."""
    def value(s: KScore) -> float:
        v = {"silhouette": s.silhouette, "calinski": s.calinski_harabasz, "davies": -s.davies_bouldin}[select]
        return -np.inf if not np.isfinite(v) else v

    best = max(scores, key=lambda s: (value(s), -s.k))
    return best.k


def _silhouette_sklearn(x: torch.Tensor, labels: torch.Tensor, sample: int | None, seed: int) -> SilhouetteResult:
    """scikit-learn's silhouette_samples for one K (the reference; O(n^2) memory per chunk)."""
    from sklearn.metrics import silhouette_samples

    data = x.detach().float().cpu().numpy()
    lab = labels.detach().cpu().numpy()
    values = np.full(len(lab), np.nan, dtype=np.float32)
    rows = np.arange(len(lab))
    if sample is not None:  # stratified as the torch backend's: a uniform one could miss a small cluster
        rows = stratified_rows(lab, sample, seed)
    values[rows] = silhouette_samples(data[rows], lab[rows]).astype(np.float32)
    picked = values[rows]
    means = {int(c): float(picked[lab[rows] == c].mean()) for c in np.unique(lab[rows])}
    return SilhouetteResult(mean=float(picked.mean()), samples=values, cluster_means=means,
                            fraction_negative=float((picked < 0).mean()), sampled=sample is not None)


def _silhouettes(x: torch.Tensor, fits: dict[int, KMeansResult], backend: str, sample: int | None,
                 seed: int, notify: Callable[[str], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[dict[int, SilhouetteResult], str, int]:
    """(silhouette per K, backend name, out-of-memory halvings of the distance tile). progress:
    steps adding up to len(fits) (see silhouette_all_k)."""
    ks = sorted(fits)
    tick = progress or (lambda steps: None)
    if backend in ("cuml", "sklearn"):
        one = _silhouette_sklearn if backend == "sklearn" else None
        if one is None:
            from .cuml_adapter import silhouette_cuml as one
        out = {}
        for k in ks:
            out[k] = one(x, fits[k].labels, sample, seed)
            tick(1)
        return out, backend, 0
    # Out of memory in the distance tiles: halve the rows per tile and run the pass again.
    chunk, halvings, reported = None, 0, 0

    def advance(steps: int) -> None:  # a retry after out-of-memory restarts the count: no step twice
        nonlocal reported, attempt_steps
        attempt_steps += steps
        if attempt_steps > reported:
            tick(attempt_steps - reported)
            reported = attempt_steps

    while True:
        attempt_steps = 0
        try:
            results = silhouette_all_k(x, [fits[k].labels for k in ks], backend="auto", chunk_size=chunk,
                                       sample_size=sample, seed=seed, progress=advance)
            break
        except (RuntimeError, MemoryError) as exc:
            current = chunk or _auto_chunk(min(x.shape[0], sample or x.shape[0]), x.device)
            if not is_oom(exc) or current <= 1:
                raise
            chunk = max(1, current // 2)
            halvings += 1
            if x.is_cuda:
                torch.cuda.empty_cache()
            if notify:
                notify(f"Out of memory in the silhouette: retrying with {chunk} rows per distance tile")
    return dict(zip(ks, results)), "torch-all-k", halvings


def _undefined_silhouette(sizes: list[int]) -> SilhouetteResult:
    """A labelling with a single cluster (every point in one; `sizes`: points per id): its
    silhouette is undefined (a(i) exists, b(i) does not), so NaN everywhere; choose_k never picks
    it over a defined one."""
    ids = [c for c, size in enumerate(sizes) if size]
    return SilhouetteResult(mean=math.nan, samples=np.full(sum(sizes), np.nan, dtype=np.float32),
                            cluster_means={int(c): math.nan for c in ids}, fraction_negative=math.nan,
                            n_clusters=len(ids))


def fit_kmeans_all(x: torch.Tensor, ks: Sequence[int], backend: str, n_init: int, max_iter: int, seed: int,
                   progress: Callable[[int], None] | None = None) -> dict[int, KMeansResult]:
    """{k: KMeansResult} for every K. The torch backend fits them all in one batched computation
    (kmeans_all_k: the same results as one fit per K, a twelfth of the tensor operations);
    the others one K at a time. progress(1) once per K."""
    if backend == "torch":
        return kmeans_all_k(x, ks, n_init=n_init, max_iter=max_iter, seed=seed, progress=progress)
    fits = {}
    for k in ks:
        fits[k] = fit_kmeans(x, k, backend, n_init=n_init, max_iter=max_iter, seed=seed)
        if progress:
            progress(1)
    return fits


def exact_silhouette_limit(backend: str, device: torch.device, n_ks: int) -> tuple[int, int]:
    """(largest n scored exactly, the all-K limit it comes from) for the K search's silhouettes.

    The all-K limit is default_exact_limit (the n where one exact pass of the torch backend, which
    scores every K from one set of distances, takes about a minute). scikit-learn and cuML score
    one K per pass, each costing about that pass (n^2 distances), so the same time allows
    limit / sqrt(#K): at 1M on CUDA and 19 K, cuML would otherwise compute 19 exact 1M x 1M passes
    (not measured: cuML has not run on a GPU here; this is the cost model, not a timing).
    scikit-learn runs on the CPU whatever the features' device, so it takes the CPU's limit."""
    one_pass = default_exact_limit("cpu" if backend == "sklearn" else device)
    if backend in ("sklearn", "cuml"):
        return max(2, int(one_pass / math.sqrt(max(1, n_ks)))), one_pass
    return one_pass, one_pass


def search_k(x: torch.Tensor, ks: Sequence[int], backend: str = "torch", n_init: int = 3, max_iter: int = 100,
             seed: int = 0, select: str = "silhouette", silhouette_sample: int | None = None,
             progress: Callable[[int], None] | None = None,
             notify: Callable[[str], None] | None = None) -> KSearch:
    """x: (n, d) float32 reduced features on any device. Returns every K's fit and scores.

    silhouette_sample None: exact silhouettes up to exact_silhouette_limit(backend, device, #K),
    sampled (stratified) above it.
    progress(n) adds up to search_progress_steps(len(ks)): one step per K for KMeans, for the
    silhouettes (as their pass goes) and for the other metrics (about a second per K at 60,000
    images on 2 cores, after a bar that used to read complete).
    """
    n = x.shape[0]
    asked = list(ks)
    ks = usable_ks(ks, n, notify)
    timings = {"kmeans": 0.0, "silhouette": 0.0, "metrics": 0.0}
    kmeans_halvings_before = CHUNK_BUDGET.halvings
    t0 = time.perf_counter()
    fits = fit_kmeans_all(x, ks, backend, n_init=n_init, max_iter=max_iter, seed=seed, progress=progress)
    timings["kmeans"] = time.perf_counter() - t0

    limit, one_pass = exact_silhouette_limit(backend, x.device, len(ks))
    sample = silhouette_sample
    if sample is None and n > limit:
        # Sampled mode scores each K in its own pass over the sample, so a sample of
        # one_pass / sqrt(#K) costs about what one exact all-K pass at one_pass does.
        sample = max(2, int(one_pass / math.sqrt(len(ks))))
        if notify:
            notify(f"Silhouette: {n:,} images are above the exact limit ({limit:,}) of the {backend} backend on "
                   f"{'cpu' if backend == 'sklearn' else x.device.type}; "
                   f"using a stratified sample of {sample:,} (set --silhouette-sample to change)")
    if sample is not None and sample >= n:
        sample = None
    sizes = {k: torch.bincount(fits[k].labels, minlength=k).cpu().tolist() for k in ks}
    scorable = [k for k in ks if sum(1 for size in sizes[k] if size) >= 2]
    single = [k for k in ks if k not in scorable]
    if single and notify:
        notify(f"K = {', '.join(map(str, single))}: KMeans found only one cluster (the features do not tell these "
               "images apart: identical or near-identical images?); the silhouette is undefined there"
               + ("" if scorable else ", so every image goes to cluster 0"))
    t0 = time.perf_counter()
    silhouettes, sil_backend, sil_halvings = (_silhouettes(x, {k: fits[k] for k in scorable}, backend, sample, seed,
                                                           notify, progress) if scorable else ({}, "none", 0))
    for k in single:
        silhouettes[k] = _undefined_silhouette(sizes[k])
    timings["silhouette"] = time.perf_counter() - t0
    if progress and single:
        progress(len(single))

    t0 = time.perf_counter()
    scores = []
    for k in ks:
        labels = fits[k].labels
        sil = silhouettes[k]
        ch, db = cluster_scores(x, labels)
        scores.append(KScore(k=k, silhouette=float(sil.mean), inertia=float(fits[k].inertia),
                             calinski_harabasz=ch, davies_bouldin=db,
                             fraction_negative=float(sil.fraction_negative), balance=balance(labels, k),
                             cluster_sizes=[int(s) for s in sizes[k]]))
        if progress:
            progress(1)
    timings["metrics"] = time.perf_counter() - t0
    chosen = choose_k(scores, select)
    if notify:
        # the top of the range asked for, unless no larger K can be fitted on n images (the count
        # cut the range, and usable_ks said so, or the range ends at n - 1)
        top = max(asked) if max(asked) < n - 1 else None
        wider = f"{min(asked)}:{min(2 * max(asked), n - 1)}"
        means = silhouettes[chosen].cluster_means if chosen in silhouettes else None
        _notify_weak_or_empty(scores, chosen, single, notify, top, means, wider)
    mode = "sampled" if sample is not None else "exact"
    halvings = {"kmeans": CHUNK_BUDGET.halvings - kmeans_halvings_before, "silhouette": sil_halvings}
    return KSearch(list(ks), scores, fits, silhouettes, chosen, select, mode, sample, sil_backend, timings, halvings)
