"""The capability probe and backend choice (this machine: no GPU)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine import device as dev
from engine.errors import BackendUnavailable, ConfigError

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallbacks")


def test_import_creates_no_cuda_context():
    code = ("import engine, engine.device, engine.cli, engine.api; engine.device.capabilities();"
            "import torch; print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_capabilities_have_reasons():
    caps = dev.capabilities()
    assert set(caps) == {"cuda", "dali", "nvimgcodec", "cupy", "cuml", "triton", "compile", "cpu_bf16"}
    for cap in caps.values():
        assert cap.available or cap.reason


def test_the_silhouette_probes_triton_only():
    """The torch silhouette checks whether Triton works; that used to probe every capability,
    importing DALI, cuML and nvImageCodec (seconds each) in every process that scored a K."""
    code = ("import sys, torch; from engine.silhouette import silhouette_all_k;"
            "silhouette_all_k(torch.randn(40, 3), [torch.arange(40) % 2]);"
            "print(sorted(m for m in ('nvidia.dali', 'nvidia.nvimgcodec', 'cuml', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert dev.capability("triton") == dev.capabilities()["triton"]


def test_precision_auto_follows_the_device_and_the_cpu(monkeypatch):
    """bf16 on CUDA, and on a CPU with native bf16 (AMX / AVX512-BF16); fp32 on other CPUs."""
    assert dev.resolve_precision("auto", "cuda") == "bf16"
    assert dev.resolve_precision("fp32", "cuda") == "fp32" and dev.resolve_precision("bf16", "cpu") == "bf16"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(dev, "_cpu_bf16", lambda native=native: dev.Capability("cpu bf16", native, reason="x"))
        assert dev.resolve_precision("auto", torch.device("cpu")) == expected
    with pytest.raises(ConfigError, match="precision='fp8' is not one of"):
        dev.resolve_precision("fp8", "cpu")


def test_cpu_bf16_probe_without_the_private_probes(monkeypatch):
    dev._cpu_bf16.cache_clear()
    try:
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            monkeypatch.delattr(torch.cpu, name, raising=False)
        cap = dev._cpu_bf16()
        assert not cap.available and "cannot tell" in cap.reason
    finally:
        dev._cpu_bf16.cache_clear()


@needs_no_gpu
def test_auto_falls_back_with_one_notice():
    notices = []
    assert dev.resolve_device("auto", notices.append).type == "cpu"
    assert len(notices) == 1 and notices[0].startswith("Using CPU")
    assert dev.resolve_decoder("auto", torch.device("cpu")) == "pil"
    assert dev.resolve_cluster_backend("auto", torch.device("cpu")) == "torch"


@needs_no_gpu
def test_named_but_missing_backends_are_errors():
    with pytest.raises(BackendUnavailable, match="CUDA is not available"):
        dev.resolve_device("cuda")
    with pytest.raises(BackendUnavailable, match="needs --device cuda"):
        dev.resolve_decoder("nvjpeg", torch.device("cpu"))
    with pytest.raises(BackendUnavailable, match=r"pip install -e '\.\[rapids\]'|needs a CUDA GPU"):
        dev.resolve_cluster_backend("cuml", torch.device("cpu"))


def test_unknown_choices_name_the_allowed_values():
    with pytest.raises(ConfigError, match="auto, dali, nvjpeg, nvimgcodec, pil"):
        dev.resolve_decoder("ffmpeg", torch.device("cpu"))
    with pytest.raises(ConfigError, match="auto, torch, cuml, sklearn"):
        dev.resolve_cluster_backend("faiss", torch.device("cpu"))


def test_dali_on_cpu_device_is_allowed_when_installed():
    if not dev.capabilities()["dali"].available:
        with pytest.raises(BackendUnavailable, match="imgcluster\\[gpu\\]"):
            dev.resolve_decoder("dali", torch.device("cpu"))
    else:
        assert dev.resolve_decoder("dali", torch.device("cpu")) == "dali"


def test_doctor_lists_backends(runner):
    from engine.cli import app

    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for name in ("CUDA", "DALI", "cuML", "Triton", "torch.compile", "nvJPEG", "sklearn", "HEIC/HEIF images", "AVIF images",
                 "ImageNet weights", "What auto chooses"):
        assert name in result.output
    if not dev.capabilities()["cupy"].available:  # the install hint survives rich's markup
        assert "'.[gpu]'" in result.output  # the install hint (the table may wrap the rest of it)


def test_doctor_says_which_imagenet_weights_are_cached(runner, tmp_path, monkeypatch):
    """Offline, the default run needs resnet152's ImageNet weights in torch's hub cache: doctor
    says whether they are there, without downloading."""
    import torchvision

    from engine.backbones import cached_imagenet_weights
    from engine.cli import app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # get_dir() reads TORCH_HOME again
    assert cached_imagenet_weights() == ([], tmp_path / "hub" / "checkpoints")
    flat = " ".join(runner.invoke(app, ["doctor"]).output.split())
    assert "not cached" in flat and "--weights random" in flat.replace("│ ", "")
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / torchvision.models.ResNet152_Weights.DEFAULT.url.rsplit("/", 1)[1]).write_bytes(b"")
    assert cached_imagenet_weights()[0] == ["resnet152"]


def test_a_replaced_probe_is_what_capabilities_report(monkeypatch):
    """Probes are looked up when asked for, so replacing one (as tests of the fallbacks do)
    changes capabilities() and capability() alike."""
    off = dev.Capability("triton", False, reason="patched off")
    monkeypatch.setattr(dev, "_triton", lambda: off)
    assert dev.capabilities()["triton"] is off and dev.capability("triton") is off
    with pytest.raises(KeyError, match="no capability 'tpu'"):
        dev.capability("tpu")
