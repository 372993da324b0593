"""A finished run's clusters as folders (cluster_00/, cluster_01/, ...) of links to its images,
so a result can be browsed in any file manager or image viewer.

    export_clusters("results/", "by-cluster/")                  # symlinks (nothing is copied)
    export_clusters("results/", "by-cluster/", mode="copy")      # self-contained copies

The run's predictions.csv says which image goes where; the images themselves are never moved or
changed. The target folder must be new or empty, so an export never overwrites anything.
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, ImgclusterError, InputError
from .hidden_entries import EXPORT_MARKER
from .progress import Reporter
from .report import outputs
from .report.rundata import ReportError, read_predictions

MODES = ("symlink", "hardlink", "copy")
MISSING = "missing.csv"  # images the run clustered that are gone now


@dataclass
class ExportResult:
    folder: Path
    mode: str
    clusters: int  # cluster folders written
    written: int  # images linked or copied
    missing: list[str] = field(default_factory=list)  # predictions.csv paths that no longer exist


def cluster_folder_name(cluster: int, largest: int) -> str:
    """cluster_07: zero-padded to the width of the largest id (at least 2), so folders sort by id."""
    return f"cluster_{cluster:0{max(2, len(str(largest)))}d}"


def _unique_name(name: str, taken: set[str]) -> str:
    """name, or stem~2.ext, stem~3.ext, ... when a file of that name (compared case-insensitively,
    as macOS and Windows file systems do) is already in the folder."""
    if name.lower() not in taken:
        taken.add(name.lower())
        return name
    stem, suffix = os.path.splitext(name)
    n = 2
    while f"{stem}~{n}{suffix}".lower() in taken:
        n += 1
    taken.add(f"{stem}~{n}{suffix}".lower())
    return f"{stem}~{n}{suffix}"


def _prepare_target(to: Path) -> bool:
    """Check that `to` is new or empty, and create it; True when it was created here."""
    if to.exists() and not to.is_dir():
        raise ConfigError(f"--to {to} is a file: give a new or empty folder")
    if to.is_dir() and any(os.scandir(to)):
        raise ConfigError(f"--to {to} is not empty: export into a new or empty folder (nothing there is overwritten)")
    created = not to.exists()
    to.mkdir(parents=True, exist_ok=True)
    return created


def _undo(to: Path, created: bool, folders) -> None:
    """After a failed export: remove what it wrote (the target was new or empty), so the same
    command, or the one the error suggests, can run again."""
    if created:
        shutil.rmtree(to, ignore_errors=True)
        return
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    (to / MISSING).unlink(missing_ok=True)
    (to / EXPORT_MARKER).unlink(missing_ok=True)


def _place(source: str, target: Path, mode: str) -> None:
    if mode == "symlink":
        os.symlink(os.path.abspath(source), target)
    elif mode == "hardlink":
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise ImgclusterError(f"cannot hard-link {source} into {target.parent}: hard links need one file "
                                      "system; use --mode symlink or --mode copy") from None
            if exc.errno in (errno.EPERM, errno.EMLINK):
                raise ImgclusterError(f"cannot hard-link {source} ({exc.strerror}); use --mode symlink or "
                                      "--mode copy") from None
            raise
    else:
        shutil.copy2(source, target)


def _run_cwd(run_dir: Path, paths) -> str | None:
    """The folder predictions.csv's relative paths are relative to (outputs.run_base)."""
    try:
        summary = outputs.read_summary(run_dir)
    except (OSError, ValueError, AttributeError):
        return None  # no (readable) summary: paths are taken as they are
    return outputs.run_base(run_dir, summary, paths) if isinstance(summary, dict) else None


def export_clusters(run_dir: str | os.PathLike, to: str | os.PathLike, mode: str = "symlink",
                    reporter: Reporter | None = None) -> ExportResult:
    """Write one folder per cluster under `to`, holding the run's images (links or copies).

    run_dir: a folder written by `imgcluster run` / `cluster` (its predictions.csv is read;
    relative paths there are taken from the folder the run started in, summary.json's "cwd").
    mode: "symlink" (default: absolute links, nothing copied), "hardlink" (same file system only),
    or "copy" (a self-contained folder). Images that no longer exist are listed in
    `to`/missing.csv and counted in the result; everything else is exported.
    """
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not one of: {', '.join(MODES)}")
    reporter = reporter or Reporter()
    run_dir = Path(run_dir)
    predictions = run_dir / outputs.PREDICTIONS
    if not predictions.is_file():
        raise InputError(outputs.not_a_finished_run(run_dir, outputs.PREDICTIONS))
    busy = outputs.writer_now(run_dir)
    if busy:  # its predictions.csv may be half rewritten
        raise InputError(f"{run_dir}: an imgcluster command is writing there ({busy}); wait for it to finish, "
                         "then export")
    try:
        paths, labels = read_predictions(predictions)
    except ReportError as exc:
        raise InputError(str(exc)) from None
    base = _run_cwd(run_dir, paths)
    to = Path(to)
    created = _prepare_target(to)
    largest = int(labels.max()) if len(labels) else 0
    taken: dict[int, set[str]] = {}
    missing: list[str] = []
    written = 0
    try:
        # so that a later run over a folder holding this one does not take these images a second time
        (to / EXPORT_MARKER).write_text(f"Written by `imgcluster export` from {run_dir}: folder walks of "
                                        "imgcluster leave this folder out (--include-hidden takes it).\n",
                                        encoding="utf-8")
        with reporter.task(f"Exporting ({mode})", len(paths)) as advance:
            for text, cluster in zip(paths, labels.tolist()):
                source = outputs.file_for_text(text, base)
                if not os.path.isfile(source):
                    missing.append(text)
                    advance(1)
                    continue
                folder = to / cluster_folder_name(cluster, largest)
                if cluster not in taken:
                    folder.mkdir(exist_ok=True)
                    taken[cluster] = set()
                _place(source, folder / _unique_name(os.path.basename(source), taken[cluster]), mode)
                written += 1
                advance(1)
        if missing:
            outputs.write_csv(to / MISSING, ["path"], ([p] for p in missing))
    except BaseException:  # a failed link, a full disk, Ctrl-C: leave no half export behind
        _undo(to, created, [to / cluster_folder_name(c, largest) for c in taken])
        raise
    if missing:
        reporter.warn(f"{len(missing)} image(s) in {predictions} no longer exist (moved or deleted since the run); "
                      f"not exported, listed in {to / MISSING}")
    return ExportResult(to, mode, len(taken), written, missing)
