"""Bad input never crashes a run; out-of-memory halves the work and retries; writes are atomic.

One generated corpus mixes good images with every kind of bad or odd input: each is either
processed or listed in skipped.csv with a reason, and the run exits 0.
"""
from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import ImageClusterer
from engine.cli import app
from engine.errors import DecodeError
from engine.loaders import decode
from engine.recluster import text_to_path
from engine.report import outputs
from engine.sample_data import generate_sample_set
from engine.sources import discover
from tests.helpers import read_rows

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no pixel data (a decompression bomb
    that is caught from the header alone)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h=64, w=64, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def build_corpus(root: Path) -> tuple[set[str], dict[str, str]]:
    """Good and odd-but-valid images plus every kind of bad input under `root`.

    Returns (names that must be processed, {name: regex the skip reason must match}); names are
    os.fsdecode'd file names (relative to root for the good/ subfolders).
    """
    good = set()
    for p in generate_sample_set(root / "good", per_group=6, groups=("red_stripes", "green_disc", "sunset_gradient")):
        good.add(p.name)
    odd = root / "odd"
    odd.mkdir()
    base = Image.new("RGB", (48, 40), (200, 30, 30))
    (odd / "png_bytes_named.jpg").write_bytes(_encoded(base, "PNG"))           # wrong extension: content decides
    base.convert("CMYK").save(odd / "cmyk.jpg", "JPEG")
    Image.fromarray(np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)).save(odd / "sixteen_bit.png")
    pal = Image.new("P", (40, 40))
    pal.putpalette([255, 0, 0, 0, 0, 255] * 128)
    pal.save(odd / "palette_transparent.png", transparency=0)
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(odd / "animated.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    Image.new("RGB", (1, 1), (9, 200, 9)).save(odd / "one_by_one.png")
    Image.new("RGB", (1, 3000), (9, 9, 200)).save(odd / "one_by_3000.png")  # extreme aspect ratio
    _noise(seed=1).save(odd / "no_permissions.png")
    os.chmod(odd / "no_permissions.png", 0)
    latin1 = os.path.join(os.fsencode(odd), b"caf\xe9_not_utf8.png")  # a file name that is not UTF-8
    _noise(seed=2).save(latin1, "PNG")
    _noise(seed=3).save(odd / "a_original.png")  # sorts first, so the aliases are the repeats
    os.symlink(odd / "a_original.png", odd / "symlink_alias.png")             # same file, another path
    os.link(odd / "a_original.png", odd / "hardlink_alias.png")               # same inode, another name
    good |= {"png_bytes_named.jpg", "cmyk.jpg", "sixteen_bit.png", "palette_transparent.png", "animated.gif",
             "one_by_one.png", "one_by_3000.png", "caf\udce9_not_utf8.png", "a_original.png"}
    if IS_ROOT:  # root reads a mode-000 file (CAP_DAC_OVERRIDE): it is simply processed
        good.add("no_permissions.png")

    bad = root / "bad"
    bad.mkdir()
    jpeg, png = _encoded(_noise(), "JPEG"), _encoded(_noise(), "PNG")
    (bad / "zero_bytes.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "text.png").write_bytes(b"this is a text file, not a picture\n" * 20)
    (bad / "bomb.png").write_bytes(png_header_only(30_000, 30_000))          # 900 Mpixel header, tiny file
    os.symlink(bad / "nowhere.jpg", bad / "broken_link.jpg")
    os.symlink(bad / "loop.jpg", bad / "loop.jpg")
    os.mkfifo(bad / "fifo.jpg")                                               # would block a reader forever
    expected_bad = {
        "zero_bytes.jpg": "empty",
        "truncated.jpg": "truncated|corrupt",
        "truncated.png": "truncated|corrupt",
        "text.png": "not an image",
        "bomb.png": "too large",
        "broken_link.jpg": "broken symlink",
        "loop.jpg": "symlink loop",
        "fifo.jpg": "not a regular file",
        "symlink_alias.png": "duplicate of .*a_original.png",
        "hardlink_alias.png": "duplicate of .*a_original.png",
    }
    if not IS_ROOT:
        expected_bad["no_permissions.png"] = "unreadable|permission"
    return good, expected_bad


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    good, bad = build_corpus(root)
    yield root, good, bad
    os.chmod(root / "odd" / "no_permissions.png", 0o644)


def test_bad_corpus_run_exits_0_and_accounts_for_every_file(corpus, runner, tmp_path):
    import re

    root, good, expected_bad = corpus
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(root), "--out", str(out), "--model", "pixels", "--k", "2:4",
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    predicted = [text_to_path(r["path"]).name for r in read_rows(out / "predictions.csv")]  # CSV text -> name
    assert sorted(predicted) == sorted(good)  # every good image, each once
    skipped = {Path(r["path"]).name: r["reason"] for r in read_rows(out / "skipped.csv")}
    assert set(skipped) == set(expected_bad)
    for name, pattern in expected_bad.items():
        assert re.search(pattern, skipped[name]), (name, skipped[name])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == len(good) and summary["n_skipped"] == len(expected_bad)

    # The non-UTF-8 name is written reversibly and re-clustering (no decoding) finds it in the cache.
    again = runner.invoke(app, ["cluster", str(out), "--k", "2:3", "--out", str(tmp_path / "again"), "--no-report"])
    assert again.exit_code == 0, again.output
    assert sorted(text_to_path(r["path"]).name for r in read_rows(tmp_path / "again" / "predictions.csv")) \
        == sorted(good)


def test_each_odd_but_valid_image_decodes_to_rgb(corpus):
    root, good, _ = corpus
    for path in discover([root / "odd"]).paths:
        if os.fsdecode(path.name) in good:
            arr = decode.load_and_preprocess(path)
            assert arr.shape == (3, 224, 224) and arr.dtype == np.uint8


def test_max_pixels_through_the_api(tmp_path):
    data = tmp_path / "data"
    generate_sample_set(data, per_group=4, groups=("red_stripes", "green_disc"))
    _noise(600, 600).save(data / "large.png")  # 360,000 pixels
    clusterer = ImageClusterer(model="pixels", k=2, max_pixels=100_000).fit([data])
    reasons = {Path(p).name: r for p, r in clusterer.skipped_}
    assert "too large" in reasons["large.png"] and "max_pixels=100000" in reasons["large.png"]
    assert len(clusterer.paths_) == 8
    # the limit can be lifted
    assert len(ImageClusterer(model="pixels", k=2, max_pixels=None).fit([data]).paths_) == 9


def test_unreadable_file_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    """Root reads mode-000 files, so the permission error is injected where the file is opened."""
    path = tmp_path / "secret.jpg"
    _noise().save(path, "JPEG")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(decode, "open", denied, raising=False)  # shadows the builtin in decode.read_bytes
    with pytest.raises(DecodeError, match="unreadable: Permission denied"):
        decode.decode_image(path)


@pytest.mark.skipif(IS_ROOT, reason="root can read mode-000 files")
def test_mode_000_file_is_skipped_for_normal_users(tmp_path):
    path = tmp_path / "locked.png"
    _noise().save(path)
    os.chmod(path, 0)
    try:
        with pytest.raises(DecodeError, match="unreadable"):
            decode.decode_image(path)
    finally:
        os.chmod(path, 0o644)


def test_extreme_aspect_ratio_is_cheap():
    """A 1 x 60,000 PNG (a few hundred bytes) must not be resized to 256 x 15 million first."""
    data = _encoded(Image.new("RGB", (60_000, 1), (10, 20, 30)), "PNG")
    assert len(data) < 5_000
    arr = decode.load_and_preprocess(data)
    assert arr.shape == (3, 224, 224)
    assert np.abs(arr[:, 100, 100].astype(int) - [10, 20, 30]).max() <= 1


def test_bytes_input_paths(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _noise().save(os.path.join(os.fsencode(folder), b"\xff\xfe.png"), "PNG")
    found = discover([os.fsencode(folder)])
    assert len(found.paths) == 1 and found.paths[0].name == "\udcff\udcfe.png"
    out = tmp_path / "out"
    outputs.write_predictions(out, found.paths, [0])
    assert read_rows(out / "predictions.csv")[0]["path"].endswith("\\udcff\\udcfe.png")


def test_only_unusable_files_exit_2_with_skipped_csv(runner, tmp_path):
    data = tmp_path / "links"
    data.mkdir()
    os.symlink(data / "gone.jpg", data / "a.jpg")
    os.symlink(data / "b.jpg", data / "b.jpg")
    out = tmp_path / "o"
    result = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels"])
    assert result.exit_code == 2
    assert "no image files found" in result.output and "2 unusable" in result.output
    reasons = {Path(r["path"]).name: r["reason"] for r in read_rows(out / "skipped.csv")}
    assert reasons == {"a.jpg": "broken symlink", "b.jpg": "symlink loop"}


def test_too_few_good_images_after_skips_exit_2(runner, tmp_path):
    data = tmp_path / "few"
    generate_sample_set(data, per_group=1, groups=("red_stripes", "green_disc"))
    (data / "bad.jpg").write_bytes(b"")
    result = runner.invoke(app, ["run", str(data), "--out", str(tmp_path / "o"), "--model", "pixels", "--k", "3"])
    assert result.exit_code == 2
    assert "clustering needs at least 3" in result.output  # 2 good images, 1 bad
    assert "Traceback" not in result.output


def test_identical_images_give_one_cluster_not_a_crash(runner, tmp_path):
    """Copies of one image: KMeans finds a single cluster for every K and the silhouette is
    undefined. The run still ends (exit 0): every image in cluster 0, a notice says why, and the
    scores are NaN rather than invented numbers."""
    data = tmp_path / "same"
    generate_sample_set(data, per_group=1, groups=("red_stripes",))
    source = next(data.rglob("*.jpg"))
    for i in range(8):
        (data / f"copy{i}.jpg").write_bytes(source.read_bytes())  # distinct files, same pixels
    out = tmp_path / "o"
    result = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "2:4"])
    assert result.exit_code == 0, result.output
    assert "KMeans found only one cluster" in " ".join(result.output.split())
    rows = read_rows(out / "predictions.csv")
    assert len(rows) == 9 and {r["cluster"] for r in rows} == {"0"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == 2 and all(math.isnan(s["silhouette"]) for s in summary["scores"])
    assert (out / "report" / "index.html").exists()


def test_a_single_cluster_k_is_never_chosen_over_a_real_one():
    from engine.select import search_k

    x = torch.cat([torch.zeros(30, 3), torch.ones(30, 3)])  # two distinct points, 30 copies each
    search = search_k(x, [2, 3], "torch")
    assert search.chosen_k == 2 and search.score(2).silhouette == pytest.approx(1.0)
    identical = search_k(torch.zeros(20, 3), [2, 3], "torch")
    assert identical.chosen_k == 2 and math.isnan(identical.score(3).silhouette)
    assert identical.silhouettes[2].n_clusters == 1 and np.isnan(identical.silhouettes[2].samples).all()


# --------------------------------------------------------------------------- out of memory


def _oom(message="CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)"):
    return torch.OutOfMemoryError(message)


def test_extraction_oom_halves_the_batch_and_gives_the_same_features(three_groups, monkeypatch, tmp_path):
    from engine import pipeline
    from engine.config import Config

    config = Config.from_kwargs(model="pixels", k="2:4", batch_size=16)
    reference = pipeline.run_pipeline([three_groups], config)

    real_load = pipeline.load_backbone
    calls = []

    class OOMAboveFour(torch.nn.Module):
        """Fails like a full GPU whenever it gets more than 4 images at once."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            calls.append(images.shape[0])
            if images.shape[0] > 4:
                raise _oom()
            return self.inner(images)

    def load_flaky(*args, **kwargs):
        backbone = real_load(*args, **kwargs)
        backbone.module = OOMAboveFour(backbone.module)
        return backbone

    monkeypatch.setattr(pipeline, "load_backbone", load_flaky)
    result = pipeline.run_pipeline([three_groups], config, out_dir=tmp_path / "out")
    assert max(calls) == 16 and calls.count(16) == 1  # halved once from 16 ...
    assert set(calls) - {16, 8} <= {4, 2, 1}          # ... down to 4, and kept there
    assert torch.equal(result.features, reference.features)
    assert np.array_equal(result.labels, reference.labels)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["features"]["oom_halvings"] == 2 and summary["oom_halvings"]["extract"] == 2
    assert summary["features"]["micro_batch"] == 4


def test_silhouette_oom_halves_the_tile(monkeypatch):
    from engine import select, silhouette

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(60, 5, generator=g) + 6 * i for i in range(3)])
    reference = select.search_k(x, [2, 3, 4], "torch")
    real = silhouette._cluster_distance_sums_torch
    seen = []

    def flaky(Xc, onehot, chunk_size, done=None):
        seen.append(chunk_size)
        if chunk_size > 40:
            if done is not None:
                done(0.5)  # progress reported before the failure is not reported again by the retry
            raise _oom()
        return real(Xc, onehot, chunk_size, done)

    monkeypatch.setattr(silhouette, "_cluster_distance_sums_torch", flaky)
    steps = []
    result = select.search_k(x, [2, 3, 4], "torch", progress=steps.append)
    assert sum(steps) == select.search_progress_steps(3)
    assert seen[0] == silhouette._auto_chunk(180, x.device) and seen[-1] <= 40 and len(seen) >= 2
    assert result.oom_halvings["silhouette"] == len(seen) - 1
    for k in (2, 3, 4):
        assert result.silhouettes[k].mean == pytest.approx(reference.silhouettes[k].mean, abs=1e-6)
    assert result.chosen_k == reference.chosen_k == 3


@pytest.mark.parametrize("path", ["search_k (all K at once)", "kmeans_torch (one K)"])
def test_kmeans_oom_halves_the_distance_chunk(monkeypatch, path):
    from engine import cluster, kmeans_all_k, select

    monkeypatch.setattr(cluster.CHUNK_BUDGET, "elems", 1 << 24)
    monkeypatch.setattr(cluster.CHUNK_BUDGET, "halvings", 0)
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(50, 4, generator=g) + 8 * i for i in range(2)])
    reference = cluster.kmeans_torch(x, 2, seed=0)
    module = kmeans_all_k if path.startswith("search_k") else cluster
    real = module._block_argmin

    def flaky(block, *args):
        if block.shape[0] > 16:
            raise _oom()
        return real(block, *args)

    monkeypatch.setattr(module, "_block_argmin", flaky)
    if module is cluster:
        labels, halvings, width = cluster.kmeans_torch(x, 2, seed=0).labels, cluster.CHUNK_BUDGET.halvings, 2
    else:
        result = select.search_k(x, [2], "torch")
        labels, halvings, width = result.fits[2].labels, result.oom_halvings["kmeans"], 3 * 2  # 3 inits x K
    assert halvings >= 3                                       # 100 -> 50 -> 25 -> 12 rows
    assert cluster.CHUNK_BUDGET.elems // width <= 16           # kept for later calls
    assert torch.equal(labels, reference.labels)


def test_what_counts_as_out_of_memory():
    from engine.cluster import is_oom

    assert is_oom(_oom()) and is_oom(MemoryError())
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 10000000000000 bytes."))  # torch's CPU allocator
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def test_non_oom_errors_are_not_swallowed(monkeypatch):
    from engine import cluster

    def broken(*args):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(cluster, "_block_argmin", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        cluster.kmeans_torch(torch.randn(20, 3), 2)


# --------------------------------------------------------------------------- atomic outputs


def test_a_crash_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    outputs.write_predictions(tmp_path, ["a.jpg", "b.jpg"], [0, 1])
    outputs.write_summary(tmp_path, {"k": 2})
    before = {name: (tmp_path / name).read_bytes() for name in (outputs.PREDICTIONS, outputs.SUMMARY)}

    def crash(src, dst):
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(outputs.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        outputs.write_predictions(tmp_path, ["c.jpg"], [5])
    with pytest.raises(OSError, match="No space left"):
        outputs.write_summary(tmp_path, {"k": 9})
    monkeypatch.undo()
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_a_crash_midway_through_the_bytes_keeps_the_previous_file(tmp_path, monkeypatch):
    """Interrupted after half the bytes reached the temp file (the process dies in write())."""
    target = tmp_path / "summary.json"
    outputs.write_summary(tmp_path, {"k": 2})
    before = target.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.handle, name)

    monkeypatch.setattr(outputs.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        outputs.write_summary(tmp_path, {"k": 9, "padding": "x" * 1000})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
