"""Byte-identical copies among a run's images: the same photo saved in two folders, or exported
twice under two names. Discovery already drops the same file reached twice (a symlink, a path
given twice); a copy is another file with the same bytes. Both are clustered (their features are
the same, so is their cluster); the run lists the copies in duplicates.csv and says how many.

Cheap enough to run on every run: one stat per image, and only files whose size another file
shares are read (and hashed: BLAKE2b); hard links to one file are copies without reading.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from typing import Sequence

from .pathlist import PathList

_CHUNK = 1 << 20


def identical_copies(paths: Sequence[str | os.PathLike], base: str | os.PathLike | None = None
                     ) -> list[tuple[int, int]]:
    """[(position, position of its first copy)] for each of `paths` whose bytes equal an earlier
    one's, in position order; the first of each group is not listed. base: the folder relative
    paths are relative to (None: the current one). A file that cannot be read is not a copy."""
    # (position, inode) per size; a path's text is made again only for sizes shared (10M paths
    # held as text would take about a GB)
    by_size: dict[int, list[tuple[int, tuple[int, int]]]] = defaultdict(list)
    texts = paths.strings() if isinstance(paths, PathList) else map(os.fspath, paths)  # no Path per image
    for pos, path in enumerate(texts):
        full = os.path.join(base, path) if base is not None else path
        try:
            st = os.stat(full)
        except OSError:
            continue
        by_size[st.st_size].append((pos, (st.st_dev, st.st_ino)))
    copies = []
    for group in by_size.values():
        if len(group) < 2:
            continue
        seen: dict[tuple, int] = {}  # ("inode", (dev, ino)) or ("bytes", digest) -> first position
        for pos, inode in group:  # position order: the first of a group is the original
            original = seen.get(("inode", inode))
            if original is None:
                path = os.fspath(paths[pos])
                digest = _digest(os.path.join(base, path) if base is not None else path)
                if digest is None:
                    continue
                original = seen.setdefault(("bytes", digest), pos)
                seen[("inode", inode)] = original
            if original != pos:
                copies.append((pos, original))
    return sorted(copies)


def _digest(path) -> bytes | None:
    """BLAKE2b of the file's bytes (hashlib releases the GIL while it hashes), None if unreadable."""
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.digest()
