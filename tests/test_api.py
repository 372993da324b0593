"""The Python API's contract with a caller (from an API audit): predict lines up with its inputs,
parameters are checked by type before any work, and a fitted clusterer is safe to share."""
from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from engine import ImageClusterer
from engine.config import Config
from engine.errors import ConfigError


@pytest.fixture(scope="module")
def fitted(three_groups):
    return ImageClusterer(model="pixels", device="cpu", pca=20, k="2:4").fit([three_groups])


def test_predict_gives_one_label_per_named_file_in_order(fitted, three_groups, tmp_path):
    a, b = sorted(three_groups.glob("*/*.jpg"))[:: 20][:2]
    one_a, one_b = fitted.predict([a])[0], fitted.predict([b])[0]
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "broken.jpg")
    labels = fitted.predict([a, b, a, tmp_path / "missing.jpg", tmp_path / "broken.jpg", str(a)])
    # duplicates kept, missing and broken files are -1 in place (not dropped, not an exception)
    assert labels.tolist() == [one_a, one_b, one_a, -1, -1, one_a]


def test_predict_expands_folders_and_says_which_files(fitted, three_groups):
    files = fitted.prediction_paths([three_groups])
    assert len(files) == 60 and len(fitted.predict([three_groups])) == 60
    assert fitted.predict(np.array([str(files[0])])).tolist() == fitted.predict([files[0]]).tolist()


def test_prediction_paths_are_a_pathlist_in_input_order(fitted, three_groups, tmp_path):
    """Folders, globs and named files (existing, missing, non-UTF-8, un-normalised, named like a
    glob) in one PathList: no Path per image, the files and order of the list of Path it was."""
    from pathlib import Path

    from engine.pathlist import PathList
    from engine.sources import discover

    a = sorted(three_groups.glob("*/*.jpg"))[0]
    folder = sorted(p for p in three_groups.iterdir() if p.is_dir())[0]
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9[1].jpg")  # not UTF-8, named like a glob
    with open(odd, "wb") as handle:
        handle.write(a.read_bytes())
    pattern = str(three_groups / "*" / "*[05].jpg")
    inputs = [a, str(folder), "./missing//x.jpg", odd, pattern, str(a), np.str_(folder)]
    files = fitted.prediction_paths(inputs)
    expected = [a, *discover([folder]).paths, Path("missing/x.jpg"), Path(os.fsdecode(odd)),
                *discover([pattern]).paths, a, *discover([folder]).paths]
    assert isinstance(files, PathList) and files == expected
    assert os.fsencode(files[len(discover([folder]).paths) + 2]) == odd
    one = fitted.prediction_paths(folder)
    assert isinstance(one, PathList) and one == discover([folder]).paths
    assert fitted.prediction_paths([]) == []

    # a name no file can have: a list of Path as before, labelled -1 in place
    labels = fitted.predict([a, "\ud800.jpg", folder])
    assert fitted.prediction_paths([a, "\ud800.jpg"]) == [a, Path("\ud800.jpg")]
    assert labels[1] == -1 and labels[0] == fitted.predict([a])[0] and len(labels) == 2 + len(one)
    assert fitted.predict(inputs).tolist() == fitted.model_.predict_paths(expected).labels.tolist()


@pytest.mark.parametrize("item", [b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", object(), np.zeros((4, 4, 3))])
def test_predict_rejects_what_is_not_a_path(fitted, item):
    with pytest.raises(TypeError, match="predict takes paths"):
        fitted.predict([item])


def test_model_methods_reject_a_single_item_for_a_list(fitted, three_groups):
    path = sorted(three_groups.glob("*/*.jpg"))[0]
    with pytest.raises(TypeError, match=r"predict_paths\(\[path\]\)"):
        fitted.model_.predict_paths(str(path))
    with pytest.raises(TypeError, match=r"predict_bytes\(\[data\]\)"):
        fitted.model_.predict_bytes(path.read_bytes())


@pytest.mark.parametrize("params, needle", [
    (dict(seed=None), "seed=None must be an integer"),
    (dict(seed=1.5), "seed=1.5 must be an integer"),
    (dict(n_init="3"), "n_init='3' must be an integer"),
    (dict(batch_size="8"), "batch_size='8' must be an integer"),
    (dict(device=None), "device=None must be a string"),
    (dict(compile="yes"), "compile='yes' must be True or False"),
    (dict(k=["x"]), "every K must be an integer"),
    (dict(pca="a"), "pca='a' must be a component count"),
])
def test_parameters_of_the_wrong_type_are_config_errors(params, needle):
    with pytest.raises(ConfigError, match=needle):
        Config.from_kwargs(**params)


def test_numpy_numbers_mean_what_python_numbers_mean():
    flat = Config.from_kwargs(seed=np.int64(3), pca=np.int64(5), k=(np.int64(2), np.int64(4))).flat()
    assert flat["seed"] == 3 and flat["pca"] == 5 and flat["k"] == [2, 3, 4]
    assert Config.from_kwargs(k=range(2, 5)).flat()["k"] == [2, 3, 4]


def test_concurrent_first_requests_share_one_model(three_groups):
    clusterer = ImageClusterer(model="pixels", device="cpu", pca=20, k="2:4").fit([three_groups])
    seen, start = [], threading.Barrier(8)

    def first_use():
        start.wait()
        seen.append(id(clusterer.model_))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1


def test_a_clusterer_pickles_after_predicting(fitted, three_groups):
    path = sorted(three_groups.glob("*/*.jpg"))[0]
    before = fitted.predict([path])
    again = pickle.loads(pickle.dumps(fitted))
    assert again.predict([path]).tolist() == before.tolist()


def test_report_without_out_dir_is_an_error(three_groups):
    with pytest.raises(ConfigError, match="pass out_dir"):
        ImageClusterer(model="pixels", device="cpu").fit([three_groups], report=True)


def test_not_fitted_is_an_attribute_error_too():
    from engine.errors import NotFittedError

    clusterer = ImageClusterer(model="pixels")
    assert not hasattr(clusterer, "model_")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        clusterer.predict(["x.jpg"])


def test_close_while_requests_run_never_fails_a_request(fitted, three_groups):
    import sys

    blobs = [p.read_bytes() for p in sorted(three_groups.glob("*/*.jpg"))[:3]]
    model, errors, done = fitted.model_, [], threading.Event()

    def requests():
        try:
            for _ in range(40):
                assert len(model.predict_bytes(blobs).labels) == 3
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as much as possible
    try:
        threads = [threading.Thread(target=requests) for _ in range(4)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            model.close()
        done.set()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_predict_never_blocks_on_a_fifo_and_labels_odd_names(fitted, three_groups, tmp_path):
    import shutil

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    real = sorted(three_groups.glob("*/*.jpg"))[0]
    globby = tmp_path / "x[1].jpg"  # an existing file named like a glob is that file
    shutil.copy(real, globby)
    labels = fitted.predict([fifo, globby, tmp_path / "y[1].jpg", "/dev/zero"])
    assert labels.tolist() == [-1, fitted.predict([real])[0], -1, -1]
    assert fitted.model_.predict_paths([fifo]).errors[0] == "not a regular file"


def test_a_loaded_clusterer_pickles_and_load_options_are_checked(fitted, three_groups, tmp_path):
    from engine import load_model

    path = fitted.save(tmp_path / "m.imgc")
    loaded = ImageClusterer.load(path, device="cpu")
    image = sorted(three_groups.glob("*/*.jpg"))[0]
    assert pickle.loads(pickle.dumps(loaded)).predict([image]).tolist() == loaded.predict([image]).tolist()
    # the encoded and decoded forms of that image get its label, as from load_model's predictor
    from PIL import Image

    label = loaded.predict([image]).tolist()
    assert loaded.predict_bytes([image.read_bytes(), b"not an image"]).tolist() == label + [-1]
    assert loaded.predict_arrays([np.asarray(Image.open(image).convert("RGB"))]).tolist() == label
    # close() (and a with block) stops the predictor's decode threads; it still predicts after
    with ImageClusterer.load(path, device="cpu") as scoped:
        scoped.predict_bytes([image.read_bytes(), image.read_bytes()])
        pool = scoped.model_._pool
        assert pool is not None
    assert scoped.model_._pool is None and pool._shutdown
    assert scoped.predict_bytes([image.read_bytes()]).tolist() == label
    ImageClusterer().close()  # not fitted: nothing to stop, no error
    # set_params on a loaded clusterer is for the next fit: the predictor keeps its settings, and says so
    with pytest.warns(UserWarning, match=r"set_params\(batch_size\) changes the next fit"):
        scoped.set_params(batch_size=3)
    assert scoped.model_.batch_size != 3
    # the options a load was given are its parameters (get_params reported the fit's)
    tuned = ImageClusterer.load(path, device="cpu", max_pixels=1000, batch_size=4)
    assert tuned.get_params()["max_pixels"] == 1000 and tuned.get_params()["batch_size"] == 4
    assert tuned.model_.max_pixels == 1000 and loaded.get_params()["max_pixels"] == loaded.model_.max_pixels
    # not given: load_model's defaults, whatever the fit used (a fit with batch_size=7, max_pixels=None)
    odd = ImageClusterer(model="pixels", device="cpu", pca=4, k="2:3", batch_size=7, max_pixels=None)
    plain = ImageClusterer.load(odd.fit([image.parent]).save(tmp_path / "odd.imgc"), device="cpu")
    assert plain.get_params()["max_pixels"] == plain.model_.max_pixels == 178_956_970
    assert plain.get_params()["batch_size"] is None  # auto, as the predictor chose
    with pytest.raises(ConfigError, match="batch_size='8' must be an integer"):
        load_model(path, device="cpu", batch_size="8")
    with pytest.raises(ConfigError, match="max_pixels=0 must be >= 1"):
        load_model(path, device="cpu", max_pixels=0)


def test_a_negative_seed_is_still_a_seed():
    assert Config.from_kwargs(seed=-1).flat()["seed"] == -1  # runs and model files with seed=-1 exist


def test_repr_shows_the_parameters_that_differ_from_the_defaults():
    assert repr(ImageClusterer()) == "ImageClusterer()"
    assert repr(ImageClusterer(model="pixels", k="2:8")) == "ImageClusterer(model='pixels', k='2:8')"
    assert repr(ImageClusterer(k=np.arange(2, 5))).startswith("ImageClusterer(k=array(")


def test_the_constructor_defaults_are_the_configs():
    import inspect

    signature = inspect.signature(ImageClusterer.__init__).parameters
    from_signature = Config.from_kwargs(**{name: p.default for name, p in signature.items() if name != "self"})
    assert from_signature.flat() == Config().flat()
    assert sorted(name for name in signature if name != "self") == sorted(Config.parameter_names())


def test_scikit_learn_tools_work_on_a_clusterer(fitted):
    from sklearn.base import clone, is_clusterer
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    unfitted = ImageClusterer(model="pixels", k="2:4")
    copy = clone(unfitted)
    assert copy is not unfitted and copy.get_params() == unfitted.get_params()
    assert is_clusterer(unfitted)
    with pytest.raises(NotFittedError):
        check_is_fitted(unfitted)
    check_is_fitted(fitted)  # no exception once fitted
    assert clone(fitted).get_params() == fitted.get_params() and not hasattr(clone(fitted), "labels_")
    assert unfitted.set_params(k="2:6").k == "2:6"
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['kk'\]"):
        unfitted.set_params(kk=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'kk'"):
        ImageClusterer(kk=3)


def test_api_errors_name_the_python_parameters(three_groups, tmp_path, offline_weights):
    """An error the engine words for the command line ("--weights random") gets the Python form of
    the flags it names appended when it reaches a Python caller; its type is unchanged, and the
    CLI's own message is not."""
    import engine
    from engine.api_wording import in_python_terms, without_python_terms
    from engine.cli import app
    from engine.errors import InputError, WeightsUnavailable
    from typer.testing import CliRunner

    with pytest.raises(WeightsUnavailable) as offline:
        ImageClusterer(model="resnet18").fit([three_groups])
    assert "--weights random" in str(offline.value) and str(offline.value).endswith("[in Python: weights=...]")
    with pytest.raises(WeightsUnavailable, match=r"not auto, random or an existing file.*\[in Python: weights=\.\.\.\]"):
        ImageClusterer(model="resnet18", weights=str(tmp_path / "randm")).fit([three_groups])
    # the two API functions the CLI shares are wrapped where the package exports them
    from engine.export import export_clusters
    from engine.model import load_model

    assert engine.export_clusters.__wrapped__ is export_clusters and engine.load_model.__wrapped__ is load_model
    with pytest.raises(InputError, match=r"is not a finished run \(predictions.csv is missing\)$"):  # names no flag
        engine.export_clusters(tmp_path, tmp_path / "new")
    assert in_python_terms("--decoder nvjpeg needs --device cuda; use --device cpu") == (
        "--decoder nvjpeg needs --device cuda; use --device cpu [in Python: decoder=..., device=...]")
    assert in_python_terms("no flag here") == "no flag here"
    once = in_python_terms("--no-cache")
    assert once == "--no-cache [in Python: fit(..., cache=False)]" and in_python_terms(once) == once
    assert without_python_terms(once) == "--no-cache" and without_python_terms("x [y]") == "x [y]"

    cli = CliRunner().invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "o"), "--model", "resnet18"])
    assert cli.exit_code == 2 and "--weights random" in cli.output and "in Python" not in cli.output


def test_notices_to_a_python_caller_name_its_terms(three_groups, tmp_path, caplog):
    """Through the 'imgcluster' logger, a notice naming a CLI flag also gives the Python form, and
    the skipped-files notice of a fit without out_dir points at skipped_, not a skipped.csv that
    was never written."""
    import logging
    import shutil

    data = tmp_path / "data"
    shutil.copytree(three_groups, data)
    (data / "broken.jpg").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="imgcluster"):
        fitted = ImageClusterer(model="resnet18", weights="random", device="cpu", pca=4, k="2:3",
                                batch_size=16).fit([data])
    lines = [r.getMessage() for r in caplog.records if r.name == "imgcluster"]
    assert any(line.startswith("--weights random") and line.endswith("[in Python: weights=...]") for line in lines), lines
    skipped = [line for line in lines if line.startswith("Skipped 1 file(s)")]
    assert skipped and skipped[0].endswith("(see ImageClusterer.skipped_)"), lines
    assert [Path(p).name for p, _ in fitted.skipped_] == ["broken.jpg"]
