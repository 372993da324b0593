"""Feature cache on disk, for resume: OUT/features/.

  manifest.json                 {"format": 1, "fingerprint": ..., "preprocess": ...,
                                 "made_with": {"precision": ..., "decoder": ..., "max_pixels": ...}}
  shard-000000.npy              (m, d) float32 features of m images
  shard-000000.index.json       {"rows": [[path, size, mtime_ns], ...] for those m rows,
                                 "failures": [[path, size, mtime_ns, reason], ...]} (bad files are not retried)

A shard holds IMGCLUSTER_SHARD_SIZE entries (default 4096; the last one fewer), or what was queued
in IMGCLUSTER_SHARD_SECONDS (default 60 s) when that is fewer: on a CPU (ResNet-152 on the 2-core
VM: 6.5 img/s fp32, 15.1 bf16) a kill would otherwise lose up to 4,096 images, 4.5 to 10 minutes of
work; on a GPU a shard fills in about a second, so the time rule never applies there. A shard counts only once
its index file exists; the .npy is renamed into place first, and both are written atomically, so
a kill at any moment leaves complete shards plus at most a stray .npy or temporary file (ignored,
and removed or overwritten later). Ctrl-C also writes the rows already queued (engine.features).
A file is identified by (path, size, mtime): a changed file misses the cache and is recomputed, a
removed one is simply never asked for. A file whose folder was renamed or moved (same name, size
and mtime to the nanosecond: `mv` keeps them) is found too, through a second index built on the
first miss (MOVED_INDEX_LIMIT); a renamed folder of 367 photos was extracted again whole. Only when
the cached file is gone from its old path: a same-named file elsewhere (unzipped sets share mtimes,
BMPs of one size share sizes: train/cat/0000.bmp and train/dog/0000.bmp) is another image.
A different fingerprint (model, weights, preprocessing) empties the cache and says so, and so does another `made_with` (the precision and the decoder:
features from bf16 and fp32, or from nvJPEG and PIL pixels, differ by about 1 %, and one run's
features must all come from one configuration; max_pixels: which images are skipped as too large,
cached successes and failures alike; a manifest from before a setting was recorded is kept and
given this run's, with a notice); so does a corrupt manifest. A damaged shard
(truncated features, bad index, wrong width) is reported, deleted, and its images recomputed.
Only files the store writes are ever deleted. `open(..., create=False)` is the read-only mode of
`imgcluster cluster`: there a missing, corrupt or foreign cache is an InputError instead.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import ConfigError, InputError
from .loaders.decode import depends_on_environment
from .loaders.preprocess import describe as describe_preprocess
from .pathlist import PathList
from .report.outputs import atomic_write_text, path_to_text, write_npy

FORMAT = 1
DEFAULT_SHARD_SIZE = 4096
DEFAULT_SHARD_SECONDS = 60.0
# Cached rows up to which the moved-file index is built (a second dict of every row: ~100 bytes each)
MOVED_INDEX_LIMIT = 5_000_000
MANIFEST = "manifest.json"


def _entry_key(entry) -> tuple[str, int, int]:
    """An index entry [path, size, mtime_ns] -> the hashable key; ValueError/TypeError if malformed."""
    path, size, mtime = entry
    if not isinstance(path, str):
        raise TypeError("path is not a string")
    return path, int(size), int(mtime)


def _index_key(key: tuple[str, int, int]) -> str:
    """The in-memory index's key for (path text, size, mtime_ns): one string, not a tuple of a
    string and two ints (at 10 million entries that tuple and its ints are ~1.2 GB)."""
    path, size, mtime = key
    return f"{size}:{mtime}:{path}"


def _split_index_key(text: str) -> tuple[str, int, int]:
    """_index_key's string -> (path text, size, mtime_ns)."""
    size, mtime, path = text.split(":", 2)
    return path, int(size), int(mtime)


def _moved_key(key: tuple[str, int, int]) -> str:
    """(path text, size, mtime_ns) -> the key of a file wherever its folder went: its name, size
    and mtime_ns (a rename or `mv` keeps all three)."""
    path, size, mtime = key
    return f"{size}:{mtime}:{os.path.basename(path)}"


def _location(shard_id: int, row: int) -> int:
    """(shard, row) packed in one int for the index (a tuple of two is ~3x the memory)."""
    return shard_id << 32 | row


def remove_store_files(folder: Path) -> None:
    """Delete a cache's files from `folder`: only the names a FeatureStore writes (never rmtree a
    folder the user pointed us at). The manifest goes first: a kill midway leaves no manifest, so
    the leftovers are never trusted."""
    ours = [folder / MANIFEST, *folder.glob("shard-*.npy"), *folder.glob("shard-*.index.json"), *folder.glob(".*.tmp")]
    for path in ours:
        path.unlink(missing_ok=True)


def _describe(settings: dict[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items())


def file_key(path, base: str | os.PathLike | None = None) -> tuple[str, int, int] | None:
    """(path text, size, mtime_ns), or None when the file cannot be stat-ed.

    base: the folder a relative `path` is relative to (default: the current one). The key keeps
    the path text as given, so a run made from another folder still finds its cache rows.
    """
    try:
        st = os.stat(os.path.join(base, path) if base is not None else path)
    except OSError:
        return None
    return path_to_text(path), int(st.st_size), int(st.st_mtime_ns)


class FeatureStore:
    """Shards of features keyed by file identity. Use FeatureStore.open(folder, fingerprint)."""

    def __init__(self, folder: Path, fingerprint: str, shard_size: int = DEFAULT_SHARD_SIZE,
                 notify: Callable[[str], None] | None = None, dim: int | None = None,
                 made_with: dict[str, str] | None = None, shard_seconds: float = DEFAULT_SHARD_SECONDS):
        self.folder = folder
        self.fingerprint = fingerprint
        self.made_with = made_with
        self.dim = dim
        self.shard_size = shard_size
        self.shard_seconds = shard_seconds  # a shard is written once its first entry waited this long
        self._pending_since: float | None = None
        self.notify = notify or (lambda message: None)
        self.discarded = False  # an existing cache was emptied (another model or configuration, damage)
        self._rows: dict[str, int] = {}  # _index_key -> _location(shard id, row)
        self._moved: dict[str, tuple[int, str]] | None = None  # _moved_key -> (location or -1: ambiguous, old path)
        self._failed: dict[str, str] = {}  # _index_key -> reason
        self._shards: dict[int, np.ndarray] = {}
        self._pending_keys: list[tuple] = []
        # (shard_size, d) float32 rows of the shard being filled, on the features' device: on a GPU
        # the rows stay there until the shard is written (one device-to-host copy per shard, not a
        # sync per batch that would stop decoding from overlapping the model).
        self._buffer: torch.Tensor | None = None
        self._pending_failures: list[list] = []
        self.next_shard = 0
        self.shards_written = 0

    @classmethod
    def open(cls, folder, fingerprint: str, shard_size: int | None = None,
             notify: Callable[[str], None] | None = None, dim: int | None = None,
             create: bool = True, made_with: dict[str, str] | None = None,
             shard_seconds: float | None = None) -> "FeatureStore":
        """Open (or create) the cache in `folder`; invalid or foreign caches are emptied with a notice.

        dim: expected feature width (shards of another width count as damaged). made_with: what
        else the features depend on ({"precision": "bf16", "decoder": "nvjpeg"}); a cache made
        otherwise is emptied (None: not checked, as when re-clustering). create=False opens
        read-only (re-clustering): a missing, corrupt or foreign cache raises InputError instead of
        being emptied.
        """
        shard_size = shard_size or int(os.environ.get("IMGCLUSTER_SHARD_SIZE", DEFAULT_SHARD_SIZE))
        if shard_size < 1:
            raise ConfigError(f"IMGCLUSTER_SHARD_SIZE={shard_size} must be >= 1")
        if shard_seconds is None:
            try:
                shard_seconds = float(os.environ.get("IMGCLUSTER_SHARD_SECONDS") or DEFAULT_SHARD_SECONDS)
            except ValueError:
                raise ConfigError("IMGCLUSTER_SHARD_SECONDS must be a number of seconds") from None
        if not shard_seconds >= 0:
            raise ConfigError(f"IMGCLUSTER_SHARD_SECONDS={shard_seconds} must be >= 0")
        store = cls(Path(folder), fingerprint, shard_size, notify, dim, made_with, shard_seconds)
        if not create:
            store._check_readable()
        store._load(clean=create)
        return store

    def _check_readable(self) -> None:
        """For read-only use: the manifest exists, parses, and matches the fingerprint."""
        manifest_path = self.folder / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"no feature cache in {self.folder} (was the run made with --no-cache?)") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"feature cache manifest {manifest_path} is corrupt ({exc}); "
                             "rerun `imgcluster run` to rebuild it") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"feature cache manifest {manifest_path} has an unknown format; "
                             "rerun `imgcluster run` to rebuild it")
        if manifest.get("fingerprint") != self.fingerprint:
            raise InputError(f"feature cache in {self.folder} was made with a different model, weights or "
                             "preprocessing than this run's summary.json says (a later `imgcluster run` with "
                             "other settings restarted it: finish that run, or run again with these settings)")

    def _reset(self, why: str | None) -> None:
        if why:
            self.notify(why)
            self.discarded = True
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_store_files(self.folder)
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "preprocess": describe_preprocess(),
                    "made_with": self.made_with}
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2))

    def _load(self, clean: bool = True) -> None:
        manifest_path = self.folder / MANIFEST
        if not manifest_path.exists():
            # No manifest: a fresh cache, or a kill before the manifest was written. Stray shards
            # without a manifest cannot be trusted (unknown fingerprint), so start empty.
            self._reset(None)
            return
        for stray in self.folder.glob(".*.tmp") if clean else ():  # temp files of writes a kill interrupted
            try:
                stray.unlink()
            except OSError:
                pass
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError("unknown format")
        except (OSError, ValueError):
            self._reset(f"Feature cache manifest {manifest_path} is corrupt or unreadable: "
                        "rebuilding the cache (every image is extracted again)")
            return
        if manifest.get("fingerprint") != self.fingerprint:
            self._reset("Feature cache in " + str(self.folder) + " was made with a different model, weights "
                        "or preprocessing: discarding it and extracting every image again")
            return
        recorded = manifest.get("made_with") if isinstance(manifest.get("made_with"), dict) else {}
        unrecorded = {k: v for k, v in (self.made_with or {}).items() if k not in recorded}
        if unrecorded:
            # written before the manifest recorded these settings: keep the shards (an interrupted
            # long run would otherwise start again after an upgrade) and record this run's
            manifest["made_with"] = {**recorded, **unrecorded}
            atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
            self.notify(f"Feature cache in {self.folder} predates recording {', '.join(unrecorded)}: "
                        f"kept, assumed made with {_describe(unrecorded)}")
        if self.made_with is not None and manifest.get("made_with") != self.made_with:
            before = manifest.get("made_with") or {}
            changed = ", ".join(f"{key} {before.get(key, 'unrecorded')} -> {value}"
                                for key, value in self.made_with.items() if before.get(key) != value)
            self._reset(f"Feature cache in {self.folder} was made with another {changed or 'configuration'}: "
                        "discarding it and extracting every image again (one run's features come from one "
                        "configuration)")
            return
        for index_file in sorted(self.folder.glob("shard-*.index.json")):
            try:
                shard_id = int(index_file.name[len("shard-"):-len(".index.json")])
            except ValueError:
                continue  # not one of ours
            self.next_shard = max(self.next_shard, shard_id + 1)
            try:
                index = json.loads(index_file.read_text(encoding="utf-8"))
                feats = np.load(self.folder / f"shard-{shard_id:06d}.npy", mmap_mode="r", allow_pickle=False)
                entries = [_entry_key(e) for e in index["rows"]]
                failures = [(_entry_key(e[:3]), str(e[3])) for e in index.get("failures", [])]
                if feats.ndim != 2 or feats.shape[0] != len(entries):
                    raise ValueError("row count does not match its index")
                if len(entries) and (feats.dtype != np.float32 or (self.dim is not None and feats.shape[1] != self.dim)):
                    raise ValueError(f"features are {feats.dtype} x {feats.shape[1]}, expected float32 x {self.dim}")
            except Exception as exc:  # any damage (truncation, bad JSON, wrong shape): never fatal
                self.notify(f"Ignoring damaged cache shard {index_file.name} ({type(exc).__name__}: "
                            f"{str(exc)[:120]}); its images are extracted again")
                if clean:  # drop it (index first, so it never counts half-deleted) and say so only once
                    for path in (index_file, self.folder / f"shard-{shard_id:06d}.npy"):
                        try:
                            path.unlink()
                        except OSError:
                            pass
                continue
            self._shards[shard_id] = feats
            for row, key in enumerate(entries):
                self._rows[_index_key(key)] = _location(shard_id, row)
            for key, reason in failures:
                self._failed[_index_key(key)] = reason

    def add(self, paths: Sequence, features: torch.Tensor | None, failures: Sequence[tuple]) -> None:
        """Queue one batch: `features` (b, d) rows for `paths`, and [(path, reason)] failures.

        Rows are copied into one preallocated (shard_size, d) float32 buffer, reused for every
        shard: keeping each batch's small array alive until the flush fragmented the C heap so
        much that the freed image batches between them were never returned (about 1 GB of RSS
        per 2,000 images). A shard is written as soon as it holds shard_size entries.
        """
        if features is not None and len(paths):
            feats = features.detach()
            keys = [file_key(p) or (path_to_text(p), -1, -1) for p in paths]
            start = 0
            while start < len(keys):
                if self._buffer is None or self._buffer.shape[1] != feats.shape[1] or self._buffer.device != feats.device:
                    self._buffer = torch.empty((self.shard_size, feats.shape[1]), dtype=torch.float32,
                                               device=feats.device)
                take = min(len(keys) - start, self.shard_size - len(self._pending_keys))
                self._buffer[len(self._pending_keys):len(self._pending_keys) + take] = feats[start:start + take]
                self._pending_keys.extend(keys[start:start + take])
                start += take
                if len(self._pending_keys) + len(self._pending_failures) >= self.shard_size:
                    self.flush()
        for path, reason in failures:
            key = file_key(path)
            # not remembered: "install pillow-heif" is cured by installing it, not by a new file
            if key is not None and not depends_on_environment(reason):
                self._pending_failures.append([*key, reason])
        pending = len(self._pending_keys) + len(self._pending_failures)
        if pending and self._pending_since is None:
            self._pending_since = time.monotonic()
        if pending >= self.shard_size or (pending and time.monotonic() - self._pending_since >= self.shard_seconds):
            self.flush()

    def flush(self) -> None:
        """Write queued rows as one shard (features first, then the index that makes it count)."""
        if not self._pending_keys and not self._pending_failures:
            return
        shard_id = self.next_shard
        self.next_shard += 1
        m = len(self._pending_keys)
        feats = self._buffer[:m].cpu().numpy() if m else np.zeros((0, self.dim or 0), np.float32)
        write_npy(self.folder / f"shard-{shard_id:06d}.npy", feats)
        index = {"rows": [list(k) for k in self._pending_keys], "failures": self._pending_failures}
        atomic_write_text(self.folder / f"shard-{shard_id:06d}.index.json", json.dumps(index))
        self.shards_written += 1
        self._pending_keys, self._pending_failures = [], []
        self._pending_since = None

    def gather(self, paths: Sequence, out: torch.Tensor | None = None, base: str | os.PathLike | None = None
               ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """Everything the cache knows about `paths`, without decoding.

        Returns (positions (m,) int64 ascending of cached good images, their features, {position:
        reason} of cached failures). Without `out` the features are a fresh (m, d) float32 array in
        position order. With `out`, an (len(paths), d) float32 tensor on any device, each cached row
        is written to out[position] one shard at a time (no second full copy) and None is returned
        in place of the features. base: the folder relative paths are relative to (see file_key).
        """
        hit_pos, hit_shard, hit_row = [], [], []
        failed: dict[int, str] = {}
        # an empty cache (a first run) knows nothing: no stat per file (10M files: about a minute)
        if not (self._rows or self._failed):
            paths = ()
        elif isinstance(paths, PathList):
            paths = paths.strings()  # the same text as str(Path), without a Path per image
        for pos, path in enumerate(paths):
            key = file_key(path, base)
            if key is None:
                continue
            raw, key = key, _index_key(key)
            loc = self._rows.get(key)
            if loc is None and key not in self._failed:  # a moved or renamed folder's file?
                loc = self._moved_location(raw, base)
            if loc is not None:
                hit_pos.append(pos)
                hit_shard.append(loc >> 32)
                hit_row.append(loc & 0xFFFFFFFF)
            elif key in self._failed:
                failed[pos] = self._failed[key]
        positions = np.asarray(hit_pos, dtype=np.int64)
        feats = None
        if out is None:
            dim = self.dim if self.dim is not None else next((s.shape[1] for s in self._shards.values() if len(s)), 0)
            feats = np.empty((len(positions), dim), dtype=np.float32)
        if len(positions):
            shards, rows = np.asarray(hit_shard), np.asarray(hit_row)
            for shard_id in np.unique(shards):  # one fancy-index read per shard, not one per row
                sel = np.flatnonzero(shards == shard_id)
                block = self._shards[int(shard_id)][rows[sel]]
                if out is None:
                    feats[sel] = block
                else:
                    out[torch.as_tensor(positions[sel], device=out.device)] = torch.from_numpy(block).to(out.device)
        return positions, feats, failed

    def _moved_location(self, key: tuple[str, int, int], base) -> int | None:
        """The cached row of a file that moved: one cached row with its name, size and mtime
        (_moved_key), whose own path no longer exists (relative to `base`, as in gather). None
        otherwise: no such row, two such rows, or the cached file still there (another image)."""
        if self._moved is None:  # built on first use; empty above MOVED_INDEX_LIMIT rows
            self._moved = {}
            if len(self._rows) <= MOVED_INDEX_LIMIT:
                for text, loc in self._rows.items():
                    old = _split_index_key(text)
                    moved = _moved_key(old)
                    self._moved[moved] = (-1, "") if moved in self._moved else (loc, old[0])
        if not self._moved:  # no rows, or above the limit: nothing to look up per miss
            return None
        loc, old_path = self._moved.get(_moved_key(key), (-1, ""))
        if loc == -1 or os.path.lexists(os.path.join(base, old_path) if base is not None else old_path):
            return None
        return loc

    def close(self) -> None:
        """Unmap the shards (their pages count in the process's resident memory while mapped)."""
        self._shards.clear()
        self._rows.clear()
        self._failed.clear()
        self._moved = None
