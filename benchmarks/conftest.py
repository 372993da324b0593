"""Shared pieces of the benchmark suites (pytest-benchmark). Run: .venv/bin/python -m pytest benchmarks/bench_*.py"""
from __future__ import annotations

from tests.gpu_marks import skip_gpu_items_without_cuda


def pytest_collection_modifyitems(config, items):
    skip_gpu_items_without_cuda(items)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
