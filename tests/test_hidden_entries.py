"""Folder walks leave out hidden entries and NAS/OS system folders (Synology's @eaDir holds
thumbnails of every photo), count them in a notice and in summary.json, and --include-hidden
takes them. A folder named on the command line is walked whatever its name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import ConfigError
from engine.hidden_entries import LeftOut, is_hidden_file, is_hidden_or_system_folder
from engine.sources import discover, no_images_message
from tests.helpers import read_rows


def _image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, "JPEG")
    return path


@pytest.fixture()
def nas_folder(tmp_path) -> Path:
    """photos/ as a Synology share and a Mac-copied USB disk leave it: 2 photos, their thumbnails
    in @eaDir, a recycle bin, a hidden thumbnail cache, and AppleDouble ._ files."""
    root = tmp_path / "photos"
    _image(root / "a.jpg")
    _image(root / "trip" / "b.jpg", (30, 30, 200))
    for photo in ("a.jpg", "trip/b.jpg"):
        parent = (root / photo).parent
        _image(parent / "@eaDir" / Path(photo).name / "SYNOPHOTO_THUMB_XL.jpg")
        (parent / f"._{Path(photo).name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    _image(root / "#recycle" / "old.jpg")
    _image(root / ".thumbnails" / "normal" / "x.jpg")
    (root / ".DS_Store").write_bytes(b"\x00")
    return root


def test_names():
    for name in (".thumbnails", ".git", "@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information"):
        assert is_hidden_or_system_folder(name), name
    for name in ("photos", "eaDir", "recycle", "2024", "@home"):
        assert not is_hidden_or_system_folder(name), name
    assert is_hidden_file("._IMG_0001.jpg") and is_hidden_file(".x.png") and not is_hidden_file("x.png")


def test_walk_leaves_out_hidden_and_system_entries_and_counts_them(nas_folder):
    found = discover([nas_folder])
    assert [p.relative_to(nas_folder).as_posix() for p in found.paths] == ["a.jpg", "trip/b.jpg"]
    assert found.left_out.folders == {"@eaDir": 2, "#recycle": 1, ".thumbnails": 1}
    assert found.left_out.files == 2  # the ._ files named like images; .DS_Store is an ignored file
    assert found.ignored == {"": 1}
    assert found.left_out.note() == ("Left out 4 hidden or system folders (@eaDir ×2, #recycle, .thumbnails) "
                                     "and 2 hidden image files (such as macOS's ._ files): --include-hidden takes them")
    assert found.left_out.as_dict() == {"hidden_or_system_folders": 4, "hidden_image_files": 2, "export_folders": 0,
                                         "other_runs_reports": 0}


def test_include_hidden_takes_everything(nas_folder):
    found = discover([nas_folder], include_hidden=True)
    assert found.left_out is None
    names = {p.relative_to(nas_folder).as_posix() for p in found.paths}
    assert names == {"a.jpg", "trip/b.jpg", "._a.jpg", "trip/._b.jpg", "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg",
                     "trip/@eaDir/b.jpg/SYNOPHOTO_THUMB_XL.jpg", "#recycle/old.jpg", ".thumbnails/normal/x.jpg"}


def test_a_named_hidden_folder_or_file_is_taken(nas_folder):
    found = discover([nas_folder / ".thumbnails", nas_folder / "#recycle", nas_folder / "._a.jpg"])
    assert [p.name for p in found.paths] == ["x.jpg", "old.jpg", "._a.jpg"]
    assert not found.left_out


def test_no_images_message_says_what_was_left_out(tmp_path):
    _image(tmp_path / "share" / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_XL.jpg")
    found = discover([tmp_path / "share"])
    assert not found.paths
    message = no_images_message([tmp_path / "share"], found)
    assert "left out 1 hidden or system folder (@eaDir)" in message and "--include-hidden" in message


def test_left_out_note_is_empty_when_nothing_was():
    assert LeftOut().note() == "" and not LeftOut()


def test_run_notices_and_records_what_it_left_out_and_why_files_were_skipped(runner, nas_folder, tmp_path):
    from engine.cli import app

    shutil.rmtree(nas_folder / "#recycle")
    _image(nas_folder / "c.jpg", (30, 200, 30))
    (nas_folder / "broken.jpg").write_bytes(b"not a jpeg")
    (nas_folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(nas_folder), "--out", str(out), "--model", "pixels", "--k", "2",
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "Left out 3 hidden or system folders (@eaDir ×2, .thumbnails) and 2 hidden image files" in flat
    assert ("Skipped 2 file(s): 1 empty file (0 bytes); 1 not an image (unrecognised content) "
            "(see skipped.csv)") in flat
    assert sorted(Path(r["path"]).name for r in read_rows(out / "predictions.csv")) == ["a.jpg", "b.jpg", "c.jpg"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["left_out"] == {"hidden_or_system_folders": 3, "hidden_image_files": 2, "export_folders": 0,
                                  "other_runs_reports": 0}
    assert summary["skipped_reasons"] == {"empty file (0 bytes)": 1, "not an image (unrecognised content)": 1}
    assert summary["config"]["include_hidden"] is False

    out2 = tmp_path / "out2"
    result = runner.invoke(app, ["run", str(nas_folder), "--out", str(out2), "--model", "pixels", "--k", "2",
                                 "--no-report", "--include-hidden"])
    assert result.exit_code == 0, result.output
    assert len(read_rows(out2 / "predictions.csv")) == 3 + 3  # + 2 thumbnails and the .thumbnails image
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["left_out"] is None and summary["config"]["include_hidden"] is True
    assert summary["skipped_reasons"]["not an image (unrecognised content)"] == 3  # + the two ._ files


def test_api_parameter(nas_folder):
    from engine import ImageClusterer

    _image(nas_folder / "c.jpg", (30, 200, 30))
    taken = ImageClusterer(model="pixels", k=2, include_hidden=True).fit([nas_folder])
    default = ImageClusterer(model="pixels", k=2).fit([nas_folder])
    assert len(default.paths_) == 3 and len(taken.paths_) == 3 + 4
    with pytest.raises(ConfigError, match="include_hidden=.yes. must be True or False"):
        ImageClusterer(include_hidden="yes").fit([nas_folder])


def test_predict_leaves_out_hidden_entries_too(runner, nas_folder, tmp_path):
    from engine import ImageClusterer
    from engine.cli import app

    _image(nas_folder / "c.jpg", (30, 200, 30))
    model = tmp_path / "m.imgc"
    ImageClusterer(model="pixels", k=2).fit([nas_folder]).save(model)
    for extra, rows in (([], 3), (["--include-hidden"], 3 + 4)):  # + 4 in hidden folders; ._ files are no images
        out = tmp_path / f"p{len(extra)}.csv"
        result = runner.invoke(app, ["predict", str(model), str(nas_folder), "--out", str(out), "--device", "cpu",
                                     *extra])
        assert result.exit_code == 0, result.output
        assert len(read_rows(out)) == rows
        assert ("Left out 4 hidden or system folders" in " ".join(result.output.split())) == (not extra)


def test_report_says_what_was_left_out(nas_folder, tmp_path):
    from engine import ImageClusterer

    _image(nas_folder / "c.jpg", (30, 200, 30))
    ImageClusterer(model="pixels", k=2).fit([nas_folder], out_dir=tmp_path / "out", report=True)
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "left out by the folder walk" in page
    assert "4 hidden or system folders (such as Synology @eaDir thumbnails) and 2 hidden image files" in page


def test_api_predict_follows_include_hidden(nas_folder):
    from engine import ImageClusterer

    _image(nas_folder / "c.jpg", (30, 200, 30))
    default = ImageClusterer(model="pixels", k=2).fit([nas_folder])
    assert len(default.prediction_paths(nas_folder)) == 3 and len(default.predict(nas_folder)) == 3
    taken = ImageClusterer(model="pixels", k=2, include_hidden=True).fit([nas_folder])
    assert len(taken.predict(nas_folder)) == 3 + 4 + 2  # + the 4 images in hidden folders and the 2 ._ files (-1)
    listed = ImageClusterer.prediction_paths(nas_folder, include_hidden=True)
    assert len(listed) == 9 and set(taken.paths_) <= set(listed)  # the fit's walk took the same files


@pytest.mark.parametrize("pattern", ["*", "**/*.jpg", "**", "./*", "[a#@t]*"])
def test_globs_leave_out_the_system_folders_their_wildcards_reach(nas_folder, monkeypatch, pattern):
    """Synology names each thumbnail folder after its photo (@eaDir/a.jpg/), so even '**/*.jpg'
    reaches the thumbnails; wildcards never match hidden names (glob.glob's rule)."""
    monkeypatch.chdir(nas_folder)
    found = discover([pattern])
    names = {p.as_posix() for p in found.paths}
    assert not any("@eaDir" in n or "#recycle" in n or n.startswith(".") or "/." in n for n in names), names
    assert "a.jpg" in names
    assert "trip/b.jpg" in names
    assert {"@eaDir", "#recycle"} <= set(found.left_out.folders) <= {"@eaDir", "#recycle", ".thumbnails"}
    taken = discover([pattern], include_hidden=True)
    assert {p.as_posix() for p in taken.paths} > names and taken.left_out is None


def test_a_system_folder_named_literally_in_a_glob_is_taken(nas_folder, monkeypatch):
    monkeypatch.chdir(nas_folder)
    # after a wildcard too: the pattern asks for that folder by name
    assert [p.as_posix() for p in discover(["*/@eaDir/**/*.jpg"]).paths] == ["trip/@eaDir/b.jpg/SYNOPHOTO_THUMB_XL.jpg"]
    assert [p.as_posix() for p in discover(["./@eaDir/*"]).paths] == ["@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg"]
    assert [p.as_posix() for p in discover(["trip/@eaDir/**/*.jpg"]).paths] == ["trip/@eaDir/b.jpg/SYNOPHOTO_THUMB_XL.jpg"]


def test_each_left_out_folder_is_counted_once(nas_folder, monkeypatch):
    monkeypatch.chdir(nas_folder)
    for i in range(3):
        _image(nas_folder / "@eaDir" / "a.jpg" / f"SYNOPHOTO_THUMB_{i}.jpg")
    found = discover(["**/*.jpg"])
    assert found.left_out.folders == {"@eaDir": 2, "#recycle": 1}


def test_cli_predict_follows_the_models_include_hidden_unless_told(runner, nas_folder, tmp_path):
    from engine import ImageClusterer
    from engine.cli import app

    _image(nas_folder / "c.jpg", (30, 200, 30))
    model = tmp_path / "hidden.imgc"
    ImageClusterer(model="pixels", k=2, include_hidden=True).fit([nas_folder]).save(model)
    for extra, rows in (([], 3 + 4), (["--exclude-hidden"], 3)):
        out = tmp_path / f"q{len(extra)}.csv"
        result = runner.invoke(app, ["predict", str(model), str(nas_folder), "--out", str(out), "--device", "cpu",
                                     *extra])
        assert result.exit_code == 0, result.output
        assert len(read_rows(out)) == rows, extra


def test_progress_counts_images_as_a_recursive_glob_walks(nas_folder, monkeypatch):
    """'**' globs walk inside recursive_glob: the count moves per folder, not once at the end."""
    monkeypatch.chdir(nas_folder)
    _image(nas_folder / "trip" / "day2" / "c.jpg")
    (nas_folder / "trip" / "notes.txt").write_text("x")
    counts = []
    found = discover(["**/*"], progress=counts.append)
    assert len(found.paths) == sum(counts) == 3 and len(counts) == 3  # a.jpg, trip/b.jpg, trip/day2/c.jpg


def test_other_runs_reports_and_links_to_folders_above_are_not_walked(three_groups, runner, tmp_path):
    """A run's output folder inside the photos: the next run with another --out used to cluster
    its report's plots and montages. A symlink to a folder above the walk's start walked that
    folder's other contents too, without a word."""
    import os

    from engine.cli import app

    photos = tmp_path / "photos"
    shutil.copytree(three_groups, photos)
    before = discover([photos])
    first = runner.invoke(app, ["run", str(photos), "--out", str(photos / "results"), "--model", "pixels", "--k", "3"])
    assert first.exit_code == 0, first.output
    assert any((photos / "results" / "report" / "montages").iterdir())  # images a walk could take
    after = discover([photos])
    assert after.paths == before.paths
    assert after.left_out.run_reports == 1  # one other run, whatever its report holds
    assert "the report images (plots, montages) of 1 other imgcluster run" in after.left_out.note()

    (tmp_path / "outside.jpg").write_bytes((photos / before.paths[0].relative_to(photos)).read_bytes())
    os.symlink("../..", photos / (before.paths[0].parent.name) / "up")  # to tmp_path, above photos
    os.symlink(".", photos / "loop")  # to photos itself
    linked = discover([photos])
    assert linked.paths == before.paths and linked.skipped == before.skipped  # outside.jpg not reached
