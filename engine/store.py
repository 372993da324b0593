"""Feature cache on disk, for resume: OUT/features/.

  manifest.json                 {"format": 1, "fingerprint": ..., "preprocess": ...}
  shard-000000.npy              (m, d) float32 features of m images
  shard-000000.index.json       [[path, size, mtime_ns], ...] for those rows, plus failures
                                [[path, size, mtime_ns, reason], ...] (bad files are not retried)

A shard counts only once its index file exists; the .npy is renamed into place first, and both
are written atomically, so a kill at any moment leaves complete shards and at most a stray
temporary file. A file is identified by (path, size, mtime): a changed file misses the cache and
is recomputed, a removed one is simply never asked for. A different fingerprint (model, weights,
preprocessing) empties the cache, and says so.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .loaders.preprocess import describe as describe_preprocess
from .report.outputs import atomic_write_text, path_to_text, write_npy

FORMAT = 1
DEFAULT_SHARD_SIZE = 4096
MANIFEST = "manifest.json"


def file_key(path) -> tuple[str, int, int] | None:
    """(path text, size, mtime_ns), or None when the file cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path_to_text(path), int(st.st_size), int(st.st_mtime_ns)


class FeatureStore:
    """Shards of features keyed by file identity. Use FeatureStore.open(folder, fingerprint)."""

    def __init__(self, folder: Path, fingerprint: str, shard_size: int = DEFAULT_SHARD_SIZE,
                 notify: Callable[[str], None] | None = None):
        self.folder = folder
        self.fingerprint = fingerprint
        self.shard_size = shard_size
        self.notify = notify or (lambda message: None)
        self._rows: dict[tuple, tuple[int, int]] = {}  # key -> (shard id, row)
        self._failed: dict[tuple, str] = {}
        self._shards: dict[int, np.ndarray] = {}
        self._pending_keys: list[tuple] = []
        self._pending_feats: list[np.ndarray] = []
        self._pending_failures: list[list] = []
        self.next_shard = 0
        self.shards_written = 0

    @classmethod
    def open(cls, folder, fingerprint: str, shard_size: int | None = None,
             notify: Callable[[str], None] | None = None) -> "FeatureStore":
        """Open (or create) the cache in `folder`; invalid or foreign caches are emptied with a notice."""
        shard_size = shard_size or int(os.environ.get("IMGCLUSTER_SHARD_SIZE", DEFAULT_SHARD_SIZE))
        store = cls(Path(folder), fingerprint, shard_size, notify)
        store._load()
        return store

    def _reset(self, why: str | None) -> None:
        if why:
            self.notify(why)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "preprocess": describe_preprocess()}
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2))

    def _load(self) -> None:
        manifest_path = self.folder / MANIFEST
        if not manifest_path.exists():
            self._reset(None)
            return
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError("unknown format")
        except (OSError, ValueError):
            self._reset(f"Feature cache manifest {manifest_path} is corrupt: rebuilding the cache")
            return
        if manifest.get("fingerprint") != self.fingerprint:
            self._reset("Feature cache was made with a different model, weights or preprocessing: recomputing")
            return
        for index_file in sorted(self.folder.glob("shard-*.index.json")):
            shard_id = int(index_file.name.split("-")[1].split(".")[0])
            self.next_shard = max(self.next_shard, shard_id + 1)
            try:
                index = json.loads(index_file.read_text(encoding="utf-8"))
                feats = np.load(self.folder / f"shard-{shard_id:06d}.npy", mmap_mode="r", allow_pickle=False)
                entries = index["rows"]
                if feats.ndim != 2 or feats.shape[0] != len(entries):
                    raise ValueError("row count does not match its index")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.notify(f"Ignoring damaged cache shard {index_file.name} ({exc}); its images are recomputed")
                continue
            self._shards[shard_id] = feats
            for row, entry in enumerate(entries):
                self._rows[tuple(entry)] = (shard_id, row)
            for entry in index.get("failures", []):
                self._failed[tuple(entry[:3])] = entry[3]

    @property
    def cached_images(self) -> int:
        return len(self._rows) + len(self._failed)

    def lookup(self, paths: Sequence) -> dict[int, np.ndarray | str]:
        """position -> (d,) float32 feature row, or the failure reason, for every cached path."""
        found: dict[int, np.ndarray | str] = {}
        for pos, path in enumerate(paths):
            key = file_key(path)
            if key is None:
                continue
            if key in self._rows:
                shard, row = self._rows[key]
                found[pos] = self._shards[shard][row]
            elif key in self._failed:
                found[pos] = self._failed[key]
        return found

    def add(self, paths: Sequence, features: torch.Tensor | None, failures: Sequence[tuple]) -> None:
        """Queue one batch: `features` (b, d) rows for `paths`, and [(path, reason)] failures."""
        if features is not None and len(paths):
            self._pending_feats.append(features.detach().float().cpu().numpy())
            self._pending_keys.extend(file_key(p) or (path_to_text(p), -1, -1) for p in paths)
        for path, reason in failures:
            key = file_key(path)
            if key is not None:
                self._pending_failures.append([*key, reason])
        if len(self._pending_keys) + len(self._pending_failures) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write queued rows as one shard (features first, then the index that makes it count)."""
        if not self._pending_keys and not self._pending_failures:
            return
        shard_id = self.next_shard
        self.next_shard += 1
        feats = np.concatenate(self._pending_feats) if self._pending_feats else np.zeros((0, 0), np.float32)
        write_npy(self.folder / f"shard-{shard_id:06d}.npy", feats)
        index = {"rows": [list(k) for k in self._pending_keys], "failures": self._pending_failures}
        atomic_write_text(self.folder / f"shard-{shard_id:06d}.index.json", json.dumps(index))
        self.shards_written += 1
        self._pending_keys, self._pending_feats, self._pending_failures = [], [], []

    def load_features(self, paths: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """For re-clustering: (positions (m,) int64 of cached good paths, features (m, d) float32)."""
        hits = {pos: v for pos, v in self.lookup(paths).items() if not isinstance(v, str)}
        positions = np.asarray(sorted(hits), dtype=np.int64)
        if not len(positions):
            return positions, np.zeros((0, 0), np.float32)
        return positions, np.stack([np.asarray(hits[p], dtype=np.float32) for p in positions])
