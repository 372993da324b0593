"""engine.silhouette (all-K silhouette in one pass) against sklearn.metrics.silhouette_samples.

The Triton kernel is checked in the CPU interpreter in a subprocess (TRITON_INTERPRET must be set
before the kernel module is imported, and must not leak into the rest of the suite), and on CUDA
by the tests marked gpu.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_samples

from engine.errors import BackendUnavailable, ConfigError
from engine.silhouette import SilhouetteResult, default_exact_limit, silhouette_all_k

ROOT = Path(__file__).resolve().parents[1]
MEAN_TOL = 1e-5
SAMPLE_TOL = 1e-4  # per sample: fp32 Gram distances, see engine.silhouette

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _reference(X, labels):
    """sklearn on float64 copies of the same float32 points."""
    return silhouette_samples(np.asarray(X, dtype=np.float32).astype(np.float64), np.asarray(labels))


def _check(result: SilhouetteResult, X, labels, sample_tol=SAMPLE_TOL):
    labels = np.asarray(labels)
    ref = _reference(X, labels)
    assert isinstance(result, SilhouetteResult)
    assert result.sampled is False
    assert result.samples.shape == (len(labels),) and result.samples.dtype == np.float32
    assert result.n_clusters == len(np.unique(labels))
    assert abs(result.mean - ref.mean()) < MEAN_TOL
    np.testing.assert_allclose(result.samples, ref, rtol=0, atol=sample_tol)
    # s < 0 may flip only for samples within the tolerance of 0
    borderline = np.sum(np.abs(ref) <= sample_tol)
    assert abs(result.fraction_negative - np.mean(ref < 0)) <= borderline / len(ref) + 1e-12
    assert set(result.cluster_means) == set(np.unique(labels).tolist())
    for value, cmean in result.cluster_means.items():
        assert abs(cmean - ref[labels == value].mean()) < MEAN_TOL, value


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=900, n_features=24, centers=6, cluster_std=1.5, random_state=3)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(7)
    return (rng.normal(size=(500, 16)) + 20.0).astype(np.float32), rng  # offset: the centring matters


def test_blobs_all_k_one_call(blobs):
    X, y = blobs
    rng = np.random.default_rng(0)
    labellings = [y, y // 2, y % 2, (y + rng.integers(0, 2, len(y))) % 6, rng.integers(0, 11, len(y))]
    results = silhouette_all_k(X, labellings, backend="torch")
    assert len(results) == len(labellings)
    for res, lab in zip(results, labellings):
        _check(res, X, lab)
    # the blob labelling is good, the random one is not
    assert results[0].mean > 0.5 and results[-1].mean < 0.0


def test_random_data_torch_tensors_and_chunks(random_data):
    X, rng = random_data
    labellings = [torch.from_numpy(rng.integers(0, k, len(X))) for k in (2, 3, 9, 40)]
    first = silhouette_all_k(torch.from_numpy(X), labellings, backend="torch", chunk_size=1)
    for res, lab in zip(first, labellings):
        _check(res, X, lab.numpy())
    for chunk in (7, 64, None, len(X)):
        again = silhouette_all_k(X, labellings, backend="torch", chunk_size=chunk)
        for a, b in zip(first, again):
            np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)


def test_one_pass_equals_one_k_at_a_time(blobs):
    X, y = blobs
    labellings = [y, y % 3, y // 3]
    together = silhouette_all_k(X, labellings, backend="torch")
    for lab, res in zip(labellings, together):
        alone = silhouette_all_k(X, [lab], backend="torch")[0]
        np.testing.assert_allclose(res.samples, alone.samples, atol=1e-5)


def test_singletons():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    labels = np.repeat([0, 1, 2], 20)
    labels[[3, 25, 59]] = [7, 8, 9]  # three singleton clusters
    res = silhouette_all_k(X, [labels], backend="torch")[0]
    _check(res, X, labels)
    assert np.all(res.samples[[3, 25, 59]] == 0.0)
    assert res.cluster_means[7] == 0.0


def test_noncontiguous_negative_and_large_ids(blobs):
    X, y = blobs
    remap = np.array([0, 2, 5, -3, 10**9, 41])
    labels = remap[y]
    res = silhouette_all_k(X, [labels, np.where(y < 3, 2, 5)], backend="torch")
    _check(res[0], X, labels)
    assert set(res[0].cluster_means) == {0, 2, 5, -3, 10**9, 41}
    assert all(type(k) is int for k in res[0].cluster_means)
    _check(res[1], X, np.where(y < 3, 2, 5))
    # same partition, other ids: same silhouettes
    plain = silhouette_all_k(X, [y], backend="torch")[0]
    np.testing.assert_allclose(plain.samples, res[0].samples, atol=1e-5)


def test_duplicate_points():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(40, 8)) * 3 + 50  # far from the origin: cancellation is worst there
    X = np.concatenate([base, base, base[:10], np.repeat(base[:1], 15, axis=0)]).astype(np.float32)
    n = len(X)
    labellings = [rng.integers(0, 2, n), rng.integers(0, 6, n), np.arange(n) % 40]  # last: duplicates share a cluster
    res = silhouette_all_k(X, labellings, backend="torch")
    for r, lab in zip(res, labellings):
        _check(r, X, lab)


def test_all_members_identical():
    # cluster 0: one point repeated (a = 0 -> s = 1); cluster 1: another point repeated
    X = np.array([[1.0, 2.0]] * 5 + [[4.0, -1.0]] * 4 + [[0.0, 0.0]], dtype=np.float32)
    labels = np.array([0] * 5 + [1] * 4 + [2])
    res = silhouette_all_k(X, [labels], backend="torch")[0]
    _check(res, X, labels)
    assert np.all(res.samples[:9] == 1.0) and res.samples[9] == 0.0


def test_k2_and_k_half_n():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 6)).astype(np.float32)
    k2 = (X[:, 0] > 0).astype(int)
    pairs = np.repeat(np.arange(60), 2)
    rng.shuffle(pairs)
    res = silhouette_all_k(X, [k2, pairs], backend="torch")
    _check(res[0], X, k2)
    _check(res[1], X, pairs)
    assert res[1].n_clusters == 60


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(4, 40),
    d=st.integers(1, 5),
    k=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    integer_points=st.booleans(),
)
def test_property_matches_sklearn(n, d, k, seed, integer_points):
    rng = np.random.default_rng(seed)
    # integer coordinates on a small grid give many duplicates and ties
    X = rng.integers(-2, 3, size=(n, d)) if integer_points else rng.normal(size=(n, d)) * 10
    X = X.astype(np.float32)
    labels = rng.integers(0, k, n) * 3
    labels[:3] = [0, 3, 3]  # at least two clusters, and not all singletons
    res = silhouette_all_k(X, [labels], backend="torch", chunk_size=int(rng.integers(1, n + 1)))[0]
    _check(res, X, labels)


def test_sampled_close_to_exact_on_blobs():
    X, y = make_blobs(n_samples=4000, n_features=20, centers=6, cluster_std=2.0, random_state=11)
    X = X.astype(np.float32)
    rng = np.random.default_rng(5)
    labellings = [y, y // 2, y % 2, rng.integers(0, 5, len(y))]
    exact = silhouette_all_k(X, labellings, backend="torch")
    sampled = silhouette_all_k(X, labellings, backend="torch", sample_size=1000, seed=3)
    again = silhouette_all_k(X, labellings, backend="torch", sample_size=1000, seed=3)
    for e, s, a, lab in zip(exact, sampled, again, labellings):
        assert s.sampled and not e.sampled
        assert abs(s.mean - e.mean) < 0.02
        picked = ~np.isnan(s.samples)
        assert picked.sum() == 1000 and np.array_equal(np.flatnonzero(picked), s.sample_indices)
        assert np.isclose(s.mean, s.samples[picked].mean(), atol=1e-5)
        # stratified: cluster shares within one point of proportional
        for value in np.unique(lab):
            share = np.sum(lab[picked] == value)
            assert abs(share - 1000 * np.mean(lab == value)) <= 1.0 + 1e-9
        np.testing.assert_array_equal(s.samples, a.samples)  # seeded


def test_sampled_matches_sklearn_on_the_sample():
    X, y = make_blobs(n_samples=600, n_features=5, centers=4, random_state=2)
    X = X.astype(np.float32)
    res = silhouette_all_k(X, [y], backend="torch", sample_size=150, seed=9)[0]
    idx = res.sample_indices
    ref = _reference(X[idx], y[idx])
    np.testing.assert_allclose(res.samples[idx], ref, atol=SAMPLE_TOL)
    assert abs(res.mean - ref.mean()) < MEAN_TOL


def test_sampled_keeps_two_per_cluster_and_singletons():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 4)).astype(np.float32)
    labels = np.zeros(400, dtype=int)
    labels[:300] = 1
    labels[300:303] = 2   # small cluster: proportional share 0 of 20, forced to 2
    labels[303] = 3       # singleton: kept once, s = 0
    res = silhouette_all_k(X, [labels], backend="torch", sample_size=20, seed=0)[0]
    picked = labels[res.sample_indices]
    assert np.sum(picked == 2) == 2 and np.sum(picked == 3) == 1
    assert res.samples[303] == 0.0
    assert set(res.cluster_means) == {0, 1, 2, 3}


def test_sample_size_at_least_n_is_exact(random_data):
    X, rng = random_data
    lab = rng.integers(0, 4, len(X))
    res = silhouette_all_k(X, [lab], backend="torch", sample_size=len(X) + 5)[0]
    assert res.sampled is False and res.sample_indices is None
    _check(res, X, lab)


def test_rejects_bad_input():
    X = np.zeros((10, 3), dtype=np.float32)
    X[:, 0] = np.arange(10)
    with pytest.raises(ConfigError, match="2 <= clusters"):
        silhouette_all_k(X, [np.zeros(10, int)])
    with pytest.raises(ConfigError, match="2 <= clusters"):
        silhouette_all_k(X, [np.arange(10)])
    with pytest.raises(ConfigError, match="shape"):
        silhouette_all_k(X, [np.zeros(9, int)])
    with pytest.raises(ConfigError, match="integers"):
        silhouette_all_k(X, [np.linspace(0, 1, 10)])
    with pytest.raises(ConfigError, match="backend"):
        silhouette_all_k(X, [np.arange(10) % 2], backend="cuml")
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        silhouette_all_k(bad, [np.arange(10) % 2])
    assert silhouette_all_k(X, []) == []


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1",
    reason="Triton can run here",
)
def test_triton_options_are_checked_without_importing_triton():
    from kernels.silhouette_triton import DIST_PRECISIONS, METHODS, SUM_PRECISIONS
    from engine import silhouette

    assert set(silhouette._TRITON_DIST) == set(DIST_PRECISIONS)  # the copies cannot drift apart
    assert set(silhouette._TRITON_SUM) == set(SUM_PRECISIONS)
    assert set(silhouette._TRITON_METHODS) == set(METHODS)
    X, y = make_blobs(n_samples=60, n_features=4, centers=3, random_state=0)
    for bad, match in [(("tf32", "tf32"), "must be a dict"), ({"dist_precision": "bf16"}, "dist_precision"),
                       ({"sum_precision": "tf32x3"}, "sum_precision"), ({"method": "magic"}, "method"),
                       ({"block_m": 0}, "block_m"), ({"colour": 1}, "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            silhouette_all_k(X, [y], triton_options=bad)
    # the torch backend ignores valid ones: IEEE fp32 either way
    plain = silhouette_all_k(X, [y], backend="torch")[0].mean
    options = {"method": "tiled", "dist_precision": "fp16x3", "block_rows": 64}
    assert silhouette_all_k(X, [y], backend="torch", triton_options=options)[0].mean == plain


def test_triton_kernel_arguments_are_checked():
    from kernels.silhouette_triton import _labelling_of_columns, cluster_distance_sums_triton

    X = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="either onehot or columns"):
        cluster_distance_sums_triton(X)
    with pytest.raises(ValueError, match="either onehot or columns"):
        cluster_distance_sums_triton(X, torch.zeros(5, 4), columns=torch.zeros(5, 1, dtype=torch.int64), n_columns=4)
    with pytest.raises(ValueError, match="needs n_columns"):
        cluster_distance_sums_triton(X, columns=torch.zeros(5, 1, dtype=torch.int64))
    cols = torch.tensor([[0, 3], [1, 4], [0, 6]], dtype=torch.int32)  # K=2 in 0..1, K=5 in 2..6
    assert _labelling_of_columns(cols, 7).tolist() == [0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="its own range"):
        _labelling_of_columns(torch.tensor([[0, 1], [2, 3]], dtype=torch.int32), 4)  # ranges 0..2 and 1..3


def test_triton_backend_unavailable_without_cuda():
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    with pytest.raises(BackendUnavailable, match="[Tt]riton"):
        silhouette_all_k(X, [np.arange(20) % 2], backend="triton")
    # auto quietly means torch on the CPU
    res = silhouette_all_k(X, [np.arange(20) % 2], backend="auto")[0]
    _check(res, X, np.arange(20) % 2)


def test_default_exact_limit():
    assert isinstance(default_exact_limit("cpu"), int) and 10_000 <= default_exact_limit("cpu") <= 10_000_000
    assert default_exact_limit(torch.device("cuda")) == 1_000_000


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import numpy as np, torch
    from sklearn.metrics import silhouette_samples
    from kernels.silhouette_triton import (cluster_distance_sums_reference, cluster_distance_sums_tiled,
                                          cluster_distance_sums_triton)
    from engine.silhouette import silhouette_all_k

    out = {}
    rng = np.random.default_rng(0)
    n, d = 150, 21  # d not a multiple of the block: masked loads
    X = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32) + 30)
    X[10] = X[11]; X[12] = X[11]          # duplicates
    labels = [rng.integers(0, k, n) for k in (2, 5, 30)]
    C = 37
    onehot = torch.zeros(n, C)
    off = 0
    for lab, k in zip(labels, (2, 5, 30)):
        onehot[torch.arange(n), torch.from_numpy(lab) + off] = 1; off += k
    ref = cluster_distance_sums_reference(X, onehot)
    def rel(a):
        return float(((a.double() - ref).abs() / ref.abs().clamp(min=1)).max())
    for sp in ("ieee", "tf32", "tf32x2", "fp16", "fp16x2"):
        out["sum_" + sp] = rel(cluster_distance_sums_triton(X, onehot, sum_precision=sp))
    out["dist_fp16x3"] = rel(cluster_distance_sums_triton(X, onehot, dist_precision="fp16x3"))
    # the tiled method: Triton distance tiles (fp16) + matmul; several row blocks, ragged edges
    out["tiled"] = rel(cluster_distance_sums_tiled(X, onehot, block_rows=64, block_m=16, block_n=32, block_d=16))
    out["tiled_fp16x3"] = rel(cluster_distance_sums_tiled(X, onehot, dist_precision="fp16x3", block_rows=48,
                                                          block_m=16, block_n=16, block_d=16))
    out["tiled_one_block"] = rel(cluster_distance_sums_tiled(X, onehot, sum_chunk=None))
    # sums split into parts of 40 terms (row blocks capped to 40 too), ragged last part
    out["tiled_split"] = rel(cluster_distance_sums_tiled(X, onehot, sum_chunk=40, block_m=16, block_n=16, block_d=16))
    # the one-hot built in the kernel from each sample's column in each labelling
    columns = torch.stack([torch.from_numpy(lab) + off for lab, off in zip(labels, (0, 2, 7))], dim=1)
    out["columns"] = rel(cluster_distance_sums_triton(X, columns=columns, n_columns=C))
    out["columns_small_blocks"] = rel(cluster_distance_sums_triton(X, columns=columns, n_columns=C, block_m=16,
                                                                   block_n=32, block_d=16, block_c=16))
    # several cluster blocks and row blocks, ragged last blocks
    out["small_blocks"] = rel(cluster_distance_sums_triton(X, onehot, block_m=16, block_n=32, block_d=16, block_c=16))
    out["dtype"] = str(cluster_distance_sums_triton(X, onehot).dtype)

    Xs = X[:120].numpy()
    labs = [lab[:120] for lab in labels]
    res = silhouette_all_k(Xs, labs, backend="triton", triton_options={"method": "fused"})
    res += silhouette_all_k(Xs, labs, backend="triton", triton_options={"method": "fused", "dist_precision": "tf32",
                                                                        "sum_precision": "tf32x2"})
    refs = [silhouette_samples(Xs.astype(np.float64), l) for l in labs]
    half = silhouette_all_k(Xs, labs, backend="triton")  # the default: tiled, fp16 distance tiles
    out["mean_err_fp16"] = max(abs(r.mean - ref.mean()) for r, ref in zip(half, refs))
    refs = refs * 2
    out["mean_err"] = max(abs(r.mean - ref.mean()) for r, ref in zip(res, refs))
    out["sample_err"] = max(float(np.abs(r.samples - ref).max()) for r, ref in zip(res, refs))
    print("RESULT " + json.dumps(out))
    """
)


def test_triton_kernel_in_interpreter():
    """The kernel under TRITON_INTERPRET=1 in a fresh process (the variable is read when the kernel
    module is imported, so it cannot be switched on inside this process)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    for key in ("sum_ieee", "sum_tf32", "sum_tf32x2", "sum_fp16x2", "dist_fp16x3", "small_blocks", "columns",
                "columns_small_blocks"):
        assert out[key] < 1e-5, (key, out)
    # fp16 distances: each rounded to 11 bits (relative error <= 2^-12), so a sum over a handful of
    # members is off by up to ~2^-12; the interpreter rounds fp16 dot inputs as the GPU does
    for key in ("sum_fp16", "tiled", "tiled_fp16x3", "tiled_one_block", "tiled_split"):
        assert 0 < out[key] < 2.0**-11, (key, out)
    assert out["dtype"] == "torch.float32"
    assert out["mean_err"] < MEAN_TOL and out["sample_err"] < SAMPLE_TOL, out
    # fp16 distances, 4 members per cluster at K = 30: the bound for the kernel's mean
    assert out["mean_err_fp16"] < 1e-4, out


_AOT_SCRIPT = textwrap.dedent(
    """
    import json, os
    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from kernels.silhouette_triton import _cluster_sums_kernel, _distance_tile_kernel, default_config

    def compile_(fn, cc, types, const, warps, stages):
        sig = {a: ("constexpr" if a in const else types.get(a, "i32")) for a in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", cc, 32),
                           options={"num_warps": warps, "num_stages": stages})
        return len(k.asm["cubin"]) > 0

    done = []
    # the fused kernel: default configurations, then the fp16 variants of the tuning table
    for cc, C, d, dist, sum_mode, from_cols, blocks in [
            (90, 464, 200, "tf32x3", "tf32", False, None), (90, 40, 64, "tf32x3", "tf32x2", False, None),
            (80, 119, 200, "tf32x3", "ieee", False, None), (90, 464, 200, "tf32x3", "tf32", True, None),
            (90, 464, 200, "fp16x3", "fp16", False, (64, 32, 32, 512)),
            (90, 464, 200, "fp16x3", "fp16x2", False, (128, 32, 32, 256)),
            (90, 464, 200, "tf32x3", "fp16", True, (64, 32, 32, 256))]:
        cfg = default_config(C, d)
        bm, bn, bd, bc = blocks or (cfg["block_m"], cfg["block_n"], cfg["block_d"], cfg["block_c"])
        half_x, half_sum = dist == "fp16x3", sum_mode in ("fp16", "fp16x2")
        types = {"x_ptr": "*fp16" if half_x else "*fp32", "xlo_ptr": "*fp16" if half_x else "*fp32",
                 "sqn_ptr": "*fp32", "oh_ptr": "*fp16" if half_sum else "*fp32", "out_ptr": "*fp32",
                 "flush": "fp32", "sum_scale": "fp32", "cols_ptr": "*i32", "colk_ptr": "*i32"}
        const = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_C": bc, "DIST_PRECISION": dist,
                 "SUM_MODE": sum_mode, "FROM_COLUMNS": from_cols, "HALF_SUM": half_sum}
        done.append(["fused", cc, dist, sum_mode, compile_(_cluster_sums_kernel, cc, types, const, 8, 2)])
    # the tiled method's distance-tile kernel at its defaults
    for cc, dist in [(90, "fp16x3"), (90, "tf32x3"), (80, "fp16x3")]:
        half_x = dist == "fp16x3"
        types = {"x_ptr": "*fp16" if half_x else "*fp32", "xlo_ptr": "*fp16" if half_x else "*fp32",
                 "sqn_ptr": "*fp32", "out_ptr": "*fp16", "flush": "fp32", "sum_scale": "fp32"}
        const = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 32, "DIST_PRECISION": dist}
        done.append(["tiled", cc, dist, "fp16", compile_(_distance_tile_kernel, cc, types, const, 8, 3)])
    print("RESULT " + json.dumps(done))
    """
)


def test_triton_kernel_compiles_for_cuda_ahead_of_time():
    """Without a GPU, compile the kernels to cubin for sm_90 and sm_80 with the default launch
    configurations and the fp16 variants (Triton ships ptxas): catches lowering errors that the
    interpreter cannot."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    assert all(row[-1] for row in done) and len(done) == 10, done


# --------------------------------------------------------------------------- CUDA


_GPU_TRITON_OPTIONS = {
    "default": None,
    "fused": {"method": "fused"},
    "fused-fp16": {"method": "fused", "dist_precision": "fp16x3", "sum_precision": "fp16"},
    "tiled": {"method": "tiled", "dist_precision": "fp16x3"},
    "tiled-tf32x3": {"method": "tiled", "dist_precision": "tf32x3"},
}


@gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "triton:default", "triton:fused", "triton:fused-fp16", "triton:tiled",
                                     "triton:tiled-tf32x3"])
def test_gpu_mean_matches_float64(backend):
    from engine.device import capabilities

    backend, _, variant = backend.partition(":")
    if backend == "triton" and not capabilities()["triton"].available:
        pytest.skip(capabilities()["triton"].reason)
    X, y = make_blobs(n_samples=20_000, n_features=200, centers=12, cluster_std=4.0, random_state=0)
    X = X.astype(np.float32)
    rng = np.random.default_rng(0)
    labellings = [y, y % 5, y % 2, rng.integers(0, 7, len(y))]
    Xg = torch.from_numpy(X).cuda()
    res = silhouette_all_k(Xg, [torch.from_numpy(l).cuda() for l in labellings], backend=backend,
                           triton_options=_GPU_TRITON_OPTIONS.get(variant))
    for r, lab in zip(res, labellings):
        ref = _reference(X, lab)
        assert abs(r.mean - ref.mean()) < 1e-4, (backend, variant, r.mean, ref.mean())
        assert np.abs(r.samples - ref).max() < 2e-3


@gpu
@needs_cuda
def test_gpu_triton_kernel_matches_reference_with_duplicates():
    from engine.device import capabilities

    if not capabilities()["triton"].available:
        pytest.skip(capabilities()["triton"].reason)
    from kernels.silhouette_triton import (cluster_distance_sums_reference, cluster_distance_sums_tiled,
                                          cluster_distance_sums_triton)

    g = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 200, generator=g) * 2 + 40
    X[1000:1100] = X[:100]
    onehot = torch.zeros(3000, 600)  # > 512 columns: two cluster blocks
    for off in (0, 200, 400):
        onehot[torch.arange(3000), torch.randint(0, 200, (3000,), generator=g) + off] = 1
    ref = cluster_distance_sums_reference(X.cuda(), onehot.cuda())
    for sp in ("tf32", "tf32x2", "ieee"):
        got = cluster_distance_sums_triton(X.cuda(), onehot.cuda(), sum_precision=sp).double()
        err = float(((got - ref).abs() / ref.abs().clamp(min=1)).max())
        assert err < (2e-3 if sp == "tf32" else 1e-4), (sp, err)
    # fp16 distances: rounded to nearest (relative error <= 2^-12 each), so sums stay within that
    for name, got in [("fused fp16", cluster_distance_sums_triton(X.cuda(), onehot.cuda(), dist_precision="fp16x3",
                                                                  sum_precision="fp16")),
                      ("fused fp16x2", cluster_distance_sums_triton(X.cuda(), onehot.cuda(), dist_precision="fp16x3",
                                                                    sum_precision="fp16x2")),
                      ("tiled", cluster_distance_sums_tiled(X.cuda(), onehot.cuda(), block_rows=1024))]:
        err = float(((got.double() - ref).abs() / ref.abs().clamp(min=1)).max())
        assert err < (1e-4 if name == "fused fp16x2" else 2.0**-11), (name, err)


@gpu
@needs_cuda
def test_gpu_sampled_and_auto():
    X, y = make_blobs(n_samples=50_000, n_features=64, centers=8, random_state=1)
    Xg = torch.from_numpy(X.astype(np.float32)).cuda()
    exact = silhouette_all_k(Xg, [y, y % 3])
    sampled = silhouette_all_k(Xg, [y, y % 3], sample_size=5000)
    for e, s in zip(exact, sampled):
        assert s.sampled and abs(e.mean - s.mean) < 0.02


def test_ieee_matmul_blocks_that_overlap_restore_the_programs_setting():
    """Two fits in two threads: A enters, B enters, A leaves, B leaves. The float32 matmul
    precision is "highest" while either runs and the program's own afterwards (each block saving
    and restoring its own left "highest" behind for good). No GPU needed: only the setting moves."""
    import threading

    from engine.silhouette import _ieee_matmul

    cuda = torch.device("cuda")  # the device type decides; nothing runs on it
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        seen = []

        def a():
            with _ieee_matmul(cuda):
                a_in.set()
                b_in.wait(5)
            a_out.set()

        def b():
            a_in.wait(5)
            with _ieee_matmul(cuda):
                b_in.set()
                a_out.wait(5)
                seen.append(torch.get_float32_matmul_precision())  # A has left, B still inside

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen == ["highest"]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_ieee_matmul_under_the_per_backend_precision_api():
    """A program that set torch >= 2.9's per-backend precision (torch.backends.cuda.matmul.
    fp32_precision) made torch.get_float32_matmul_precision() raise, so every CUDA silhouette
    failed; its setting is switched to "ieee" and back through the same API. In a subprocess:
    the mixed setting stays for the rest of a process."""
    code = ("import torch\nfrom engine.silhouette import _ieee_matmul\n"
            "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
            "with _ieee_matmul(torch.device('cuda')):\n    inside = torch.backends.cuda.matmul.fp32_precision\n"
            "print(inside, torch.backends.cuda.matmul.fp32_precision)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["ieee", "tf32"]
