"""The one capability probe: is CUDA here, DALI, cuML, CuPy, Triton, torch.compile?

Nothing here creates a CUDA context at import (or at probe time: torch.cuda.is_available() and
device_count() only ask the driver). Every "is X available" question in the package goes through
`capabilities()`; every backend choice goes through the `resolve_*` functions, which raise
BackendUnavailable (with the install hint) for a backend asked for by name, and fall back with a
one-line notice for `auto`.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass

from .errors import BackendUnavailable, ConfigError

# The extras as the README installs them (imgcluster is installed from its folder, not an index)
GPU_EXTRA_HINT = "install it with: pip install -e '.[gpu]' in the imgcluster folder (needs an NVIDIA GPU and CUDA 13)"
RAPIDS_EXTRA_HINT = "install it with: pip install -e '.[rapids]' in the imgcluster folder (needs an NVIDIA GPU and CUDA 13)"

DEVICES = ("auto", "cuda", "cpu")
DECODERS = ("auto", "dali", "nvjpeg", "nvimgcodec", "pil")
CLUSTER_BACKENDS = ("auto", "torch", "cuml", "sklearn")


@dataclass(frozen=True)
class Capability:
    """One probed feature. `reason` says why it is unavailable (empty when available)."""

    name: str
    available: bool
    version: str = ""
    reason: str = ""


def _module_version(name: str) -> tuple[object | None, str]:
    """Import `name`; return (module, error). Import errors are turned into a short reason."""
    try:
        # The full dotted name: torch's CUDA wheels install other `nvidia.*` packages, so the
        # top-level `nvidia` is there even without DALI.
        missing = importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        return None, f"{name} is not installed"
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # a broken install must not kill the probe
        return None, f"{name} failed to import: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return module, ""


@functools.lru_cache(maxsize=1)
def _cuda() -> Capability:
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = "no NVIDIA GPU visible to the driver" if built else "torch was built without CUDA"
        return Capability("cuda", False, str(built or ""), why)
    return Capability("cuda", True, str(torch.version.cuda))


@functools.lru_cache(maxsize=1)
def _dali() -> Capability:
    module, err = _module_version("nvidia.dali")
    if module is None:
        return Capability("dali", False, reason=f"{err}; {GPU_EXTRA_HINT}")
    return Capability("dali", True, getattr(module, "__version__", "?"))


def quiet_nvimgcodec() -> None:
    """Quiet nvImageCodec (before its first import; level 1, "errors", which in 0.9 also hides its
    parser's per-file error lines): it warns once per file it cannot decode, which would flood the
    terminal; skipped.csv lists those files with the reason."""
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "1")


@functools.lru_cache(maxsize=1)
def _nvimgcodec() -> Capability:
    """nvImageCodec, the --decoder nvimgcodec JPEG decoder, and the nvJPEG library its GPU
    decoders load at run time (a separate wheel; without it every GPU decode fails)."""
    quiet_nvimgcodec()
    module, err = _module_version("nvidia.nvimgcodec")
    if module is None:
        return Capability("nvimgcodec", False, reason=f"{err}; {GPU_EXTRA_HINT}")
    version = getattr(module, "__version__", "?")
    if not _cuda().available:
        return Capability("nvimgcodec", False, version, "its GPU decoders need CUDA: " + _cuda().reason)
    if not _nvjpeg_library_found(module):
        return Capability("nvimgcodec", False, version,
                          "the nvJPEG library (libnvjpeg.so.13) is not installed: pip install nvidia-nvjpeg")
    return Capability("nvimgcodec", True, version)


def _nvjpeg_library_found(nvimgcodec_module) -> bool:
    """libnvjpeg.so.13 where nvImageCodec's extension looks for it: the nvidia-nvjpeg wheel's
    folder beside it (nvidia/cu13/lib), the CUDA toolkit, or the loader's search path. Loading the
    library creates no CUDA context. A hint, not the proof: once torchvision is imported, its own
    copy answers to the same name; the loader's test decode (loaders/nvimgcodec.make_decoder) is
    the real check."""
    import ctypes
    from pathlib import Path

    beside = Path(nvimgcodec_module.__file__).resolve().parent.parent / "cu13" / "lib" / "libnvjpeg.so.13"
    if beside.exists() or Path("/usr/local/cuda/lib64/libnvjpeg.so.13").exists():
        return True
    try:
        ctypes.CDLL("libnvjpeg.so.13")
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _cupy() -> Capability:
    if importlib.util.find_spec("cupy") is None:
        return Capability("cupy", False, reason=f"cupy is not installed; {GPU_EXTRA_HINT}")
    module, err = _module_version("cupy")
    if module is None:
        return Capability("cupy", False, reason=err)
    return Capability("cupy", True, getattr(module, "__version__", "?"))


@functools.lru_cache(maxsize=1)
def _cuml() -> Capability:
    if importlib.util.find_spec("cuml") is None:
        return Capability("cuml", False, reason=f"cuml is not installed; {RAPIDS_EXTRA_HINT}")
    if not _cuda().available:
        return Capability("cuml", False, reason="cuml is installed but needs a CUDA GPU (" + _cuda().reason + ")")
    module, err = _module_version("cuml")
    if module is None:
        return Capability("cuml", False, reason=err)
    return Capability("cuml", True, getattr(module, "__version__", "?"))


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _triton() -> Capability:
    module, err = _module_version("triton")
    if module is None:
        return Capability("triton", False, reason=err)
    version = getattr(module, "__version__", "?")
    if not _cuda().available and not triton_interpreted():
        return Capability("triton", False, version, "Triton needs a CUDA GPU (or TRITON_INTERPRET=1 on the CPU)")
    if not triton_interpreted() and shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        return Capability("triton", False, version, "Triton needs a C compiler to build its kernel launcher (install gcc)")
    return Capability("triton", True, version)


@functools.lru_cache(maxsize=1)
def _cpu_bf16() -> Capability:
    """Native bf16 on this CPU (AMX tiles or AVX512-BF16). There oneDNN runs a bf16 ResNet several
    times faster than fp32 (ResNet-152 on the 2-core development VM: 15.1 img/s against 6.5 in fp32,
    both channels-last); elsewhere bf16 is emulated and slower than fp32."""
    import torch

    probes = {"AMX": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "AVX512-BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    if all(probe is None for probe in probes.values()):
        return Capability("cpu bf16", False, reason="this torch cannot tell whether the CPU has native bf16")
    found = []
    for name, probe in probes.items():
        try:
            if probe is not None and probe():
                found.append(name)
        except Exception:  # noqa: BLE001 - a private probe that fails means "do not rely on it"
            pass
    if not found:
        return Capability("cpu bf16", False, reason="no AMX or AVX512-BF16 on this CPU: fp32 is faster here")
    return Capability("cpu bf16", True, " + ".join(found))


@functools.lru_cache(maxsize=1)
def _compile() -> Capability:
    import torch

    if not hasattr(torch, "compile"):
        return Capability("torch.compile", False, reason="this torch has no torch.compile")
    if sys.version_info >= (3, 14):
        return Capability("torch.compile", False, reason="torch.compile does not support this Python")
    if _cuda().available:
        return _triton() if not _triton().available else Capability("torch.compile", True, torch.__version__)
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return Capability("torch.compile", False, reason="no C compiler for the CPU inductor backend")
    return Capability("torch.compile", True, torch.__version__)


CAPABILITIES = ("cuda", "dali", "nvimgcodec", "cupy", "cuml", "triton", "compile", "cpu_bf16")


def capabilities() -> dict[str, Capability]:
    """Probe everything once (cached). Keys: CAPABILITIES."""
    return {name: capability(name) for name in CAPABILITIES}


def capability(name: str) -> Capability:
    """One of capabilities(), probing only it: the silhouette's Triton check need not import
    DALI, cuML and nvImageCodec (seconds when they are installed). The probe is looked up by
    name when called (_cuda, _dali, ...), so a test may replace one."""
    if name not in CAPABILITIES:
        raise KeyError(f"no capability {name!r}; one of {', '.join(CAPABILITIES)}")
    return globals()[f"_{name}"]()


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(requested: str, device) -> str:
    """'auto' -> 'bf16' on CUDA, and on a CPU with native bf16 (see _cpu_bf16); 'fp32' otherwise.
    An explicit 'fp32' | 'bf16' | 'fp16' is returned as it is."""
    _check_choice("precision", requested, PRECISIONS)
    if requested != "auto":
        return requested
    if str(device).startswith("cuda"):
        return "bf16"
    return "bf16" if _cpu_bf16().available else "fp32"


def _check_choice(param: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{param}={value!r} is not one of: {', '.join(allowed)}")


def resolve_device(requested: str = "auto", notify=None):
    """'auto' | 'cuda' | 'cuda:N' | 'cpu' -> torch.device. 'cuda' without a GPU is an error."""
    import torch

    base = requested.split(":")[0]
    _check_choice("device", base, DEVICES)
    cuda = _cuda()
    if base == "cpu":
        return torch.device("cpu")
    if base == "cuda":
        if not cuda.available:
            raise BackendUnavailable(f"--device {requested}: CUDA is not available ({cuda.reason}); use --device cpu")
        try:
            chosen = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"device={requested!r} is not a device name (cuda, cuda:N, cpu, auto)") from None
        count = torch.cuda.device_count()
        if chosen.index is not None and not 0 <= chosen.index < count:
            raise BackendUnavailable(f"--device {requested}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return chosen
    if cuda.available:
        return torch.device("cuda")
    if notify:
        notify(f"Using CPU: {cuda.reason}")
    return torch.device("cpu")


def resolve_decoder(requested: str, device, notify=None) -> str:
    """Pick the image decoder for `device` (a torch.device).

    auto: on CUDA, DALI if installed, else nvJPEG through torchvision; on the CPU, PIL.
    dali on a CPU device runs DALI's CPU operators (used by the tests against PIL).
    nvimgcodec (nvImageCodec's JPEG decoders, on CUDA) only by name until a GPU run measures it.
    """
    _check_choice("decoder", requested, DECODERS)
    on_gpu = device.type == "cuda"
    if requested == "pil":
        return "pil"
    if requested == "dali":
        dali = _dali()
        if not dali.available:
            raise BackendUnavailable(f"--decoder dali: {dali.reason}")
        return "dali"
    if requested == "nvjpeg":
        if not on_gpu:
            raise BackendUnavailable("--decoder nvjpeg needs --device cuda (nvJPEG decodes on the GPU); " + _cuda().reason)
        return "nvjpeg"
    if requested == "nvimgcodec":
        if not on_gpu:
            raise BackendUnavailable("--decoder nvimgcodec needs --device cuda (it decodes on the GPU); " + _cuda().reason)
        nvimgcodec = _nvimgcodec()
        if not nvimgcodec.available:
            raise BackendUnavailable(f"--decoder nvimgcodec: {nvimgcodec.reason}")
        return "nvimgcodec"
    if not on_gpu:
        return "pil"
    if _dali().available:
        return "dali"
    if notify:
        notify(f"Decoder: nvjpeg (DALI unavailable: {_dali().reason})")
    return "nvjpeg"


def resolve_cluster_backend(requested: str, device, notify=None) -> str:
    """Pick PCA/KMeans/silhouette backend. auto -> 'torch' on every device.

    Rule (see README): our torch backend runs on the data where it already lives (CPU or GPU
    tensors), and its all-K silhouette is the stage that dominates; cuML's silhouette runs one K
    at a time and has failed with memory errors at ~66k rows, so cuML is used only when asked.
    """
    _check_choice("cluster_backend", requested, CLUSTER_BACKENDS)
    if requested == "cuml":
        cuml = _cuml()
        if not cuml.available:
            raise BackendUnavailable(f"--cluster-backend cuml: {cuml.reason}")
        if device.type != "cuda":
            raise BackendUnavailable("--cluster-backend cuml needs --device cuda")
        return "cuml"
    if requested == "sklearn":
        return "sklearn"
    return "torch"


def resolve_cuda_graphs(requested: bool, device) -> bool:
    """--cuda-graphs asked for on a device without CUDA is an error (it was asked for by name)."""
    if requested and not str(device).startswith("cuda"):
        raise BackendUnavailable(f"--cuda-graphs needs --device cuda (CUDA graphs replay GPU work), got {device}")
    return bool(requested)


def resolve_compile(requested: bool, notify=None) -> bool:
    """--compile asked for but unavailable is an error (it was asked for by name)."""
    if not requested:
        return False
    cap = _compile()
    if not cap.available:
        raise BackendUnavailable(f"--compile: {cap.reason}")
    return True
