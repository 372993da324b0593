"""Discover images: folders (recursive), single files, @list.txt files (one path per line), globs.

Order is deterministic: each argument's files are sorted, arguments are taken in the order given,
and a file reached twice (same real file through another path, a symlink, a hard link, or a
repeated argument: same device and inode) is kept once and the repeat is reported as skipped.
Broken symlinks, symlink loops, unreadable entries and things that are not regular files (a FIFO
named x.jpg would block a reader forever) are skipped with a reason.

Folders and globs take files by name (an image extension: scanning the content of every file in a
10-million-photo tree costs too much); the files they pass over are counted per extension in
Discovery.ignored (not listed: a photo folder can hold thousands of sidecar files). A file named
explicitly, or in an @list, is taken whatever its name: its content decides.

A recursive glob (`**`) is expanded by recursive_glob.py, which does not follow symlink loops
(glob.glob does, 40 levels deep).
"""
from __future__ import annotations

import errno
import glob
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import InputError
from .loaders.decode import has_image_extension, name_suffix
from .hidden_entries import EXPORT_MARKER, SYSTEM_FOLDERS, LeftOut, is_hidden_file
from .pathlist import PathList, path_str
from .report.outputs import PREDICTIONS, REPORT, RUN_IMAGE_DIRS, SUMMARY, WRITER_LOCK
from .recursive_glob import SEPARATORS, is_recursive, recursive_glob

Progress = Callable[[int], None]
INCLUDE_HINT = "pass files explicitly or via an @list.txt to have their content checked"


@dataclass
class Discovery:
    """paths: image files to process, in order (a PathList: a sequence of Path kept as one bytes
    blob, ~70 bytes a path instead of ~320 for a list of Path). skipped: [(path, reason)] found but
    not usable. ignored: files that folders and globs passed over because their name is not an
    image's (a Counter: lower-case extension as pathlib gives it, "" for none -> how many files).
    left_out: hidden and system folders and hidden image files the walks passed over
    (engine.hidden_entries); None when they were included."""

    paths: PathList = field(default_factory=PathList)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    left_out: LeftOut | None = field(default_factory=LeftOut)

    @property
    def n_ignored(self) -> int:
        """How many files folders and globs passed over (not named like images)."""
        return sum(self.ignored.values())

    def ignored_extensions(self, limit: int = 6) -> str:
        """The ignored files' extensions, most frequent first: ".dat, .txt, (none)" (at most
        `limit`, then "and N more")."""
        ranked = sorted(self.ignored.items(), key=lambda kv: (-kv[1], kv[0]))
        names = [ext or "(none)" for ext, _ in ranked[:limit]]
        if len(ranked) > limit:
            names.append(f"and {len(ranked) - limit} more")
        return ", ".join(names)

    def ignored_note(self) -> str:
        """'36 files ignored (not named like images: .dat, (none))', or '' when none were."""
        if not self.ignored:
            return ""
        n = self.n_ignored
        return f"{n} file{'s' if n != 1 else ''} ignored (not named like images: {self.ignored_extensions()})"


def _dir_key(path) -> tuple[int, int] | None:
    """(device, inode) of a folder; None when it is not one (or not there)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


@dataclass
class RunOutputs:
    """A run's output folder that may lie inside its inputs: the files the run writes there are
    not inputs of the next run (its report's JPEG montages would be clustered, its CSVs counted
    as ignored). Folders are known by (device, inode), so a symlinked --out or one reached
    through a glob is recognised too. `left_out` says whether any of them was passed over."""

    folder: tuple[int, int] | None  # (device, inode) of the output folder; None when it does not exist yet
    skip_dirs: frozenset  # (device, inode) of the run's own image folders (the report's montages, ...): not entered
    quiet_dirs: frozenset  # of folders whose other files are the run's (report/, features/): not counted as ignored
    own_names: frozenset  # the run's own files directly in the folder (predictions.csv, ...)
    left_out: bool = False
    _dir_keys: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, folder: str | os.PathLike, skip: Sequence[str], quiet: Sequence[str], names: Sequence[str]) -> "RunOutputs":
        """skip: relative paths of the run's own image folders (not entered: only the run writes
        there); quiet: of its folders that a user's images could share (walked, images taken,
        other files not counted); names: its own files in `folder`."""
        def keys(subs):
            found = {_dir_key(os.path.join(folder, sub)) for sub in subs}
            found.discard(None)
            return frozenset(found)

        return cls(_dir_key(folder), keys(skip), keys(quiet), frozenset(names))

    def skips_dir(self, dir_key: tuple[int, int]) -> bool:
        return dir_key in self.skip_dirs

    def owns(self, path: str) -> bool:
        """Whether a file found by a glob is the run's own (by the identity of its folder)."""
        parent = os.path.dirname(path) or "."
        if parent not in self._dir_keys:  # one stat per folder, not per file
            self._dir_keys[parent] = _dir_key(parent)
        parent_key = self._dir_keys[parent]
        return parent_key in self.skip_dirs or (parent_key == self.folder and os.path.basename(path) in self.own_names)


def no_images_message(inputs: Sequence[str | bytes | os.PathLike], found: Discovery,
                      skipped_csv: str | None = None) -> str:
    """The one-line error for a discovery that found no image: what was there instead.

    'no image files found in in/dat (36 other files, not named like images: .dat, (none); pass
    files explicitly or via an @list.txt to have their content checked)'. skipped_csv: the file
    the unusable ones are listed in, if one is written ("2 unusable: see skipped.csv")."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    notes = []
    if found.skipped:
        notes.append(f"{len(found.skipped)} unusable" + (f": see {skipped_csv}" if skipped_csv else ""))
    if found.ignored:
        n = found.n_ignored
        notes.append(f"{n} other file{'s' if n != 1 else ''}, not named like images: "
                     f"{found.ignored_extensions()}; {INCLUDE_HINT}")
    if found.left_out:
        notes.append(found.left_out.note().replace("Left out", "left out", 1))
    where = ", ".join(os.fsdecode(arg) for arg in inputs)
    return f"no image files found in {where}" + (f" ({'; '.join(notes)})" if notes else "")


def _walk(folder: str | Path, skipped: list, ignored: Counter | None = None,
          avoid: frozenset = frozenset(), outputs: RunOutputs | None = None,
          left_out: LeftOut | None = None, progress: Progress | None = None) -> list[str]:
    """All image-extension files under `folder`, following symlinked folders once (no loops),
    sorted as Path objects sort (component by component). The other files are counted in
    `ignored` by extension (from the names os.walk gives: no stat). avoid: (device, inode) of
    folders not to enter (a glob's folder above this one: a link back up to it is a loop).
    outputs: a run's output folder, whose own subfolders are not entered and whose own files are
    neither taken nor counted. left_out: when given, hidden and system folders and export folders
    are not entered and hidden files not taken (engine.hidden_entries), and all are counted there;
    `folder` itself is walked whatever its name or marker. progress: called with the number of files taken in each folder
    (a walk of a large share can take minutes).

    Strings, not Paths: a Path per file before filtering and sorting cost 21.6 us a file (100,000
    files on the VM), which is 3.6 minutes for 10 million; discover() keeps them in a PathList."""

    found: list[str] = []
    seen_dirs: set[tuple[int, int]] = set(avoid)
    if ignored is None:
        ignored = Counter()
    join = os.path.join
    top_real = os.path.realpath(folder)
    other_reports: set[str] = set()  # image folders of other runs' reports met on the way

    def onerror(exc: OSError):
        skipped.append((Path(exc.filename or folder), f"unreadable folder: {exc.strerror}"))

    top = True
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=onerror):
        below_top, top = not top, False
        try:
            st = os.stat(root)
            key = (st.st_dev, st.st_ino)
        except OSError:
            dirs[:] = []
            continue
        if key in seen_dirs:  # a symlink loop or a folder linked twice
            dirs[:] = []
            continue
        seen_dirs.add(key)
        if outputs is not None:
            if outputs.skips_dir(key):
                dirs[:] = []
                outputs.left_out = True
                continue
            if key == outputs.folder:
                outputs.left_out = outputs.left_out or any(name in outputs.own_names for name in files)
                files = [name for name in files if name not in outputs.own_names]
            elif key in outputs.quiet_dirs:
                files = [name for name in files if has_image_extension(name)]
        if left_out is not None:
            if below_top and EXPORT_MARKER in files:  # an `imgcluster export` folder
                dirs[:] = []
                left_out.exports += 1
                continue
            if root in other_reports:
                dirs[:] = []
                continue
            if SUMMARY in files and PREDICTIONS in files and REPORT in dirs \
                    and (outputs is None or key != outputs.folder):  # another run's output folder
                other_reports.update(join(root, sub) for sub in RUN_IMAGE_DIRS)
                left_out.run_reports += 1
            dirs[:] = left_out.filter_folders(dirs)
        # A symlink to a folder above (or at) where the walk started would walk that folder's
        # other contents too (`seen_dirs` only stops the second visit): not followed. A loop, not
        # an input, so not listed (as recursive globs pass over theirs).
        for name in [d for d in dirs if os.path.islink(join(root, d))]:
            target = os.path.realpath(join(root, name))
            if top_real == target or top_real.startswith(target.rstrip(os.sep) + os.sep):
                dirs.remove(name)
        dirs.sort()
        before = len(found)
        for name in files:
            if has_image_extension(name):
                if left_out is not None and is_hidden_file(name):
                    left_out.files += 1
                else:
                    found.append(join(root, name))
            elif name != WRITER_LOCK:  # a run folder's lock file is imgcluster's own, not the user's
                ignored[name_suffix(name)] += 1
        if progress is not None and len(found) > before:
            progress(len(found) - before)
    # os.walk's roots are normalised (folder is a Path, or a str as a Path gives it:
    # _expand_glob's pathlist.path_str), so _path_order sorts them as Paths sort
    found.sort(key=_path_order)
    return found


def _path_order(text: str) -> str:
    """Sort key that orders normalised path strings as Paths sort (component by component): each
    separator becomes "\0", which no name holds and which sorts before every character a name can
    hold. One str a file (~124 bytes) instead of a list of components (text.split(os.sep): ~420
    bytes, 4 GB at 10 million files), and ~3x faster to sort."""
    return text.replace(os.sep, "\0")


def _read_list(list_file: Path, skipped: list) -> list[Path]:
    try:
        text = list_file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise InputError(f"cannot read path list {list_file}: {exc.strerror}") from None
    if "\0" in text:  # no path holds a NUL: this is a binary file (an image named after '@'?)
        raise InputError(f"@{list_file} reads {list_file} as a path list, but it is a binary file, not a list "
                         f"(for a file named '@{list_file.name}', write ./@{list_file.name})")
    base = list_file.parent
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        out.append(p if p.is_absolute() else base / p)
    return out


def _expand(arg: str | bytes | os.PathLike, skipped: list, ignored: Counter,
            outputs: RunOutputs | None = None, left_out: LeftOut | None = None,
            progress: Progress | None = None) -> list[str]:
    """The files one input names, as path strings, in order (see discover)."""
    text = os.fsdecode(arg)  # bytes names (not UTF-8) become str with surrogate escapes, as os.listdir gives
    # "@list.txt" is a path list; a file or folder whose own name starts with "@" (no list of
    # the rest of its name beside it) is taken as itself
    if isinstance(text, str) and text.startswith("@") and not (Path(text).exists() and not Path(text[1:]).is_file()):
        list_file = Path(text[1:])
        if not list_file.is_file():
            if glob.has_magic(text) and next(glob.iglob(text, recursive=is_recursive(text)), None):
                # a quoted '@*.png' the shell left alone: names that start with '@', not a list
                return _expand_glob(text, skipped, ignored, outputs, left_out, progress)
            raise InputError(f"path list not found: {list_file}")
        items = []
        for entry in _read_list(list_file, skipped):
            items.extend(_expand_path(entry, skipped, ignored, explicit=True, outputs=outputs, left_out=left_out,
                                      progress=progress))
        return items
    path = Path(text)
    if text.endswith((os.sep, os.altsep or os.sep)) and path.is_file():  # the shell's "Not a directory"
        raise InputError(f"{text} is a file, not a folder (the trailing '{text[-1]}' names a folder)")
    if glob.has_magic(text) and text.endswith((os.sep, os.altsep or os.sep)) and not path.exists():
        # 'photos/*/' names folders only, as in a shell: Path() would drop the slash, and the glob
        # would take the files beside the folders too
        return _expand_glob(text, skipped, ignored, outputs, left_out, progress)
    return _expand_path(path, skipped, ignored, explicit=False, outputs=outputs, left_out=left_out,
                        progress=progress)


def _expand_path(path: Path, skipped: list, ignored: Counter, explicit: bool,
                 outputs: RunOutputs | None = None, left_out: LeftOut | None = None,
                 progress: Progress | None = None) -> list[str]:
    if path.is_dir():
        return _walk(path, skipped, ignored, outputs=outputs, left_out=left_out, progress=progress)
    if path.exists():
        if progress is not None:  # an @list of millions of files takes a while too
            progress(1)
        return [os.fspath(path)]  # an explicit file is taken whatever its extension; content decides
    if path.is_symlink():
        return [os.fspath(path)]  # broken or looping: discover() says which
    text = os.fspath(path)
    if glob.has_magic(text):
        return _expand_glob(text, skipped, ignored, outputs, left_out, progress)
    if explicit:
        skipped.append((path, "listed file not found"))
        return []
    raise InputError(f"path not found: {text}")


def _expand_glob(text: str, skipped: list, ignored: Counter, outputs: RunOutputs | None = None,
                 left_out: LeftOut | None = None, progress: Progress | None = None) -> list[str]:
    """The files a glob names, sorted as Paths; a matching folder is walked in its place. A run's
    own files (outputs.owns) are left out.

    Strings, not Paths (a glob can name millions of files): each match as str(Path(match))
    (pathlist.path_str: './a//b' -> 'a/b', no Path made for a match already in that form), sorted
    on it with separators as NUL, which is Path order as in _walk: a glob's matches share one root
    ('/' or none), and NUL sorts before every character a name can hold."""
    entries: list[tuple[str, frozenset | None]] = []  # (path, None for a file or the ids to avoid in a folder)
    in_system_folder = _system_folder_filter(text, left_out)
    recursive = is_recursive(text)
    if recursive:
        files, folders, matched = recursive_glob(text, skipped, progress)  # it counts the files it finds
        folders = [(d, avoid) for d, avoid in folders if not in_system_folder(d, True)]
        for f in files:
            if in_system_folder(f, False):
                continue
            if outputs is not None and outputs.owns(f):
                outputs.left_out = True
            elif has_image_extension(os.path.basename(f)):
                entries.append((path_str(f), None))
            else:
                ignored[name_suffix(os.path.basename(f))] += 1
        entries += [(path_str(d), avoid) for d, avoid in folders]
    else:  # no recursion, so no loop: glob.glob as it is
        matches = glob.glob(text)
        matched = bool(matches)
        for m in matches:
            is_folder = os.path.isdir(m)
            if in_system_folder(m, is_folder):
                continue
            if is_folder:
                entries.append((path_str(m), frozenset()))
            elif outputs is not None and outputs.owns(m):
                outputs.left_out = True
            else:
                m = path_str(m)
                name = os.path.basename(m)  # Path(m).name (m, not a folder, is not '.' or '/')
                if has_image_extension(name):
                    entries.append((m, None))
                else:
                    ignored[name_suffix(name)] += 1
    if not matched:
        raise InputError(f"no files match {text}")
    entries.sort(key=lambda entry: _path_order(entry[0]))
    out: list[str] = []
    for p, avoid in entries:
        if avoid is None:
            out.append(p)
            if progress is not None and not recursive:  # recursive_glob has counted its files
                progress(1)
        else:
            out.extend(_walk(p, skipped, ignored, avoid, outputs, left_out, progress))
    return out


def _system_folder_filter(pattern: str, left_out: LeftOut | None):
    """in_system_folder(match, is_folder) for the matches of a glob: True when the match is, or is
    inside, a NAS/OS system folder (hidden_entries.SYSTEM_FOLDERS) that the pattern reached by a
    wildcard ('photos/**/*.jpg' reaches Synology's 'photos/@eaDir/a.jpg/', named after a photo);
    each such folder is counted once in `left_out`. A folder the pattern names literally
    ('photos/@eaDir/*', '*/#snapshot/*.jpg') is the user's choice and taken. Hidden names need no
    check here: glob wildcards never match them. Always False when left_out is None
    (include_hidden)."""
    if left_out is None:
        return lambda match, is_folder: False
    parts = SEPARATORS.split(pattern)
    literal = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    named = {part for part in parts if not glob.has_magic(part)}  # '*/#snapshot/*.jpg' asks for them
    counted: set[str] = set()

    def in_system_folder(match: str, is_folder: bool) -> bool:
        names = SEPARATORS.split(match)
        folders = names if is_folder else names[:-1]
        for i in range(literal, len(folders)):
            if folders[i] in SYSTEM_FOLDERS and folders[i] not in named:
                where = os.sep.join(names[:i + 1])
                if where not in counted:
                    counted.add(where)
                    left_out.folders[folders[i]] += 1
                return True
        return False

    return in_system_folder


def check_named_paths_exist(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> None:
    """InputError('path not found: ...') for an input that names one path (not a glob, not an
    @list) that does not exist: what discover would say, said before the slow start (torch, the
    GPU probe), not after it. Only a missing path (or a file used as a folder in it): any other
    problem (no permission, a name too long) is left to discover, which says what it is."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    for arg in inputs:
        text = os.fsdecode(arg)
        if text.startswith("@") or glob.has_magic(text):
            continue
        path = Path(text)  # as discover reads it: 'a/' and 'a/.' name 'a', '' names '.'
        try:
            os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise InputError(f"path not found: {os.fspath(path)}") from None
        except OSError:
            continue


def discover(inputs: Sequence[str | os.PathLike] | str | os.PathLike,
             outputs: RunOutputs | None = None, include_hidden: bool = False,
             progress: Progress | None = None) -> Discovery:
    """Expand `inputs` into a deterministic list of image files. outputs: a run's output folder
    whose own files are not inputs (see RunOutputs); explicitly named files are taken anyway.
    include_hidden: also walk hidden and system folders and take hidden files (by default they are
    left out and counted in `left_out`: engine.hidden_entries says why). progress: called with
    the number of image files found as folders are walked (before duplicates and broken links
    are sorted out).

    Raises InputError for a missing path or empty glob (a user mistake). Files that exist but
    cannot be used at this stage (broken symlink, duplicate) go to `skipped` with a reason; files
    that folders and globs pass over by name are counted in `ignored`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no input paths given")
    result = Discovery(left_out=None if include_hidden else LeftOut())
    # Strings until the end (a Path each would cost ~320 bytes a file), and the position of each
    # kept file's string, not a Path, for the "duplicate of" message.
    kept: list[str | None] = []  # None: a link whose file turned up later (see below)
    relinked = False  # any such None
    seen: dict[tuple[int, int], int] = {}
    duplicates: list[tuple[int, tuple[int, int]]] = []  # (row in skipped, file key): reasons named at the end
    for arg in inputs:
        for text in _expand(arg, result.skipped, result.ignored, outputs, result.left_out, progress):
            try:
                st = os.stat(text)
            except OSError as exc:
                result.skipped.append((Path(text), _stat_reason(text, exc)))
                continue
            if not stat.S_ISREG(st.st_mode):
                result.skipped.append((Path(text), "not a regular file"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                first = kept[seen[key]]
                if os.path.islink(first) and not os.path.islink(text):
                    # the file itself over a link to it (one lstat each, for duplicates only): the
                    # run's CSVs name the real file, in its own place in the order, and the link
                    # is listed as skipped
                    kept[seen[key]] = None
                    relinked = True
                    duplicates.append((len(result.skipped), key))
                    result.skipped.append((Path(first), ""))
                    seen[key] = len(kept)
                    kept.append(text)
                else:
                    duplicates.append((len(result.skipped), key))
                    result.skipped.append((Path(text), ""))
                continue
            seen[key] = len(kept)
            kept.append(text)
    for row, key in duplicates:  # named after the walk: the file kept may have changed on the way
        path, first = result.skipped[row][0], Path(kept[seen[key]])
        result.skipped[row] = (path, "given twice (the same path)" if path == first else f"duplicate of {first}")
    del seen  # ~170 bytes a file (tracemalloc): freed before the PathList is built
    result.paths = PathList.from_strings([t for t in kept if t is not None] if relinked else kept)
    return result


def _stat_reason(path: str | Path, exc: OSError) -> str:
    """Why os.stat failed, in words for skipped.csv."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "broken symlink" if os.path.islink(path) else "not found"
    if exc.errno == errno.EACCES:
        return "unreadable: permission denied"
    return f"unreadable: {exc.strerror or type(exc).__name__}"
