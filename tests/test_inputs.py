"""Input formats, colour modes, EXIF orientation, and discovery order."""
from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from engine.errors import DecodeError, InputError
from engine.loaders.decode import decode_image, load_and_preprocess
from engine.sources import discover


def _left_red_right_blue(w=120, h=80) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"),
                                      ("TIFF", "tiff"), ("GIF", "gif")])
def test_every_format_decodes_to_rgb(tmp_path, fmt, ext):
    path = tmp_path / f"img.{ext}"
    _left_red_right_blue().save(path, fmt)
    img = decode_image(path)
    assert img.mode == "RGB" and img.size == (120, 80)
    arr = np.asarray(img, dtype=int)
    assert arr[40, 10, 0] > 200 and arr[40, 10, 2] < 60   # red on the left
    assert arr[40, 110, 2] > 200 and arr[40, 110, 0] < 60  # blue on the right
    assert load_and_preprocess(path).shape == (3, 224, 224)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    arr = np.asarray(decode_image(path), dtype=int)
    assert arr[20, 20, 0] > 200 and arr[20, 20, 1] < 60


def test_exif_orientation_is_applied(tmp_path):
    img = _left_red_right_blue(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(path)
    assert out.size == (80, 120)  # width and height swapped
    arr = np.asarray(out, dtype=int)
    assert arr[10, 40, 0] > 200 and arr[110, 40, 2] > 200  # red now on top, blue at the bottom


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    base = _left_red_right_blue()
    if mode == "I;16":
        arr = (np.linspace(0, 65535, 120 * 80).reshape(80, 120)).astype(np.uint16)
        img, fmt = Image.fromarray(arr), "PNG"
        assert img.mode.startswith("I;16")
    elif mode == "CMYK":
        img, fmt = base.convert("CMYK"), "JPEG"
    else:
        img, fmt = base.convert(mode), "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (120, 80)
    if mode == "I;16":  # 16-bit range scaled down, not clipped to white
        arr = np.asarray(out, dtype=int)
        assert arr[0, 0, 0] < 10 and arr[-1, -1, 0] > 245


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert np.asarray(decode_image(buf.getvalue()))[5, 5].tolist() == [255, 255, 255]


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"hello world", "not an image")])
def test_bad_bytes_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_an_error():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_decompression_bomb_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(path, max_pixels=50_000)
    assert decode_image(path, max_pixels=None).size == (300, 300)


def test_max_pixels_above_pils_own_limit_is_honoured(tmp_path, monkeypatch):
    """PIL refuses images over 2x its MAX_IMAGE_PIXELS in Image.open. A max_pixels the caller
    chose above the default (or None) lifts that; the default, and smaller values, leave PIL's
    process-wide limit alone, even one the program made stricter."""
    from engine.loaders.decode import DEFAULT_MAX_PIXELS
    from engine.loaders.probe import probe_file
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # a program's strict limit: PIL refuses 90,000 pixels
    with pytest.raises(DecodeError, match="too large: 90000 pixels exceeds max_pixels=1000"):
        decode_image(path, max_pixels=1_000)  # PIL's refusal, in max_pixels' words
    with pytest.raises(DecodeError, match="too large: Image size .90000 pixels. exceeds limit of 20000"):
        decode_image(path)  # the default max_pixels allows it, the program's limit does not: its words
    with pytest.raises(DecodeError, match="exceeds limit of 20000"):
        decode_image(path, max_pixels=100_000)  # under the default: not a choice to lift anything
    assert Image.MAX_IMAGE_PIXELS == 10_000
    big = DEFAULT_MAX_PIXELS + 2
    assert decode_image(path, max_pixels=big).size == (300, 300)
    assert probe_file(path, max_pixels=big).width == 300
    assert Image.MAX_IMAGE_PIXELS == big // 2  # PIL refuses over twice it: max_pixels is the limit
    assert decode_image(path, max_pixels=None).size == (300, 300)
    assert Image.MAX_IMAGE_PIXELS is None


def test_the_defaults_leave_pils_process_wide_settings_alone(tmp_path):
    """An embedding program's PIL settings stay as it set them: the default max_pixels is PIL's
    own error level, and LOAD_TRUNCATED_IMAGES is the program's (importing and decoding with
    imgcluster changed both)."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    code = textwrap.dedent(f"""
        from PIL import Image, ImageFile
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        from engine.loaders.decode import decode_image
        from engine.loaders.probe import probe_file
        import engine.api
        assert decode_image({str(path)!r}).size == (300, 300) and probe_file({str(path)!r}).width == 300
        assert Image.MAX_IMAGE_PIXELS == 89478485, Image.MAX_IMAGE_PIXELS
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _tree(tmp_path):
    for rel in ["b/2.jpg", "b/1.png", "a/z.JPG", "a/sub/y.webp", "notes.txt", "c.gif"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    return tmp_path


def test_folder_is_recursive_sorted_and_filtered(tmp_path):
    root = _tree(tmp_path)
    found = discover([root])
    rel = [os.path.relpath(p, root) for p in found.paths]
    assert rel == ["a/sub/y.webp", "a/z.JPG", "b/1.png", "b/2.jpg", "c.gif"]


def test_folder_order_is_path_order_with_awkward_names(tmp_path):
    """Discovery sorts strings component by component: the order Path objects sort in (a
    separator sorts before '-', '.', ' ' and control characters; case, non-ASCII and non-UTF-8
    names as Path compares them)."""
    from pathlib import Path

    names = ["a/x.jpg", "a-b/x.jpg", "a.b/y.png", "a/b/z.jpg", "A/x.jpg", "a/x.JPG", "ab.jpg", "a b/c.jpg",
             "\u00e9/x.jpg", "a/notes.txt", "a\x01b/x.jpg", os.fsdecode(b"\xe9\xff/x.jpg")]
    for rel in names:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.fsencode(rel))  # distinct contents: distinct files
    found = discover([tmp_path]).paths
    expected = sorted(Path(tmp_path) / rel for rel in names if not rel.endswith(".txt"))
    assert found == expected
    assert [os.path.relpath(p, tmp_path) for p in found][:4] == ["A/x.jpg", "a/b/z.jpg", "a/x.JPG", "a/x.jpg"]


AWKWARD = ["a/x.jpg", "a-b/x.jpg", "a.b/y.png", "a/b/z.jpg", "A/x.jpg", "a/x.JPG", "ab.jpg", "a b/c.jpg",
           "a b.jpg", "a.jpg", "a-.jpg", "a\x01.jpg", "a\x01b/x.jpg", "\u00e9/x.jpg", "\u00e9.jpg", "a/notes.txt",
           os.fsdecode(b"\xe9\xff/x.jpg"), os.fsdecode(b"\xe9\xff.jpg")]


@pytest.mark.parametrize("pattern", ["*", "./*", "*/*.jpg", ".//*/*", "*/", "*/.", "a*", "**/*.jpg", "./**/x.jpg",
                                     "**/", "*/**/*.jpg", "{root}/*/*.jpg", "{root}//a*/*.jpg", "{root}/**/*"])
def test_glob_order_is_path_order_with_awkward_names(tmp_path, monkeypatch, pattern):
    """A glob's files are kept as strings and sorted with separators as NUL (no Path a match):
    the order, and the text, of sorted Paths of glob.glob's matches, a matched folder walked in
    its place ('a/x.jpg' before 'a b/c.jpg' and 'a-b/x.jpg'; './' and '//' normalised away)."""
    import glob
    from pathlib import Path

    root = tmp_path / "in"
    for rel in AWKWARD:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.fsencode(rel))  # distinct contents: distinct files
    monkeypatch.chdir(root)
    pattern = pattern.format(root=root)
    # discover reads the pattern as a Path ('./*' is '*'), but for a trailing slash, which names
    # folders only ('*/' as in a shell)
    as_given = pattern if pattern.endswith("/") else str(Path(pattern))
    matches = sorted(Path(m) for m in glob.glob(as_given, recursive=True))
    expected = []
    for m in matches:
        if m.is_dir():
            expected += discover([m]).paths
        elif m.suffix.lower() in {".jpg", ".png"}:
            expected.append(m)
    expected = list(dict.fromkeys(expected))  # a file under a matched folder and matched itself: once
    assert len(expected) > 1
    found = discover([pattern]).paths
    assert [os.fspath(p) for p in found] == [os.fspath(p) for p in expected]
    assert list(found) == expected


@pytest.mark.parametrize("name", ["a.jpg", "a.JPEG", "..jpg", "...png", ".jpg", "a.", "a", "a.tar.gif", "a.jpg.txt"])
def test_extension_filter_takes_the_suffix_as_pathlib_does(name):
    from pathlib import Path

    from engine.loaders.decode import has_image_extension, name_suffix

    assert name_suffix(name) == Path(name).suffix.lower()
    assert has_image_extension(name) == (Path(name).suffix.lower() in {".jpg", ".jpeg", ".png", ".gif"})


def test_file_list_glob_and_duplicates(tmp_path):
    root = _tree(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("b/2.jpg\n# a comment\n\nc.gif\nmissing.jpg\n")
    found = discover([f"@{listing}", str(root / "b" / "*.png"), str(root / "c.gif")])
    assert [p.name for p in found.paths] == ["2.jpg", "c.gif", "1.png"]
    reasons = {p.name: r for p, r in found.skipped}
    assert reasons["missing.jpg"] == "listed file not found"
    assert reasons["c.gif"] == "given twice (the same path)"  # listed, and named again


def test_a_file_named_with_a_leading_at_sign(tmp_path, monkeypatch):
    """'@home.jpg' is that file when no list 'home.jpg' exists beside it; a real list wins; with
    neither, the error names the list it looked for."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "@home.jpg")
    Image.new("RGB", (8, 8), (3, 2, 1)).save(tmp_path / "other.jpg")
    assert [str(p) for p in discover(["@home.jpg"]).paths] == ["@home.jpg"]
    (tmp_path / "home.jpg").write_text("other.jpg\n")  # now a list of that name exists: it is read
    assert [str(p) for p in discover(["@home.jpg"]).paths] == ["other.jpg"]
    with pytest.raises(InputError, match="path list not found: nothing.txt"):
        discover(["@nothing.txt"])


def test_an_image_named_as_a_path_list_is_refused(tmp_path, monkeypatch):
    """'@x.png' with an image x.png beside it read the PNG's bytes as paths (5 'unusable' ones)."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "x.png")
    with pytest.raises(InputError, match=r"@x.png reads x.png as a path list, but it is a binary file"):
        discover(["@x.png"])


def test_a_quoted_glob_with_a_leading_at_sign(tmp_path, monkeypatch):
    """'@*.png' that the shell left as it is (quoted, or matching nothing there) names the files
    starting with '@' when there is no list '*.png'; matching nothing it is still a missing list."""
    monkeypatch.chdir(tmp_path)
    for name in ("@2x.png", "@3x.png", "plain.png"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / name)
    assert [str(p) for p in discover(["@*.png"]).paths] == ["@2x.png", "@3x.png"]
    with pytest.raises(InputError, match=r"path list not found: \*\.gif"):
        discover(["@*.gif"])


def test_symlinks(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "link.jpg").symlink_to(root / "b" / "2.jpg")
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "a" / "loop").symlink_to(root / "a")
    found = discover([root])
    names = [p.name for p in found.paths]
    assert names.count("2.jpg") == 1 and "link.jpg" not in names
    reasons = {p.name: r for p, r in found.skipped}
    assert reasons["dangling.jpg"] in ("broken symlink", "not found")
    assert any(r.startswith("duplicate of") for r in reasons.values())


def test_missing_path_and_empty_glob_are_errors(tmp_path):
    with pytest.raises(InputError, match="path not found"):
        discover([tmp_path / "missing"])
    with pytest.raises(InputError, match="no files match"):
        discover([str(tmp_path / "*.jpg")])


def test_the_early_path_check_says_only_what_discover_would(tmp_path, monkeypatch):
    """check_named_paths_exist (said before torch's import) refuses a missing path, or a file used
    as a folder; what discover takes ('' as '.', 'f.png/.' as the file) it lets through, and a
    problem other than a missing path (no permission, a name too long) is left to discover's
    own message."""
    from engine.sources import check_named_paths_exist

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "f.png")
    check_named_paths_exist(["", "f.png/.", "f.png", ".", "@no-list.txt", "*.nothing", "x" * 300])
    for missing, said in (("nope", "nope"), ("nope/", "nope"), ("f.png/x.jpg", "f.png/x.jpg")):
        with pytest.raises(InputError, match=f"path not found: {re.escape(said)}$"):
            check_named_paths_exist([missing])
    with pytest.raises(OSError, match="too long"):  # discover says what it is, not "not found"
        discover(["x" * 300])
