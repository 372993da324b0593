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
    assert set(caps) == {"cuda", "dali", "cupy", "cuml", "triton", "compile"}
    for cap in caps.values():
        assert cap.available or cap.reason


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
    with pytest.raises(BackendUnavailable, match="imgcluster\\[rapids\\]|needs a CUDA GPU"):
        dev.resolve_cluster_backend("cuml", torch.device("cpu"))


def test_unknown_choices_name_the_allowed_values():
    with pytest.raises(ConfigError, match="auto, dali, nvjpeg, pil"):
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
    for name in ("CUDA", "DALI", "cuML", "Triton", "torch.compile", "nvJPEG", "sklearn", "What auto chooses"):
        assert name in result.output
    if not dev.capabilities()["cupy"].available:  # the install hint survives rich's markup
        assert "imgcluster[gpu]" in result.output.replace("\n", "")
