"""Recursive globs (`**`) expanded without following symlink loops.

glob.glob(recursive=True) follows a symlink to an ancestor folder until the path is too long
(40 levels deep, and 2**40 paths with two such links in one folder: it never finishes). Here the
walk keeps, for each folder, the (device, inode) of the folders above it and does not enter one
that is among them, as the folder walk in sources.py does. Matching otherwise follows glob.glob:
`**` (a whole component) is zero or more folders, never a hidden one; `*`, `?` and `[...]` never
match a hidden name unless the pattern's component starts with ".".
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re
from pathlib import Path
from typing import Callable

from .loaders.decode import has_image_extension

# a path's separators (os.sep and os.altsep): sources.py splits glob matches with the same one
SEPARATORS = re.compile("[" + re.escape(os.sep + (os.altsep or "")) + "]")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class _Pattern:
    """The components of a glob after its base folder, matched one folder level at a time as
    glob.glob matches them: `**` (a whole component) is zero or more folders, never a hidden
    one (name starting with "."); `*`, `?` and `[...]` never match a hidden name unless the
    component itself starts with "."."""

    def __init__(self, parts: list[str]):
        self.parts = parts
        self.end = len(parts)
        self._match = [re.compile(fnmatch.translate(os.path.normcase(p))).match for p in parts]

    def _matches(self, i: int, name: str, hidden: bool) -> bool:
        return (not hidden or _is_hidden(self.parts[i])) and self._match[i](os.path.normcase(name)) is not None

    def last(self, states: frozenset, name: str) -> bool:
        """Whether a file `name` in a folder with these states matches (the end is reached)."""
        i = self.end - 1  # never "**" here: a folder whose states allow that matched whole
        return i in states and self._matches(i, name, _is_hidden(name))

    def closure(self, states) -> frozenset:
        out = set(states)
        for i in sorted(out):
            while i < self.end and self.parts[i] == "**":
                i += 1
                out.add(i)
        return frozenset(out)

    def advance(self, states: frozenset, name: str) -> frozenset:
        """The states after one more path component `name` (empty: nothing below can match)."""
        hidden = _is_hidden(name)
        nxt = set()
        for i in states:
            if i == self.end:
                continue
            part = self.parts[i]
            if part == "**":
                if not hidden:
                    nxt.add(i)
            elif self._matches(i, name, hidden):
                nxt.add(i + 1)
        return self.closure(nxt) if nxt else frozenset()


def _ancestor_ids(path: str) -> set[tuple[int, int]]:
    """(device, inode) of the real folder `path` and of each folder above it."""
    ids = set()
    real = os.path.realpath(path or os.curdir)
    while True:
        try:
            st = os.stat(real)
            ids.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(real)
        if parent == real:
            return ids
        real = parent


def recursive_glob(text: str, skipped: list, progress: Callable[[int], None] | None = None
                   ) -> tuple[list[str], list[tuple[str, frozenset]], bool]:
    """Expand a glob with a `**` component: (matching files, matching folders as (path, the
    (device, inode) ids of the folders above it: not to be entered again), whether anything
    matched). Like glob.glob(text, recursive=True), except that a folder that resolves to itself
    or to one of its ancestors (a symlink loop) is not entered: each real file is found under
    its path without the detour. Unreadable folders go to `skipped` as [(Path, reason)].
    progress: called per folder with how many of its matching files are named like images (the
    walk of a large share takes minutes). A trailing separator ("in/**/") matches folders only,
    as in glob.glob: no files, and the base folder itself only when the pattern names one ("in/**/"
    is all of in, "**/" every folder below the current one)."""
    folders_only = SEPARATORS.fullmatch(text[-1:]) is not None
    parts = SEPARATORS.split(text)
    first = parts.index("**")
    head, rest = parts[:first], [p for p in parts[first:] if p]
    base_text = os.sep.join(head)
    if head == [""]:  # the root folder, "/**/..."
        base_text = os.sep
    if base_text and glob.has_magic(base_text):
        bases = sorted(b for b in glob.glob(base_text) if os.path.isdir(b))
    else:
        bases = [base_text] if os.path.isdir(base_text or os.curdir) else []
    pattern = _Pattern(rest)
    files: list[str] = []
    folders: list[str] = []
    matched = False
    join = os.path.join

    for base in bases:
        top = base or os.curdir
        start = pattern.closure({0})
        ancestors = frozenset(_ancestor_ids(top))  # the base folder's own id and those above it
        if pattern.end in start and (base or not folders_only):  # "in/**", "in/**/": the whole folder
            own = os.stat(top)
            folders.append((top, ancestors - {(own.st_dev, own.st_ino)}))
            matched = True
            continue
        # os.walk's root -> (the path as the glob writes it, pattern states, ids of it and above)
        pending = {top: (base, start, ancestors)}

        def onerror(exc: OSError, base=base):
            skipped.append((Path(exc.filename or base), f"unreadable folder: {exc.strerror}"))

        for root, dirs, names in os.walk(top, followlinks=True, onerror=onerror):
            shown, states, chain = pending.pop(root)
            found = 0
            for name in names:
                if not folders_only and pattern.last(states, name):
                    matched = True
                    files.append(join(shown, name) if shown else name)
                    found += has_image_extension(name)
            if progress is not None and found:
                progress(found)
            keep = []
            for name in sorted(dirs):
                below = pattern.advance(states, name)
                if not below:  # nothing under it can match: not listed
                    continue
                path = join(root, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in chain:  # a symlink to itself or an ancestor: a loop, not entered
                    continue
                child = join(shown, name) if shown else name
                if pattern.end in below:  # the folder matches: all of it is taken, as a folder
                    folders.append((child, chain))
                    matched = True
                    continue
                pending[path] = (child, below, chain | {key})
                keep.append(name)
            dirs[:] = keep
    return files, folders, matched


def is_recursive(text: str) -> bool:
    """Whether a glob has a whole `**` component (what recursive_glob expands)."""
    return "**" in SEPARATORS.split(text)
