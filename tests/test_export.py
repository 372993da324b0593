"""`imgcluster export`: a run's clusters as folders of links or copies, never overwriting anything."""
from __future__ import annotations

import csv
import os

import pytest

from engine.cli import app
from engine.errors import ConfigError, InputError
from engine.export import cluster_folder_name, export_clusters


@pytest.fixture(scope="module")
def run_dir(three_groups, tmp_path_factory):
    from engine import ImageClusterer

    out = tmp_path_factory.mktemp("export-run")
    ImageClusterer(model="pixels", device="cpu", pca=20, k="2:4").fit([three_groups], out_dir=out)
    return out


def _predictions(run_dir) -> dict[str, int]:
    with open(run_dir / "predictions.csv", newline="") as handle:
        return {row["path"]: int(row["cluster"]) for row in csv.DictReader(handle)}


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_every_image_lands_in_its_clusters_folder(run_dir, tmp_path, mode):
    done = export_clusters(run_dir, tmp_path / "by-cluster", mode=mode)
    expected = _predictions(run_dir)
    found = {}
    assert (tmp_path / "by-cluster" / ".imgcluster-export").is_file()  # the marker folder walks leave out
    for folder in sorted(p for p in (tmp_path / "by-cluster").iterdir() if p.is_dir()):
        for entry in folder.iterdir():
            source = os.path.realpath(entry) if mode == "symlink" else next(
                p for p in expected if os.path.basename(p) == entry.name)
            found[source] = int(folder.name.removeprefix("cluster_"))
            if mode == "hardlink":
                assert os.path.samefile(entry, source)
            else:
                assert entry.read_bytes() == open(source, "rb").read()
    assert found == expected
    assert (done.written, done.clusters, done.missing) == (len(expected), len(set(expected.values())), [])


def test_same_names_from_different_folders_do_not_collide(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rows = []
    for folder, text in (("a", b"one"), ("b", b"two")):
        (tmp_path / folder / "IMG_0001.JPG").write_bytes(text)
        rows.append(f"{tmp_path / folder / 'IMG_0001.JPG'},0")
    (tmp_path / "b" / "img_0001.jpg").write_bytes(b"three")  # differs only by case
    rows.append(f"{tmp_path / 'b' / 'img_0001.jpg'},0")
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.csv").write_text("path,cluster\n" + "\n".join(rows) + "\n")
    export_clusters(run, tmp_path / "out", mode="copy")
    folder = tmp_path / "out" / "cluster_00"
    assert sorted(p.name for p in folder.iterdir()) == ["IMG_0001.JPG", "IMG_0001~2.JPG", "img_0001~3.jpg"]
    assert sorted(p.read_bytes() for p in folder.iterdir()) == [b"one", b"three", b"two"]


def test_moved_images_are_listed_not_fatal(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = (run_dir / "predictions.csv").read_text().splitlines()
    gone = str(tmp_path / "gone.jpg")
    (run / "predictions.csv").write_text("\n".join(lines + [f"{gone},1"]) + "\n")
    from engine.progress import Reporter

    warnings = []

    class Warned(Reporter):
        def warn(self, message):
            warnings.append(message)

    done = export_clusters(run, tmp_path / "out", reporter=Warned())
    assert done.missing == [gone] and done.written == len(lines) - 1
    assert (tmp_path / "out" / "missing.csv").read_text().splitlines() == ["path", gone]
    assert len(warnings) == 1 and "1 image(s)" in warnings[0] and "missing.csv" in warnings[0]


def test_nothing_is_overwritten_and_bad_arguments_are_one_line_errors(run_dir, tmp_path, runner):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="is not empty"):
        export_clusters(run_dir, target)
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    with pytest.raises(ConfigError, match="mode='move' is not one of"):
        export_clusters(run_dir, tmp_path / "new", mode="move")
    with pytest.raises(InputError, match="not a finished run"):
        export_clusters(tmp_path, tmp_path / "new")
    result = runner.invoke(app, ["export", str(run_dir), "--to", str(target)])
    assert result.exit_code == 2 and "is not empty" in result.output
    result = runner.invoke(app, ["export", str(run_dir), "--to", str(tmp_path / "fresh"), "-q"])
    assert result.exit_code == 0 and "Exported 60 image(s)" in result.output


def test_folder_names_sort_by_cluster_id():
    names = [cluster_folder_name(c, 120) for c in (0, 9, 10, 120)]
    assert names == ["cluster_000", "cluster_009", "cluster_010", "cluster_120"] == sorted(names)
    assert cluster_folder_name(3, 5) == "cluster_03"


def test_relative_paths_are_taken_from_the_folder_the_run_started_in(three_groups, tmp_path, monkeypatch):
    """`imgcluster run photos/` writes photos/... paths; an export from another folder still finds them."""
    import shutil

    from engine import ImageClusterer

    project = tmp_path / "project"
    shutil.copytree(three_groups, project / "photos")
    monkeypatch.chdir(project)
    ImageClusterer(model="pixels", device="cpu", pca=10, k="2:4").fit(["photos"], out_dir="run")
    assert (project / "run" / "predictions.csv").read_text().splitlines()[1].startswith("photos")
    monkeypatch.chdir(tmp_path)
    done = export_clusters(project / "run", tmp_path / "out")
    assert done.missing == [] and done.written == 60
    assert all(os.path.exists(link) for link in (tmp_path / "out").rglob("*.jpg"))


def test_a_name_that_is_not_utf8_is_exported(tmp_path):
    from engine.report.outputs import path_to_text

    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    (tmp_path / name).write_bytes(b"jpeg")
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.csv").write_text(f"path,cluster\n{path_to_text(tmp_path / name)},0\n")
    done = export_clusters(run, tmp_path / "out", mode="copy")
    assert done.missing == [] and (tmp_path / "out" / "cluster_00" / name).read_bytes() == b"jpeg"


@pytest.mark.parametrize("made_by_export", [True, False])
def test_a_failed_export_leaves_nothing_behind(run_dir, tmp_path, monkeypatch, made_by_export):
    """Hard links across file systems fail midway; the error says to use another mode, and that
    command must then find the target as it was (new, or empty)."""
    import errno

    from engine import export
    from engine.errors import ImgclusterError

    calls = []

    def link_then_fail(source, target):
        calls.append(target)
        if len(calls) > 5:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        os.symlink(source, target)

    monkeypatch.setattr(export.os, "link", link_then_fail)
    target = tmp_path / "by-cluster"
    if not made_by_export:
        target.mkdir()
    with pytest.raises(ImgclusterError, match="hard links need one file system"):
        export_clusters(run_dir, target, mode="hardlink")
    assert len(calls) == 6
    assert target.exists() is not made_by_export and (made_by_export or not any(target.iterdir()))
    monkeypatch.undo()
    assert export_clusters(run_dir, target, mode="symlink").written == 60


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_a_run_over_a_folder_holding_an_export_leaves_it_out(three_groups, tmp_path, mode):
    """An export inside the photo folder (links or copies of images already clustered) is left out
    of the next run's folder walk, counted in left_out; named on its own it is taken."""
    import shutil

    from engine import ImageClusterer
    from engine.sources import discover

    photos = tmp_path / "photos"
    shutil.copytree(three_groups, photos)
    first = discover([photos])
    run = tmp_path / "run"
    ImageClusterer(model="pixels", device="cpu", pca=10, k="3").fit([photos], out_dir=run)
    export_clusters(run, photos / "by-cluster", mode=mode)
    again = discover([photos])
    assert again.paths == first.paths and again.skipped == first.skipped
    assert again.left_out.exports == 1
    assert "1 imgcluster export folder (links or copies of clustered images)" in again.left_out.note()
    assert len(discover([photos / "by-cluster"]).paths) == len(first.paths)  # named: taken
    assert len(discover([photos], include_hidden=True).paths) == len(first.paths) * (2 if mode == "copy" else 1)


def test_a_duplicate_keeps_the_file_not_the_link_to_it(tmp_path):
    """Symlinks that sort before the file they point to: the file is kept, in its own place in
    the sorted order, and every link is a skipped duplicate of it (the run's CSVs name real files)."""
    from engine.sources import discover

    (tmp_path / "b_real.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "b_real.jpg", tmp_path / "a_link.jpg")
    found = discover([tmp_path])
    assert [p.name for p in found.paths] == ["b_real.jpg"]
    assert [(p.name, reason) for p, reason in found.skipped] == [("a_link.jpg", f"duplicate of {tmp_path / 'b_real.jpg'}")]

    os.link(tmp_path / "b_real.jpg", tmp_path / "c_hard.jpg")  # two names of one file: the first is kept
    found = discover([tmp_path])
    assert [p.name for p in found.paths] == ["b_real.jpg"]
    assert sorted(p.name for p, _ in found.skipped) == ["a_link.jpg", "c_hard.jpg"]

    many = tmp_path.parent / (tmp_path.name + "-many")
    many.mkdir()
    for name in ("m.jpg", "y_real.jpg", "z_real.jpg"):
        (many / name).write_bytes(name.encode())
    os.symlink(many / "z_real.jpg", many / "a_link.jpg")
    os.symlink(many / "z_real.jpg", many / "b_link.jpg")
    found = discover([many])
    assert [p.name for p in found.paths] == ["m.jpg", "y_real.jpg", "z_real.jpg"]  # sorted, as without links
    assert sorted((p.name, r) for p, r in found.skipped) == [("a_link.jpg", f"duplicate of {many / 'z_real.jpg'}"),
                                                             ("b_link.jpg", f"duplicate of {many / 'z_real.jpg'}")]
