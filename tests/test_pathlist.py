"""PathList: discovered paths as one bytes blob plus offsets (engine.pathlist)."""
from __future__ import annotations

import gc
import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from engine.pathlist import PathList

NAMES = ["a.jpg", "sub/b.png", "/abs/dir/c.gif", "caf\u00e9 \u65e5\u672c.jpg", os.fsdecode(b"caf\xe9.jpg"),
         "space name.webp"]


def test_round_trip_ascii_unicode_and_non_utf8_names():
    paths = PathList.from_strings(NAMES)
    assert len(paths) == len(NAMES)
    assert list(paths) == [Path(n) for n in NAMES]
    assert all(type(p) is type(Path()) for p in paths)
    # the non-UTF-8 name comes back as the same bytes, not as U+FFFD or an error
    assert os.fsencode(paths[4]) == b"caf\xe9.jpg"
    assert os.fsencode(paths[3]) == "caf\u00e9 \u65e5\u672c.jpg".encode()


def test_built_from_paths_bytes_or_a_generator():
    as_paths = PathList.from_strings(Path(n) for n in NAMES)
    as_bytes = PathList.from_strings(os.fsencode(n) for n in NAMES)
    assert as_paths == as_bytes == PathList.from_strings(NAMES)


def test_items_are_normalised_as_path_normalises():
    assert PathList.from_strings(["./a//b.jpg", "c/"])[:] == [Path("a/b.jpg"), Path("c")]


def test_indexing_negative_and_out_of_range():
    paths = PathList.from_strings(NAMES)
    assert paths[0] == Path("a.jpg")
    assert paths[-1] == Path("space name.webp") and paths[-len(NAMES)] == Path("a.jpg")
    assert paths[np.int64(1)] == Path("sub/b.png")  # positions from NumPy arrays
    for bad in (len(NAMES), -len(NAMES) - 1):
        with pytest.raises(IndexError):
            paths[bad]
    with pytest.raises(TypeError):
        paths["0"]


def test_slices_and_take_share_the_blob():
    paths = PathList.from_strings(NAMES)
    assert isinstance(paths[1:3], PathList)
    assert paths[1:3] == [Path(n) for n in NAMES[1:3]]
    assert paths[::-2] == [Path(n) for n in NAMES[::-2]]
    assert paths[10:] == [] and len(paths[10:]) == 0
    picked = paths.take(np.array([4, 0, -1]))
    assert picked == [Path(NAMES[4]), Path(NAMES[0]), Path(NAMES[-1])]
    assert picked._blob is paths._blob and paths[1:3]._blob is paths._blob
    assert paths.take([]) == [] and paths.take(np.zeros(0, np.int64)) == []
    assert paths.take(np.array([True, False] * 3)) == [Path(n) for n in NAMES[::2]]
    assert paths[1:4].take([2, 0]) == [Path(NAMES[3]), Path(NAMES[1])]  # positions within the slice
    with pytest.raises(IndexError):
        paths.take([len(NAMES)])
    with pytest.raises(TypeError):
        paths.take([0.5])


def test_equality_with_lists_tuples_and_pathlists():
    paths = PathList.from_strings(NAMES)
    as_list = [Path(n) for n in NAMES]
    assert paths == as_list and as_list == paths and paths == tuple(as_list)
    assert paths == PathList.from_strings(NAMES) and paths != paths[1:]
    assert paths != as_list[::-1]
    assert paths != NAMES  # str items are not Paths, as for list[Path] == list[str]
    assert paths != "a.jpg" and paths != None  # noqa: E711
    assert PathList() == [] and not PathList() and len(PathList()) == 0
    assert sorted(paths) == sorted(as_list)


def test_empty_and_repr():
    empty = PathList.from_strings([])
    assert len(empty) == 0 and list(empty) == [] and empty == PathList()
    assert repr(empty) == "PathList(0 paths)"
    assert repr(PathList.from_strings(NAMES)) == "PathList(6 paths: 'a.jpg', 'sub/b.png', '/abs/dir/c.gif', ...)"
    assert repr(PathList.from_strings(["x.png"])) == "PathList(1 path: 'x.png')"


def test_pickles_and_a_slice_carries_only_its_own_bytes():
    paths = PathList.from_strings(NAMES)
    assert pickle.loads(pickle.dumps(paths)) == paths
    assert pickle.loads(pickle.dumps(PathList())) == []
    big = PathList.from_strings(f"folder/{i:06d}-{'x' * 40}.jpg" for i in range(10_000))
    one = big.take([5000, 7])
    copy = pickle.loads(pickle.dumps(one))
    assert copy == [Path(f"folder/005000-{'x' * 40}.jpg"), Path(f"folder/000007-{'x' * 40}.jpg")]
    assert len(pickle.dumps(one)) < 1000 < len(pickle.dumps(big))


def test_sequence_protocol_as_the_loaders_and_numpy_use_it():
    paths = PathList.from_strings(NAMES)
    assert Path("sub/b.png") in paths and paths.index(Path("sub/b.png")) == 1
    assert list(reversed(paths)) == [Path(n) for n in reversed(NAMES)]
    assert [p for s in range(0, len(paths), 4) for p in paths[s:s + 4]] == list(paths)  # base.prefetched
    assert np.asarray(paths).tolist() == [Path(n) for n in NAMES]


def _bytes_held(build) -> tuple[float, object]:
    gc.collect()
    tracemalloc.start()
    try:
        obj = build()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return held, obj


def test_memory_per_path_is_its_bytes_plus_offsets():
    """100,000 paths of 55 characters: a PathList holds ~71 bytes a path (55 + 16 of offsets),
    a list of Path ~320 (Python 3.11, measured by tracemalloc), a take() of all of them 16."""
    n = 100_000
    texts = [f"/data/photos/2024/event_{i // 1000:05d}/camera_a/IMG_{i:08d}.jpg" for i in range(n)]
    assert {len(t) for t in texts} == {55}
    compact, paths = _bytes_held(lambda: PathList.from_strings(texts))
    as_paths, listed = _bytes_held(lambda: [Path(t) for t in texts])
    subset, _ = _bytes_held(lambda: paths.take(np.arange(n)))
    assert paths[12_345] == listed[12_345] and paths[-1] == listed[-1]
    assert compact / n < 100, f"{compact / n:.1f} bytes a path"
    assert compact * 3 < as_paths, f"PathList {compact / n:.1f} vs list[Path] {as_paths / n:.1f} bytes a path"
    assert subset / n < 20, f"take: {subset / n:.1f} bytes a path"


def test_path_str_is_str_of_path_for_any_text():
    """engine.pathlist.path_str's shortcut (the text as it is) never differs from str(Path(text)):
    every text of up to 5 characters from separators, dots, a letter and a NUL."""
    from itertools import product

    from engine.pathlist import path_str

    texts = ["", "/", "//", "///", ".", "..", "./", "/.", "a/.", "./a", "a/./b", "a//b", "a/", "//a", "///a",
             "a/..", "../a", ".a", "a.", "a/.b", os.fsdecode(b"caf\xe9/./x.jpg"), "a b/x.jpg", "a\x01b/"]
    texts += ["".join(t) for n in range(1, 6) for t in product("/.a\0", repeat=n)]
    for text in texts:
        assert path_str(text) == str(Path(text)), repr(text)


def test_strings_are_the_items_as_text():
    """strings() gives str() of each item without making it: Path's normalisation, non-UTF-8
    names as surrogate escapes, slices and take() over a shared blob."""
    names = NAMES + ["./a//b.jpg", "c/", "/abs//x/./y.png", ".", "a\x01b/x.jpg", "//two/roots.jpg"]
    paths = PathList.from_strings(names)
    assert list(paths.strings()) == [str(p) for p in paths] == [str(Path(n)) for n in names]
    picked = paths.take(np.array([7, 4, 0]))
    assert list(picked.strings()) == [str(Path(names[i])) for i in (7, 4, 0)]
    assert list(paths[::-3].strings()) == [str(p) for p in paths[::-3]]
    assert list(PathList().strings()) == []


def test_write_predictions_of_a_pathlist_is_that_of_its_paths(tmp_path):
    """write_predictions reads a PathList as text (no Path a row): the same file, byte for byte,
    as for the list of Path it stands for (relative and absolute paths as they are)."""
    from engine.report import outputs

    names = NAMES + ["./a//b.jpg", "rel/dir/", "a b/x,y \"z\".jpg", "new\nline.jpg", "a\x01b/x.jpg"] * 3
    paths = PathList.from_strings(names).take(np.arange(len(names))[::-1])
    labels = np.arange(len(names)) % 4
    (tmp_path / "list").mkdir()
    (tmp_path / "pathlist").mkdir()
    outputs.write_predictions(tmp_path / "list", list(paths), labels)
    outputs.write_predictions(tmp_path / "pathlist", paths, labels)
    written = (tmp_path / "pathlist" / "predictions.csv").read_bytes()
    assert written == (tmp_path / "list" / "predictions.csv").read_bytes()
    assert b"\\udce9" in written and b"/abs/dir/c.gif" in written and b"\na/b.jpg," in written


def test_may_hold_searches_the_shared_bytes():
    paths = PathList.from_strings(["a/b.jpg", "c/d\re.jpg", "f/\udcff.jpg"])
    assert paths.may_hold("\r") and not paths.may_hold("\n") and paths.may_hold("\udcff")
    assert paths.take([0]).may_hold("\r")  # a view shares its parent's bytes: True may be another path's
    assert not PathList.from_strings(["a/b.jpg"]).may_hold("\r")
