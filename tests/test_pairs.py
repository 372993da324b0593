"""Every fast path in engine.pairs agrees with its reference (CUDA pairs are marked gpu)."""
from __future__ import annotations

import pytest

from engine.pairs import PAIRS


def _params():
    return [pytest.param(p, id=p.id, marks=[pytest.mark.gpu] if p.device == "cuda" else []) for p in PAIRS]


@pytest.mark.parametrize("pair", _params())
def test_fast_path_agrees_with_its_reference(pair):
    reason = pair.missing()
    if reason:
        pytest.skip(reason)
    inputs = pair.make_inputs(pair.test_size)
    gap = pair.discrepancy(pair.run_fast(inputs), pair.run_reference(inputs))
    assert gap <= pair.tolerance, f"{pair.id}: {pair.measure} = {gap:.3g} > {pair.tolerance:g}"


def test_registry_covers_every_stage_on_both_devices():
    ids = {p.id for p in PAIRS}
    assert len(ids) == len(PAIRS)  # ids are unique: they name test and benchmark cases
    for stage in ("pca", "kmeans", "silhouette"):
        assert {f"{stage}-torch-cpu", f"{stage}-torch-cuda"} <= ids
    assert {"silhouette-triton-cuda", "backbone-bf16-cuda", "backbone-bf16-cpu"} <= ids
    assert {"kmeans_search-all-k-cpu", "kmeans_search-all-k-cuda"} <= ids


def test_a_broken_fast_path_is_caught():
    """The discrepancy measures can fail: a fast path that is slightly wrong does not pass."""
    import dataclasses

    import numpy as np

    for pair in (p for p in PAIRS if p.device == "cpu" and p.missing() is None):
        inputs = pair.make_inputs(pair.test_size)
        reference = pair.run_reference(inputs)
        if pair.stage == "kmeans":
            broken = np.where(np.asarray(reference) == 0, 1, reference)  # two clusters merged
        elif pair.stage == "kmeans_search":
            broken = np.asarray(reference) * (1 + 10 * pair.tolerance)  # every K's inertia 1 % off
        elif pair.stage == "backbone":
            broken = reference.roll(1, dims=0)  # every image gets its neighbour's features
        else:
            broken = np.asarray(reference, dtype=np.float64) + 10 * pair.tolerance
        wrong = dataclasses.replace(pair, run_fast=lambda _inputs, b=broken: b)
        assert wrong.discrepancy(wrong.run_fast(inputs), reference) > pair.tolerance, pair.id
