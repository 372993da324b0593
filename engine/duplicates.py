"""Byte-identical copies among a run's images: the same photo saved in two folders, or exported
twice under two names. Discovery already drops the same file reached twice (a symlink, a hard
link, a path given twice: skipped.csv); a copy is another file with the same bytes. Both are clustered (their features are
the same, so is their cluster); the run lists the copies in duplicates.csv and says how many.

Cost: one stat per image; a file whose size another shares has its first 64 KB hashed, and only
files that still match are hashed whole (BLAKE2b); hard links to one file (reaching here from
`imgcluster cluster`'s cached list) are copies unread. On
the 2-core VM 20,000 files of 20-120 KB (random bytes, many sizes shared) took 0.43-0.49 s
(0.54 s before the 64 KB pre-check), from the page cache. Runs of more than CHECK_LIMIT images are not checked: there nearly
every size is shared, and reading a million photos again would cost minutes.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from typing import Sequence

from .pathlist import PathList

_CHUNK = 1 << 20
_HEAD = 64 << 10
CHECK_LIMIT = 200_000  # images; above it identical_copies is not run (engine.pipeline)


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
        # inode 0: a file system (some FUSE/SMB mounts) that does not number files: compared by bytes
        by_size[st.st_size].append((pos, (st.st_dev, st.st_ino) if st.st_ino else (st.st_dev, -1 - pos)))
    copies = []
    for group in by_size.values():
        if len(group) < 2:
            continue
        first_of_inode: dict[tuple[int, int], int] = {}
        linked = []  # (position, first position of its inode): the same file, not read
        for pos, inode in group:  # position order
            if inode in first_of_inode:
                linked.append((pos, first_of_inode[inode]))
            else:
                first_of_inode[inode] = pos
        heads = {pos: _digest(_full_path(paths, pos, base), _HEAD) for pos in first_of_inode.values()}
        original = {}  # position -> earliest position with the same bytes, for the copies found
        for same_head in _groups(heads):  # only files that start alike are read whole
            wholes = {pos: _digest(_full_path(paths, pos, base)) for pos in same_head}
            for same_bytes in _groups(wholes):
                original.update((pos, same_bytes[0]) for pos in same_bytes[1:])
        copies += original.items()
        copies += [(pos, original.get(first, first)) for pos, first in linked if heads[first] is not None]
    return sorted(copies)


def _groups(keys: dict[int, bytes | None]) -> list[list[int]]:
    """The positions of `keys` that share a key (None, an unreadable file, shares none), in groups of
    two or more, each in position order."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for pos, key in keys.items():
        if key is not None:
            groups[key].append(pos)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _full_path(paths, pos: int, base) -> str:
    path = os.fspath(paths[pos])
    return os.path.join(base, path) if base is not None else path


def _digest(path, limit: int | None = None) -> bytes | None:
    """BLAKE2b of the file's bytes (its first `limit` bytes when given; hashlib releases the GIL
    while it hashes), None if unreadable."""
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as f:
            if limit is not None:
                h.update(f.read(limit))
            else:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    h.update(chunk)
    except OSError:
        return None
    return h.digest()
