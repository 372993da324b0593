"""PathList: a read-only sequence of file paths stored as one bytes blob plus offsets.

A list of 10 million pathlib.Path objects holds 3.2-4.2 GB of host memory (on Python 3.11 a
55-character path as a Path costs ~320 bytes, ~424 once it has made its str, as os.stat does);
a PathList holds each path's bytes plus two int64 offsets (71 bytes for that path), and makes a
Path only when one is asked for (benchmarks/RESULTS.md, host-side costs). `discover()` returns one, and a run's
good images (RunResult.paths, ImageClusterer.paths_) are one.

Paths are stored as os.fsencode gives them, so a name that is not valid UTF-8 (a str with
surrogate escapes, as os.listdir returns it) comes back exactly as it went in.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

# Items encoded per step while building, and offsets turned into Python ints per step while
# iterating: bounded scratch memory instead of a second copy of every path as Python objects.
_CHUNK = 65_536

_POSIX = os.sep == "/" and os.altsep is None


def path_str(text: str) -> str:
    """str(Path(text)), without making a Path when `text` is already in the form Path gives it
    (the common case: a name from os.walk or glob): no '//', no '.' component (but '.' itself),
    no trailing '/', not empty. On a POSIX system only; elsewhere always through Path."""
    if (_POSIX and text and "//" not in text and "/./" not in text and not text.startswith("./")
            and not text.endswith(("/", "/."))):
        return text
    return os.fspath(Path(text))


class PathList(Sequence):
    """n paths, in order; each item is a new pathlib.Path.

    blob: bytes, every path's os.fsencode bytes one after another (may hold bytes of paths that
    are not in this list: a slice or `take` shares its parent's blob). starts, ends: (n,) int64,
    path i is os.fsdecode(blob[starts[i]:ends[i]]). Immutable; safe to read from several threads.

    As with Path, items are normalised on the way out ('./a//b.jpg' comes back as Path('a/b.jpg')).
    """

    __slots__ = ("_blob", "_starts", "_ends")

    def __init__(self, blob: bytes = b"", starts: np.ndarray | None = None, ends: np.ndarray | None = None):
        self._blob = bytes(blob)
        self._starts = np.zeros(0, np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
        self._ends = np.zeros(0, np.int64) if ends is None else np.asarray(ends, dtype=np.int64)
        if self._starts.shape != self._ends.shape or self._starts.ndim != 1:
            raise ValueError(f"starts and ends must be (n,) arrays of one length, got {self._starts.shape} "
                             f"and {self._ends.shape}")

    @classmethod
    def from_strings(cls, items: Iterable[str | bytes | os.PathLike]) -> "PathList":
        """A PathList of `items` (str, bytes or Path: anything os.fsencode takes), in order.

        Makes no Path objects; `items` may be a generator (it is read once, in chunks)."""
        parts: list[bytes] = []
        lengths: list[np.ndarray] = []
        it = iter(items)
        while chunk := [os.fsencode(item) for item in islice(it, _CHUNK)]:
            parts.append(b"".join(chunk))
            lengths.append(np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk)))
        sizes = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        ends = np.cumsum(sizes)
        return cls(b"".join(parts), ends - sizes, ends)

    # -- Sequence ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index):
        """int (NumPy integers too) -> Path; slice -> PathList sharing this blob."""
        if isinstance(index, slice):
            # NumPy slices are views: a slice costs no copy of offsets or bytes
            return PathList._shared(self._blob, self._starts[index], self._ends[index])
        try:
            i = index.__index__()
        except AttributeError:
            raise TypeError(f"PathList indices must be integers or slices, not {type(index).__name__} "
                            "(use .take(array) for an array of positions)") from None
        n = len(self._starts)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"PathList index {index} out of range for {n} paths")
        return Path(os.fsdecode(self._blob[self._starts[i]:self._ends[i]]))

    def __iter__(self) -> Iterator[Path]:
        blob = self._blob
        for a in range(0, len(self._starts), _CHUNK):
            for s, e in zip(self._starts[a:a + _CHUNK].tolist(), self._ends[a:a + _CHUNK].tolist()):
                yield Path(os.fsdecode(blob[s:e]))

    def strings(self) -> Iterator[str]:
        """Each path as str() of its item: the text of `Path(...)` (normalised as Path normalises
        it, non-UTF-8 bytes as surrogate escapes) without making the Path: 0.8 us a path instead
        of 4.1 for iterating (1,000,000 paths of 55 characters), for callers that want text."""
        blob = self._blob
        for a in range(0, len(self._starts), _CHUNK):
            for s, e in zip(self._starts[a:a + _CHUNK].tolist(), self._ends[a:a + _CHUNK].tolist()):
                yield path_str(os.fsdecode(blob[s:e]))

    def may_hold(self, character: str) -> bool:
        """False when no path here holds `character` (one search of the shared bytes, C speed);
        True may come from a path outside this view (take() shares its parent's bytes)."""
        return character.encode("utf-8", "surrogateescape") in self._blob

    def take(self, indices) -> "PathList":
        """indices: (m,) int positions (negative count from the end) or (n,) bool mask -> a
        PathList of those paths, in that order, sharing this blob (16 bytes an item, no bytes
        copied). IndexError for a position out of range."""
        indices = np.asarray(indices)
        if indices.dtype.kind not in "biu" and indices.size:
            raise TypeError(f"PathList.take needs integer positions or a bool mask, got dtype {indices.dtype}")
        if indices.dtype.kind != "b":
            indices = indices.astype(np.int64, copy=False)  # an empty list arrives as float64
        return PathList._shared(self._blob, self._starts[indices], self._ends[indices])

    @classmethod
    def _shared(cls, blob: bytes, starts: np.ndarray, ends: np.ndarray) -> "PathList":
        """A PathList over an existing blob and int64 offsets, without checks or copies."""
        out = cls.__new__(cls)
        out._blob, out._starts, out._ends = blob, starts, ends
        return out

    # -- comparison, display, pickling -----------------------------------------------------------
    def __eq__(self, other) -> bool:
        """Equal to a PathList, list or tuple with equal items, compared as a list of Paths would
        be (so a str item is not equal to its Path, as in list[Path] == list[str])."""
        if not isinstance(other, (PathList, list, tuple)):
            return NotImplemented
        if len(self) != len(other):
            return False
        return all(a == b for a, b in zip(self, other))

    __hash__ = None  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        n = len(self)
        shown = ", ".join(repr(os.fspath(p)) for p in islice(self, 3))
        return f"PathList({n} path{'s' if n != 1 else ''}{': ' + shown if n else ''}{', ...' if n > 3 else ''})"

    def __reduce__(self):
        """Pickles only the bytes this list refers to: a small slice of a large list does not
        carry its parent's whole blob."""
        blob, starts, ends = self._blob, self._starts, self._ends
        sizes = ends - starts
        if len(blob) > int(sizes.sum()):  # a subset: copy out its own bytes (chunked, as __iter__)
            blob = b"".join(blob[s:e] for a in range(0, len(starts), _CHUNK)
                            for s, e in zip(starts[a:a + _CHUNK].tolist(), ends[a:a + _CHUNK].tolist()))
            ends = np.cumsum(sizes)
            starts = ends - sizes
        return PathList, (blob, starts, ends)
