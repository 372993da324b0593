"""Byte-identical copies among a run's images (engine.duplicates): found, listed, clustered alike."""
from __future__ import annotations

import json
import os
import shutil

from engine.cli import app
from engine.duplicates import identical_copies
from engine.pathlist import PathList
from tests.helpers import read_rows


def test_identical_copies_by_bytes_and_by_hard_link(tmp_path):
    a = tmp_path / "a.jpg"
    a.write_bytes(b"\xff\xd8 same bytes \xff\xd9")
    shutil.copy(a, tmp_path / "b.jpg")  # a copy: same bytes, another file
    os.link(a, tmp_path / "c.jpg")  # a hard link: the same file under another name
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8 same size!! \xff\xd9")  # same size, other bytes
    (tmp_path / "e.jpg").write_bytes(b"other")
    names = ["a.jpg", "e.jpg", "b.jpg", "d.jpg", "c.jpg", "missing.jpg"]
    assert identical_copies([tmp_path / n for n in names]) == [(2, 0), (4, 0)]
    # relative paths against a base folder, and a PathList (what runs pass)
    assert identical_copies(PathList.from_strings(names), base=tmp_path) == [(2, 0), (4, 0)]
    assert identical_copies([tmp_path / "e.jpg", tmp_path / "d.jpg"]) == []


def test_files_that_start_alike_are_compared_whole(tmp_path):
    """Same size and the same first 64 KB (a camera's header and the top of a similar scene) are
    not enough: the whole bytes decide. A and B differ only at the end; C is a copy of B."""
    head = bytes(range(256)) * 400  # 102,400 bytes: past the 64 KB head
    (tmp_path / "a.jpg").write_bytes(head + b"end A")
    (tmp_path / "b.jpg").write_bytes(head + b"end B")
    (tmp_path / "c.jpg").write_bytes(head + b"end B")
    (tmp_path / "d.jpg").write_bytes(head + b"end A")
    assert identical_copies([tmp_path / n for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")]) == [(2, 1), (3, 0)]


def test_a_run_lists_copies_and_clusters_them_with_their_original(three_groups, runner, tmp_path):
    data = tmp_path / "photos"
    shutil.copytree(three_groups, data)
    originals = sorted(data.glob("*/*.jpg"))[:2]
    copies = [data / "zz_copies" / f"copy_{i}.jpg" for i in range(2)]  # after the originals in path order
    copies[0].parent.mkdir()
    for original, copy in zip(originals, copies):
        shutil.copy(original, copy)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "3", "--no-report"])
    assert result.exit_code == 0, result.output
    assert ("2 image(s) have the same bytes as another (listed in duplicates.csv; which is the original, the bytes "
            "cannot tell): each is clustered with the other") in " ".join(result.output.split())
    rows = read_rows(out / "duplicates.csv")
    assert [(r["path"], r["same_bytes_as"]) for r in rows] == [(str(c), str(o)) for c, o in zip(copies, originals)]
    cluster = {r["path"]: r["cluster"] for r in read_rows(out / "predictions.csv")}
    assert all(cluster[str(c)] == cluster[str(o)] for c, o in zip(copies, originals))
    assert json.loads((out / "summary.json").read_text())["n_copies"] == 2
    # the report says so; a re-clustering lists them too; a run without copies writes the header alone
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert "2 image(s) have the same bytes as another" in (out / "report" / "index.html").read_text()
    again = runner.invoke(app, ["cluster", str(out), "--k", "2", "--no-report"])
    assert again.exit_code == 0 and len(read_rows(out / "duplicates.csv")) == 2
    shutil.rmtree(data / "zz_copies")
    clean = runner.invoke(app, ["run", str(data), "--out", str(out), "--model", "pixels", "--k", "3", "--no-report"])
    assert clean.exit_code == 0 and "byte-identical" not in clean.output
    assert read_rows(out / "duplicates.csv") == [] and json.loads((out / "summary.json").read_text())["n_copies"] == 0


def test_above_the_check_limit_copies_are_not_looked_for_and_said_so(three_groups, runner, tmp_path, monkeypatch):
    import engine.pipeline

    out = tmp_path / "out"
    first = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                                "--no-report"])
    assert first.exit_code == 0 and (out / "duplicates.csv").is_file()
    monkeypatch.setattr(engine.pipeline, "COPIES_CHECK_LIMIT", 10)
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(out), "--model", "pixels", "--k", "3",
                                 "--no-report"])
    assert result.exit_code == 0 and "Byte-identical copies not looked for: more than 10 images" in result.output
    assert json.loads((out / "summary.json").read_text())["n_copies"] is None
    assert not (out / "duplicates.csv").exists()  # an earlier run's list would not describe this one
