"""Fitted models: save/load one safetensors file, its validation, predicting new images
(paths, bytes, arrays, tensors), thread safety, and `imgcluster predict` / the demo's held-out set."""
from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as st_load, save as st_save
from sklearn.metrics import adjusted_rand_score

from engine import ImageClusterer, load_model
from engine.cli import app
from engine.errors import ConfigError, ModelFileError, WeightsUnavailable
from engine.loaders.decode import decode_image, load_and_preprocess
from engine.loaders.preprocess import normalize_uint8
from engine.model_file import FORMAT_VERSION, METADATA_KEY, read_model_file
from engine.sample_data import generate_sample_set
from tests.helpers import group_labels, read_rows

SMALL_GROUPS = ("red_stripes", "green_disc", "sunset_gradient")


@pytest.fixture(scope="module")
def fitted(three_groups):
    """A pixels-model ImageClusterer fitted on the 60 three_groups images (CPU)."""
    return ImageClusterer(model="pixels", device="cpu", k="2:5", pca=20).fit([three_groups])


@pytest.fixture(scope="module")
def model_file(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "three.imgc"
    fitted.save(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_file):
    model = load_model(model_file, device="cpu")
    yield model
    model.close()


@pytest.fixture(scope="module")
def blobs(fitted):
    return [p.read_bytes() for p in fitted.paths_]


def _doc(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()[METADATA_KEY])


def _rewrite(src, dst, doc_change=None, tensor_change=None):
    """Copy a model file with its metadata document and/or tensors changed (checksum left as is)."""
    data = src.read_bytes()
    doc, tensors = _doc(src), st_load(data)
    if doc_change:
        doc_change(doc)
    if tensor_change:
        tensor_change(tensors)
    dst.write_bytes(st_save(tensors, metadata={METADATA_KEY: json.dumps(doc)}))
    return dst


# -- saving, loading, reproducing ---------------------------------------------------------------

def test_save_load_predict_reproduces_training_labels(fitted, loaded, blobs):
    pred = loaded.predict_paths(fitted.paths_)
    np.testing.assert_array_equal(pred.labels, fitted.labels_)
    assert pred.labels.dtype == np.int64 and pred.distances.dtype == np.float32
    assert pred.confidences.dtype == np.float32 and pred.errors == [None] * len(blobs)
    # distances are to the assigned centroid in PCA space, as the run computed them
    res = fitted.result_
    expected = (res.reduced - res.centroids[torch.as_tensor(fitted.labels_)]).norm(dim=1).numpy()
    np.testing.assert_allclose(pred.distances, expected, rtol=1e-4, atol=1e-4)
    assert ((pred.confidences >= 0) & (pred.confidences <= 1)).all() and pred.confidences.mean() > 0.3
    # the same answers from encoded bytes (the server path) and from the ImageClusterer
    by_bytes = loaded.predict_bytes(blobs)
    np.testing.assert_array_equal(by_bytes.labels, fitted.labels_)
    np.testing.assert_allclose(by_bytes.distances, pred.distances, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fitted.predict(fitted.paths_), fitted.labels_)


def test_file_is_safetensors_with_one_json_document(fitted, model_file):
    with safe_open(str(model_file), "pt") as handle:
        names = set(handle.keys())
        meta = handle.metadata()
    assert set(meta) == {METADATA_KEY}
    doc = json.loads(meta[METADATA_KEY])
    assert names == {"pca_mean", "pca_components", "pca_explained_variance_ratio", "centroids",
                     "cluster_mean_distance", "cluster_sizes"}
    assert doc["format"] == "imgcluster-model" and doc["format_version"] == FORMAT_VERSION
    assert doc["backbone"]["name"] == "pixels" and doc["backbone"]["weights"]["kind"] == "none"
    assert doc["backbone"]["fingerprint"] == fitted.backbone_.fingerprint
    assert doc["preprocess"]["center_crop"] == 224 and doc["k"] == fitted.k_ == 3
    assert doc["pca"] == {**doc["pca"], "mode": "exact", "n_components": 20, "input_dim": 192}
    assert [s["k"] for s in doc["scores"]] == [2, 3, 4, 5] and len(doc["sha256"]) == 64
    assert doc["arrays"]["centroids"] == {"dtype": "float32", "shape": [3, 20]}
    assert doc["imgcluster_version"]
    state = read_model_file(model_file)
    np.testing.assert_array_equal(state.cluster_sizes.numpy(), np.bincount(fitted.labels_))
    res = fitted.result_
    dist = (res.reduced - res.centroids[torch.as_tensor(fitted.labels_)]).norm(dim=1).numpy()
    means = [dist[fitted.labels_ == c].mean() for c in range(3)]
    np.testing.assert_allclose(state.cluster_mean_distance.numpy(), means, rtol=1e-5)
    np.testing.assert_array_equal(state.centroids.numpy(), fitted.cluster_centers_)
    # written atomically: no temp files left beside it
    assert [p.name for p in model_file.parent.iterdir()] == [model_file.name]


def test_imageclusterer_save_load_round_trip(fitted, model_file, three_groups, tmp_path):
    again = ImageClusterer.load(model_file, device="cpu")
    assert again.k_ == fitted.k_ and again.scores_ == fitted.scores_
    np.testing.assert_array_equal(again.cluster_centers_, fitted.cluster_centers_)
    assert again.get_params()["model"] == "pixels" and again.get_params()["pca"] == 20
    assert again.pca_.n_components == 20
    np.testing.assert_array_equal(again.predict(three_groups), fitted.labels_)
    assert not hasattr(again, "labels_")  # training labels are not in the file
    # a loaded clusterer saves an equivalent file
    again.save(tmp_path / "copy.imgc")
    assert read_model_file(tmp_path / "copy.imgc").scores == fitted.scores_


def test_pca_off_round_trip(three_groups, tmp_path):
    clusterer = ImageClusterer(model="pixels", device="cpu", k="2:4", pca=0).fit([three_groups])
    path = clusterer.save(tmp_path / "off.imgc")
    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == {"centroids", "cluster_mean_distance", "cluster_sizes"}
    model = load_model(path, device="cpu")
    assert model.state.pca["mode"] == "off" and model.centroids.shape == (clusterer.k_, 192)
    np.testing.assert_array_equal(model.predict_paths(clusterer.paths_).labels, clusterer.labels_)


def test_not_fitted_cannot_save(tmp_path):
    with pytest.raises(ConfigError, match="not fitted"):
        ImageClusterer(model="pixels").save(tmp_path / "x.imgc")


# -- validation: each failure has its own clear error ----------------------------------------

def test_truncated_file(model_file, tmp_path):
    data = model_file.read_bytes()
    for cut in (len(data) - 7, len(data) // 2, 200, 5, 0):
        bad = tmp_path / f"cut{cut}.imgc"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated or not an imgcluster model file"):
            load_model(bad, device="cpu")


def test_not_a_model_file(three_groups, tmp_path):
    jpeg = next(three_groups.rglob("*.jpg"))
    with pytest.raises(ModelFileError, match="truncated or not an imgcluster model file"):
        load_model(jpeg, device="cpu")
    other = tmp_path / "weights.safetensors"
    other.write_bytes(st_save({"w": torch.zeros(3)}))
    with pytest.raises(ModelFileError, match="no imgcluster metadata"):
        load_model(other, device="cpu")
    with pytest.raises(ModelFileError, match="cannot read the model file"):
        load_model(tmp_path / "missing.imgc", device="cpu")


def test_tampered_tensor_byte(model_file, tmp_path):
    data = bytearray(model_file.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes
    bad = tmp_path / "tampered.imgc"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(bad, device="cpu")
    # same shapes, other values, metadata untouched: still caught
    bad = _rewrite(model_file, tmp_path / "tampered2.imgc",
                   tensor_change=lambda t: t.__setitem__("centroids", t["centroids"] + 1e-3))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        read_model_file(bad)


def test_wrong_format_version(model_file, tmp_path):
    bad = _rewrite(model_file, tmp_path / "v99.imgc", doc_change=lambda d: d.__setitem__("format_version", 99))
    with pytest.raises(ModelFileError, match=r"format version 99 is not supported .*reads version 1.*newer"):
        load_model(bad, device="cpu")


def test_arrays_must_match_metadata(model_file, tmp_path):
    bad = _rewrite(model_file, tmp_path / "k.imgc", doc_change=lambda d: d.__setitem__("k", 4))
    with pytest.raises(ModelFileError, match=r"array 'centroids' has shape \(3, 20\); the metadata says \(4, 20\)"):
        read_model_file(bad)
    bad = _rewrite(model_file, tmp_path / "missing.imgc", tensor_change=lambda t: t.pop("cluster_sizes"))
    with pytest.raises(ModelFileError, match="array 'cluster_sizes' is missing"):
        read_model_file(bad)
    bad = _rewrite(model_file, tmp_path / "dtype.imgc",
                   tensor_change=lambda t: t.__setitem__("pca_mean", t["pca_mean"].double()))
    with pytest.raises(ModelFileError, match="array 'pca_mean' has dtype float64, expected float32"):
        read_model_file(bad)
    bad = _rewrite(model_file, tmp_path / "extra.imgc", tensor_change=lambda t: t.__setitem__("evil", torch.ones(2)))
    with pytest.raises(ModelFileError, match="unexpected array 'evil'"):
        read_model_file(bad)


# -- weights and fingerprints (resnet18, random weights, a few images) ----------------------

@pytest.fixture(scope="module")
def resnet_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resnet")
    generate_sample_set(root / "imgs", per_group=3, groups=SMALL_GROUPS)
    clusterer = ImageClusterer(model="resnet18", weights="random", seed=0, device="cpu", k="2:3", pca=4,
                               batch_size=8).fit([root / "imgs"])
    path = clusterer.save(root / "r18.imgc")
    import torchvision

    torch.manual_seed(1)
    other = torchvision.models.resnet18(weights=None).state_dict()
    st_file = root / "seed1.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.items()}, str(st_file))
    return clusterer, path, st_file, root


def test_random_weights_reload_from_recorded_seed(resnet_setup):
    clusterer, path, _, _ = resnet_setup
    model = load_model(path, device="cpu")
    assert model.state.backbone["weights"] == {**model.state.backbone["weights"], "kind": "random", "seed": 0}
    np.testing.assert_array_equal(model.predict_paths(clusterer.paths_).labels, clusterer.labels_)
    # thread safety with a real CNN: 8 threads, same answers as serial calls
    blobs = [p.read_bytes() for p in clusterer.paths_[:3]]
    serial = model.predict_bytes(blobs)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: model.predict_bytes(blobs), range(8)))
    for r in results:
        np.testing.assert_array_equal(r.labels, serial.labels)
        np.testing.assert_array_equal(r.distances, serial.distances)


def test_fingerprint_mismatch_is_an_error_unless_allowed(resnet_setup, runner, tmp_path):
    clusterer, path, other_weights, root = resnet_setup
    with pytest.raises(ModelFileError, match="fingerprint mismatch.*weights differ.*--allow-fingerprint-mismatch"):
        load_model(path, device="cpu", weights=other_weights)
    with pytest.warns(UserWarning, match="fingerprint mismatch"):
        model = load_model(path, device="cpu", weights=other_weights, allow_fingerprint_mismatch=True)
    pred = model.predict_paths(clusterer.paths_)
    assert pred.ok.all() and set(pred.labels.tolist()) <= set(range(clusterer.k_))
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(path), str(root / "imgs"), "--out", str(out), "--device", "cpu",
                                 "--weights", str(other_weights)])
    assert result.exit_code == 2 and "fingerprint mismatch" in result.output and not out.exists()
    result = runner.invoke(app, ["predict", str(path), str(root / "imgs"), "--out", str(out), "--device", "cpu",
                                 "--weights", str(other_weights), "--allow-fingerprint-mismatch", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "fingerprint mismatch" in result.output and len(read_rows(out)) == 9


def test_weights_file_spec_and_override_with_a_copy(resnet_setup, tmp_path):
    _, _, weights_file, root = resnet_setup
    local = tmp_path / "w.safetensors"
    shutil.copy(weights_file, local)
    clusterer = ImageClusterer(model="resnet18", weights=str(local), device="cpu", k="2:3", pca=4,
                               batch_size=8).fit([root / "imgs"])
    path = clusterer.save(tmp_path / "file-weights.imgc")
    assert read_model_file(path).backbone["weights"]["kind"] == "path"
    np.testing.assert_array_equal(load_model(path, device="cpu").predict_paths(clusterer.paths_).labels,
                                  clusterer.labels_)
    moved = tmp_path / "elsewhere.safetensors"
    local.rename(moved)
    with pytest.raises(WeightsUnavailable, match="weights file .* is not here; pass weights=PATH"):
        load_model(path, device="cpu")
    model = load_model(path, device="cpu", weights=moved)  # same bytes, same fingerprint
    np.testing.assert_array_equal(model.predict_paths(clusterer.paths_).labels, clusterer.labels_)


# -- the embedding API -------------------------------------------------------------------------

def test_concurrent_predict_bytes_equals_serial(loaded, blobs):
    requests = [blobs[i::8] for i in range(8)] + [blobs[:1], blobs[:3]]
    serial = [loaded.predict_bytes(r) for r in requests]
    start = threading.Barrier(8)

    def worker(t):
        start.wait()
        return [loaded.predict_bytes(requests[(t + j) % len(requests)]) for j in range(len(requests))]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(worker, range(8)))
    for t, answer in enumerate(answers):
        for j, got in enumerate(answer):
            want = serial[(t + j) % len(requests)]
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_array_equal(got.distances, want.distances)
            np.testing.assert_array_equal(got.confidences, want.confidences)
            assert got.errors == want.errors
    assert loaded._pool is not None and loaded._pool._max_workers <= 8  # one shared pool, not one per call


def test_bad_items_fail_alone(loaded, blobs, fitted):
    batch = [blobs[0], b"\xff\xd8\xff\xe0 not a jpeg", blobs[1], "/etc/passwd", b"", blobs[-1][:300]]
    pred = loaded.predict_bytes(batch)
    assert pred.labels.shape == (6,) and len(pred.errors) == 6
    assert pred.labels[[0, 2]].tolist() == fitted.labels_[[0, 1]].tolist()
    assert pred.errors[0] is None and pred.errors[2] is None
    assert pred.labels[[1, 3, 4, 5]].tolist() == [-1] * 4
    assert np.isnan(pred.distances[1]) and np.isnan(pred.confidences[4])
    assert "expected encoded image bytes, got str" in pred.errors[3]  # a str is never opened as a path
    assert "empty" in pred.errors[4] and pred.errors[1] and pred.errors[5]
    as_json = pred.to_dict()
    assert as_json["distances"][1] is None and as_json["labels"][0] == int(fitted.labels_[0])
    json.dumps(as_json)


def test_a_large_request_is_decoded_and_predicted_a_batch_at_a_time(model_file, loaded, blobs, monkeypatch):
    """predict_bytes / predict_arrays over more items than batch_size: at most batch_size items
    are decoded and held at once (3,000 tiny images held 4 GB), and the results are those of one
    whole-request pass, bad items included, in request order."""
    items = [blobs[0], b"junk", *blobs[1:6], b"", blobs[6]]
    whole = loaded.predict_bytes(items)
    small = load_model(model_file, device="cpu", batch_size=3)
    seen = []
    real = small._predict_uint8
    monkeypatch.setattr(small, "_predict_uint8", lambda part: seen.append(len(part)) or real(part))
    try:
        chunked = small.predict_bytes(items)
        arrays = small.predict_arrays([np.asarray(decode_image(b)) for b in blobs[:7]])
    finally:
        small.close()
    assert seen == [3, 3, 3, 3, 3, 1]  # 9 items, then 7 arrays
    np.testing.assert_array_equal(chunked.labels, whole.labels)
    np.testing.assert_allclose(chunked.distances, whole.distances, rtol=1e-5)
    assert chunked.errors == whole.errors and chunked.labels[[1, 7]].tolist() == [-1, -1]
    np.testing.assert_array_equal(arrays.labels, loaded.predict_bytes(blobs[:7]).labels)


def test_predict_arrays_and_tensors_match_bytes(loaded, blobs):
    arrays = [np.asarray(decode_image(b)) for b in blobs[:5]]
    by_bytes = loaded.predict_bytes(blobs[:5])
    by_arrays = loaded.predict_arrays(arrays + [np.zeros((10, 10, 2), np.uint8), np.zeros((8, 8, 3), np.float32)])
    np.testing.assert_array_equal(by_arrays.labels[:5], by_bytes.labels)
    np.testing.assert_array_equal(by_arrays.distances[:5], by_bytes.distances)
    assert by_arrays.labels[5:].tolist() == [-1, -1]
    assert "(H, W, 4) RGBA array, got uint8 (10, 10, 2)" in by_arrays.errors[5]
    assert "float32" in by_arrays.errors[6]
    batch = normalize_uint8(torch.from_numpy(np.stack([load_and_preprocess(b) for b in blobs[:5]])))
    by_tensors = loaded.predict_tensors(batch)
    np.testing.assert_array_equal(by_tensors.labels, by_bytes.labels)
    np.testing.assert_array_equal(by_tensors.distances, by_bytes.distances)
    with pytest.raises(ConfigError, match=r"expects a \(n, 3, 224, 224\)"):
        loaded.predict_tensors(torch.zeros(2, 3, 64, 64))
    assert len(loaded.predict_bytes([])) == 0 and len(loaded.predict_tensors(torch.zeros(0, 3, 224, 224))) == 0


# -- the CLI ---------------------------------------------------------------------------------

def test_cli_run_save_model_then_predict(three_groups, runner, tmp_path):
    out = tmp_path / "run"
    model = tmp_path / "m.imgc"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "2:4",
                                 "--no-report", "--no-cache", "--save-model", str(model)])
    assert result.exit_code == 0, result.output
    assert model.exists()
    new = tmp_path / "new"
    new.mkdir()
    picked = sorted(three_groups.rglob("*.jpg"))[::7]
    for p in picked:
        shutil.copy(p, new / f"{p.parent.name}-{p.name}")
    (new / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    preds = tmp_path / "preds" / "new.csv"
    result = runner.invoke(app, ["predict", str(model), str(new), "--out", str(preds), "--device", "cpu",
                                 "--decoder", "pil", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert f"Assigned {len(picked)} image(s) to K = 3 clusters" in result.output
    rows = read_rows(preds)
    assert list(rows[0]) == ["path", "cluster", "distance", "confidence"] and len(rows) == len(picked)
    trained = {r["path"].split("/")[-2] + "-" + r["path"].split("/")[-1]: r["cluster"]
               for r in read_rows(out / "predictions.csv")}
    for r in rows:
        assert r["cluster"] == trained[r["path"].split("/")[-1]]
        assert float(r["distance"]) >= 0 and 0 <= float(r["confidence"]) <= 1
    skipped = read_rows(preds.parent / "new.skipped.csv")  # named after --out: a run's skipped.csv is never replaced
    assert [r["path"].split("/")[-1] for r in skipped] == ["zz-broken.jpg"] and skipped[0]["reason"]
    assert not (preds.parent / "skipped.csv").exists()


def test_cli_predict_bad_model_file_is_one_line(runner, tmp_path, three_groups):
    bad = tmp_path / "bad.imgc"
    bad.write_bytes(b"nonsense")
    result = runner.invoke(app, ["predict", str(bad), str(three_groups), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    assert "truncated or not an imgcluster model file" in result.output and "Traceback" not in result.output


def test_demo_model_predicts_held_out_images(runner, tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--model", "pixels", "--per-group", "8",
                                 "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "model.imgc").exists() and "imgcluster predict" in result.output
    held = sorted((out / "held-out").rglob("*.jpg"))
    assert len(held) == 6 * 4 and not {p.name for p in held} & {p.name for p in (out / "images").rglob("*.jpg")}
    preds = out / "held-out-predictions.csv"
    result = runner.invoke(app, ["predict", str(out / "model.imgc"), str(out / "held-out"), "--out", str(preds),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    rows = read_rows(preds)
    assert len(rows) == len(held)
    truth, pred = group_labels(rows)
    assert adjusted_rand_score(truth, pred) >= 0.9


def test_model_of_a_reclustered_run(three_groups, tmp_path):
    """A run re-clustered from cached features has no resident backbone: the model loads it from
    the recorded weights (fingerprint checked) and predicts like the original run."""
    from engine.model import FittedModel, ModelState
    from engine.recluster import recluster

    run = ImageClusterer(model="pixels", device="cpu", k="2:5").fit([three_groups], out_dir=tmp_path / "run")
    result = recluster(tmp_path / "run", out_dir=tmp_path / "again", k="2:4")
    path = ModelState.from_result(result).save(tmp_path / "re.imgc")
    assert read_model_file(path).backbone["fingerprint"] == run.backbone_.fingerprint
    model = FittedModel.from_result(result)
    assert model.backbone.name == "pixels"
    np.testing.assert_array_equal(model.predict_paths(result.paths).labels, result.labels)


@pytest.mark.gpu
def test_cuda_predict_matches_cpu_and_is_thread_safe(model_file, blobs, fitted):
    """On a GPU: uint8 upload + fp16 normalize, features in bf16; the clusters match the CPU run."""
    model = load_model(model_file, device="cuda")
    pred = model.predict_bytes(blobs)
    assert adjusted_rand_score(fitted.labels_, pred.labels) >= 0.95 and pred.ok.all()
    requests = [blobs[i::8] for i in range(8)]
    serial = [model.predict_bytes(r) for r in requests]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: model.predict_bytes(requests[i]), range(8)))
    for got, want in zip(answers, serial):
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.distances, want.distances, rtol=1e-3, atol=1e-3)
    batch = normalize_uint8(torch.from_numpy(np.stack([load_and_preprocess(b) for b in blobs[:4]])).cuda(),
                            torch.float16)
    np.testing.assert_array_equal(model.predict_tensors(batch).labels, pred.labels[:4])
    model.close()


def test_io_threads_reach_the_prediction_loader(model_file, three_groups, monkeypatch):
    """predict's --io-threads goes to the loader, as run's does; 0 is a clear error."""
    import engine.loaders

    seen = {}
    real = engine.loaders.make_loader

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.loaders, "make_loader", recording)
    with load_model(model_file, device="cpu", io_threads=3) as model:
        model.predict_paths(sorted(three_groups.rglob("*.jpg"))[:2])
    assert seen["io_threads"] == 3
    with pytest.raises(ConfigError, match="io_threads=0 must be >= 1"):
        load_model(model_file, device="cpu", io_threads=0)


def test_predict_arrays_takes_grayscale_and_rgba_as_files_of_those_kinds_are(loaded):
    """A grayscale or RGBA array gets the label its PNG file gets (alpha composited on white)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(3)
    gray = rng.integers(0, 255, (60, 80), dtype=np.uint8)
    rgba = rng.integers(0, 255, (60, 80, 4), dtype=np.uint8)

    def png(array, mode):
        buffer = io.BytesIO()
        Image.fromarray(array, mode).save(buffer, "PNG")
        return buffer.getvalue()

    with pytest.raises(TypeError, match=r"a list of images: predict_arrays\(\[image\]\)"):
        loaded.predict_arrays(rgba[:, :, :3])  # one image, not a list: its rows are not images
    assert "got uint8 (5, 0, 1)" in loaded.predict_arrays([np.zeros((5, 0, 1), np.uint8)]).errors[0]
    by_arrays = loaded.predict_arrays([gray, gray[:, :, None], rgba])
    by_files = loaded.predict_bytes([png(gray, "L"), png(gray, "L"), png(rgba, "RGBA")])
    assert by_arrays.errors == [None, None, None]
    np.testing.assert_array_equal(by_arrays.labels, by_files.labels)
    np.testing.assert_allclose(by_arrays.distances, by_files.distances, rtol=1e-5)
