"""Shared pieces of the benchmark suites (pytest-benchmark). Run: .venv/bin/python -m pytest benchmarks/"""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
