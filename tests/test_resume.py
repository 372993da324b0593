"""Feature cache: kill -9 and resume, changed/new/removed files, invalidation, damage, and
`imgcluster cluster` (re-clustering from the cache without decoding)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import app
from engine.errors import ConfigError
from engine.sample_data import generate_sample_set
from tests.helpers import read_rows

REPO = Path(__file__).resolve().parents[1]
RESUMED = re.compile(r"Resumed (\d+) of (\d+) images from the feature cache")


def _run(runner, data, out, *extra):
    result = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "2:4",
                                 "--no-report", *extra])
    assert result.exit_code == 0, result.output
    return result


def _summary(out) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())


def _shard_rows(features: Path) -> int:
    """Entries (good rows + failures) in the shards that count (those with an index file)."""
    total = 0
    for index in features.glob("shard-*.index.json"):
        data = json.loads(index.read_text())
        total += len(data["rows"]) + len(data["failures"])
    return total


@pytest.fixture()
def small_set(tmp_path):
    """12 JPEGs in 3 groups, a private copy per test (tests change files)."""
    data = tmp_path / "data"
    generate_sample_set(data, per_group=4, groups=("red_stripes", "green_disc", "sunset_gradient"))
    return data


# --------------------------------------------------------------------------- kill -9 and resume


@pytest.mark.slow
def test_kill_9_mid_extraction_then_resume(tmp_path, runner, monkeypatch):
    data = tmp_path / "data"
    generate_sample_set(data, per_group=50, groups=("red_stripes", "green_disc", "sunset_gradient", "checkerboard"))
    n = 200
    out = tmp_path / "out"
    env = dict(os.environ, IMGCLUSTER_SHARD_SIZE="16", IMGCLUSTER_TEST_SLOW_BATCH_S="0.15")
    cmd = [sys.executable, "-m", "engine.cli", "run", str(data), "--out", str(out), "--model", "pixels",
           "--k", "2:6", "--batch-size", "8", "--no-report", "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    features = out / "features"
    deadline = time.monotonic() + 120
    try:
        while len(list(features.glob("shard-*.index.json"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "extraction did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _shard_rows(features)
    shards_at_kill = len(list(features.glob("shard-*.index.json")))
    assert 48 <= done_at_kill < n  # killed mid-extraction, with at least 3 complete shards
    assert not (out / "predictions.csv").exists()

    monkeypatch.setenv("IMGCLUSTER_SHARD_SIZE", "16")
    resumed = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "2:6",
                                  "--batch-size", "8", "--no-report"])
    assert resumed.exit_code == 0, resumed.output
    match = RESUMED.search(resumed.output)
    assert match and (int(match.group(1)), int(match.group(2))) == (done_at_kill, n), resumed.output
    cache = _summary(out)["cache"]
    # Everything in a complete shard was reused; only what was not yet in one is extracted again
    # (at most the shard being filled plus the batch in flight when the kill came).
    assert cache["resumed"] == done_at_kill and cache["extracted"] == n - done_at_kill
    assert cache["shards_written"] == len(list(features.glob("shard-*.index.json"))) - shards_at_kill
    assert cache["shards_written"] == -(-(n - done_at_kill) // 16)  # the rest, in full shards of 16

    clean = tmp_path / "clean"
    _run_ok = runner.invoke(app, ["run", str(data), "--out", str(clean), "--model", "pixels", "--k", "2:6",
                                  "--no-report", "--no-cache"])
    assert _run_ok.exit_code == 0, _run_ok.output
    assert (out / "predictions.csv").read_bytes() == (clean / "predictions.csv").read_bytes()
    assert _summary(out)["scores"] == _summary(clean)["scores"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_writes_the_queued_rows_and_says_how_to_resume(tmp_path, runner, monkeypatch, sig, code, word):
    """Ctrl-C, and SIGTERM as timeout, docker stop and batch schedulers send it."""
    data = tmp_path / "data"
    generate_sample_set(data, per_group=40, groups=("red_stripes", "green_disc"))
    out = tmp_path / "out"
    env = dict(os.environ, IMGCLUSTER_SHARD_SIZE="1000", IMGCLUSTER_TEST_SLOW_BATCH_S="0.15")
    cmd = [sys.executable, "-m", "engine.cli", "run", str(data), "--out", str(out), "--model", "pixels",
           "--k", "2:3", "--batch-size", "8", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    deadline = time.monotonic() + 120
    try:
        while not (out / "features" / "manifest.json").exists():  # extraction has started
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # a few batches: fewer than one shard of 1000, so only the Ctrl-C flush saves them
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr.decode()
    assert f"{word}; rerun the same command to resume from the feature cache" in stderr.decode()
    saved = _shard_rows(out / "features")
    assert 0 < saved < 80
    monkeypatch.setenv("IMGCLUSTER_SHARD_SIZE", "1000")
    result = _run(runner, data, out, "--k", "2:3")
    assert f"Resumed {saved} of 80 images from the feature cache" in result.output


def test_rerun_resumes_everything_and_prints_the_line(small_set, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLUSTER_SHARD_SIZE", "5")
    out = tmp_path / "out"
    (small_set / "bad.jpg").write_bytes(b"not an image")
    first = _run(runner, small_set, out)
    assert not RESUMED.search(first.output)
    assert _summary(out)["cache"] == {"resumed": 0, "extracted": 13, "shards_written": 3}
    second = _run(runner, small_set, out)
    assert "Resumed 13 of 13 images from the feature cache (1 of them recorded as unusable: still skipped)" in " ".join(
        second.output.split())  # the failure is cached too
    assert _summary(out)["cache"] == {"resumed": 13, "extracted": 0, "shards_written": 0}
    assert read_rows(out / "skipped.csv")[0]["reason"].startswith("not an image")


def test_changed_new_and_removed_files(small_set, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLUSTER_SHARD_SIZE", "4")
    out = tmp_path / "out"
    _run(runner, small_set, out)
    before = {r["path"]: r["cluster"] for r in read_rows(out / "predictions.csv")}
    files = sorted(small_set.glob("*/*.jpg"))
    changed, removed = files[0], files[5]
    Image.new("RGB", (64, 64), (20, 200, 60)).save(changed, "JPEG")  # new content, new size
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    removed.unlink()
    new = small_set / "green_disc" / "green_disc_new.jpg"
    shutil.copy(files[6], new)

    result = _run(runner, small_set, out)
    assert "Resumed 10 of 12 images from the feature cache" in result.output
    # said before extracting too, not only at the end
    early = " ".join(result.output.split()).index("Feature cache: 10 of these 12 images are already extracted; "
                                                  "extracting the other 2")
    assert early < " ".join(result.output.split()).index("Resumed 10 of 12")
    assert _summary(out)["cache"]["extracted"] == 2  # the changed and the new file, nothing else
    after = {r["path"]: r["cluster"] for r in read_rows(out / "predictions.csv")}
    assert str(new) in after and str(removed) not in after and str(changed) in after
    assert len(after) == len(before)


def test_other_model_or_weights_invalidates_the_cache(small_set, runner, tmp_path):
    out = tmp_path / "out"
    _run(runner, small_set, out)
    result = runner.invoke(app, ["run", str(small_set), "--out", str(out), "--model", "resnet18", "--weights",
                                 "random", "--k", "2:4", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "different model, weights or preprocessing" in result.output
    assert not RESUMED.search(result.output)
    assert _summary(out)["cache"]["resumed"] == 0 and _summary(out)["cache"]["extracted"] == 12
    manifest = json.loads((out / "features" / "manifest.json").read_text())
    assert manifest["fingerprint"] == _summary(out)["features"]["fingerprint"]


def test_another_precision_does_not_mix_features(small_set, runner, tmp_path):
    """Features from fp32 and bf16 (or from two decoders' pixels) differ by about 1 %: a rerun with
    another precision starts the cache again and says why; the same one resumes it."""
    out = tmp_path / "out"
    _run(runner, small_set, out)  # pixels model: fp32
    result = _run(runner, small_set, out, "--precision", "bf16")
    assert "made with another precision fp32 -> bf16" in result.output
    assert _summary(out)["cache"]["resumed"] == 0 and _summary(out)["cache"]["extracted"] == 12
    manifest = json.loads((out / "features" / "manifest.json").read_text())
    assert manifest["made_with"] == {"precision": "bf16", "decoder": "pil", "max_pixels": 178956970,
                                     "pil_jpeg_decode": "reduced scale, sides >= 512"}
    assert "Resumed 12 of 12" in _run(runner, small_set, out, "--precision", "bf16").output


def test_another_decoder_does_not_mix_features(small_set, runner, tmp_path):
    pytest.importorskip("nvidia.dali", reason="nvidia.dali is not importable: no second CPU decoder to switch to")
    out = tmp_path / "out"
    _run(runner, small_set, out)
    result = _run(runner, small_set, out, "--decoder", "dali")
    assert "made with another decoder pil -> dali" in result.output
    assert _summary(out)["cache"]["extracted"] == 12


def test_a_cache_from_before_made_with_is_kept(small_set, runner, tmp_path):
    """An interrupted run's cache written by the previous version (no made_with in the manifest)
    is resumed after an upgrade, not thrown away; the manifest then records this run's settings."""
    out = tmp_path / "out"
    _run(runner, small_set, out)
    manifest_path = out / "features" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["made_with"]
    manifest_path.write_text(json.dumps(manifest))
    result = _run(runner, small_set, out)
    assert "predates recording precision, decoder, max_pixels, pil_jpeg_decode: kept" in " ".join(result.output.split())
    assert "Resumed 12 of 12" in result.output
    assert json.loads(manifest_path.read_text())["made_with"] == {"precision": "fp32", "decoder": "pil",
                                                                  "max_pixels": 178956970, "pil_jpeg_decode": "reduced scale, sides >= 512"}


def test_a_cache_from_before_max_pixels_was_recorded_is_kept(small_set, runner, tmp_path):
    """A manifest that records some settings (precision, decoder) but not a newer one keeps its
    shards and gains the new setting; the recorded ones are still compared."""
    out = tmp_path / "out"
    _run(runner, small_set, out)
    manifest_path = out / "features" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["made_with"]["max_pixels"]
    manifest_path.write_text(json.dumps(manifest))
    result = _run(runner, small_set, out)
    assert "predates recording max_pixels: kept" in " ".join(result.output.split())
    assert "Resumed 12 of 12" in result.output
    assert json.loads(manifest_path.read_text())["made_with"]["max_pixels"] == 178956970


def test_another_max_pixels_does_not_reuse_the_cache(small_set, runner, tmp_path):
    """--max-pixels decides which images are skipped as too large: cached features (and cached
    failures) from another limit would give another answer than a fresh run, so the cache restarts."""
    out = tmp_path / "out"
    _run(runner, small_set, out)
    args = ["--model", "pixels", "--k", "2:4", "--no-report", "--max-pixels", "100"]
    fresh = runner.invoke(app, ["run", str(small_set), "--out", str(tmp_path / "fresh"), *args])
    assert fresh.exit_code == 2  # at this limit a fresh run finds every image too large ...
    again = runner.invoke(app, ["run", str(small_set), "--out", str(out), *args])
    assert "made with another max_pixels 178956970 -> 100" in " ".join(again.output.split())
    assert again.exit_code == 2  # ... and so does a rerun, whose list goes beside the finished run's files
    assert "too large" in (out / "skipped-failed-run.csv").read_text() and "too large" in (tmp_path / "fresh" / "skipped.csv").read_text()


def test_corrupt_manifest_is_rebuilt_with_a_message(small_set, runner, tmp_path):
    out = tmp_path / "out"
    _run(runner, small_set, out)
    (out / "features" / "manifest.json").write_bytes(b"{\"format\": 1, \"fingerp")
    result = _run(runner, small_set, out)
    assert "manifest" in result.output and "corrupt" in result.output and "rebuilding" in result.output
    assert _summary(out)["cache"]["resumed"] == 0
    assert json.loads((out / "features" / "manifest.json").read_text())["format"] == 1
    assert "Resumed 12 of 12" in _run(runner, small_set, out).output  # and the rebuilt cache works


def test_half_written_and_damaged_shards_are_ignored(small_set, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLUSTER_SHARD_SIZE", "4")
    out = tmp_path / "out"
    _run(runner, small_set, out)
    features = out / "features"
    assert sorted(p.name for p in features.glob("shard-*.index.json")) == [
        "shard-000000.index.json", "shard-000001.index.json", "shard-000002.index.json"]
    # A kill between the two renames: features without an index do not count.
    (features / "shard-000002.index.json").unlink()
    # A damaged shard: truncated features under a valid index.
    npy = features / "shard-000001.npy"
    npy.write_bytes(npy.read_bytes()[:100])
    # A temporary file a kill left behind.
    (features / ".shard-000003.npy.abc123.tmp").write_bytes(b"partial")
    result = _run(runner, small_set, out)
    assert "Ignoring damaged cache shard shard-000001.index.json" in result.output
    assert "Resumed 4 of 12 images from the feature cache" in result.output
    assert _summary(out)["cache"]["extracted"] == 8
    assert not list(features.glob(".*.tmp"))
    clean = tmp_path / "clean"
    _run(runner, small_set, clean, "--no-cache")
    assert (out / "predictions.csv").read_bytes() == (clean / "predictions.csv").read_bytes()


# --------------------------------------------------------------------------- imgcluster cluster


def test_cluster_recluster_without_decoding(small_set, runner, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(runner, small_set, out, "--k", "2:3")
    first = read_rows(out / "predictions.csv")

    from engine.loaders import decode, pil

    def no_decoding(*args, **kwargs):
        raise AssertionError("`cluster` must not decode images")

    monkeypatch.setattr(decode, "decode_image", no_decoding)
    monkeypatch.setattr(decode, "load_and_preprocess", no_decoding)
    monkeypatch.setattr(pil, "load_and_preprocess", no_decoding)

    new = tmp_path / "k45"
    result = runner.invoke(app, ["cluster", str(out), "--k", "4:5", "--pca", "8", "--seed", "3", "--out", str(new),
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    summary = _summary(new)
    assert summary["k"] in (4, 5) and [s["k"] for s in summary["scores"]] == [4, 5]
    assert summary["config"]["pca"] == 8 and summary["config"]["seed"] == 3 and summary["config"]["model"] == "pixels"
    assert summary["pca"]["n_components"] == 8
    assert summary["cache"]["extracted"] == 0 and summary["cache"]["resumed"] == 12
    assert summary["features"]["fingerprint"] == _summary(out)["features"]["fingerprint"]
    assert [r["path"] for r in read_rows(new / "predictions.csv")] == [r["path"] for r in first]
    assert len({r["cluster"] for r in read_rows(new / "predictions.csv")}) == summary["k"]
    assert read_rows(out / "predictions.csv") == first  # --out elsewhere leaves the run alone

    # The new folder has no cache of its own; its summary points at the original one.
    again = runner.invoke(app, ["cluster", str(new), "--k", "2", "--no-report"])
    assert again.exit_code == 0, again.output
    assert _summary(new)["k"] == 2

    # --save-model: the re-clustered model predicts the run's own images into their clusters
    monkeypatch.undo()  # predict decodes images
    model = tmp_path / "k3.imgc"
    saved = runner.invoke(app, ["cluster", str(out), "--k", "3", "--out", str(tmp_path / "k3"), "--no-report",
                                "--save-model", str(model)])
    assert saved.exit_code == 0, saved.output
    assert f"Model saved to {model}" in " ".join(saved.output.split()).replace(" ", " ")
    predicted = runner.invoke(app, ["predict", str(model), str(small_set), "--out", str(tmp_path / "p.csv")])
    assert predicted.exit_code == 0, predicted.output
    by_path = {Path(r["path"]).name: r["cluster"] for r in read_rows(tmp_path / "k3" / "predictions.csv")}
    rows = read_rows(tmp_path / "p.csv")
    assert len(rows) == len(by_path) and all(by_path[Path(r["path"]).name] == r["cluster"] for r in rows)
    bad = runner.invoke(app, ["cluster", str(out), "--k", "3", "--save-model", str(tmp_path)])  # a folder
    assert bad.exit_code == 2 and "is a folder" in bad.output


def test_a_model_file_left_from_an_earlier_clustering_is_pointed_out(small_set, runner, tmp_path):
    """README's `--save-model results/model.imgc`, then a re-clustering in place (or a new run into
    the folder) without --save-model: predictions.csv changes, model.imgc does not, and `predict`
    with it would assign the earlier clusters. Each such command says so; one that saves over it,
    or that gives the same clustering again, does not."""
    out = tmp_path / "out"
    model = out / "model.imgc"
    _run(runner, small_set, out, "--k", "3", "--save-model", str(model))
    before = model.read_bytes()
    notice = f"{model} holds an earlier clustering (K=3; this one: K=2)"
    flat = lambda result: " ".join(result.output.split())  # noqa: E731 - rich wraps long notices

    moved = runner.invoke(app, ["cluster", str(out), "--k", "2", "--no-report"])
    assert moved.exit_code == 0, moved.output
    assert notice in flat(moved) and f"--save-model {model} replaces it" in flat(moved)
    assert model.read_bytes() == before  # pointed out, not touched
    back = runner.invoke(app, ["cluster", str(out), "--k", "3", "--no-report"])  # the saved clustering again
    assert back.exit_code == 0 and "earlier clustering" not in flat(back), back.output
    rerun = _run(runner, small_set, out, "--k", "2")
    assert notice in flat(rerun)
    saved = runner.invoke(app, ["cluster", str(out), "--k", "2", "--no-report", "--save-model", str(model)])
    assert saved.exit_code == 0 and "earlier clustering" not in flat(saved), saved.output
    (out / "notes.imgc").write_text("not a model file")  # not ours to judge: no notice, no error
    quiet = runner.invoke(app, ["cluster", str(out), "--k", "2", "--no-report"])
    assert quiet.exit_code == 0 and "earlier clustering" not in flat(quiet), quiet.output


def test_stopping_a_run_that_restarted_a_finished_runs_cache_says_what_that_means(small_set, runner, tmp_path,
                                                                                    monkeypatch):
    """Another model in a finished run's folder restarts its feature cache at once; stopped before
    it finishes, the old predictions.csv/summary.json stay but `cluster` on them cannot work:
    the interrupt says so (it said only "rerun to resume"), and so does `cluster`'s error."""
    import engine.pipeline

    out = tmp_path / "out"
    _run(runner, small_set, out, "--k", "3")
    real = engine.pipeline.extract_features

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.pipeline, "extract_features", stopped)
    result = runner.invoke(app, ["run", str(small_set), "--out", str(out), "--model", "resnet18", "--weights",
                                 "random", "--k", "3", "--no-report"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 130, result.output
    assert (f"The finished run in {out} (its predictions.csv and summary.json) had its feature cache restarted "
            "for this run's settings: `imgcluster cluster` on it works again once this run finishes") in flat
    assert _summary(out)["config"]["model"] == "pixels"  # that run's outputs are as they were
    refused = runner.invoke(app, ["cluster", str(out), "--k", "2"])
    assert refused.exit_code == 2 and "a later `imgcluster run` with other settings restarted it" in refused.output
    # an interrupt in a folder without a finished run: the plain message
    plain = runner.invoke(app, ["run", str(small_set), "--out", str(tmp_path / "new"), "--model", "pixels", "--k", "3"])
    assert plain.exit_code == 130 and "restarted" not in plain.output and "rerun the same command" in plain.output
    monkeypatch.setattr(engine.pipeline, "extract_features", real)
    _run(runner, small_set, out, "--model", "resnet18", "--weights", "random", "--k", "3")  # finishes it
    assert runner.invoke(app, ["cluster", str(out), "--k", "2", "--no-report"]).exit_code == 0


def test_cluster_reports_changed_and_removed_files_in_skipped(small_set, runner, tmp_path):
    out = tmp_path / "out"
    (small_set / "bad.png").write_bytes(b"")
    _run(runner, small_set, out, "--k", "2:3")
    files = sorted(small_set.glob("*/*.jpg"))
    files[0].unlink()
    Image.new("RGB", (32, 32)).save(files[1], "JPEG")
    os.utime(files[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    result = runner.invoke(app, ["cluster", str(out), "--k", "3", "--no-report"])  # in place
    assert result.exit_code == 0, result.output
    assert "2 image(s) changed or removed since the run" in result.output
    paths = [r["path"] for r in read_rows(out / "predictions.csv")]
    assert len(paths) == 10 and str(files[0]) not in paths and str(files[1]) not in paths
    reasons = {Path(r["path"]).name: r["reason"] for r in read_rows(out / "skipped.csv")}
    assert reasons["bad.png"].startswith("empty")  # carried over from the run
    assert reasons[files[0].name].startswith("removed since the run")
    assert reasons[files[1].name].startswith("changed since the run")
    assert _summary(out)["k"] == 3


def test_cluster_from_another_folder_with_relative_inputs(small_set, runner, tmp_path, monkeypatch):
    """Relative input paths are resolved from the run's recorded cwd, not from where `cluster` runs."""
    monkeypatch.chdir(small_set.parent)
    _run(runner, Path(small_set.name), Path("out"))
    first = read_rows(tmp_path / "out" / "predictions.csv")
    assert not Path(first[0]["path"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["cluster", str(tmp_path / "out"), "--k", "3", "--out", "again", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "changed or removed" not in result.output
    summary = _summary(elsewhere / "again")
    assert summary["cache"]["resumed"] == 12 and summary["k"] == 3
    assert summary["cwd"] == str(tmp_path)  # its paths are still relative to the run's folder
    assert [r["path"] for r in read_rows(elsewhere / "again" / "predictions.csv")] == [r["path"] for r in first]


def test_cluster_of_a_relative_run_with_a_non_utf8_name_matches_the_run(small_set, runner, tmp_path, monkeypatch):
    """recluster reads predictions.csv into a PathList (no Path per row): a relative run with a
    name that is not UTF-8, re-clustered from another folder with the run's settings, finds every
    image in the cache and writes the run's predictions.csv byte for byte."""
    from engine.recluster import recluster, text_to_path

    odd = os.path.join(os.fsencode(small_set), b"odd \xe9\xff", b"caf\xe9, \"x\".jpg")  # not UTF-8, CSV-quoted
    os.makedirs(os.path.dirname(odd))
    shutil.copyfile(sorted(small_set.glob("*/*.jpg"))[0], odd)
    monkeypatch.chdir(small_set.parent)
    _run(runner, Path(small_set.name), Path("out"), "--k", "3")
    rows = read_rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 13 and not any(Path(r["path"]).is_absolute() for r in rows)
    assert any("\\udce9\\udcff" in r["path"] for r in rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = recluster(tmp_path / "out", out_dir=elsewhere / "again")
    assert result.extraction.resumed == 13 and not result.skipped
    # the paths as the list of Path built before PathList (text_to_path of each row's text)
    assert result.paths == [text_to_path(r["path"]) for r in rows]
    assert any(os.fsencode(p) == os.path.relpath(odd, os.fsencode(tmp_path)) for p in result.paths)
    assert (elsewhere / "again" / "predictions.csv").read_bytes() == (tmp_path / "out" / "predictions.csv").read_bytes()
    assert _summary(elsewhere / "again")["k"] == 3

    # the non-UTF-8 file removed: reported by its exact name, the rest re-clustered
    os.unlink(odd)
    result = recluster(tmp_path / "out", out_dir=elsewhere / "less", k=3)
    assert len(result.paths) == 12 and len(result.skipped) == 1
    gone, reason = result.skipped[0]
    assert os.fsencode(gone) == os.path.relpath(odd, os.fsencode(tmp_path)) and reason.startswith("removed since")
    assert [r["path"] for r in read_rows(elsewhere / "less" / "predictions.csv")] \
        == [r["path"] for r in rows if "udce9" not in r["path"]]


def test_read_paths_reads_the_column_as_read_csv_would(tmp_path):
    """outputs.read_paths (recluster's reader) gives what [text_to_path(row["path"]) for row in
    read_csv(...)] gave: quoted names, blank lines, another column order, escaped non-UTF-8 bytes."""
    from engine.pathlist import PathList
    from engine.recluster import text_to_path
    from engine.report import outputs

    names = ["a.jpg", "dir with, comma/b.jpg", 'quote "q".jpg', "new\nline.jpg", "/abs/c.jpg",
             "./d//e.jpg", os.fsdecode(b"caf\xe9.jpg"), "\u00e9t\u00e9.png", " lead.jpg"]
    csv_file = tmp_path / "p.csv"
    outputs.write_predictions(tmp_path, names, list(range(len(names))))
    (tmp_path / "predictions.csv").replace(csv_file)
    with open(csv_file, "a", encoding="utf-8") as handle:
        handle.write("\n\n")  # blank lines at the end: passed over, as csv.DictReader does
    expected = [text_to_path(row["path"]) for row in outputs.read_csv(csv_file)]
    got = outputs.read_paths(csv_file)
    assert isinstance(got, PathList) and got == expected and len(got) == len(names)
    assert os.fsencode(got[6]) == b"caf\xe9.jpg" and got[5] == Path("d/e.jpg")

    other = tmp_path / "other.csv"
    other.write_text("cluster,path\n1,x.jpg\n\n2,y/z.jpg\n", encoding="utf-8")
    assert outputs.read_paths(other) == [Path("x.jpg"), Path("y/z.jpg")]
    header_only = tmp_path / "header.csv"
    header_only.write_text("path,cluster\n", encoding="utf-8")
    assert outputs.read_paths(header_only) == []
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    assert outputs.read_paths(empty) == []
    no_column = tmp_path / "nocol.csv"
    no_column.write_text("file,cluster\nx.jpg,1\n", encoding="utf-8")
    with pytest.raises(KeyError):
        outputs.read_paths(no_column)
    short = tmp_path / "short.csv"
    short.write_text("cluster,path\n1,x.jpg\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3"):
        outputs.read_paths(short)


def test_read_paths_holds_no_object_per_row(tmp_path):
    """recluster's paths of a 50,000-row predictions.csv: well under the ~380 B a row that
    read_csv's dicts (~300), then the texts and a list of Path held, at the peak and once read."""
    import tracemalloc

    from engine.report import outputs

    n = 50_000
    names = [f"photos/2024/album-{i // 1000:04d}/IMG_{i:08d}_some_longer_name.jpg" for i in range(n)]  # 56 chars
    outputs.write_predictions(tmp_path, names, np.zeros(n, dtype=np.int64))
    del names
    tracemalloc.start()
    try:
        paths = outputs.read_paths(tmp_path / "predictions.csv")
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(paths) == n and paths[-1] == Path(f"photos/2024/album-0049/IMG_{n - 1:08d}_some_longer_name.jpg")
    assert held / n < 100, held / n  # ~72: 56 bytes + 16 of offsets (recluster before: ~380, texts and Paths)
    assert peak / n < 320, peak / n  # ~234: one chunk of bytes while built (before: ~380)


@pytest.mark.parametrize("setup, needle", [
    ("empty", "is not a finished run (summary.json is missing) (make one with `imgcluster run`)"),
    ("missing", "out not found"),
    ("file", "is a file, not a run's output folder"),
    ("no-cache", "no feature cache"),
    ("bad-k", "below 2"),
    ("other-cache", "different model"),
])
def test_cluster_errors_exit_2(small_set, runner, tmp_path, setup, needle):
    out = tmp_path / "out"
    if setup == "empty":
        out.mkdir()
    elif setup == "file":
        out.write_text("x")
    elif setup != "missing":
        _run(runner, small_set, out, *(["--no-cache"] if setup == "no-cache" else []))
    if setup == "other-cache":
        manifest = out / "features" / "manifest.json"
        manifest.write_text(manifest.read_text().replace(_summary(out)["features"]["fingerprint"], "0" * 64))
    args = ["cluster", str(out), "--no-report"] + (["--k", "1"] if setup == "bad-k" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_cluster_help_has_an_example(runner):
    result = runner.invoke(app, ["cluster", "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_recluster_api_rejects_feature_parameters(small_set, runner, tmp_path):
    from engine.errors import ConfigError
    from engine.recluster import recluster

    out = tmp_path / "out"
    _run(runner, small_set, out)
    with pytest.raises(ConfigError, match="cannot change model"):
        recluster(out, model="resnet18")
    result = recluster(out, out_dir=tmp_path / "api", k=3, select="davies")
    assert result.k == 3 and result.extraction.extracted == 0
    assert result.features.shape == (12, 192) and result.features.dtype.is_floating_point
    assert np.array_equal(np.sort(result.extraction.good), np.arange(12))


def test_nan_rows_in_the_cache_are_skipped_not_fed_to_pca(small_set, runner, tmp_path, monkeypatch):
    """A shard of the right shape full of NaN (a damaged disk, a bad copy): `run` and `cluster`
    list those images in skipped.csv and cluster the rest instead of failing in PCA."""
    monkeypatch.setenv("IMGCLUSTER_SHARD_SIZE", "4")
    out = tmp_path / "out"
    _run(runner, small_set, out)
    shard = out / "features" / "shard-000001.npy"
    data = np.load(shard)
    np.save(shard, np.full_like(data, np.nan))
    for args in (["cluster", str(out), "--k", "2:4", "--no-report"],  # the run's 12 rows, 4 now NaN
                 ["run", str(small_set), "--out", str(out), "--model", "pixels", "--k", "2:4", "--no-report"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        reasons = [r["reason"] for r in read_rows(out / "skipped.csv")]
        assert len(reasons) == 4 and all("not finite" in r for r in reasons)
        assert len(read_rows(out / "predictions.csv")) == 12 - 4
    # the same with PCA fitted while streaming (above --pca-fit-limit): the NaN rows are in its sample
    result = runner.invoke(app, ["run", str(small_set), "--out", str(out), "--model", "pixels", "--k", "2:4",
                                 "--no-report", "--pca-fit-limit", "8"])
    assert result.exit_code == 0, result.output
    assert len(read_rows(out / "predictions.csv")) == 12 - 4
    assert _summary(out)["pca"]["mode"] == "streamed"


def test_cluster_with_another_seed_saves_a_model_predict_accepts(small_set, runner, tmp_path, monkeypatch):
    """Random weights are made from the run's seed: a model saved by `cluster --seed 5` (a KMeans
    seed) must still name the weights the features came from (seed 0), also after re-clustering a
    re-clustered folder, and a relative weights file must be found from another folder."""
    import torch
    import torchvision

    monkeypatch.chdir(tmp_path)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "w.pth")
    for weights in ("random", "w.pth"):
        out = tmp_path / f"run-{weights}"
        first = runner.invoke(app, ["run", str(small_set), "--out", str(out), "--model", "resnet18", "--weights",
                                    weights, "--k", "2:3", "--no-report"])
        assert first.exit_code == 0, first.output
        elsewhere = tmp_path / f"elsewhere-{weights}"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)  # `cluster` started from another folder than the run
        folder, model = out, None
        for seed in (5, 7):  # the second re-clusters the re-clustered folder
            model = elsewhere / f"m{seed}.imgc"
            new = elsewhere / f"k-{seed}"
            done = runner.invoke(app, ["cluster", str(folder), "--k", "3", "--seed", str(seed), "--out", str(new),
                                       "--no-report", "--save-model", str(model)])
            assert done.exit_code == 0, done.output
            predicted = runner.invoke(app, ["predict", str(model), str(small_set), "--out", str(elsewhere / "p.csv")])
            assert predicted.exit_code == 0, (weights, seed, predicted.output)
            folder = new
        monkeypatch.chdir(tmp_path)


def test_a_shard_is_written_once_its_first_row_waited_shard_seconds(small_set, tmp_path, monkeypatch):
    """On a CPU a 4,096-row shard takes minutes to fill, and a kill lost all of it: rows queued for
    IMGCLUSTER_SHARD_SECONDS are written as a shard of their own, and read back on resume."""
    import torch

    from engine import store as store_module
    from engine.store import FeatureStore

    files = sorted(small_set.glob("*/*.jpg"))[:6]
    clock = [1000.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("IMGCLUSTER_SHARD_SECONDS", "60")
    store = FeatureStore.open(tmp_path / "cache", "fp", shard_size=4096, dim=4)
    feats = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    store.add(files[:2], feats[:2], [])
    clock[0] += 59
    store.add(files[2:4], feats[2:4], [])
    assert store.shards_written == 0  # the first rows have waited 59 s
    clock[0] += 1
    store.add(files[4:5], feats[4:5], [(files[5], "corrupt or truncated image: x")])
    assert store.shards_written == 1  # 60 s: everything queued is a shard
    clock[0] += 30
    store.add(files[5:6], feats[5:6], [])
    assert store.shards_written == 1  # a new shard's clock started with its first row
    store.close()
    reopened = FeatureStore.open(tmp_path / "cache", "fp", dim=4)
    positions, got, failed = reopened.gather(files)
    assert positions.tolist() == [0, 1, 2, 3, 4] and failed == {5: "corrupt or truncated image: x"}
    np.testing.assert_array_equal(got, feats[:5].numpy())
    monkeypatch.setenv("IMGCLUSTER_SHARD_SECONDS", "soon")
    with pytest.raises(ConfigError, match="IMGCLUSTER_SHARD_SECONDS must be a number"):
        FeatureStore.open(tmp_path / "other", "fp", dim=4)


def test_one_command_writes_a_run_folder_at_a_time(small_set, runner, tmp_path):
    """Two runs into one --out at once mixed one's CSVs with the other's cache: while a command
    holds the folder (run, cluster, report), the others stop at once with who holds it; after it,
    they work."""
    from engine.report.outputs import exclusive_writer

    out = tmp_path / "out"
    _run(runner, small_set, out, "--k", "3")
    before = (out / "predictions.csv").read_bytes()
    with exclusive_writer(out):  # as a run in another process would
        for command in (["run", str(small_set), "--out", str(out), "--model", "pixels", "--k", "2", "--no-report"],
                        ["cluster", str(out), "--k", "2", "--no-report"],
                        ["report", str(out)],
                        ["export", str(out), "--to", str(tmp_path / "by-cluster")]):
            result = runner.invoke(app, command)
            flat = " ".join(result.output.split())
            assert result.exit_code == 2, (command, result.output)
            assert f"imgcluster command is writing there (pid {os.getpid()})" in flat, flat
        # a first run still going (no summary.json yet): report, cluster and export say a command is writing there
        fresh = tmp_path / "first-run"
        fresh.mkdir()
        with exclusive_writer(fresh):
            for command in (["report", str(fresh)], ["cluster", str(fresh)],
                            ["export", str(fresh), "--to", str(tmp_path / "exported")]):
                said = runner.invoke(app, command)
                assert said.exit_code == 2 and (f"{fresh} is not a finished run yet: an imgcluster command is writing "
                                                f"there (pid {os.getpid()})") in " ".join(said.output.split()), said.output
        assert "(summary.json is missing)" in runner.invoke(app, ["report", str(fresh)]).output  # lock released
        # an existing folder is taken before the inputs are walked (a walk of a large share takes minutes)
        (tmp_path / "not-walked-yet").mkdir()  # it exists: a missing input is said before all else
        early = runner.invoke(app, ["run", str(tmp_path / "not-walked-yet"), "--out", str(out), "--model", "pixels"])
        assert early.exit_code == 2 and "another imgcluster command is writing there" in " ".join(early.output.split())
    assert (out / "predictions.csv").read_bytes() == before
    assert runner.invoke(app, ["cluster", str(out), "--k", "2", "--no-report"]).exit_code == 0
    assert (out / ".imgcluster.lock").is_file()  # hidden (walks leave it out), left for the next taker
    # a holder that could not write its pid (another user's read-only lock file) leaves the last
    # writer's there: a pid that is no process is not named
    from engine.report.outputs import _lock_holder

    assert _lock_holder(f"pid {os.getpid()}") == f"pid {os.getpid()}"
    assert _lock_holder("pid 999999999") == _lock_holder("") == "another process"


def test_a_renamed_folder_is_found_in_the_cache(small_set, runner, tmp_path):
    """Renaming a folder (mv keeps each file's name, size and mtime) re-extracted every image in
    it; the cache finds them by name, size and mtime. Two cached files that share all three are
    ambiguous: neither is taken for a moved one."""
    out = tmp_path / "out"
    _run(runner, small_set, out, "--k", "3")
    first = {Path(r["path"]).name: r["cluster"] for r in read_rows(out / "predictions.csv")}
    (small_set / "green_disc").rename(small_set / "Green Disc (2024)")
    result = _run(runner, small_set, out, "--k", "3")
    assert "Resumed 12 of 12 images from the feature cache" in result.output
    assert _summary(out)["cache"]["extracted"] == 0
    assert {Path(r["path"]).name: r["cluster"] for r in read_rows(out / "predictions.csv")} == first

    # ambiguous: two cached files share name, size and mtime (copied with their mtime); moved,
    # either could be the one: neither is taken, the image is extracted again
    import torch

    from engine.store import FeatureStore

    other = tmp_path / "other"
    src = sorted(small_set.glob("red_stripes/*.jpg"))[0]
    for folder in ("a", "b"):
        (other / folder).mkdir(parents=True)
        shutil.copy2(src, other / folder / "same.jpg")
    shutil.copy2(src, other / "a" / "unique.jpg")
    store = FeatureStore.open(tmp_path / "cache", "fp", dim=2)
    store.add([other / "a" / "same.jpg", other / "b" / "same.jpg", other / "a" / "unique.jpg"],
              torch.arange(6, dtype=torch.float32).reshape(3, 2), [])
    store.flush()
    store.close()
    (other / "a").rename(other / "c")
    reopened = FeatureStore.open(tmp_path / "cache", "fp", dim=2)
    positions, feats, _ = reopened.gather([other / "c" / "same.jpg", other / "c" / "unique.jpg"])
    assert positions.tolist() == [1] and feats.tolist() == [[4.0, 5.0]]


def test_a_moved_project_keeps_its_images(small_set, runner, tmp_path, monkeypatch):
    """Photos and results moved together (`mv project archive/`): predictions.csv's relative
    paths are found again from the run folder's new place, for `cluster`, `report` (its
    montages had only placeholders) and `export`."""
    project = tmp_path / "project"
    shutil.copytree(small_set, project / "photos")
    monkeypatch.chdir(project)
    _run(runner, Path("photos"), Path("results"), "--k", "3")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "archive").mkdir()
    project.rename(tmp_path / "archive" / "project")
    results = tmp_path / "archive" / "project" / "results"
    again = runner.invoke(app, ["cluster", str(results), "--k", "3"])
    assert again.exit_code == 0, again.output
    summary = _summary(results)
    assert summary["n_images"] == 12 and summary["n_skipped"] == 0 and summary["cache"]["resumed"] == 12
    assert summary["cwd"] == str(tmp_path / "archive" / "project")  # the base it found, for the next command
    report = runner.invoke(app, ["report", str(results)])
    assert report.exit_code == 0 and "could not be read" not in report.output, report.output
    exported = runner.invoke(app, ["export", str(results), "--to", str(tmp_path / "by-cluster")])
    assert exported.exit_code == 0 and "missing" not in exported.output, exported.output
    assert len(list((tmp_path / "by-cluster").glob("*/*.jpg"))) == 12


def test_a_same_named_file_elsewhere_is_not_taken_for_a_moved_one(tmp_path, runner, monkeypatch):
    """Unzipped sets share mtimes and BMPs of one size share sizes: train/dog/0000.bmp has the
    name, size and mtime of the cached train/cat/0000.bmp, which is still there. It is another
    image, extracted for itself (it got the cat's features, and the clusters mixed the two)."""
    data = tmp_path / "train"
    for group, colour in (("cat", (220, 30, 30)), ("dog", (30, 30, 220))):
        (data / group).mkdir(parents=True)
        for i in range(6):
            path = data / group / f"{i:04d}.bmp"
            Image.new("RGB", (32, 32), colour).save(path)
            os.utime(path, ns=(1_577_836_800 * 10**9, 1_577_836_800 * 10**9))
    out = tmp_path / "out"
    _run(runner, data / "cat", out, "--k", "2")
    result = _run(runner, data, out, "--k", "2")
    assert "Resumed 6 of 12 images" in result.output and _summary(out)["cache"]["extracted"] == 6
    clusters = {Path(r["path"]).parent.name + "/" + Path(r["path"]).name: r["cluster"]
                for r in read_rows(out / "predictions.csv")}
    assert {clusters[f"cat/{i:04d}.bmp"] for i in range(6)} != {clusters[f"dog/{i:04d}.bmp"] for i in range(6)}
