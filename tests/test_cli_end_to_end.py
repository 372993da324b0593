"""The whole job through the CLI on generated images with known groups."""
from __future__ import annotations

import json
import shutil

import pytest
from sklearn.metrics import adjusted_rand_score

from engine.cli import app
from tests.helpers import group_labels, read_rows


def test_run_pixels_finds_three_groups(three_groups, runner, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--no-report"])
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "predictions.csv")
    assert len(rows) == 60
    assert list(rows[0]) == ["path", "cluster"]
    truth, pred = group_labels(rows)
    assert adjusted_rand_score(truth, pred) >= 0.95
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == 3
    assert summary["n_images"] == 60 and summary["n_skipped"] == 0
    assert [s["k"] for s in summary["scores"]] == list(range(2, 21))
    for key in ("silhouette", "inertia", "calinski_harabasz", "davies_bouldin", "fraction_negative", "balance"):
        assert key in summary["scores"][0]
    assert summary["cluster_sizes"] == sorted(summary["cluster_sizes"], reverse=True)
    assert set(summary["timings"]) >= {"discover", "extract", "pca", "kmeans", "silhouette", "total"}
    assert summary["backends"]["device"] == "cpu"
    assert summary["config"]["model"] == "pixels"
    assert read_rows(out / "skipped.csv") == []
    assert "Chosen K = 3" in result.output
    # ids run 0..K-1, largest cluster first
    sizes = [pred.count(c) for c in range(3)]
    assert sorted(set(pred)) == [0, 1, 2] and sizes == sorted(sizes, reverse=True)


def test_result_lines_stay_one_line_in_a_pipe(three_groups, runner, tmp_path):
    """`run ... | tail -1` printed "/": the closing line (and cluster's, report's) wrapped at 80
    columns when stdout is not a terminal; each is one line whatever the path's length."""
    out = tmp_path / "a_rather_long_output_folder_name" / "with" / "another_long_subfolder_level" / "and_more"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--no-report"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert f"Chosen K = 3; results in {out}/" in result.output.splitlines()
    again = runner.invoke(app, ["cluster", str(out), "--k", "3"], terminal_width=80)
    assert f"Chosen K = 3; results in {out}/; report: {out / 'report' / 'index.html'}" in again.output.splitlines(), \
        again.output
    report = runner.invoke(app, ["report", str(out)], terminal_width=80)
    assert f"Report written to {out / 'report' / 'index.html'}" in report.output.splitlines(), report.output


def test_same_seed_same_output(three_groups, runner, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels",
                                     "--k", "2:6", "--seed", "7", "--no-report", "--no-cache"])
        assert result.exit_code == 0, result.output
        outs.append(out)
    assert (outs[0] / "predictions.csv").read_bytes() == (outs[1] / "predictions.csv").read_bytes()
    a, b = (json.loads((o / "summary.json").read_text()) for o in outs)
    assert a["scores"] == b["scores"]


def test_skipped_files_are_listed(three_groups, runner, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(three_groups, data)
    (data / "red_stripes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "red_stripes" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "2:5", "--no-report"])
    assert result.exit_code == 0, result.output
    skipped = {r["path"].split("/")[-1]: r["reason"] for r in read_rows(out / "skipped.csv")}
    assert set(skipped) == {"broken.jpg", "empty.png"}
    assert "empty" in skipped["empty.png"]
    assert len(read_rows(out / "predictions.csv")) == 60


def test_save_features(three_groups, runner, tmp_path):
    import numpy as np

    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--save-features", "--no-report"])
    assert result.exit_code == 0, result.output
    feats = np.load(out / "features.npy")
    assert feats.shape == (60, 192) and feats.dtype == np.float32


def test_report_command_rebuilds_from_saved_outputs(three_groups, runner, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "2:4",
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    assert not (out / "report").exists()
    (out / "features").rename(tmp_path / "features-moved")  # proves nothing is re-extracted
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report" / "index.html").is_file()
    assert len(list((out / "report" / "montages").glob("cluster_*.jpg"))) == 3


def test_report_command_on_a_non_run_is_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished run (summary.json is missing)" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "nosuch")])
    assert result.exit_code == 2 and f"{tmp_path / 'nosuch'} not found" in " ".join(result.output.split())
    (tmp_path / "afile").write_text("x")
    for command in (["report", str(tmp_path / "afile")], ["export", str(tmp_path / "afile"), "--to", str(tmp_path / "t")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "is a file, not a run's output folder" in " ".join(result.output.split())


def test_report_finds_relative_paths_from_another_folder(three_groups, runner, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(three_groups.parent)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", three_groups.name, "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    assert not os.path.isabs(read_rows(out / "predictions.csv")[0]["path"])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "report" / "index.html").read_text()
    assert "unreadable" not in html.lower()


def test_max_pixels_and_pca_fit_limit_options(three_groups, runner, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--no-report", "--pca", "4", "--pca-fit-limit", "30", "--max-pixels", "60000"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pca"]["mode"] == "streamed" and summary["config"]["max_pixels"] == 60000
    skipped = read_rows(out / "skipped.csv")
    assert skipped and all("too large" in r["reason"] for r in skipped)  # the sample images are up to 320x320
    assert len(read_rows(out / "predictions.csv")) + len(skipped) == 60


def test_cli_defaults_agree_with_the_library():
    import inspect

    from engine.cli import run
    from engine.config import Config

    defaults = {name: p.default.default for name, p in inspect.signature(run).parameters.items()
                if hasattr(p.default, "default")}
    library = Config().flat()
    for name in ("pca_fit_limit", "max_pixels", "n_init", "seed", "select", "decoder", "device", "model", "weights"):
        assert defaults[name] == library[name], name


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", ["nvjpeg", "pil"])
def test_cuda_run_matches_the_cpu_run(three_groups, runner, tmp_path, decoder):
    """The whole job on the GPU (decode, features, PCA, KMeans, silhouette on CUDA) finds the same
    groups as on the CPU, and says which backends it used."""
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        args = ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "2:6", "--no-report",
                "--device", device] + (["--decoder", decoder] if device == "cuda" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        runs[device] = (read_rows(out / "predictions.csv"), json.loads((out / "summary.json").read_text()))
    (cpu_rows, cpu_summary), (gpu_rows, gpu_summary) = runs["cpu"], runs["cuda"]
    assert gpu_summary["backends"]["device"].startswith("cuda")
    assert gpu_summary["backends"]["decoder"] == decoder and gpu_summary["backends"]["cluster"] == "torch"
    assert gpu_summary["k"] == cpu_summary["k"] == 3
    assert [r["path"] for r in gpu_rows] == [r["path"] for r in cpu_rows]
    assert adjusted_rand_score([r["cluster"] for r in cpu_rows], [r["cluster"] for r in gpu_rows]) >= 0.99
    assert abs(gpu_summary["scores"][1]["silhouette"] - cpu_summary["scores"][1]["silhouette"]) < 0.02


def test_a_carriage_return_in_a_file_name_survives_every_csv(three_groups, runner, tmp_path):
    """csv.writer with "\\n" line ends quotes a field holding "\\n" but not "\\r", which readers
    take as a line end: such a name split its row, and report, export and cluster failed on it."""
    import csv
    import shutil

    data = tmp_path / "data"
    shutil.copytree(three_groups, data)
    odd = next(data.glob("*/*.jpg"))
    odd.rename(odd.with_name("g\rcr.jpg"))
    out = tmp_path / "out"
    model = tmp_path / "m.imgc"
    result = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--save-model", str(model)])
    assert result.exit_code == 0, result.output
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and sum(r["path"].endswith("g\rcr.jpg") for r in rows) == 1
    assert all(r["cluster"].isdigit() for r in rows)
    for command in (["report", str(out)], ["cluster", str(out), "--k", "3", "--no-report"],
                    ["export", str(out), "--to", str(tmp_path / "by-cluster")],
                    ["predict", str(model), str(data), "--out", str(tmp_path / "p.csv")]):
        done = runner.invoke(app, command)
        assert done.exit_code == 0, (command[0], done.output)
        assert "changed or removed" not in done.output
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 60


def test_write_csv_keeps_rows_in_order_whatever_they_hold(tmp_path):
    import csv

    from engine.report.outputs import write_csv

    rows = [("a\rb", 1), iter(["plain", 2]), ("c\r", 3), ("d,e", 4)]  # an iterator row is read once
    path = write_csv(tmp_path / "x.csv", ["path", "n"], rows)
    with open(path, newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [["path", "n"], ["a\rb", "1"], ["plain", "2"], ["c\r", "3"], ["d,e", "4"]]


def test_pca_1_is_said_to_keep_one_component(three_groups, runner, tmp_path):
    """`--pca 1` is one component (an int), `--pca 1.0` all the variance: the first says so."""
    notice = "PCA: --pca 1 keeps 1 component; to keep all the variance write --pca 1.0 (or --pca 0: no PCA)"
    one = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "a"), "--model", "pixels",
                              "--pca", "1", "--k", "3", "--no-report"])
    assert one.exit_code == 0 and notice in " ".join(one.output.split()), one.output
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["pca"]["n_components"] == 1
    whole = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "b"), "--model", "pixels",
                                "--pca", "1.0", "--k", "3", "--no-report"])
    assert whole.exit_code == 0 and "keeps 1 component" not in whole.output, whole.output


def test_files_not_named_like_images_are_recorded(three_groups, runner, tmp_path):
    """The walk passes over notes and sidecars without opening them; that used to be said only in
    a notice. summary.json counts them by suffix (a re-clustering keeps the count) and the
    report says so."""
    data = tmp_path / "data"
    shutil.copytree(three_groups, data)
    (data / "notes.txt").write_text("x")
    (data / "a.xmp").write_text("x")
    (data / "b.xmp").write_text("x")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["ignored"] == {".xmp": 2, ".txt": 1}
    page = " ".join((out / "report" / "index.html").read_text().split())
    assert "3 files passed over by the folder walk: .xmp (2), .txt (1)" in page
    again = runner.invoke(app, ["cluster", str(out), "--k", "2:4", "--out", str(tmp_path / "re"), "--no-report"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "re" / "summary.json").read_text())["ignored"] == {".xmp": 2, ".txt": 1}
