"""Discovery edge cases: recursive globs through symlink loops, and files passed over by name."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import InputError
from engine.loaders.decode import decode_image
from engine.sources import discover, no_images_message

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32",
                                    reason="POSIX symlinks")


def _image(path: Path, colour=(200, 30, 30), fmt="PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, fmt)
    return path


def _looping_tree(root: Path) -> Path:
    """root/in/mixed/one.png, root/in/mixed/loop/up -> .. (that is, back to root/in/mixed)."""
    mixed = root / "in" / "mixed"
    _image(mixed / "one.png")
    (mixed / "loop").mkdir()
    os.symlink("..", mixed / "loop" / "up")
    assert (mixed / "loop" / "up").resolve() == mixed.resolve()
    return root / "in"


@needs_symlinks
def test_recursive_glob_does_not_follow_a_symlink_loop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _looping_tree(tmp_path)
    found = discover(["in/**/*.png"])
    assert found.paths == [Path("in/mixed/one.png")]  # the real path, not loop/up/loop/up/...
    assert found.skipped == []  # no "duplicate of" rows for copies made by the loop


@needs_symlinks
@pytest.mark.parametrize("pattern", ["in/**", "in/**/", "in/**/*", "in/*/**/*.png", "**/*.png"])
def test_other_recursive_globs_through_a_loop(tmp_path, monkeypatch, pattern):
    monkeypatch.chdir(tmp_path)
    _looping_tree(tmp_path)
    found = discover([pattern])
    assert found.paths == [Path("in/mixed/one.png")]
    assert found.skipped == []


@needs_symlinks
def test_recursive_glob_gives_what_the_folder_walk_gives(tmp_path):
    root = _looping_tree(tmp_path)
    _image(root / "b" / "two.jpg", fmt="JPEG")
    _image(root / "a" / "deep" / "three.png", (0, 90, 0))
    _image(root / "mixed" / "loop" / "four.gif", (0, 0, 90), fmt="GIF")
    (root / "b" / "notes.txt").write_text("not an image")
    os.symlink("../..", root / "a" / "deep" / "top")  # -> root: another loop, two levels up
    walked = discover([root])
    globbed = discover([str(root / "**" / "*")])
    assert walked.paths == sorted(walked.paths)
    assert [p.name for p in walked.paths] == ["three.png", "two.jpg", "four.gif", "one.png"]
    assert globbed.paths == walked.paths
    assert globbed.skipped == walked.skipped == []
    assert globbed.ignored == walked.ignored == Counter({".txt": 1})


@needs_symlinks
def test_two_loops_in_one_folder_finish_quickly(tmp_path):
    """glob.glob(recursive=True) follows every loop up to 40 levels: with two links back up that
    is 2**40 paths (it never finishes). Discovery must not depend on that."""
    root = _looping_tree(tmp_path)
    os.symlink("..", root / "mixed" / "loop" / "up2")
    os.symlink(".", root / "mixed" / "self")
    code = textwrap.dedent(f"""
        from engine.sources import discover
        found = discover([{str(root / '**' / '*.png')!r}])
        print([str(p) for p in found.paths], len(found.skipped))
    """)
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{str(root / 'mixed' / 'one.png')!r}] 0"


@needs_symlinks
def test_genuine_duplicates_through_a_glob_are_still_reported(tmp_path, monkeypatch):
    """A hard link, a symlinked file and a symlinked (non-loop) folder are other paths to one
    file: kept once, the repeats listed as duplicates, as before."""
    monkeypatch.chdir(tmp_path)
    _image(Path("in/a/one.png"))
    os.link("in/a/one.png", "in/a/hard.png")
    os.symlink("one.png", "in/a/soft.png")
    os.symlink("a", "in/alias")
    found = discover(["in/**/*.png"])
    assert found.paths == [Path("in/a/hard.png")]  # first in path order
    reasons = {os.fspath(p): r for p, r in found.skipped}
    assert reasons == {"in/a/one.png": "duplicate of in/a/hard.png",
                       "in/a/soft.png": "duplicate of in/a/hard.png",
                       "in/alias/hard.png": "duplicate of in/a/hard.png",
                       "in/alias/one.png": "duplicate of in/a/hard.png",
                       "in/alias/soft.png": "duplicate of in/a/hard.png"}


def test_nested_folder_matches_are_not_reported_as_duplicates_of_themselves(tmp_path, monkeypatch):
    """'in/**' matches in/, in/a and in/a/b: each file is taken once, not once per folder above it."""
    monkeypatch.chdir(tmp_path)
    _image(Path("in/a/b/x.png"))
    _image(Path("in/y.png"), (1, 2, 3))
    for pattern in ("in/**", "in/**/*"):
        found = discover([pattern])
        assert found.paths == [Path("in/a/b/x.png"), Path("in/y.png")]
        assert found.skipped == []


def test_hidden_names_and_folder_only_patterns_follow_glob(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image(Path("in/.cache/c.png"))
    _image(Path("in/s/.h.png"), (1, 1, 1))
    _image(Path("in/s/v.png"), (2, 2, 2))
    assert discover(["in/**/*.png"]).paths == [Path("in/s/v.png")]  # ** and * skip hidden names
    assert discover(["in/**/.cache/*.png"]).paths == [Path("in/.cache/c.png")]
    assert discover(["in/**/.*.png"]).paths == [Path("in/s/.h.png")]
    with pytest.raises(InputError, match="no files match"):
        discover(["in/**/c.png"])  # ** does not enter the hidden folder
    assert glob.glob("in/**/c.png", recursive=True) == []


@pytest.mark.parametrize("pattern", ["t/**/*.png", "t/**/*", "t/**/a/*", "t/**/[ab]/**/*.jpg", "t/*/**/*.png",
                                     "**/b/*", "t/**/.*", "t/**/.h/*", "t/**/x.y/**"])
def test_recursive_glob_matches_what_glob_glob_matches_without_loops(tmp_path, monkeypatch, pattern):
    monkeypatch.chdir(tmp_path)
    for i, rel in enumerate(["t/1.png", "t/a/2.jpg", "t/a/.3.png", "t/a/b/4.png", "t/.h/5.png", "t/.h/a/6.jpg",
                             "t/x.y/b/7.png", "t/b/a/8.jpg", "t/b/9.png"]):
        _image(Path(rel), (i * 20, 0, 0), fmt="JPEG" if rel.endswith(".jpg") else "PNG")
    for include_hidden in (False, True):
        expected = set()
        for m in glob.glob(pattern, recursive=True):  # a matching folder stands for its files
            expected |= _walked(m, include_hidden) if os.path.isdir(m) else {os.path.normpath(m)}
        found = discover([pattern], include_hidden=include_hidden)
        assert found.skipped == []
        assert found.paths == sorted(found.paths)
        assert {os.fspath(p) for p in found.paths} == expected and expected


def _walked(folder: str, include_hidden: bool) -> set[str]:
    """The files under `folder` as a folder walk takes them: by default without hidden names below
    it (engine.hidden_entries), whatever the folder's own name."""
    from engine.hidden_entries import is_hidden_file, is_hidden_or_system_folder

    out = set()
    for root, dirs, files in os.walk(folder):
        if not include_hidden:
            dirs[:] = [d for d in dirs if not is_hidden_or_system_folder(d)]
            files = [f for f in files if not is_hidden_file(f)]
        out |= {os.path.normpath(os.path.join(root, f)) for f in files}
    return out


def _dat_folder(root: Path) -> Path:
    folder = root / "dat"
    _image(folder / "a.dat", (250, 0, 0), fmt="JPEG")
    _image(folder / "b.dat", (0, 250, 0), fmt="JPEG")
    _image(folder / "noext", (0, 0, 250), fmt="JPEG")
    return folder


def test_a_folder_of_images_not_named_like_images_is_counted_not_dropped(tmp_path):
    folder = _dat_folder(tmp_path)
    found = discover([folder])
    assert found.paths == [] and found.skipped == []
    assert found.ignored == Counter({".dat": 2, "": 1})
    assert found.n_ignored == 3
    message = no_images_message([folder], found)
    assert message == (f"no image files found in {folder} (3 other files, not named like images: .dat, (none); "
                       "pass files explicitly or via an @list.txt to have their content checked)")
    assert "\n" not in message


def test_the_way_the_message_suggests_works(tmp_path):
    folder = _dat_folder(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("dat/a.dat\ndat/b.dat\ndat/noext\n")
    found = discover([f"@{listing}"])
    assert [p.name for p in found.paths] == ["a.dat", "b.dat", "noext"]
    assert found.ignored == Counter()  # named files are taken, not counted
    assert decode_image(folder / "noext").size == (8, 8)  # content decides
    explicit = discover([folder / "b.dat"])
    assert explicit.paths == [folder / "b.dat"] and not explicit.ignored


def test_sidecar_files_are_counted_not_skipped(tmp_path):
    _image(tmp_path / "photos" / "p1.jpg", fmt="JPEG")
    _image(tmp_path / "photos" / "sub" / "p2.png")
    for name in ("p1.xmp", "notes.txt", "sub/p2.XMP", "sub/.DS_Store", "README"):
        (tmp_path / "photos" / name).write_text("x")
    found = discover([tmp_path / "photos"])
    assert [p.name for p in found.paths] == ["p1.jpg", "p2.png"]
    assert found.skipped == []
    assert found.ignored == Counter({".xmp": 2, ".txt": 1, "": 2})
    assert found.ignored_note() == "5 files ignored (not named like images: (none), .xmp, .txt)"


def test_globs_count_the_files_they_match_but_pass_over(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image(Path("in/a.png"))
    _image(Path("in/sub/b.png"), (3, 3, 3))
    Path("in/notes.txt").write_text("x")
    Path("in/sub/c.dat").write_text("x")
    Path("in/sub/d.dat").write_text("x")
    flat = discover(["in/*"])  # a.png, notes.txt, and the folder sub (walked)
    assert [os.fspath(p) for p in flat.paths] == ["in/a.png", "in/sub/b.png"]
    assert flat.ignored == Counter({".txt": 1, ".dat": 2})
    deep = discover(["in/**/*"])
    assert deep.paths == flat.paths and deep.ignored == flat.ignored
    only_dat = discover(["in/**/*.dat"])
    assert only_dat.paths == [] and only_dat.ignored == Counter({".dat": 2})
    assert "2 other files, not named like images: .dat;" in no_images_message(["in/**/*.dat"], only_dat)
    assert discover(["in/**/*.png"]).ignored == Counter()  # not matched: not counted


def test_message_with_unusable_and_ignored_files(tmp_path):
    folder = _dat_folder(tmp_path)
    os.symlink(folder / "gone.jpg", folder / "broken.jpg")
    found = discover([os.fsencode(folder)])  # bytes arguments are named as text
    assert [r for _, r in found.skipped] == ["broken symlink"]
    assert no_images_message([os.fsencode(folder)], found, skipped_csv="skipped.csv") == (
        f"no image files found in {folder} (1 unusable: see skipped.csv; 3 other files, not named like images: "
        ".dat, (none); pass files explicitly or via an @list.txt to have their content checked)")
    assert no_images_message(folder, found).startswith(f"no image files found in {folder} (1 unusable; 3 other")


def test_many_extensions_stay_on_one_short_line(tmp_path):
    folder = tmp_path / "misc"
    folder.mkdir()
    for i in range(40):
        (folder / f"f{i}.e{i % 10}").write_text("x")
    found = discover([folder])
    assert found.n_ignored == 40 and len(found.ignored) == 10
    message = no_images_message([folder], found)
    assert "40 other files" in message and "and 4 more" in message and len(message) < 250


def test_counting_ignored_files_stats_nothing_more(tmp_path, monkeypatch):
    """The walk stats each folder, and discover() each image: the passed-over files cost no stat."""
    _image(tmp_path / "in" / "one.png")
    for i in range(30):
        (tmp_path / "in" / f"side{i}.xmp").write_text("x")
    calls = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    found = discover([tmp_path / "in"])
    assert found.n_ignored == 30
    assert not [c for c in calls if c.endswith(".xmp")]
    assert len(calls) <= 4


@pytest.mark.parametrize("pattern", ["*/", "./*/", "?/", "**/", "a/**/", "**/sub/", "a/*/"])
def test_a_glob_ending_in_a_slash_names_folders_only(tmp_path, monkeypatch, pattern):
    """As in a shell (and glob.glob), 'photos/*/' matches the folders, not the files beside them
    (Path() dropped the trailing slash, which made it match every file too); each folder matched
    is walked."""
    for rel in ("a/one.png", "a/sub/deep.png", "b/two.png", "top.png"):
        _image(tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    expected = sorted({f.as_posix() for m in glob.glob(pattern, recursive=True)
                       for f in Path(m).rglob("*.png")})
    assert "top.png" not in expected and expected
    assert [p.as_posix() for p in discover([pattern]).paths] == expected
    with pytest.raises(InputError, match="no files match"):
        discover(["top*/"])  # matches a file only: no folder
    with pytest.raises(InputError, match="top.png/ is a file, not a folder"):
        discover(["top.png/"])  # as a shell: "Not a directory"
