"""Backbone registry: model name + weights spec -> a feature extractor (images -> (b, d) features).

The feature is the global-average-pooled penultimate layer (torchvision ResNets with fc = Identity;
2048-d for ResNet-50/101/152, 512-d for ResNet-18/34). `pixels` is a weight-free baseline: the
normalized 224x224 crop average-pooled to an 8x8 grid of colours (192-d).

Weights (`weights=`):
  auto    torchvision's ImageNet weights, from its cache ($TORCH_HOME/hub/checkpoints), downloading
          on first use. No cache and no network -> WeightsUnavailable naming the alternatives.
  PATH    a local state dict (.pth/.pt via torch.load(weights_only=True), or .safetensors).
  random  seeded random init (the clusters mean nothing; a warning says so).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .device import resolve_precision
from .errors import BackendUnavailable, ConfigError, WeightsUnavailable
from .loaders import preprocess

if TYPE_CHECKING:
    from .cuda_graphs import GraphedForward

RESNETS = {
    "resnet18": ("resnet18", "ResNet18_Weights", 512),
    "resnet34": ("resnet34", "ResNet34_Weights", 512),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048),
    "resnet101": ("resnet101", "ResNet101_Weights", 2048),
    "resnet152": ("resnet152", "ResNet152_Weights", 2048),
}
PIXEL_GRID = 8
MODELS = tuple(RESNETS) + ("pixels",)
DEFAULT_MODEL = "resnet152"


class PixelFeatures(nn.Module):
    """(b, 3, 224, 224) normalized -> (b, 3*8*8) float32: a weight-free downscaled-pixel baseline."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(images.float(), PIXEL_GRID)
        return pooled.flatten(1)


@dataclass
class Backbone:
    """A ready feature extractor.

    module: eval-mode nn.Module on `device`; forward((b,3,224,224)) -> (b, dim).
    weights: human description ('imagenet', a file path, 'random(seed=0)', 'none').
    fingerprint: sha256 hex of (model, weights identity, preprocessing); identifies cached features.
    """

    name: str
    module: nn.Module
    dim: int
    weights: str
    fingerprint: str
    device: torch.device
    precision: str = "fp32"  # 'fp32' | 'bf16' | 'fp16'
    warning: str | None = None
    compiled: bool = False
    channels_last: bool = True  # the layout the module's weights are in; inputs are converted to it
    cuda_graphs: bool = False  # replay the forward from CUDA graphs (engine.cuda_graphs)
    _graphed: "GraphedForward | None" = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        # captured graphs (and the lambda that makes them) do not pickle; they are made again on use
        state = dict(self.__dict__)
        state["_graphed"] = None
        return state

    def prepare_graphs(self, batch_size: int, runner: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       input_dtype: torch.dtype = torch.float16) -> None:
        """With cuda_graphs: capture the forward for `batch_size` now, before a loader runs (see
        engine.cuda_graphs), and capture no other size afterwards. No-op otherwise.

        runner: what runs the dummy batch (extraction passes its OOMBackoff, so an out-of-memory
        capture halves the batch as a real batch would); default self(x, pad_to=batch_size)."""
        if not self.cuda_graphs or batch_size < 1:
            return
        if self._graphed is not None:
            self._graphed.capture_new = True  # no loader runs now (between extraction passes too)
        zeros = torch.zeros((batch_size, 3, 224, 224), dtype=input_dtype, device=self.device)
        (runner or (lambda x: self(x, pad_to=batch_size)))(zeros)
        self._graphed.capture_new = False

    def release_graphs(self) -> None:
        """Free the captured graphs' memory (after extraction: the clustering needs it)."""
        if self._graphed is not None:
            self._graphed.clear()
            self._graphed.capture_new = True
            torch.cuda.empty_cache()

    @property
    def static_shapes(self) -> bool:
        """Whether every new batch size costs a compile or a graph capture: callers then pad
        their batches to one size (see pad_to)."""
        return self.compiled or self.cuda_graphs

    @property
    def dtype(self) -> torch.dtype:
        """The dtype `precision` names: the inputs' and autocast's."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def _forward(self, images: torch.Tensor, cache_casts: bool = True) -> torch.Tensor:
        dtype = self.dtype
        if dtype == torch.float32:
            return self.module(images)
        # cache_casts=False while capturing a graph: cached weight casts are freed when the
        # autocast block ends, and the graph would keep reading their memory
        with torch.autocast(self.device.type, dtype=dtype, cache_enabled=cache_casts):
            return self.module(images)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
        """images: (b, 3, 224, 224) normalized on self.device -> (b, dim) float32 on self.device.

        pad_to: for a compiled or graphed model, the batch size to pad a smaller batch up to (the
        size the caller runs full batches at), so the graph compiled for full batches serves the
        rest too. Without it a smaller batch is padded to the next power of two. Ignored otherwise.
        """
        b = images.shape[0]
        padded = (pad_to if pad_to and pad_to >= b else 1 << max(0, b - 1).bit_length()) if self.static_shapes else b
        if b and padded > b:
            # A compiled (static-shape) model recompiles for every new batch size (tens of seconds
            # for ResNet-152), and a graph is captured per size: the last partial batch, a batch
            # with skipped files, OOM halvings, request sizes. Padding keeps the shapes to a few;
            # the padding rows are dropped below.
            images = torch.cat([images, images.new_zeros((padded - b, *images.shape[1:]))])
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(dtype=self.dtype, memory_format=layout)  # one copy, not two
        if self.cuda_graphs and b:
            if self._graphed is None:
                from .cuda_graphs import GraphedForward

                self._graphed = GraphedForward(lambda x: self._forward(x, cache_casts=False))
            # the graph's output buffer is overwritten by the next replay: always copy it out
            return self._graphed(images)[:b].to(torch.float32, copy=True)
        return self._forward(images)[:b].float()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprint(model: str, weights_identity: str) -> str:
    payload = json.dumps({"model": model, "weights": weights_identity, "preprocess": preprocess.describe()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _plain(text: str) -> str:
    """text without terminal colour codes (torch's messages carry some)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def check_weights_argument(model: str, weights) -> None:
    """WeightsUnavailable when `weights` names a file that is not there (pixels takes no weights).
    Cheap: a run checks it before walking its inputs, which can take minutes."""
    text = os.fspath(weights)
    if model != "pixels" and text not in ("auto", "random"):
        _require_weights_file(text)


def _require_weights_file(text: str) -> None:
    if not Path(text).is_file():
        raise WeightsUnavailable(f"--weights {text}: not auto, random or an existing file (a local "
                                 ".pth/.safetensors state dict)")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A local state dict: .safetensors, or a torch file loaded with weights_only=True (no pickle code)."""
    _require_weights_file(os.fspath(path))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            # a whole pickled model (torch.save(model)): loading it would run its pickled code
            raise WeightsUnavailable(f"--weights {path}: holds pickled Python objects (a whole model?), not a plain "
                                     "state dict; save one with torch.save(model.state_dict(), path) and pass "
                                     "that") from None
        raise WeightsUnavailable(f"--weights {path}: not a readable state dict ({type(exc).__name__}: "
                                 f"{_plain(str(exc).splitlines()[0])[:160] if str(exc) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"--weights {path}: expected a dict of tensors (a state dict)")
    return state


def cached_imagenet_weights() -> tuple[list[str], Path]:
    """([model, ...] whose ImageNet weights are in torch's hub cache, that cache folder), without
    downloading anything: what `--weights auto` can use offline."""
    import torchvision

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = [model for model, (_, enum_name, _) in RESNETS.items()
              if (folder / os.path.basename(getattr(torchvision.models, enum_name).DEFAULT.url)).is_file()]
    return cached, folder


def _imagenet_state_dict(model: str) -> tuple[dict, str]:
    import torchvision

    weights_enum = getattr(torchvision.models, RESNETS[model][1]).DEFAULT
    try:
        state = weights_enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, timeouts, a corrupt cache file
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailable(
            f"cannot get ImageNet weights for {model}: no cached copy in {hub_dir} and the download "
            f"failed ({type(exc).__name__}). Use --weights PATH (a local .pth/.safetensors state dict) "
            f"or --weights random (clusters not meaningful)."
        ) from None
    return state, weights_enum.url


def validate_model(model: str) -> str:
    if model not in MODELS:
        raise ConfigError(f"model={model!r} is not one of: {', '.join(MODELS)}")
    return model


def load_backbone(model: str = DEFAULT_MODEL, weights: str | os.PathLike = "auto", device: torch.device | str = "cpu",
                  seed: int = 0, precision: str = "auto", compile: bool = False,
                  warn: Callable[[str], None] | None = None, channels_last: bool = True,
                  cuda_graphs: bool = False) -> Backbone:
    """Build `model` with `weights` on `device`.

    precision 'auto' -> bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    (engine.device.resolve_precision). channels_last: the NHWC layout cuDNN and oneDNN run fastest
    (ResNet-152 fp32 on the 2-core development VM: 6.5 img/s against 4.5 NCHW). compile ->
    torch.compile(module). cuda_graphs -> the forward is replayed from CUDA graphs
    (engine.cuda_graphs; CUDA only, BackendUnavailable elsewhere).
    """
    validate_model(model)
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise BackendUnavailable(f"--cuda-graphs needs a CUDA device, got {str(device)!r}")
    # pixels is an average pool: bf16 would only round its features
    precision = "fp32" if model == "pixels" and precision == "auto" else resolve_precision(precision, device)
    warning = None
    if model == "pixels":
        module: nn.Module = PixelFeatures()
        dim, description, identity = 3 * PIXEL_GRID * PIXEL_GRID, "none", f"pixels-grid{PIXEL_GRID}"
        if os.fspath(weights) != "auto":  # a weights file or "random" given with it: say it is not used
            warning = f"--model pixels has no weights: --weights {os.fspath(weights)!r} is not used"
    else:
        import torchvision

        builder = getattr(torchvision.models, RESNETS[model][0])
        dim = RESNETS[model][2]
        weights_text = os.fspath(weights)
        if weights_text == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                module = builder(weights=None)
            description, identity = f"random(seed={seed})", f"random:{seed}"
            warning = (f"--weights random: {model} has random weights, so its features (and the clusters) "
                       "are not meaningful; use this for testing only")
        else:
            module = builder(weights=None)
            if weights_text == "auto":
                state, identity = _imagenet_state_dict(model)
                description = "imagenet"
            else:
                path = Path(weights_text)
                state = load_state_dict_file(path)
                description, identity = str(path), "sha256:" + _sha256_file(path)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            try:
                missing, unexpected = module.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shape mismatches
                raise WeightsUnavailable(f"weights {description} do not fit {model}: "
                                         f"{str(exc).splitlines()[-1].strip()[:200]}") from None
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                parts = [f"{len(keys)} {what} keys (e.g. {', '.join(keys[:2])})"
                         for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
                raise WeightsUnavailable(f"weights {description} do not fit {model}: {'; '.join(parts)}")
        module.fc = nn.Identity()
    if warning:
        (warn or (lambda m: warnings.warn(m, stacklevel=2)))(warning)
    module = module.eval().to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if compile:
        module = torch.compile(module, dynamic=False)
    return Backbone(model, module, dim, description, _fingerprint(model, identity), device, precision, warning,
                    compiled=compile, channels_last=channels_last, cuda_graphs=cuda_graphs)
