"""`imgcluster bench` on the CPU: every stage measured, the seed-like ratio printed and saved."""
from __future__ import annotations

import json

import pytest

from engine.bench import BenchResult, make_bench_set, print_bench
from engine.cli import app
from engine.errors import ConfigError


def test_bench_set_is_imagenet_like(tmp_path):
    from PIL import Image

    paths = make_bench_set(tmp_path, 6)
    sizes = [p.stat().st_size for p in paths]
    with Image.open(paths[0]) as img:
        assert img.size == (500, 400) and img.format == "JPEG"
    assert 50_000 < sum(sizes) / len(sizes) < 130_000  # about 90 KB, like ImageNet validation JPEGs


def test_bench_cpu_prints_stages_and_ratio(runner, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--folder", str(tmp_path / "imgs"), "--n", "24", "--model", "pixels",
            "--k", "2:4", "--pca", "4"]
    result = runner.invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "seed-like configuration" in result.output
    figures = json.loads(out.read_text())
    for stage in ("read", "decode_resize", "backbone", "extract", "pca", "kmeans", "silhouette", "end_to_end"):
        assert figures["ours"][stage]["images_per_s"] > 0
        assert figures["ours"][stage]["images"] == 24  # every row counts the same images
    # the backbone is timed on whole batches (more images than 24) and scaled to the 24
    backbone = figures["ours"]["backbone"]
    assert backbone["measured"]["images"] > 24
    assert backbone["seconds"] == pytest.approx(backbone["measured"]["seconds"] * 24 / backbone["measured"]["images"],
                                                abs=2e-4)
    assert f"{backbone['seconds']:.3f}" in result.output.split("backbone ")[1].split("\n")[0]
    assert f"on {backbone['measured']['images']} random 224x224 images" in result.output
    assert figures["seed_like"]["end_to_end"]["seconds"] > 0
    assert figures["ratio_end_to_end"] > 0
    for side, label in (("ours", "ours"), ("seed_like", "seed-like")):
        extract = figures[side]["extract"]
        assert 0 < extract["waited_for_loader_s"] <= extract["seconds"]
        assert (f"extract ({label}): the model's thread waited {extract['waited_for_loader_s']:.3f} s of "
                f"{extract['seconds']:.3f} s") in " ".join(result.output.split())

    no_seed = tmp_path / "no-seed.json"
    result = runner.invoke(app, [*args, "--no-seed-like", "--json", str(no_seed)])
    assert result.exit_code == 0, result.output
    assert json.loads(no_seed.read_text())["ratio_end_to_end"] is None


def test_bench_with_fewer_images_than_the_k_range(runner, tmp_path):
    """K above n - 1 is dropped for both configurations, with a notice (it used to crash in sklearn)."""
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--device", "cpu", "--folder", str(tmp_path / "imgs"), "--n", "6",
                                 "--model", "pixels", "--k", "2:20", "--pca", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "K above 5 dropped" in result.output
    assert json.loads(out.read_text())["ks"] == [2, 3, 4, 5]

    result = runner.invoke(app, ["bench", "--device", "cpu", "--folder", str(tmp_path / "imgs"), "--n", "2",
                                 "--model", "pixels"])
    assert result.exit_code == 2 and "at least 3 images" in result.output and "Traceback" not in result.output


def test_bench_n_below_three_is_rejected_not_defaulted(runner, tmp_path):
    """--n 0 used to become the default (96 on the CPU) through `n or default`."""
    for n in ("0", "-1"):
        result = runner.invoke(app, ["bench", "--device", "cpu", "--folder", str(tmp_path / "imgs"), "--n", n,
                                     "--model", "pixels"])
        assert result.exit_code == 2 and f"--n {n}: the bench needs at least 3 images" in result.output
    assert not (tmp_path / "imgs").exists()  # rejected before any image is written


def test_bench_never_writes_into_a_folder_of_other_files(runner, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"a user's photo")
    result = runner.invoke(app, ["bench", "--device", "cpu", "--folder", str(photos), "--n", "6",
                                 "--model", "pixels", "--k", "2:3", "--pca", "4"])
    assert result.exit_code == 2, result.output
    assert "holds 1 other file(s) (e.g. holiday.jpg)" in result.output
    assert "generates its own ImageNet-like JPEGs" in result.output
    assert sorted(p.name for p in photos.iterdir()) == ["holiday.jpg"]
    with pytest.raises(ConfigError, match="is a file"):
        make_bench_set(photos / "holiday.jpg", 3)


def test_bench_folder_of_its_own_images_is_reused(tmp_path):
    first = make_bench_set(tmp_path, 4)
    stamps = [p.stat().st_mtime_ns for p in first]
    again = make_bench_set(tmp_path, 3)  # a smaller set reuses the first images, keeps the others
    assert again == first[:3] and [p.stat().st_mtime_ns for p in again] == stamps[:3]
    assert len(list(tmp_path.iterdir())) == 4


def test_bench_table_backbone_row_counts_the_same_images(tmp_path):
    """The backbone row used to print the seconds of its own timed run (64 images) next to an
    extract row for 24, so the part looked three times slower than the whole."""
    from rich.console import Console

    def stage(seconds, images=24):
        return {"seconds": seconds, "images_per_s": round(images / seconds, 1), "images": images}

    ours = {"decode_resize": stage(0.2), "backbone": {**stage(0.291), "measured": {"seconds": 0.777, "images": 64}},
            "extract": stage(0.261), "end_to_end": stage(0.3)}
    result = BenchResult("cpu", "resnet18", 24, [2, 3], ours=ours)
    console = Console(record=True, width=200)
    print_bench(result, console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if "backbone " in line and "│" in line)
    assert "0.291" in row and "0.777" not in row
    assert "backbone row: the model alone on 64 random 224x224 images (0.777 s), scaled to 24" in text
