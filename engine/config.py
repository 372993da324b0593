"""Configuration: one dataclass per stage, validated once at the edge (API or CLI).

`Config.from_kwargs(**flat)` takes the flat keyword names that ImageClusterer and the CLI use
(model=, k=, pca=, ...) and sorts them into the stage dataclasses. Every error names the
parameter and the allowed values.
"""
from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .backbones import DEFAULT_MODEL, validate_model
from .device import CLUSTER_BACKENDS, DECODERS, DEVICES
from .errors import ConfigError
from .loaders.decode import DEFAULT_MAX_PIXELS
from .reduce import validate_pca

SELECT_METRICS = ("silhouette", "calinski", "davies")
DEFAULT_K = (2, 20)


def _is_integer(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(name: str, value, minimum: int | None, optional: bool = False) -> int | None:
    """value as an int (Python or NumPy integer) >= minimum (None: any); None when optional.
    ConfigError otherwise, naming the parameter (a float or a string would otherwise fail deep
    inside a run)."""
    if value is None and optional:
        return None
    if not _is_integer(value):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name}={value!r} must be an integer{bound}" + (" or None" if optional else ""))
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return int(value)


def _text(name: str, value) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{name}={value!r} must be a string")


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}={value!r} must be True or False")
    return bool(value)


def _reversed_range(text: str, lo: int, hi: int) -> str:
    """The message for a range written high to low: its turned-round form when that is valid."""
    if hi >= 2:
        return f"k range {text} is reversed: write it as {hi}:{lo}"
    return f"k range {text} is reversed, and K must be at least 2 (a range like 2:{max(lo, 2)})"


def parse_k(value) -> tuple[int, ...]:
    """'2:20' -> (2, ..., 20); '11' or 11 -> (11,); '3,5,8' or [3, 5, 8] -> (3, 5, 8); (a, b) tuple = range a..b.

    Every K must be >= 2; a range must not be reversed.
    """
    if isinstance(value, bool):
        raise ConfigError("k must be a number, a range like 2:20, or a list like 3,5,8")
    if _is_integer(value):
        ks = (int(value),)
    elif isinstance(value, tuple) and len(value) == 2 and all(_is_integer(v) for v in value):
        lo, hi = int(value[0]), int(value[1])
        if lo > hi:
            raise ConfigError(_reversed_range(f"{lo}:{hi}", lo, hi))
        ks = tuple(range(lo, hi + 1))
    elif isinstance(value, (list, tuple, range, np.ndarray)):
        if not all(_is_integer(v) for v in value):
            raise ConfigError(f"k={value!r}: every K must be an integer")
        ks = tuple(int(v) for v in value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            bounds = [int(v) for v in text.split(":", 1)] if ":" in text else None
            ks = tuple(int(v) for v in text.split(",")) if bounds is None else ()
        except ValueError:
            raise ConfigError(f"k={value!r} is not a number, a range like 2:20, or a list like 3,5,8") from None
        if bounds is not None:
            if bounds[0] > bounds[1]:
                raise ConfigError(_reversed_range(text, *bounds))
            ks = tuple(range(bounds[0], bounds[1] + 1))
    else:
        raise ConfigError(f"k={value!r} is not a number, a range like 2:20, or a list like 3,5,8")
    if not ks:
        raise ConfigError("k is empty")
    if min(ks) < 2:
        raise ConfigError(f"k={min(ks)} is below 2: clustering needs at least 2 clusters")
    return tuple(sorted(set(ks)))


@dataclass
class InputConfig:
    """Finding the images."""

    # also walk hidden folders/files and NAS/OS system folders (@eaDir...): engine.hidden_entries
    include_hidden: bool = False

    def validate(self) -> None:
        self.include_hidden = _flag("include_hidden", self.include_hidden)


@dataclass
class FeatureConfig:
    """Loading and the backbone."""

    model: str = DEFAULT_MODEL
    weights: str = "auto"
    device: str = "auto"
    decoder: str = "auto"
    precision: str = "auto"
    compile: bool = False
    cuda_graphs: bool = False  # replay the backbone from CUDA graphs (engine.cuda_graphs); CUDA only
    batch_size: int | None = None  # None: chosen from the device (and free memory on CUDA)
    num_threads: int | None = None  # CPU decode threads; None: all cores
    io_threads: int | None = None  # GPU decoders: threads reading + probing files; None: loaders.frontend default
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def validate(self) -> None:
        if isinstance(self.weights, os.PathLike):
            self.weights = os.fspath(self.weights)
        for name in ("model", "weights", "device", "decoder", "precision"):
            _text(name, getattr(self, name))
        validate_model(self.model)
        self.compile = _flag("compile", self.compile)
        self.cuda_graphs = _flag("cuda_graphs", self.cuda_graphs)
        if self.compile and self.cuda_graphs:
            # a compiled model inside our own capture should work, but no GPU run has tried it
            raise ConfigError("compile=True and cuda_graphs=True together are not tested yet: use one of them")
        self.batch_size = check_integer("batch_size", self.batch_size, 1, optional=True)
        self.num_threads = check_integer("num_threads", self.num_threads, 1, optional=True)
        self.io_threads = check_integer("io_threads", self.io_threads, 1, optional=True)
        self.max_pixels = check_integer("max_pixels", self.max_pixels, 1, optional=True)
        if self.device.split(":")[0] not in DEVICES:
            raise ConfigError(f"device={self.device!r} is not one of: {', '.join(DEVICES)} (or cuda:N)")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder={self.decoder!r} is not one of: {', '.join(DECODERS)}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision={self.precision!r} is not one of: auto, fp32, bf16, fp16")


DEFAULT_PCA = 200  # components, the 2019 method's "about 200"
DEFAULT_PCA_FIT_LIMIT = 200_000  # above this many images PCA is fitted on a seeded sample


@dataclass
class ReduceConfig:
    """PCA: a component count, a variance fraction in (0, 1], or 0 for off."""

    pca: float | int = DEFAULT_PCA
    pca_fit_limit: int | None = DEFAULT_PCA_FIT_LIMIT

    def validate(self) -> None:
        self.pca = validate_pca(self.pca)
        self.pca_fit_limit = check_integer("pca_fit_limit", self.pca_fit_limit, 2, optional=True)


@dataclass
class ClusterConfig:
    """KMeans over the candidate Ks and the choice of K."""

    k: tuple[int, ...] = field(default_factory=lambda: parse_k(DEFAULT_K))
    n_init: int = 3
    max_iter: int = 100
    cluster_backend: str = "auto"
    select: str = "silhouette"
    silhouette_sample: int | None = None  # None: exact up to the device's limit, then sampled
    seed: int = 0

    def validate(self) -> None:
        self.k = parse_k(self.k)
        self.n_init = check_integer("n_init", self.n_init, 1)
        self.max_iter = check_integer("max_iter", self.max_iter, 1)
        self.seed = check_integer("seed", self.seed, None)  # any integer (runs with seed=-1 exist)
        self.silhouette_sample = check_integer("silhouette_sample", self.silhouette_sample, 2, optional=True)
        for name in ("cluster_backend", "select"):
            _text(name, getattr(self, name))
        if self.cluster_backend not in CLUSTER_BACKENDS:
            raise ConfigError(f"cluster_backend={self.cluster_backend!r} is not one of: {', '.join(CLUSTER_BACKENDS)}")
        if self.select not in SELECT_METRICS:
            raise ConfigError(f"select={self.select!r} is not one of: {', '.join(SELECT_METRICS)}")


@dataclass
class Config:
    inputs: InputConfig = field(default_factory=InputConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    STAGES = ("inputs", "features", "reduce", "cluster")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "Config":
        """Flat keywords (model=, k=, pca=, seed=, ...) -> a validated Config. Unknown names are errors."""
        config = cls()
        for key, value in kwargs.items():
            for stage in cls.STAGES:
                part = getattr(config, stage)
                if key in {f.name for f in fields(part)}:
                    setattr(part, key, value)
                    break
            else:
                raise ConfigError(f"unknown parameter {key!r}; known: {', '.join(sorted(cls.parameter_names()))}")
        config.validate()
        return config

    @classmethod
    def parameter_names(cls) -> list[str]:
        return [f.name for stage in (InputConfig, FeatureConfig, ReduceConfig, ClusterConfig) for f in fields(stage)]

    def validate(self) -> "Config":
        self.inputs.validate()
        self.features.validate()
        self.reduce.validate()
        self.cluster.validate()
        return self

    def flat(self) -> dict:
        """The flat keyword view (inverse of from_kwargs); JSON-able."""
        out = {}
        for stage in self.STAGES:
            out.update(asdict(getattr(self, stage)))
        out["k"] = list(out["k"])
        return out

    def replace(self, **kwargs) -> "Config":
        flat = self.flat()
        flat.update(kwargs)
        return Config.from_kwargs(**flat)


__all__ = ["Config", "InputConfig", "FeatureConfig", "ReduceConfig", "ClusterConfig", "parse_k", "SELECT_METRICS"]
