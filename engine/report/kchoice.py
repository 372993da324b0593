"""How sure the K choice is, from the per-K scores alone: the runner-up and its margin, the K each
metric would pick, and whether the chosen K sits at an edge of the range searched.

Pure Python over summary.json's `scores` entries (dicts with k, silhouette, calinski_harabasz,
davies_bouldin): summary.json stores the result as `k_choice`, and the report shows it.
"""
from __future__ import annotations

import math

# metric key in a scores entry -> (name for --select, higher is better)
METRICS = {"silhouette": ("silhouette", True), "calinski_harabasz": ("calinski", True),
           "davies_bouldin": ("davies", False)}


def score_key(select: str) -> tuple[str, bool]:
    """(key in a scores entry, higher is better) of the metric a --select name chooses by;
    silhouette for an unknown name."""
    return next(((key, higher) for key, (name, higher) in METRICS.items() if name == select), ("silhouette", True))


def _best_k(entries: list[dict], key: str, higher: bool) -> int | None:
    """The K with the best finite value of `key` (ties to the smaller K), or None."""
    scored = [(int(e["k"]), float(e[key])) for e in entries if _finite(e.get(key))]
    if not scored:
        return None
    return min(scored, key=lambda kv: ((-kv[1] if higher else kv[1]), kv[0]))[0]


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def k_choice(scores: list[dict], select: str, chosen: int, n_images: int | None = None) -> dict:
    """{"by_metric": {select name: K}, "runner_up": {"k", "value"} or None, "margin": float or None,
    "edge": "largest" | "smallest" | None}.

    runner_up and margin are on the metric that chose (`select`): the second-best K and how far
    behind it is (always >= 0). edge: the chosen K is the largest K searched (a larger one may
    score better; not said when the images allow no larger K, n_images - 1) or the smallest when
    that is above 2 (K = 2 was not tried)."""
    entries = sorted((e for e in scores if isinstance(e, dict) and "k" in e), key=lambda e: int(e["k"]))
    by_metric = {name: _best_k(entries, key, higher) for key, (name, higher) in METRICS.items()}
    key, higher = score_key(select)
    chosen_entry = next((e for e in entries if int(e["k"]) == chosen), None)
    others = [e for e in entries if int(e["k"]) != chosen and _finite(e.get(key))]
    runner_up = margin = None
    if others and chosen_entry is not None and _finite(chosen_entry.get(key)):
        second = min(others, key=lambda e: ((-float(e[key]) if higher else float(e[key])), int(e["k"])))
        runner_up = {"k": int(second["k"]), "value": float(second[key])}
        margin = abs(float(chosen_entry[key]) - float(second[key]))
    edge = None
    ks = [int(e["k"]) for e in entries]
    if len(ks) > 1:
        if chosen == max(ks) and (n_images is None or chosen < n_images - 1):
            edge = "largest"
        elif chosen == min(ks) and chosen > 2:
            edge = "smallest"
    return {"by_metric": by_metric, "runner_up": runner_up, "margin": margin, "edge": edge}
