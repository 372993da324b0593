"""`imgcluster demo` works offline and finds the sample set's groups."""
from __future__ import annotations

import json

import pytest
from sklearn.metrics import adjusted_rand_score

from engine.cli import app
from engine.sample_data import GROUPS, generate_sample_set
from tests.helpers import group_labels, read_rows


def test_demo_offline_falls_back_to_pixels(runner, tmp_path, offline_weights):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--per-group", "20"])
    assert result.exit_code == 0, result.output
    assert "pixels features instead" in result.output
    assert "Chosen K = 6" in result.output
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["config"]["model"] == "pixels" and summary["k"] == len(GROUPS)
    truth, pred = group_labels(read_rows(out / "results" / "predictions.csv"))
    assert adjusted_rand_score(truth, pred) >= 0.95
    assert (out / "results" / "report" / "index.html").exists()


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_demo_rerun_replaces_the_previous_sample_set(tmp_path):
    """A smaller rerun used to keep the larger run's images (clustered with the new ones) and its
    held-out images (overlapping the new training images), and the feature cache grew every run."""
    from engine.demo import run_demo

    out = tmp_path / "demo"
    run_demo(out, model="pixels", device="cpu", per_group=5, quiet=True)
    (out / "images" / "notes.txt").write_text("not an image: left alone")
    clusterer = run_demo(out, model="pixels", device="cpu", per_group=1, quiet=True)

    images, held_out = _files(out / "images"), _files(out / "held-out")
    assert images == sorted(["notes.txt"] + [f"{g}/{g}_000.jpg" for g in GROUPS])
    assert held_out == [f"{g}/{g}_{i:03d}.jpg" for g in sorted(GROUPS) for i in range(1, 5)]
    assert len(clusterer.paths_) == len(GROUPS)
    assert len(read_rows(out / "results" / "predictions.csv")) == len(GROUPS)
    cache_rows = [row for index in (out / "results" / "features").glob("shard-*.index.json")
                  for row in json.loads(index.read_text())["rows"]]
    assert len(cache_rows) == len(GROUPS)  # only this run's images


def test_demo_refuses_to_delete_a_users_image(tmp_path):
    from engine.demo import run_demo
    from engine.errors import ConfigError

    out = tmp_path / "demo"
    generate_sample_set(out / "held-out", per_group=1)
    mine = out / "images" / "red_stripes" / "mine.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my photo")
    with pytest.raises(ConfigError, match="1 image file.*the demo did not generate.*mine.jpg"):
        run_demo(out, model="pixels", device="cpu", per_group=1, quiet=True)
    assert mine.read_bytes() == b"my photo"
    assert len(_files(out / "held-out")) == len(GROUPS)  # nothing deleted anywhere before the refusal


@pytest.mark.parametrize("per_group", ["0", "-2"])
def test_demo_rejects_per_group_below_one(runner, tmp_path, per_group):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--per-group", per_group, "--model", "pixels"])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: --per-group must be at least 1 (got {per_group})"
    assert not out.exists()  # rejected before anything is written


def test_an_interrupted_demo_can_be_run_again(runner, tmp_path, monkeypatch):
    """Stopped while extracting, the demo left a feature cache and no summary.json, and its rerun
    refused results/ as files an earlier demo did not write (after being told to rerun to resume)."""
    import engine.pipeline

    real = engine.pipeline.extract_features

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "demo"
    monkeypatch.setattr(engine.pipeline, "extract_features", interrupted)
    stopped = runner.invoke(app, ["demo", "--out", str(out), "--model", "pixels", "--per-group", "2"])
    assert stopped.exit_code == 130 and "resume" not in stopped.output  # the demo remakes its images
    assert (out / "results").is_dir() and not (out / "results" / "summary.json").exists()
    monkeypatch.setattr(engine.pipeline, "extract_features", real)
    again = runner.invoke(app, ["demo", "--out", str(out), "--model", "pixels", "--per-group", "2"])
    assert again.exit_code == 0, again.output
    assert (out / "results" / "summary.json").is_file()


def test_demo_refuses_to_clear_a_results_folder_it_did_not_write(tmp_path):
    """`demo --out .` in a project that has its own results/: nothing there is deleted."""
    from engine.demo import run_demo
    from engine.errors import ConfigError

    out = tmp_path / "project"
    results = out / "results"
    (results / "report").mkdir(parents=True)
    (results / "report" / "index.html").write_text("the project's report")
    (results / "summary.json").write_text('{"inputs": ["elsewhere"], "features": {}}')
    (results / "predictions.csv").write_text("theirs")
    with pytest.raises(ConfigError, match="holds files an earlier demo did not write"):
        run_demo(out, model="pixels", device="cpu", per_group=1, quiet=True)
    assert (results / "report" / "index.html").read_text() == "the project's report"
    assert (results / "predictions.csv").read_text() == "theirs"
    assert not (out / "images").exists()  # refused before generating anything
