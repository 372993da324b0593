"""The model file: one safetensors file, no pickle (ModelState, read_model_file).

File format (format_version 1): ONE safetensors file (conventionally `*.imgc`); no pickle anywhere.

  tensors (little-endian, C order)
    pca_mean                      (d,) float32               absent when PCA is off
    pca_components                (n_components, d) float32  rows are principal axes; absent when PCA is off
    pca_explained_variance_ratio  (m,) float32               the fitted spectrum, m = min(fit rows, d); absent when off
    centroids                     (k, n_components) float32  of the chosen K; n_components = d when PCA is off
    cluster_mean_distance         (k,) float32               mean Euclidean distance of each cluster's training
                                                             images to its centroid (NaN for an empty cluster)
    cluster_sizes                 (k,) int64                 training images per cluster (ids ordered by size)
  metadata: {"imgcluster": <one JSON document>} with the keys
    format "imgcluster-model", format_version 1, imgcluster_version, created (UTC ISO time),
    backbone {name, dim, precision, fingerprint,
              weights {kind: auto | path | random | none, path, seed, description}},
    preprocess (engine.loaders.preprocess.describe()),
    pca {mode: exact | sampled | streamed | off, n_components, input_dim, explained_variance, fit_rows, spectrum_length},
    k, scores (the per-K metrics table of the search), config (the run's flat config),
    arrays {name: {dtype, shape}} (the listing above, as saved),
    sha256: hex SHA-256 over the canonical JSON of this document without "sha256"
            (sorted keys, no spaces) followed by, for every array in name order,
            "name|dtype|shape\\n" and its raw bytes. Any changed byte of a tensor (or of the JSON) fails it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ModelFileError
from .loaders.preprocess import describe as describe_preprocess
from .reduce import PCAResult
from .versions import imgcluster_version

FORMAT = "imgcluster-model"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
METADATA_KEY = "imgcluster"
_MAX_HEADER = 100 << 20  # a model header is a few kB; anything this large is not ours
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=True, default=_json_default)


def _checksum(doc: dict, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the canonical JSON (without 'sha256') and every tensor's name, dtype, shape, bytes."""
    digest = hashlib.sha256(_canonical({k: v for k, v in doc.items() if k != "sha256"}).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def weights_spec(model: str, weights: str | os.PathLike, seed: int, description: str) -> dict:
    """How to get the backbone's weights again: {kind, path, seed, description}."""
    text = os.fspath(weights)
    if model == "pixels":
        return {"kind": "none", "path": None, "seed": None, "description": description}
    if text == "random":
        return {"kind": "random", "path": None, "seed": int(seed), "description": description}
    if text == "auto":
        return {"kind": "auto", "path": None, "seed": None, "description": description}
    return {"kind": "path", "path": os.path.abspath(text), "seed": None, "description": description}


@dataclass
class ModelState:
    """Everything a model file holds (arrays on the CPU). See the module docstring for the format.

    pca_mean (d,) float32 | None; pca_components (n_components, d) float32 | None;
    pca_explained_variance_ratio (m,) float32 | None (None = PCA off); centroids (k, n_components)
    float32; cluster_mean_distance (k,) float32; cluster_sizes (k,) int64.
    """

    backbone: dict
    preprocess: dict
    pca: dict
    k: int
    scores: list[dict]
    config: dict
    centroids: torch.Tensor
    cluster_mean_distance: torch.Tensor
    cluster_sizes: torch.Tensor
    pca_mean: torch.Tensor | None = None
    pca_components: torch.Tensor | None = None
    pca_explained_variance_ratio: torch.Tensor | None = None
    imgcluster_version: str = field(default_factory=imgcluster_version)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def n_components(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def pca_off(self) -> bool:
        return self.pca["mode"] == "off"

    @classmethod
    def from_result(cls, result) -> "ModelState":
        """From an engine.pipeline.RunResult: the chosen K's centroids, the PCA, and per-cluster
        statistics of the training images (their reduced features)."""
        k = result.k
        fit = result.search.fits[k]
        reduced = result.reduced.float()
        labels = fit.labels.to(reduced.device)
        centroids = fit.centroids.float().to(reduced.device)
        dist = (reduced - centroids[labels]).norm(dim=1)  # as engine.pipeline.run_analysis
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64, device=reduced.device).index_add_(0, labels, dist.double())
        mean_dist = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        pca = result.pca
        fc = result.config.features
        bb = result.backbone
        off = pca.mode == "off"
        # a re-clustered run records how its backbone was made (engine.pipeline.BackboneInfo): the
        # seed and weights file of the original run, not this config's
        seed = getattr(bb, "weights_seed", None)
        weights = getattr(bb, "weights_file", None) or fc.weights
        return cls(
            backbone={"name": bb.name, "dim": int(bb.dim), "precision": bb.precision, "fingerprint": bb.fingerprint,
                      "weights": weights_spec(bb.name, weights, result.config.cluster.seed if seed is None else seed,
                                              bb.weights)},
            preprocess=describe_preprocess(),
            pca={"mode": pca.mode, "n_components": int(centroids.shape[1]), "input_dim": int(bb.dim),
                 "explained_variance": float(pca.explained_variance), "fit_rows": int(pca.fit_rows),
                 "spectrum_length": 0 if off else int(len(pca.explained_variance_ratio))},
            k=int(k), scores=result.search.scores_table(), config=result.config.flat(),
            centroids=centroids.cpu().contiguous(),
            cluster_mean_distance=mean_dist.float().cpu(),
            cluster_sizes=counts.to(torch.int64).cpu(),
            pca_mean=None if off else pca.mean.float().cpu().contiguous(),
            pca_components=None if off else pca.components.float().cpu().contiguous(),
            pca_explained_variance_ratio=None if off else torch.from_numpy(
                np.ascontiguousarray(pca.explained_variance_ratio, dtype=np.float32)),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"centroids": self.centroids, "cluster_mean_distance": self.cluster_mean_distance,
               "cluster_sizes": self.cluster_sizes}
        if not self.pca_off:
            out.update(pca_mean=self.pca_mean, pca_components=self.pca_components,
                       pca_explained_variance_ratio=self.pca_explained_variance_ratio)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def document(self) -> dict:
        """The metadata JSON document (without 'sha256')."""
        doc = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "imgcluster_version": self.imgcluster_version,
            "created": self.created, "backbone": self.backbone, "preprocess": self.preprocess, "pca": self.pca,
            "k": self.k, "scores": self.scores, "config": self.config,
            "arrays": {name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                       for name, t in sorted(self.tensors().items())},
        }
        return json.loads(_canonical(doc))  # plain JSON types only, so the checksum is reproducible

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = self.tensors()
        doc = self.document()
        doc["sha256"] = _checksum(doc, tensors)
        return save(tensors, metadata={METADATA_KEY: _canonical(doc)})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file atomically (temp file in the same folder + rename)."""
        from .report.outputs import atomic_write_bytes

        return atomic_write_bytes(path, self.to_bytes())

    def pca_result(self, device: torch.device | str = "cpu") -> PCAResult:
        """The PCA as an engine.reduce.PCAResult on `device` (identity transform when off)."""
        device = torch.device(device)
        d = int(self.backbone["dim"])
        if self.pca_off:
            return PCAResult(torch.zeros(d, device=device), torch.eye(d, device=device),
                             np.zeros(0, dtype=np.float32), 0, "off", 0)
        return PCAResult(self.pca_mean.to(device), self.pca_components.to(device),
                         self.pca_explained_variance_ratio.numpy().copy(), self.n_components, self.pca["mode"],
                         int(self.pca.get("fit_rows", 0)))


def _bad_file(path, detail: str) -> ModelFileError:
    return ModelFileError(f"{path}: truncated or not an imgcluster model file ({detail})")


def _expected_arrays(doc: dict, path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) implied by the metadata's backbone dim, PCA and K."""
    try:
        d = int(doc["backbone"]["dim"])
        k = int(doc["k"])
        pca = doc["pca"]
        mode = pca["mode"]
        nc = int(pca["n_components"])
        m = int(pca.get("spectrum_length", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: model metadata is incomplete ({type(exc).__name__}: {exc})") from None
    if mode == "off":
        nc = d
    out = {"centroids": ("float32", (k, nc)), "cluster_mean_distance": ("float32", (k,)),
           "cluster_sizes": ("int64", (k,))}
    if mode != "off":
        out.update(pca_mean=("float32", (d,)), pca_components=("float32", (nc, d)),
                   pca_explained_variance_ratio=("float32", (m,)))
    return out


def read_model_file(path: str | os.PathLike) -> ModelState:
    """Parse and validate a model file (no backbone is loaded).

    Raises ModelFileError: truncated / not a model file; unsupported format version; an array
    missing, unexpected, or of the wrong dtype or shape for the metadata; checksum mismatch.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or type(exc).__name__})") from None
    if len(data) < 8:
        raise _bad_file(path, f"only {len(data)} bytes")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > min(len(data) - 8, _MAX_HEADER):
        raise _bad_file(path, "header longer than the file")
    try:
        header = json.loads(data[8:8 + header_len])
        text = header.get("__metadata__", {}).get(METADATA_KEY)
    except (ValueError, AttributeError):
        raise _bad_file(path, "unreadable header") from None
    if not isinstance(text, str):
        raise _bad_file(path, "no imgcluster metadata")
    try:
        doc = json.loads(text)
    except ValueError:
        raise _bad_file(path, "unreadable imgcluster metadata") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad_file(path, f"format is {doc.get('format') if isinstance(doc, dict) else None!r}, not {FORMAT!r}")
    version = doc.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        newer = isinstance(version, int) and version > max(SUPPORTED_VERSIONS)
        raise ModelFileError(
            f"{path}: model file format version {version!r} is not supported (imgcluster {imgcluster_version()} "
            f"reads version {', '.join(map(str, SUPPORTED_VERSIONS))})"
            + ("; it was written by a newer imgcluster: upgrade imgcluster" if newer else ""))
    try:
        from safetensors.torch import load

        tensors = load(data)
    except Exception as exc:  # SafetensorError: incomplete buffer, bad offsets
        raise _bad_file(path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__) from None

    expected = _expected_arrays(doc, path)
    listed = doc.get("arrays") if isinstance(doc.get("arrays"), dict) else {}
    for name, (dtype, shape) in expected.items():
        if name not in tensors:
            raise ModelFileError(f"{path}: array {name!r} is missing")
        t = tensors[name]
        if t.dtype != _DTYPES[dtype]:
            raise ModelFileError(f"{path}: array {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, "
                                 f"expected {dtype}")
        if tuple(t.shape) != shape:
            raise ModelFileError(f"{path}: array {name!r} has shape {tuple(t.shape)}; the metadata says {shape}")
        if listed.get(name) != {"dtype": dtype, "shape": list(shape)}:
            raise ModelFileError(f"{path}: array {name!r} does not match its listing in the metadata")
    extra = sorted(set(tensors) - set(expected)) or sorted(set(listed) - set(expected))
    if extra:
        raise ModelFileError(f"{path}: unexpected array {extra[0]!r} for this model's metadata")
    if doc.get("sha256") != _checksum(doc, tensors):
        raise ModelFileError(f"{path}: checksum mismatch: the model file was modified or corrupted after it was saved")
    return ModelState(
        backbone=doc["backbone"], preprocess=doc["preprocess"], pca=doc["pca"], k=int(doc["k"]),
        scores=doc.get("scores", []), config=doc.get("config", {}),
        centroids=tensors["centroids"], cluster_mean_distance=tensors["cluster_mean_distance"],
        cluster_sizes=tensors["cluster_sizes"], pca_mean=tensors.get("pca_mean"),
        pca_components=tensors.get("pca_components"),
        pca_explained_variance_ratio=tensors.get("pca_explained_variance_ratio"),
        imgcluster_version=doc.get("imgcluster_version", "?"), created=doc.get("created", ""),
    )


def other_clusterings_in(folder: str | os.PathLike, k: int, centroids: torch.Tensor,
                         keep: str | os.PathLike | None = None) -> list[tuple[Path, int]]:
    """Model files (*.imgc) directly in `folder`, other than `keep`, that hold another clustering
    than this one (`k`; `centroids` (k, n_components) float in the reduced space): [(path, its K)].

    Why: a re-clustering in place, or a new run into the same folder, rewrites predictions.csv
    but not a model file saved beside it earlier (`--save-model results/model.imgc`), and
    `imgcluster predict` with that file assigns the earlier clusters. Files that do not read as
    model files are not ours to judge and are left out."""
    folder = Path(folder)
    keep_path = Path(keep).resolve() if keep is not None else None
    found = []
    mine = centroids.detach().float().cpu()
    # loose: a rerun on a GPU need not be bit-identical; another clustering moves centroids by far more
    scale = float(mine.abs().max()) if mine.numel() else 1.0
    for path in sorted(folder.glob("*.imgc")) if folder.is_dir() else []:
        if keep_path is not None and path.resolve() == keep_path:
            continue
        try:
            other = read_model_file(path)
        except ModelFileError:
            continue
        same = (other.k == k and other.centroids.shape == mine.shape
                and torch.allclose(other.centroids, mine, rtol=1e-3, atol=1e-3 * max(scale, 1e-6)))
        if not same:
            found.append((path, other.k))
    return found


def other_clusterings_notice(folder, k: int, centroids: torch.Tensor, keep=None) -> list[str]:
    """One line per model file other_clusterings_in finds, saying what it holds and how to replace it."""
    return [f"{path} holds an earlier clustering (K={other_k}; this one: K={k}): `imgcluster predict` "
            f"with it assigns those clusters, not predictions.csv's; --save-model {path} replaces it"
            for path, other_k in other_clusterings_in(folder, k, centroids, keep)]
