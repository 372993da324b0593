"""The one rule for GPU tests and benchmarks: items marked `gpu` are skipped without CUDA."""
from __future__ import annotations

import pytest
import torch


def skip_gpu_items_without_cuda(items) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
