"""The report's plots: each function takes saved run data and returns a matplotlib Figure.

Figures are built with the object-oriented API on an Agg canvas (no pyplot, no global backend
state), so building a report never opens a window and is safe to call from a library or server.
Every figure has a fixed size in pixels (SIZES) so pages lay out predictably and tests can check
the PNGs. Artists the tests inspect carry a gid: "chosen-k" (the chosen-K marker) and
"mean-silhouette" (the red dashed mean line).
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

DPI = 100
# Pixel sizes (width, height) of every PNG the report writes, by plot kind.
SIZES = {
    "pca_variance": (900, 500),
    "silhouette_vs_k": (900, 500),
    "metrics_vs_k": (1000, 700),
    "silhouette": (560, 560),
    "cluster_sizes": (900, 450),
    "scatter_2d": (900, 800),
}
CHOSEN_COLOR = "#d62728"
LINE_COLOR = "#1f77b4"


def new_figure(kind: str) -> Figure:
    """A Figure of SIZES[kind] pixels at DPI, attached to its own Agg canvas."""
    width, height = SIZES[kind]
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """Render a Figure to PNG bytes at its own size (no tight bbox: the size stays exactly SIZES[kind])."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def cluster_colors(k: int) -> np.ndarray:
    """(k, 4) float RGBA, one colour per cluster id; shared by every plot so a cluster keeps its colour."""
    if k <= 20:  # qualitative maps: neighbouring ids get clearly different colours
        return colormaps["tab10" if k <= 10 else "tab20"](np.arange(k))
    # Many clusters: spread over a continuous map, as scikit-learn's silhouette example does.
    return colormaps["nipy_spectral"](np.linspace(0.05, 0.95, k))


def _score_series(scores: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(ks, values) sorted by k; missing values are NaN (drawn as gaps)."""
    rows = sorted(scores, key=lambda s: int(s["k"]))
    ks = np.array([int(s["k"]) for s in rows], dtype=np.int64)
    values = np.array([_as_float(s.get(key)) for s in rows], dtype=np.float64)
    return ks, values


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mark_chosen(ax, ks: np.ndarray, values: np.ndarray, chosen_k: int, label: bool = True) -> None:
    """Vertical dashed line at the chosen K plus a star on its value (gid 'chosen-k', x-data [chosen_k])."""
    ax.axvline(chosen_k, color=CHOSEN_COLOR, linestyle="--", linewidth=1, alpha=0.6, gid="chosen-k-line")
    hit = np.flatnonzero(ks == chosen_k)
    y = values[hit[0]] if hit.size else math.nan
    ax.plot([chosen_k], [y], marker="*", markersize=16, color=CHOSEN_COLOR, linestyle="none", gid="chosen-k",
            label=f"chosen K = {chosen_k}" if label else None, zorder=5)


def _k_axis(ax, ks: np.ndarray) -> None:
    if ks.size and ks.size <= 30:
        ax.set_xticks(ks)
    ax.set_xlabel("number of clusters K")
    ax.grid(True, alpha=0.3)


LOG_AXIS_FROM = 64  # spectra longer than this get a log component axis


def pca_variance(explained_variance_ratio: np.ndarray, n_components: int) -> Figure:
    """Cumulative explained variance of the PCA components with the number kept marked.

    explained_variance_ratio: (m,) float, per component, descending (m may exceed n_components).
    """
    evr = np.asarray(explained_variance_ratio, dtype=np.float64).ravel()
    cumulative = np.cumsum(evr)
    fig = new_figure("pca_variance")
    ax = fig.add_subplot()
    x = np.arange(1, evr.size + 1)
    ax.plot(x, cumulative * 100, color=LINE_COLOR, linewidth=2, label="cumulative explained variance")
    if 0 < n_components <= evr.size:
        kept = cumulative[n_components - 1] * 100
        ax.axvline(n_components, color=CHOSEN_COLOR, linestyle="--", linewidth=1, gid="n-components-line")
        ax.axhline(kept, color=CHOSEN_COLOR, linestyle=":", linewidth=1)
        ax.plot([n_components], [kept], marker="o", markersize=9, color=CHOSEN_COLOR, linestyle="none",
                gid="n-components", label=f"{n_components} components kept: {kept:.1f} %")
    if evr.size > LOG_AXIS_FROM:
        # a 2048-d spectrum on a linear axis squeezes the first tens of components (where the
        # variance is, and often the count kept) into the left edge
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 1, 10, 100, not 10^0
        ax.set_xlim(0.9, evr.size * 1.1)
        ax.set_xlabel("number of principal components (log scale)")
    else:
        ax.set_xlim(0, max(evr.size, 1) + 1)
        ax.set_xlabel("number of principal components")
    ax.set_ylim(0, 101)
    ax.set_ylabel("cumulative explained variance (%)")
    ax.set_title("PCA: cumulative explained variance")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def silhouette_vs_k(scores: Sequence[dict], chosen_k: int) -> Figure:
    """Mean silhouette for every K searched, the chosen K marked (artist gid 'chosen-k').

    scores: summary.json "scores" entries (dicts with at least "k" and "silhouette").
    """
    ks, values = _score_series(scores, "silhouette")
    fig = new_figure("silhouette_vs_k")
    ax = fig.add_subplot()
    ax.plot(ks, values, marker="o", color=LINE_COLOR, linewidth=2, label="mean silhouette")
    _mark_chosen(ax, ks, values, chosen_k)
    _k_axis(ax, ks)
    ax.set_ylabel("mean silhouette coefficient (higher is better)")
    ax.set_title("Mean silhouette vs number of clusters")
    ax.legend(loc="best")
    return fig


# (score key, panel title) for the small multiple; the arrow says which direction is better.
METRIC_PANELS = (
    ("calinski_harabasz", "Calinski–Harabasz (higher is better)"),
    ("davies_bouldin", "Davies–Bouldin (lower is better)"),
    ("fraction_negative", "fraction of negative silhouettes (lower is better)"),
    ("balance", "balance: smallest / largest cluster"),
)


def metrics_vs_k(scores: Sequence[dict], chosen_k: int) -> Figure:
    """2x2 small multiple: Calinski–Harabasz, Davies–Bouldin, fraction negative, balance vs K; chosen K marked."""
    fig = new_figure("metrics_vs_k")
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (key, title) in zip(axes.ravel(), METRIC_PANELS, strict=True):
        ks, values = _score_series(scores, key)
        ax.plot(ks, values, marker="o", color=LINE_COLOR, linewidth=1.5)
        _mark_chosen(ax, ks, values, chosen_k, label=False)
        _k_axis(ax, ks)
        ax.set_title(title, fontsize=11)
    for ax in axes[0]:  # shared x: the K label and numbers once, under the bottom row (not label_outer:
        ax.tick_params(labelbottom=False)  # the y axes are not shared, so each panel keeps its numbers)
        ax.set_xlabel("")
    fig.suptitle(f"Cluster quality metrics vs K (chosen K = {chosen_k}, red)", fontsize=13)
    return fig


def silhouette_plot(labels: np.ndarray, silhouettes: np.ndarray, k: int, *, chosen: bool = False,
                    max_points_per_cluster: int = 500, xmin: float | None = None) -> Figure:
    """The classic silhouette plot: per-sample values sorted within each cluster, one colour per cluster.

    labels:      (n,) int cluster ids 0..k-1 for this K
    silhouettes: (n,) float per-sample silhouettes; NaN (not sampled) values are dropped
    A cluster with more than `max_points_per_cluster` values is drawn through that many quantiles of
    its sorted values (the outline is identical at any screen size, and 1M-sample runs stay fast);
    bar heights still count every sample. The red dashed line (gid 'mean-silhouette') is the mean
    of the values drawn. xmin: left x limit (pass the same to plots that are compared side by side).
    """
    labels = np.asarray(labels)
    values = np.asarray(silhouettes, dtype=np.float64)
    keep = np.isfinite(values)
    labels, values = labels[keep], values[keep]
    n_total = int(keep.size)
    fig = new_figure("silhouette")
    ax = fig.add_subplot()
    colors = cluster_colors(k)
    gap = max(10, int(0.01 * labels.size))
    y_total = labels.size + gap * (k + 1)
    min_labelled = y_total * 12 / (0.85 * SIZES["silhouette"][1])  # ids only where band + gap >= ~12 px
    y_lower = gap
    for cid in range(k):
        vals = np.sort(values[labels == cid])
        size = vals.size
        if size == 0:
            continue
        if size > max_points_per_cluster:
            pos = np.linspace(0, size - 1, max_points_per_cluster)
            drawn = np.interp(pos, np.arange(size), vals)
        else:
            pos, drawn = np.arange(size, dtype=np.float64), vals
        ax.fill_betweenx(y_lower + pos, 0, drawn, facecolor=colors[cid], edgecolor=colors[cid], alpha=0.8)
        if size + gap >= min_labelled:  # a thin band still has its gap around it for the id
            ax.text(-0.02, y_lower + 0.5 * size, str(cid), ha="right", va="center", fontsize=9)
        y_lower += size + gap
    mean = float(values.mean()) if values.size else math.nan
    if values.size:
        ax.axvline(mean, color="red", linestyle="--", linewidth=1.5, gid="mean-silhouette",
                   label=f"mean = {mean:.3f}")
        ax.legend(loc="lower right")
    if xmin is None:
        xmin = min(-0.1, float(values.min()) - 0.05) if values.size else -0.1
    ax.set_xlim(xmin, 1.0)
    ax.set_ylim(0, y_lower)
    ax.set_yticks([])
    ax.set_xlabel("silhouette coefficient")
    ax.set_ylabel("cluster (id at the left)")
    note = "" if labels.size == n_total else f"; {labels.size:,} sampled of {n_total:,}"
    ax.set_title(f"Silhouette plot, K = {k}{' (chosen)' if chosen else ''}{note}")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def cluster_sizes(sizes: Sequence[int]) -> Figure:
    """Bar chart of members per cluster id (ids are ordered by size, largest first)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    k = sizes.size
    fig = new_figure("cluster_sizes")
    ax = fig.add_subplot()
    bars = ax.bar(np.arange(k), sizes, color=cluster_colors(k), edgecolor="black", linewidth=0.5)
    if k <= 30:  # counts on the bars only while they stay legible
        ax.bar_label(bars, labels=[f"{int(s):,}" for s in sizes], fontsize=8, padding=2)
        ax.set_xticks(np.arange(k))
    ax.set_xlabel("cluster id")
    ax.set_ylabel("images")
    ax.set_title(f"Cluster sizes (K = {k}, {int(sizes.sum()):,} images)")
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def subsample_indices(labels: np.ndarray, max_points: int, seed: int = 0, min_per_cluster: int = 100) -> np.ndarray:
    """Indices (int64, random order) of at most ~max_points samples; every cluster keeps
    min(size, min_per_cluster) of its members so small clusters stay visible. Deterministic for a seed."""
    n = labels.size
    if n <= max_points:
        return np.random.default_rng(seed).permutation(n)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=max_points, replace=False)
    present = np.bincount(labels[chosen], minlength=int(labels.max()) + 1)
    extra = []
    for cid in np.flatnonzero(present < min_per_cluster):
        members = np.flatnonzero(labels == cid)
        if present[cid] < min(members.size, min_per_cluster):
            missing = np.setdiff1d(members, chosen, assume_unique=True)
            extra.append(rng.choice(missing, size=min(missing.size, min_per_cluster - present[cid]), replace=False))
    if extra:
        chosen = rng.permutation(np.concatenate([chosen, *extra]))
    return chosen


def scatter_2d(projection_2d: np.ndarray, labels: np.ndarray, k: int, *, max_points: int = 20_000,
               seed: int = 0) -> Figure:
    """Scatter of the first two principal components, coloured by cluster.

    projection_2d: (n, 2) float; labels: (n,) int 0..k-1. At most ~max_points points are drawn
    (seeded subsample, see subsample_indices), in random order so no cluster hides the others.
    """
    proj = np.asarray(projection_2d, dtype=np.float64)
    labels = np.asarray(labels)
    idx = subsample_indices(labels, max_points, seed)
    colors = cluster_colors(k)
    fig = new_figure("scatter_2d")
    ax = fig.add_subplot()
    size = 18 if idx.size <= 2_000 else 4 if idx.size <= 10_000 else 2
    ax.scatter(proj[idx, 0], proj[idx, 1], c=colors[labels[idx]], s=size, linewidths=0, alpha=0.8)
    if k <= 20:
        for cid in range(k):  # legend proxies: one empty scatter per cluster
            ax.scatter([], [], color=colors[cid], s=30, label=f"cluster {cid}")
        ax.legend(loc="best", fontsize=8, markerscale=1.2, ncols=2 if k > 10 else 1, framealpha=0.8)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    shown = f"random sample of {idx.size:,} of {labels.size:,} images" if idx.size < labels.size else \
        f"{labels.size:,} images"
    ax.set_title(f"First two principal components, coloured by cluster ({shown})")
    ax.grid(True, alpha=0.3)
    return fig
