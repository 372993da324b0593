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
