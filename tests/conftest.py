"""Shared fixtures: small generated image sets with known groups, a CLI runner, offline weights."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from typer.testing import CliRunner

from engine.sample_data import generate_sample_set
from tests.gpu_marks import skip_gpu_items_without_cuda

THREE_GROUPS = ("red_stripes", "green_disc", "sunset_gradient")


@pytest.fixture(scope="session")
def three_groups(tmp_path_factory):
    """60 JPEGs in 3 well-separated groups (20 each) under <tmp>/<group>/; returns the folder."""
    folder = tmp_path_factory.mktemp("three_groups")
    generate_sample_set(folder, per_group=20, groups=THREE_GROUPS)
    return folder


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def offline_weights(monkeypatch, tmp_path):
    """No cached ImageNet weights and no network, whatever the machine has: downloads fail at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)


def pytest_collection_modifyitems(config, items):
    skip_gpu_items_without_cuda(items)
