"""HEIC/HEIF (iPhone photos, through the optional pillow-heif plugin) and AVIF (Pillow's own plugin).

With the plugin: discovered, decoded like the same picture as a JPEG (EXIF orientation applied
once), taken by every loader (the GPU loaders' front end sends them to its PIL path). Without
it: each file is skipped with the install hint as its reason, and the feature cache does not
remember that failure, so a rerun after installing the plugin reads the files.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.loaders import decode
from engine.loaders.decode import HEIF_HINT, decode_image, depends_on_environment, load_and_preprocess

pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed (pip install pillow-heif)")


def smooth(h: int, w: int, seed: int) -> Image.Image:
    """A smooth RGB picture (lossy codecs keep it to a few levels)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return coarse.resize((w, h), Image.BICUBIC)


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def save_heic(img: Image.Image, path, orientation: int = 1):
    # pillow-heif's own writer: the engine, not the test, registers the opener with PIL
    pillow_heif.from_pillow(img).save(path, quality=95, exif=exif_bytes(orientation))
    return path


def save_jpeg(img: Image.Image, path, orientation: int = 1):
    img.save(path, "JPEG", quality=95, exif=exif_bytes(orientation))
    return path


def mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_heic_decodes_like_the_same_picture_as_jpeg(tmp_path, orientation):
    img = smooth(96, 128, orientation)
    heic = decode_image(save_heic(img, tmp_path / "a.heic", orientation))
    jpeg = decode_image(save_jpeg(img, tmp_path / "a.jpg", orientation))
    assert heic.mode == "RGB"
    assert heic.size == jpeg.size  # the rotation is applied once (HEIF's irot), not twice
    assert mean_abs(heic, jpeg) <= 3.0
    assert mean_abs(load_and_preprocess(tmp_path / "a.heic"), load_and_preprocess(tmp_path / "a.jpg")) <= 3.0


def test_avif_decodes_like_the_source(tmp_path):
    if not decode.avif_available():
        pytest.skip("this Pillow has no AVIF support")
    img = smooth(96, 128, 1)
    img.save(tmp_path / "a.avif", "AVIF", quality=95)
    out = decode_image(tmp_path / "a.avif")
    assert out.size == img.size and mean_abs(out, img) <= 3.0


def test_discovery_takes_heif_and_avif_names(tmp_path):
    from engine.sources import discover

    for name in ("a.HEIC", "b.heif", "c.hif", "d.avif", "e.jpg", "f.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = discover([tmp_path])
    assert sorted(p.name for p in found.paths) == ["a.HEIC", "b.heif", "c.hif", "d.avif", "e.jpg"]


def _loader_batches(kind: str, paths, batch_size: int):
    """Batches of one loader on the CPU: the PIL reference, DALI's CPU operators, or the nvJPEG
    loader's whole pipeline (torchvision decoding with libjpeg, no CUDA streams)."""
    if kind == "pil":
        from engine.loaders.pil import PILLoader

        return list(PILLoader(torch.device("cpu"), num_threads=1).batches(paths, batch_size))
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="nvidia.dali is not importable")
        from engine.loaders.dali import DALILoader

        return list(DALILoader(torch.device("cpu"), num_threads=1).batches(paths, batch_size))
    from engine.loaders.nvjpeg import decode_pipeline

    return list(decode_pipeline(paths, batch_size, torch.device("cpu"), torch.float32, None, num_threads=1, prefetch=1))


@pytest.mark.parametrize("kind", ["pil", "dali", "nvjpeg"])
def test_every_loader_reads_heic_like_the_reference(tmp_path, kind):
    """The GPU loaders' front end probes each header: HEIF is not a format nvJPEG or DALI decode,
    so PIL decodes it on the fallback pool, between the JPEGs, in input order."""
    from engine.loaders.nvjpeg import PreparedJpeg, prepare_jpeg_file
    from engine.loaders.preprocess import denormalize_to_uint8_scale

    paths = [save_jpeg(smooth(120, 160, 1), tmp_path / "a.jpg"), save_heic(smooth(120, 160, 2), tmp_path / "b.heic", 6),
             save_jpeg(smooth(160, 120, 3), tmp_path / "c.jpg")]
    prepared = prepare_jpeg_file(paths[1], None)
    assert not isinstance(prepared, PreparedJpeg) and prepared.reason is None and prepared.array is not None
    batches = _loader_batches(kind, paths, 3)
    assert [b.indices.tolist() for b in batches] == [[0, 1, 2]] and batches[0].failures == []
    got = denormalize_to_uint8_scale(batches[0].images.float()).numpy()
    reference = np.stack([load_and_preprocess(p) for p in paths]).astype(np.float32)
    diff = np.abs(got - reference).mean(axis=(1, 2, 3))
    assert diff[1] <= 1.0 and diff.max() <= 3.0, diff.tolist()  # the HEIC went through PIL itself


@pytest.fixture()
def without_heif_plugin(monkeypatch):
    """As if pillow-heif were not installed: the opener is neither registered nor registrable."""
    monkeypatch.setattr(decode, "heif_status", lambda: HEIF_HINT)
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "HEIF"])
    return monkeypatch


def test_without_the_plugin_a_heic_fails_with_the_install_hint(tmp_path, without_heif_plugin):
    data = save_heic(smooth(64, 64, 3), io.BytesIO()).getvalue()
    with pytest.raises(decode.DecodeError, match=r"pip install pillow-heif") as info:
        decode_image(data)
    assert depends_on_environment(str(info.value))
    assert not depends_on_environment("not an image (unrecognised content)")
    # anything else in an ISO container (an MP4 video) is still "not an image"
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64)
    with pytest.raises(decode.DecodeError, match="not an image"):
        decode_image(mp4)


def test_a_rerun_after_installing_the_plugin_reads_the_heic_files(tmp_path, without_heif_plugin):
    """Skipped with the hint while the plugin is missing; the cache keeps the JPEGs' features but
    not those failures, so the same run folder, rerun with the plugin, clusters every file."""
    from engine import ImageClusterer

    folder = tmp_path / "photos"
    folder.mkdir()
    for g, colour in enumerate([(220, 40, 40), (40, 40, 220)]):
        for i in range(4):
            img = Image.new("RGB", (64, 48), colour)
            (save_heic if i % 2 else save_jpeg)(img, folder / f"g{g}_{i}.{'heic' if i % 2 else 'jpg'}")
    out = tmp_path / "run"
    params = dict(model="pixels", device="cpu", k="2:3", seed=0)
    first = ImageClusterer(**params).fit([folder], out_dir=out)
    assert len(first.paths_) == 4
    assert sorted(p.name for p, _ in first.skipped_) == ["g0_1.heic", "g0_3.heic", "g1_1.heic", "g1_3.heic"]
    assert all(HEIF_HINT in reason for _, reason in first.skipped_)

    without_heif_plugin.undo()
    second = ImageClusterer(**params).fit([folder], out_dir=out)
    assert second.skipped_ == [] and len(second.paths_) == 8
    cache = second.result_.summary["cache"]
    assert (cache["resumed"], cache["extracted"]) == (4, 4)  # the JPEGs from the cache, the HEICs decoded
    labels = dict(zip((p.name for p in second.paths_), second.labels_.tolist()))
    assert len({labels[f"g0_{i}.{'heic' if i % 2 else 'jpg'}"] for i in range(4)}) == 1
    assert labels["g0_0.jpg"] != labels["g1_0.jpg"]


def test_a_broken_plugin_install_is_tried_once_and_reported_with_the_hint(monkeypatch):
    """find_spec finds pillow-heif but importing it fails (an ABI mismatch): every HEIC gets that
    reason (environment-dependent, so not cached), the import is not retried per file, and other
    ISO-container files (AVIF) still decode."""
    import builtins

    real_import = builtins.__import__
    calls = []

    def failing_import(name, *args, **kwargs):
        if name == "pillow_heif":
            calls.append(name)
            raise ImportError("libheif.so.1: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    monkeypatch.setattr(decode, "_heif_state", None)
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "HEIF"])
    data = save_heic(smooth(64, 64, 3), io.BytesIO()).getvalue()
    for _ in range(3):
        with pytest.raises(decode.DecodeError, match="pillow-heif is installed but does not load .ImportError") as info:
            decode_image(data)
        assert depends_on_environment(str(info.value))
    assert calls == ["pillow_heif"]
    if decode.avif_available():
        out = io.BytesIO()
        smooth(64, 64, 4).save(out, "AVIF", quality=90)
        assert decode_image(out.getvalue()).size == (64, 64)


def test_a_multi_image_heif_gives_its_primary_image(tmp_path):
    """A HEIF file can hold several images; the primary one is the picture (not image 0)."""
    red, blue = Image.new("RGB", (64, 48), (250, 0, 0)), Image.new("RGB", (80, 60), (0, 0, 250))
    heif = pillow_heif.from_pillow(red)
    heif.add_from_pillow(blue)
    heif.save(tmp_path / "two.heic", quality=95, primary_index=1)
    out = decode_image(tmp_path / "two.heic")
    assert out.size == (80, 60)
    r, g, b = np.asarray(out, np.float32).mean(axis=(0, 1))
    assert b > 200 and r < 50
