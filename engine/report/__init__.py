"""Run outputs and the human-facing report.

build_report(run_dir) writes run_dir/report/ (index.html, plots, montages, per-cluster CSVs) from a
finished run's saved files; print_run_summary(summary) prints the end-of-run tables in a terminal.
The heavy modules (matplotlib, PIL, rich) are imported on first use, so `engine.report.outputs`,
which every run imports, stays cheap.
"""
from __future__ import annotations

from pathlib import Path


def build_report(run_dir, *, max_montage: int = 36, n_outliers: int | None = None, num_threads: int | None = None,
                 warn=None) -> Path:
    """Write run_dir/report/ and return the path of report/index.html. See engine.report.builder.build_report."""
    from .builder import build_report as _build

    return _build(run_dir, max_montage=max_montage, n_outliers=n_outliers, num_threads=num_threads, warn=warn)


def print_run_summary(summary: dict, console=None) -> None:
    """Print the end-of-run tables. See engine.report.terminal.print_run_summary."""
    from .terminal import print_run_summary as _print

    _print(summary, console)


__all__ = ["build_report", "print_run_summary"]
