"""A run directory's files: the one place that writes and reads them (atomically).

OUT/
  predictions.csv   path,cluster            one row per good image, in input order
  skipped.csv       path,reason             one row per file that was not used
  summary.json      chosen K, per-K scores, counts, config, versions, backends, timings
  analysis.npz      arrays the report needs (see RunAnalysis)
  features.npy      (n, d) float32, only with --save-features
  report/           built by engine.report.build_report
Every file is written to a temporary name in the same folder and renamed into place, so a
crash leaves the previous file or none, never half a file.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

try:
    import fcntl  # flock: the run-folder lock (exclusive_writer)
except ImportError:  # Windows: no lock
    fcntl = None

from ..errors import ImgclusterError
from ..pathlist import PathList

PREDICTIONS = "predictions.csv"
SKIPPED = "skipped.csv"
SUMMARY = "summary.json"
ANALYSIS = "analysis.npz"
DUPLICATES = "duplicates.csv"  # byte-identical copies among the clustered images (engine.duplicates)
FEATURES = "features.npy"
FEATURE_CACHE = "features"  # the folder engine.store.FeatureStore writes in a run
RUN_FILES = (PREDICTIONS, SKIPPED, SUMMARY, ANALYSIS, DUPLICATES)  # what every run writes at the top of its folder
# a failed run's skip list, in a folder that holds a finished run (whose skipped.csv must still
# match its predictions); the next finished run there removes it
FAILED_RUN_SKIPPED = "skipped-failed-run.csv"
REPORT = "report"
REPORT_INDEX = "index.html"
REPORT_SUBDIRS = ("plots", "montages", "clusters")  # what engine.report.builder writes there
# a run's own image folders, relative to its output folder: never inputs of a later run
RUN_IMAGE_DIRS = tuple(os.path.join(REPORT, sub) for sub in REPORT_SUBDIRS)


class OutputPathError(ImgclusterError):
    """An output location that cannot be written (a file where a folder is wanted, no permission,
    a read-only file system). Raised before any work, so a long run does not fail at its end."""


def _writable_folder(folder: Path, what: str) -> None:
    """Create `folder` (with parents) and write and remove a file in it; OutputPathError
    starting with `what` when either fails."""
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{what}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".imgcluster-write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputPathError(f"{what}: cannot create or write in {folder} ({exc.strerror or exc})") from None


def refuse_file_as_out_dir(path, flag: str = "--out") -> None:
    """OutputPathError naming `flag` when `path` is an existing file. Creates nothing: a run checks
    it before walking its inputs (minutes on a large share), the folder itself is made later."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder: give a folder (it is created if missing)")


def prepare_out_dir(path, flag: str = "--out") -> Path:
    """Create the output folder `path` (with parents) and check a file can be written in it.
    Raises OutputPathError naming `flag` when it is an existing file or not writable."""
    path = Path(path)
    refuse_file_as_out_dir(path, flag)
    _writable_folder(path, f"{flag} {path}")
    return path


WRITER_LOCK = ".imgcluster.lock"  # hidden: folder walks leave it out


@contextlib.contextmanager
def exclusive_writer(out_dir, flag: str | None = "--out") -> Iterator[None]:
    """Hold an advisory lock (flock) on out_dir/.imgcluster.lock while a command writes the
    folder: a second command there fails at once with OutputPathError, naming the first's pid,
    instead of mixing its CSVs with the first's feature cache. Released when the block ends or the
    process dies (the file stays: removing a lock file races with its next taker). No lock where
    the platform has no flock (Windows)."""
    if fcntl is None:
        yield
        return
    path = Path(out_dir) / WRITER_LOCK
    try:  # 0o666 less the umask, as the other outputs: a group-shared folder's lock for the group
        fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:  # another user's lock file: flock works on a read-only descriptor too
        try:
            fd, writable = os.open(path, os.O_RDONLY), False
        except OSError:
            yield  # no lock to be had here; the folder itself was checked writable
            return
    try:
        holder = _flock_or_holder(fd)
        if holder is not None:
            where = f"{flag} {out_dir}" if flag else str(out_dir)
            raise OutputPathError(f"{where}: another imgcluster command is writing there ({holder}); wait for it "
                                  "to finish" + (f", or give another {flag}" if flag else ""))
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _flock_or_holder(fd: int) -> str | None:
    """Take the lock on `fd` without waiting. None when taken, or when the mount has no flock
    (some SMB/FUSE: work goes on unlocked, as before the lock); else who holds it (_lock_holder)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(os.pread(fd, 200, 0).decode("utf-8", "replace").strip())
    except OSError:
        pass
    return None


def _lock_holder(text: str) -> str:
    """'pid N' from the lock file when that process is alive, else 'another process' (a holder
    that could not write its pid, another user's, leaves the last writer's there)."""
    try:
        pid = int(text.removeprefix("pid "))
        os.kill(pid, 0)  # signal 0: only asks whether it exists
    except PermissionError:
        return text  # alive, another user's
    except (ValueError, OSError):
        return "another process"
    return text


def check_out_file(path, flag: str) -> Path:
    """Check that the file `path` can be written (its folder is created if missing) before the
    work that produces it. Raises OutputPathError naming `flag` when `path` is a folder, or its
    folder cannot be created or written."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder: give a file name, e.g. {path / 'model.imgc'}"
                              if flag == "--save-model" else f"{flag} {path} is a folder: give a file name")
    _writable_folder(path.parent, f"{flag} {path}")
    return path


def _umask_mode() -> int:
    """0o666 minus the process umask: the mode open() would give a new file. Read from /proc where
    possible, since os.umask() to read it briefly changes it for every thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_args) -> Iterator:
    """Open a temp file in path's folder for writing; on success fsync it and rename it to `path`,
    on an error remove it (so `path` is the previous file or none, never half a file). The file
    gets the usual umask mode (mkstemp alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_file)."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def path_to_text(path) -> str:
    """A path as CSV text; non-UTF-8 names are kept reversibly with surrogateescape -> backslash escapes."""
    text = os.fsdecode(path)
    if text.isascii():  # the common case, ~3x faster than the round trip below
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_ESCAPED_BYTE = re.compile(r"\\udc([89a-f][0-9a-f])")


def run_base(run_dir, summary: dict, paths: Iterable[str] = ()) -> str | None:
    """The folder a run's relative paths (predictions.csv) are relative to.

    summary.json's "cwd", the folder the run started in; but when the project moved (photos and
    results together: `mv ~/photos ~/results ~/archive/`), its relative paths are found again from
    the run folder's new place, through "cwd_from_out" (that folder relative to the run folder,
    written by write_run). `paths`: some of the run's path texts; the first relative ones decide
    (absolute paths cannot follow a move). None when the summary records no cwd."""
    cwd = summary.get("cwd") if isinstance(summary.get("cwd"), str) else None
    rel = summary.get("cwd_from_out")
    if not isinstance(rel, str):
        return cwd
    moved = os.path.abspath(os.path.join(os.fspath(run_dir), rel))  # absolute: shown on pages, saved by recluster
    sample = [p for _, p in zip(range(20), (p for p in paths if not os.path.isabs(p)))]
    if not sample or moved == cwd:
        return cwd if cwd is not None and os.path.isdir(cwd) else moved
    found = lambda base: sum(os.path.lexists(os.path.join(base, p)) for p in sample)  # noqa: E731
    return moved if cwd is None or found(moved) > found(cwd) else cwd


def file_for_text(text: str, base: str | os.PathLike | None = None) -> str:
    """The file a path as written in a run's CSVs names (the inverse of path_to_text).

    A relative path is joined to `base`: the run's working directory (summary.json's "cwd"), not
    the current one. A byte of a file name that is not UTF-8 was written as the text '\\udcXX';
    when the path as written is no file, those escapes are turned back into the bytes (a name that
    really holds such text and exists as written is kept as written).
    """
    path = os.path.join(base, text) if base else text
    if "\\udc" not in path or os.path.lexists(path):
        return path
    return _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), path)


def write_csv(path, header: list[str], rows: Iterable[Iterable], check_cr: bool = True) -> Path:
    """Rows (paths already as path_to_text) streamed to the file, atomically: at 10M rows the
    whole text built in memory first was ~1.4 GiB and 8x slower (scale audit).

    A row with a carriage return in a field (a file name can hold one) is written fully quoted:
    with "\n" line ends, csv.writer quotes fields holding "\n" but not "\r", which readers then
    take as a line end, splitting the row. check_cr=False: the caller knows no field holds one
    (the check costs ~2 us a row, two thirds of the writing)."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        quoted = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(header)

        def plain_rows():  # writerows writes each row as it is yielded, so the order is kept
            for row in rows:
                row = tuple(row)  # read once: the check below must not use up an iterator row
                if any(isinstance(field, str) and "\r" in field for field in row):
                    quoted.writerow(row)
                else:
                    yield row

        writer.writerows(plain_rows() if check_cr else rows)
    return Path(path)


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_paths(path, column: str = "path") -> PathList:
    """The files a CSV's `column` names (file_for_text of each row's text, no base: relative
    paths stay relative), in row order, as a PathList read row by row: ~72 bytes a 56-character
    path held (~234 at the peak), where read_csv's dicts (~300 bytes a row), then the list of
    their texts and a list of Path made from it, held ~380 (tracemalloc, 50,000 rows: 3.8 GB for
    a 10-million-row predictions.csv).

    Reads as read_csv(path) and [row[column] ...] would: blank lines are passed over, the last
    column of that name counts, KeyError when rows exist but no column has the name; ValueError
    for a row too short to have it."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if column not in header:
            if any(row for row in reader):
                raise KeyError(column)
            return PathList()
        at = len(header) - 1 - header[::-1].index(column)

        def texts():
            for row in reader:
                if not row:
                    continue
                if len(row) <= at:
                    raise ValueError(f"line {reader.line_num} has no {column!r} field")
                yield file_for_text(row[at])

        return PathList.from_strings(texts())


def not_a_finished_run(run_dir, missing: str, hint: str = "") -> str:
    """The message for a run folder without its `missing` file: not there at all, a file, a first
    run still writing there, or a folder that holds no finished run (then `hint` is added)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return f"{run_dir} not found"
    if not run_dir.is_dir():
        return f"{run_dir} is a file, not a run's output folder"
    busy = writer_now(run_dir)
    if busy:  # a first run there, still going
        return f"{run_dir} is not a finished run yet: an imgcluster command is writing there ({busy}); wait for it to finish"
    return f"{run_dir} is not a finished run ({missing} is missing){hint}"


def writer_now(out_dir) -> str | None:
    """Who holds out_dir's lock (exclusive_writer) now, as 'pid N' or 'another process'; None when
    nobody does (or the platform or mount has no flock). Takes and drops the lock to find out."""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(out_dir) / WRITER_LOCK, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no command has written there
    try:
        return _flock_or_holder(fd)
    finally:
        os.close(fd)  # also drops the lock if we took it


def is_run_folder(out_dir) -> bool:
    """Whether `out_dir` holds a run's summary.json (an imgcluster run wrote there before)."""
    try:
        summary = read_summary(out_dir)
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and isinstance(summary.get("features"), dict)


def remove_stale(out_dir, features: bool, report: bool) -> None:
    """Remove what an earlier run wrote to `out_dir` and this one did not, so the folder describes
    one run: features.npy (features=True) and the report's own files (report=True: index.html
    and the files in plots/, montages/ and clusters/; the folders only when left empty). Call it
    only when is_run_folder(out_dir) was true before this run wrote there: a folder that never
    held a run may hold a user's own features.npy or report/."""
    out = Path(out_dir)
    if features and (out / FEATURES).is_file():
        (out / FEATURES).unlink()
    root = out / REPORT
    if not report or root.is_symlink() or not (root / REPORT_INDEX).is_file():
        return
    (root / REPORT_INDEX).unlink()
    for sub in REPORT_SUBDIRS:
        folder = root / sub
        if folder.is_dir() and not folder.is_symlink():
            for entry in folder.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()
    for folder in (*(root / sub for sub in REPORT_SUBDIRS), root):
        try:
            folder.rmdir()  # only when empty: anything else there is not ours
        except OSError:
            pass


def remove_report_index(out_dir) -> None:
    """Remove out_dir/report/index.html, the page of an earlier run's report, before a new report
    is built there (its other files are replaced or removed as the build ends). Interrupted, the
    build then leaves no page, rather than the earlier run's describing other clusters."""
    root = Path(out_dir) / REPORT
    if not root.is_symlink() and (root / REPORT_INDEX).is_file():
        (root / REPORT_INDEX).unlink()


def write_predictions(out_dir, paths, labels) -> Path:
    """paths: n paths (str/Path, or a PathList: read as its strings(), no Path made a row);
    labels: (n,) int cluster ids."""
    labels = labels.tolist() if isinstance(labels, np.ndarray) else [int(c) for c in labels]
    texts = paths.strings() if isinstance(paths, PathList) else paths
    return write_csv(Path(out_dir) / PREDICTIONS, ["path", "cluster"], zip(map(path_to_text, texts), labels),
                     check_cr=not isinstance(paths, PathList) or paths.may_hold("\r"))


def write_duplicates(out_dir, paths, copies) -> Path:
    """copies: [(position, position of its first copy)] in `paths` (engine.duplicates); written as
    path,same_bytes_as rows (a header alone when there are none). Not "copy_of": the first in input
    order need not be the original."""
    return write_csv(Path(out_dir) / DUPLICATES, ["path", "same_bytes_as"],
                     ((path_to_text(paths[i]), path_to_text(paths[j])) for i, j in copies))


def write_skipped(out_dir, skipped, name: str = SKIPPED) -> Path:
    """skipped: [(path, reason)]; written to out_dir/name."""
    return write_csv(Path(out_dir) / name, ["path", "reason"], ((path_to_text(p), r) for p, r in skipped))


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return path_to_text(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(path, payload: dict) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default, allow_nan=True) + "\n")


def write_summary(out_dir, summary: dict) -> Path:
    return write_json(Path(out_dir) / SUMMARY, summary)


def read_summary(run_dir) -> dict:
    with open(Path(run_dir) / SUMMARY, encoding="utf-8") as handle:
        return json.load(handle)


def write_npy(path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    return atomic_write_bytes(path, buffer.getvalue())


@dataclass
class RunAnalysis:
    """Arrays the report needs, saved as analysis.npz (no pickle).

    explained_variance_ratio: (m,) float32, per PCA component, descending (empty when PCA is off)
    n_components:             int, components kept (0 when PCA is off)
    ks:                       (j,) int32, candidate K values searched
    labels:                   {K: (n,) int32} cluster ids (0..K-1 by size) for the chosen K and its neighbours
    silhouettes:              {K: (n,) float32} per-sample silhouettes for those K (NaN where not sampled)
    projection_2d:            (n, 2) float32, the first two principal components of each sample
    distance_to_centroid:     (n,) float32, distance of each sample to its centroid (chosen K)
    """

    explained_variance_ratio: np.ndarray
    n_components: int
    ks: np.ndarray
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    silhouettes: dict[int, np.ndarray] = field(default_factory=dict)
    projection_2d: np.ndarray | None = None
    distance_to_centroid: np.ndarray | None = None


def write_analysis(out_dir, analysis: RunAnalysis) -> Path:
    arrays = {
        "explained_variance_ratio": np.asarray(analysis.explained_variance_ratio, dtype=np.float32),
        "n_components": np.asarray(analysis.n_components, dtype=np.int64),
        "ks": np.asarray(analysis.ks, dtype=np.int32),
    }
    for k, lab in analysis.labels.items():
        arrays[f"labels_k{int(k)}"] = np.asarray(lab, dtype=np.int32)
    for k, sil in analysis.silhouettes.items():
        arrays[f"silhouette_k{int(k)}"] = np.asarray(sil, dtype=np.float32)
    if analysis.projection_2d is not None:
        arrays["projection_2d"] = np.asarray(analysis.projection_2d, dtype=np.float32)
    if analysis.distance_to_centroid is not None:
        arrays["distance_to_centroid"] = np.asarray(analysis.distance_to_centroid, dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(Path(out_dir) / ANALYSIS, buffer.getvalue())


def read_analysis(run_dir) -> RunAnalysis:
    with np.load(Path(run_dir) / ANALYSIS, allow_pickle=False) as data:
        labels = {int(n[len("labels_k"):]): data[n] for n in data.files if n.startswith("labels_k")}
        sils = {int(n[len("silhouette_k"):]): data[n] for n in data.files if n.startswith("silhouette_k")}
        return RunAnalysis(
            explained_variance_ratio=data["explained_variance_ratio"],
            n_components=int(data["n_components"]),
            ks=data["ks"],
            labels=labels,
            silhouettes=sils,
            projection_2d=data["projection_2d"] if "projection_2d" in data.files else None,
            distance_to_centroid=data["distance_to_centroid"] if "distance_to_centroid" in data.files else None,
        )
