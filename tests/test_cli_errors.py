"""Bad arguments: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.cli import app


@pytest.mark.parametrize("args, needle", [
    (["--k", "10:2"], "reversed: write it as 2:10"),
    (["--k", "2:1"], "k range 2:1 is reversed, and K must be at least 2 (a range like 2:2)"),  # not "1:2"
    (["--k", "1"], "below 2"),
    (["--k", "abc"], "not a number"),
    (["--pca", "1.5"], "outside (0, 1]"),
    (["--pca", "-1"], "below 0"),
    (["--pca", "lots"], "not a number"),
    (["--model", "vgg16"], "model='vgg16' is not one of"),
    (["--select", "best"], "select='best' is not one of"),
    (["--device", "tpu"], "device='tpu' is not one of"),
    (["--decoder", "nvjpeg", "--device", "cpu"], "nvjpeg needs --device cuda"),
    (["--cluster-backend", "cuml"], "--cluster-backend cuml: cuml"),
    (["--io-threads", "0"], "io_threads=0 must be >= 1"),
])
def test_bad_argument_exit_2(three_groups, runner, tmp_path, args, needle):
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "o"), "--model", "pixels", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1


def test_missing_path_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--model", "pixels"])
    assert result.exit_code == 2
    assert "path not found" in result.output
    assert not (tmp_path / "o").exists()  # a mistyped input leaves no empty --out behind


def test_a_missing_path_is_said_before_the_slow_start(tmp_path):
    """It used to come after torch's import and the GPU probe's notice (3.3 s on a 2-core VM)."""
    code = ("import sys; from engine.cli import app\n"
            "try:\n    app(['run', sys.argv[1], 'also/missing/*.jpg', '--out', sys.argv[2]])\n"
            "except SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope") + "/", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "exit 2 False", out.stdout + out.stderr
    assert f"path not found: {tmp_path / 'nope'}" in " ".join(out.stderr.split()) and "Using" not in out.stderr


def test_empty_folder_exit_2(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["run", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--model", "pixels"])
    assert result.exit_code == 2
    assert "no image files found" in result.output


def test_all_bad_files_exit_2(runner, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    for i in range(3):
        (data / f"x{i}.jpg").write_bytes(b"garbage" * i)
    result = runner.invoke(app, ["run", str(data), "--out", str(tmp_path / "o"), "--model", "pixels"])
    assert result.exit_code == 2
    assert "could be used" in result.output
    assert (tmp_path / "o" / "skipped.csv").exists()


def test_fewer_images_than_smallest_k_exit_2(three_groups, runner, tmp_path):
    files = sorted(three_groups.glob("*/*.jpg"))[:3]
    result = runner.invoke(app, ["run", *map(str, files), "--out", str(tmp_path / "o"), "--model", "pixels", "--k", "5"])
    assert result.exit_code == 2
    assert "fewer than the smallest K" in result.output


def test_auto_weights_offline_is_one_clear_error(three_groups, runner, tmp_path, offline_weights):
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "o"), "--model", "resnet18"])
    assert result.exit_code == 2
    assert "--weights PATH" in result.output and "--weights random" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["run", "demo", "doctor"])
def test_help_has_an_example(runner, command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_version_short_help_and_flags_shown_without_a_value(runner):
    from engine.versions import imgcluster_version

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"imgcluster {imgcluster_version()}"
    short = runner.invoke(app, ["run", "-h"], terminal_width=200)
    assert short.exit_code == 0 and "Example" in short.output
    lines = {line.split()[1]: line for line in short.output.splitlines() if line.startswith("│") and "--" in line}
    for name in ("--compile", "--save-features", "--report", "--cache", "--include-hidden", "--quiet"):
        assert "<bool>" not in lines[name], lines[name]  # a flag takes no value: `--compile true` was read as a path
    assert "<str>" in lines["--k"]  # options that take a value still say which
    for command in (["--help"], ["run", "--help"], ["cluster", "-h"], ["doctor", "--help"]):  # typer's own --help too
        shown = runner.invoke(app, command, terminal_width=200)
        assert shown.exit_code == 0 and "--help" in shown.output and "<bool>" not in shown.output, command


def test_error_text_is_not_eaten_as_markup(runner, tmp_path):
    missing = tmp_path / "photos[2020]"
    result = runner.invoke(app, ["run", str(missing), "--out", str(tmp_path / "o"), "--model", "pixels"])
    assert result.exit_code == 2
    assert "photos[2020]" in result.output


# ---------------------------------------------------------------------------------------------
# Output locations are checked before the work; a run's folder describes one run


def _one_error_line(result, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1


def test_out_that_is_a_file_is_one_line(three_groups, runner, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for extra in ([], ["--no-cache"]):
        result = runner.invoke(app, ["run", str(three_groups), "--out", str(afile), "--model", "pixels", *extra])
        _one_error_line(result)
        assert "is a file, not a folder" in result.output
    assert afile.read_text() == "x"


def test_unwritable_out_is_one_line_before_any_work(three_groups, runner, tmp_path):
    result = runner.invoke(app, ["run", str(three_groups), "--out", "/proc/imgcluster-out", "--model", "pixels"])
    _one_error_line(result)
    assert "--out /proc/imgcluster-out: cannot create or write in" in result.output
    assert "Extracting" not in result.output


def test_save_model_into_a_folder_fails_before_the_run(three_groups, runner, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    out = tmp_path / "o"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels",
                                 "--save-model", str(folder)])
    _one_error_line(result)
    assert "--save-model" in result.output and "is a folder" in result.output
    assert not (out / "predictions.csv").exists()  # refused before the work, not after it


def test_predict_out_folder_fails_before_predicting(three_groups, runner, tmp_path):
    model = tmp_path / "m.imgc"
    done = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "o"), "--model", "pixels",
                               "--k", "3", "--no-report", "--save-model", str(model)])
    assert done.exit_code == 0, done.output
    result = runner.invoke(app, ["predict", str(model), str(three_groups), "--out", str(tmp_path / "o")])
    _one_error_line(result)
    assert "is a folder: give a file name" in result.output and "Predicting" not in result.output


def test_report_of_a_corrupt_summary_is_one_line(three_groups, runner, tmp_path):
    out = tmp_path / "o"
    assert runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                               "--no-report"]).exit_code == 0
    (out / "summary.json").write_text("{bad")
    result = runner.invoke(app, ["report", str(out)])
    _one_error_line(result)
    assert "cannot read" in result.output and "summary.json" in result.output


def test_rerun_removes_what_it_did_not_write(three_groups, runner, tmp_path):
    """A run without --save-features or without the report leaves no earlier run's features.npy
    or report/ next to its own predictions.csv."""
    out = tmp_path / "o"
    first = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "2:3",
                                "--save-features"])
    assert first.exit_code == 0 and (out / "features.npy").exists() and (out / "report" / "index.html").exists()
    (out / "report" / "mine.txt").write_text("not ours")  # only the report's own files are removed
    again = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "4",
                                "--no-report"])
    assert again.exit_code == 0, again.output
    assert not (out / "features.npy").exists() and not (out / "report" / "index.html").exists()
    assert not list((out / "report").rglob("*.png"))
    assert (out / "report" / "mine.txt").read_text() == "not ours"
    assert (out / "predictions.csv").exists()


def test_a_first_run_deletes_nothing_it_did_not_write(three_groups, runner, tmp_path):
    """A folder that never held a run may hold a features.npy or a report/ of the user's."""
    out = tmp_path / "analysis"
    (out / "report").mkdir(parents=True)
    (out / "features.npy").write_bytes(b"user's")
    (out / "report" / "index.html").write_text("user's report")
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    assert (out / "features.npy").read_bytes() == b"user's"
    assert (out / "report" / "index.html").read_text() == "user's report"


def test_recluster_keeps_a_saved_features_file_in_step(three_groups, runner, tmp_path):
    import numpy as np
    from tests.helpers import read_rows

    out = tmp_path / "o"
    assert runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                               "--no-report", "--save-features"]).exit_code == 0
    before = np.load(out / "features.npy")
    victim = sorted(three_groups.glob("*/*.jpg"))[0]
    moved = tmp_path / "moved.jpg"
    victim.rename(moved)  # one image gone: the re-clustered run has one row fewer
    try:
        result = runner.invoke(app, ["cluster", str(out), "--k", "2:3", "--no-report"])
    finally:
        moved.rename(victim)
    assert result.exit_code == 0, result.output
    after = np.load(out / "features.npy")
    assert after.shape == (before.shape[0] - 1, before.shape[1])
    assert len(read_rows(out / "predictions.csv")) == after.shape[0]


@pytest.mark.parametrize("how", ["folder", "glob", "symlinked out"])
def test_out_inside_the_input_folder_does_not_cluster_its_own_report(three_groups, runner, tmp_path, how):
    """The report's montages are JPEGs: a second run over a folder holding the first run's output
    must not cluster them (whether the input is the folder, a ** glob, or --out is a symlink into
    it), nor count the run's own CSVs and cache files as ignored."""
    import shutil

    from tests.helpers import read_rows

    photos = tmp_path / "photos"
    shutil.copytree(three_groups, photos)
    n = len(list(photos.rglob("*.jpg")))
    inputs = [str(photos / "**" / "*.jpg")] if how == "glob" else [str(photos)]
    out = photos / "results"
    if how == "symlinked out":
        (tmp_path / "elsewhere").mkdir()
        out.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        out = tmp_path / "link-to-results"
        out.symlink_to(photos / "results", target_is_directory=True)
    for _ in range(2):
        result = runner.invoke(app, ["run", *inputs, "--out", str(out), "--model", "pixels", "--k", "3"])
        assert result.exit_code == 0, result.output
        rows = read_rows(out / "predictions.csv")
        assert len(rows) == n and not any("/results/" in r["path"] for r in rows)
    assert list((out / "report" / "montages").glob("*.jpg"))  # there was something to leave out
    text = " ".join(result.output.split())
    assert "Left out the earlier run's own files" in text and "ignored" not in text


def test_two_good_images_say_three_are_needed(three_groups, runner, tmp_path):
    files = sorted(three_groups.glob("*/*.jpg"))[:2]
    result = runner.invoke(app, ["run", *map(str, files), "--out", str(tmp_path / "o"), "--model", "pixels"])
    _one_error_line(result)
    assert "clustering needs at least 3" in result.output


def test_report_warns_when_images_moved_and_takes_a_small_montage(three_groups, runner, tmp_path):
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(three_groups, photos)
    out = tmp_path / "o"
    assert runner.invoke(app, ["run", str(photos), "--out", str(out), "--model", "pixels", "--k", "3",
                               "--no-report"]).exit_code == 0
    small = runner.invoke(app, ["report", str(out), "--max-montage", "3"])  # fewer tiles than the 6 outliers
    assert small.exit_code == 0, small.output
    assert "Warning" not in small.output
    photos.rename(tmp_path / "elsewhere")
    moved = runner.invoke(app, ["report", str(out)])
    assert moved.exit_code == 0, moved.output
    text = " ".join(moved.output.split())
    assert "Warning:" in text and "could not be read" in text and "Report written" in text


def test_fewer_pca_components_than_asked_are_announced(three_groups, runner, tmp_path):
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "o"), "--model", "pixels",
                                 "--k", "3", "--no-report", "--pca", "500"])
    assert result.exit_code == 0, result.output
    assert "PCA: 60 components, not 500" in " ".join(result.output.split())


def test_a_folder_of_images_not_named_like_images_says_so(three_groups, runner, tmp_path):
    import shutil

    data = tmp_path / "dat"
    data.mkdir()
    for i, src in enumerate(sorted(three_groups.glob("*/*.jpg"))[:4]):
        shutil.copy(src, data / f"img{i}.dat")
    result = runner.invoke(app, ["run", str(data), "--out", str(tmp_path / "o"), "--model", "pixels"])
    _one_error_line(result)
    text = " ".join(result.output.split())
    assert "4 other files, not named like images: .dat" in text and "@list.txt" in text
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(str(p) for p in sorted(data.iterdir())) + "\n")
    assert runner.invoke(app, ["run", f"@{listed}", "--out", str(tmp_path / "o2"), "--model", "pixels",
                               "--k", "2", "--no-report"]).exit_code == 0  # by name, content decides


def test_the_default_pca_is_cut_without_a_notice(three_groups, runner, tmp_path):
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "o"), "--model", "pixels",
                                 "--k", "3", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "components, not 200" not in " ".join(result.output.split())


def test_cluster_keeps_a_recorded_list_of_two_ks(three_groups, runner, tmp_path):
    import json

    out = tmp_path / "o"
    assert runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "2,5",
                               "--no-report"]).exit_code == 0
    result = runner.invoke(app, ["cluster", str(out), "--seed", "1", "--no-report"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert [s["k"] for s in scores] == [2, 5]  # two values, not the range 2..5


def test_failed_run_leaves_a_finished_run_as_it_was(three_groups, runner, tmp_path):
    """A run that fails (too few images for K, nothing usable) into a folder holding a finished
    run: that run's files stay as they were (its skipped.csv still matches its predictions); the
    failed run's list goes to skipped-failed-run.csv, named in the error; the next finished run
    there removes it."""
    out = tmp_path / "o"
    data = tmp_path / "data"
    data.mkdir()
    good = sorted(three_groups.glob("*/*.jpg"))
    (data / "empty.jpg").write_bytes(b"")
    (data / "broken.jpg").write_bytes(b"garbage")
    args = ["--out", str(out), "--model", "pixels", "--no-report"]
    first = runner.invoke(app, ["run", str(three_groups), str(data), *args, "--k", "3"])
    assert first.exit_code == 0, first.output
    before = {name: (out / name).read_bytes() for name in ("predictions.csv", "skipped.csv", "summary.json")}
    assert b"empty.jpg" in before["skipped.csv"]

    too_few = runner.invoke(app, ["run", *map(str, good[:3]), str(data / "broken.jpg"), *args, "--k", "5"])
    assert too_few.exit_code == 2
    flat = " ".join(too_few.output.split())
    assert "fewer than the smallest K" in flat and "skipped-failed-run.csv" in flat.replace(" ", "")
    assert "the finished run's predictions.csv, skipped.csv and summary.json there are unchanged" in flat
    assert "feature cache was restarted" not in flat  # same settings: the cache is the finished run's still
    assert {name: (out / name).read_bytes() for name in before} == before
    failed = (out / "skipped-failed-run.csv").read_text()
    assert "broken.jpg" in failed and "empty.jpg" not in failed

    nothing = runner.invoke(app, ["run", str(data / "broken.jpg"), *args, "--max-pixels", "100"])
    assert nothing.exit_code == 2 and "could be used" in nothing.output
    assert {name: (out / name).read_bytes() for name in before} == before
    # another --max-pixels restarted the cache: the error says so, since `cluster` there needs it
    assert "its feature cache was restarted for this run's settings" in " ".join(nothing.output.split())

    again = runner.invoke(app, ["run", str(three_groups), *args, "--k", "3"])
    assert again.exit_code == 0, again.output
    assert not (out / "skipped-failed-run.csv").exists()


def test_arguments_are_checked_before_the_inputs_are_walked(runner, tmp_path, monkeypatch):
    """An --out that is a file, a weights file that is not there, a device that is not: one line,
    before the folder walk (which takes minutes on a large share), and no folder made."""
    import engine.pipeline as pipeline

    def no_walk(*args, **kwargs):
        raise AssertionError("the inputs were walked before the arguments were checked")

    monkeypatch.setattr(pipeline, "discover", no_walk)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "photos").mkdir()  # it exists (a missing input is said first of all)
    cases = [(["--out", str(tmp_path / "afile"), "--model", "pixels"], "is a file, not a folder"),
             (["--out", str(tmp_path / "o"), "--model", "resnet18", "--weights", str(tmp_path / "nope.pth")],
              "not auto, random or an existing file"),
             (["--out", str(tmp_path / "o"), "--model", "pixels", "--device", "cuda"], "CUDA is not available")]
    for args, expected in cases:
        if "cuda" in args and __import__("torch").cuda.is_available():
            continue
        result = runner.invoke(app, ["run", str(tmp_path / "photos"), *args])
        assert result.exit_code == 2, result.output
        assert expected in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_ctrl_c_speaks_of_resuming_only_where_a_cache_is_kept(three_groups, runner, tmp_path, monkeypatch):
    """`cluster` extracts nothing: Ctrl-C there used to say 'rerun the same command to resume from
    the feature cache' as `run` does."""
    import engine.recluster

    out = tmp_path / "o"
    assert runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                               "--no-report"]).exit_code == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.recluster, "cluster_features", interrupted)
    result = runner.invoke(app, ["cluster", str(out), "--k", "2:4", "--no-report"])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "resume" not in result.output

    import engine.pipeline  # `run --no-cache` keeps no cache to resume from either; with one it does

    monkeypatch.setattr(engine.pipeline, "extract_features", interrupted)
    for cache, says_resume in (("--no-cache", False), ("--cache", True)):
        result = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / cache), "--model", "pixels",
                                     cache])
        assert result.exit_code == 130 and ("resume from the feature cache" in result.output) == says_resume


def test_ctrl_c_during_the_report_points_at_imgcluster_report(three_groups, runner, tmp_path, monkeypatch):
    """The results are written before the report: an interrupt there needs `imgcluster report`,
    not the whole run again."""
    import engine.report

    real = engine.report.build_report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.report, "build_report", interrupted)
    out = tmp_path / "o"
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3"])
    assert result.exit_code == 130
    flat = " ".join(result.output.split())
    assert f"interrupted while writing the report: the results are in {out}/; `imgcluster report {out}`" in flat
    assert (out / "predictions.csv").is_file() and (out / "summary.json").is_file()
    model = tmp_path / "m.imgc"  # saved after the run: the message says it was not, and how to get it
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--save-model", str(model)])
    assert result.exit_code == 130 and not model.exists()
    assert (f"the model file {model} was not saved: `imgcluster cluster {out} --no-report --save-model {model}`"
            in " ".join(result.output.split()))
    monkeypatch.setattr(engine.report, "build_report", real)
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0 and (out / "report" / "index.html").is_file()
    # A later run interrupted while it writes its report: the earlier run's page is gone (it
    # described K=3 beside this run's K=2 predictions), and `imgcluster report` writes the new one.
    monkeypatch.setattr(engine.report, "build_report", interrupted)
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "2"])
    assert result.exit_code == 130 and not (out / "report" / "index.html").exists()
    monkeypatch.setattr(engine.report, "build_report", real)
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    page = (out / "report" / "index.html").read_text()
    assert "Only K = 2 was searched" in page and "K = 3" not in page
