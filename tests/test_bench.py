"""`imgcluster bench` on the CPU: every stage measured, the seed-like ratio printed and saved."""
from __future__ import annotations

import json

from engine.bench import make_bench_set
from engine.cli import app


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
    assert figures["seed_like"]["end_to_end"]["seconds"] > 0
    assert figures["ratio_end_to_end"] > 0

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
