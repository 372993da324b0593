"""Progress when stderr is not a terminal: plain lines at an interval, nothing for short stages."""
from __future__ import annotations

import io

from rich.console import Console

from engine.cli_progress import RichReporter


def _reporter(interval):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    return RichReporter(console, progress_interval=interval), buffer


def test_a_log_file_gets_plain_progress_lines_with_rate_and_eta():
    reporter, buffer = _reporter(interval=0.0)
    with reporter.task("Extracting features", total=4) as advance:
        for _ in range(4):
            advance(1)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("Extracting features: 1/4 (25 %), ") and "ETA 0:00:" in lines[0]
    assert lines[-1].startswith("Extracting features: 4/4 (100 %), ") and "ETA" not in lines[-1]
    assert "\x1b[" not in buffer.getvalue()  # no terminal control codes in a log


def test_a_stage_shorter_than_the_interval_prints_nothing():
    reporter, buffer = _reporter(interval=3600.0)
    with reporter.task("K search", total=10) as advance:
        advance(10)
    assert buffer.getvalue() == ""


def test_a_count_without_a_known_total():
    """Finding images: the walk does not know how many files there are, so a count and a rate."""
    reporter, buffer = _reporter(interval=0.0)
    with reporter.task("Finding images", None, transient=True) as advance:
        advance(1000)
        advance(234)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("Finding images: 1,000, ") and "elapsed" in lines[0] and "ETA" not in lines[0]
    assert lines[-1].startswith("Finding images: 1,234, ")


def test_a_terminal_count_without_a_total_is_transient():
    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, force_terminal=True, width=100))
    with reporter.task("Finding images", None, transient=True) as advance:
        advance(5)
    with reporter.task("Extracting features", 5) as advance:
        advance(5)
    text = buffer.getvalue()
    assert "Finding images 5" in text and "5/5" in text
    # the transient count leaves no line behind: rich moves up and erases it when its stage ends
    between = text[text.rindex("Finding images"):text.index("Extracting features")]
    assert "\x1b[1A\x1b[2K" in between


def test_discover_reports_the_files_it_finds(tmp_path):
    from PIL import Image

    from engine.sources import discover

    for i in range(7):
        (tmp_path / f"d{i % 3}").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / f"d{i % 3}" / f"{i}.png")
    (tmp_path / "notes.txt").write_text("x")
    counts = []
    found = discover([tmp_path, str(tmp_path / "d0" / "*.png")], progress=counts.append)
    assert sum(counts) == 7 + 3 and len(counts) == 3 + 3  # one call per folder walked, one per glob match
    assert len(found.paths) == 7  # the glob's three are duplicates of the walk's


def test_a_terminal_bar_updated_per_item_ends_at_its_total():
    """advance(1) per file (a glob's matches): rich is told at most 10 times a second, and what is
    still pending when the stage ends is flushed, so the bar ends at the real count."""
    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, force_terminal=True, width=100))
    with reporter.task("Extracting features", 5000) as advance:
        for _ in range(5000):
            advance(1)
    assert "5000/5000" in buffer.getvalue()
    assert buffer.getvalue().count("\r") < 100  # not one redraw per item


def test_items_that_need_no_work_leave_the_total_not_enter_the_rate(tmp_path):
    """A resumed run's cached images used to count as done at once: its first lines read 1,290
    images/s and an ETA of 17 s for a job that took 71 s more. They now come out of the total
    (advance.fewer), in a log and on a terminal, and extraction reports them that way."""
    reporter, buffer = _reporter(interval=0.0)
    with reporter.task("Extracting features", total=10) as advance:
        advance.fewer(6)
        advance(2)
    assert buffer.getvalue().splitlines()[0].startswith("Extracting features: 2/4 (50 %), ")

    terminal = io.StringIO()
    reporter = RichReporter(Console(file=terminal, force_terminal=True, width=100))
    with reporter.task("Extracting features", 10) as advance:
        advance.fewer(6)
        advance(4)
    assert "4/4" in terminal.getvalue().rsplit("Extracting features", 1)[1]  # the last render

    # everything from the cache: the bar ends full (it read 0/0 with no ETA), as before
    terminal = io.StringIO()
    reporter = RichReporter(Console(file=terminal, force_terminal=True, width=100))
    with reporter.task("Extracting features", 7) as advance:
        advance.fewer(7)
    assert "7/7" in terminal.getvalue().rsplit("Extracting features", 1)[1]
    reporter, buffer = _reporter(interval=0.0)
    with reporter.task("Extracting features", total=7) as advance:
        advance.fewer(7)
    assert buffer.getvalue().splitlines()[-1].startswith("Extracting features: 7/7 (100 %)")

    import numpy as np
    import torch
    from PIL import Image

    from engine.backbones import load_backbone
    from engine.features import extract_features
    from engine.loaders import make_loader
    from engine.store import FeatureStore

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(paths[-1])
    backbone = load_backbone("pixels", "auto", torch.device("cpu"))
    loader = make_loader("pil", torch.device("cpu"))
    store = FeatureStore.open(tmp_path / "cache", backbone.fingerprint, dim=backbone.dim)
    extract_features(paths[:3], loader, backbone, 8, store=store)
    store.close()

    calls = []

    class Counting:
        def __call__(self, n):
            calls.append(("done", n))

        def fewer(self, n):
            calls.append(("fewer", n))

    store = FeatureStore.open(tmp_path / "cache", backbone.fingerprint, dim=backbone.dim)
    result = extract_features(paths, loader, backbone, 8, progress=Counting(), store=store)
    store.close()
    assert result.resumed == 3 and calls == [("fewer", 3), ("done", 2)]
    assert np.asarray(result.good).size == 5
