"""Bad arguments: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import pytest

from engine.cli import app


@pytest.mark.parametrize("args, needle", [
    (["--k", "10:2"], "reversed"),
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
    assert "could be decoded" in result.output
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


def test_error_text_is_not_eaten_as_markup(runner, tmp_path):
    missing = tmp_path / "photos[2020]"
    result = runner.invoke(app, ["run", str(missing), "--out", str(tmp_path / "o"), "--model", "pixels"])
    assert result.exit_code == 2
    assert "photos[2020]" in result.output
