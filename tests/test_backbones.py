"""Backbones and weights: local state dicts, random init, offline auto."""
from __future__ import annotations

import pytest
import torch
import torchvision

from engine.backbones import load_backbone
from engine.errors import ConfigError, WeightsUnavailable


def _images(n=3):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_path_reproduces_in_memory_model(tmp_path, suffix):
    torch.manual_seed(123)
    model = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = model(_images())
    backbone = load_backbone("resnet18", path, "cpu", precision="fp32")
    got = backbone(_images())
    assert got.shape == (3, 512)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert backbone.weights == str(path)


def test_feature_dims():
    with pytest.warns(UserWarning, match="random weights"):
        assert load_backbone("resnet50", "random", "cpu").dim == 2048
    assert load_backbone("pixels", "auto", "cpu")(_images(2)).shape == (2, 192)


def test_random_weights_are_seeded_and_warn():
    with pytest.warns(UserWarning, match="not meaningful"):
        a = load_backbone("resnet18", "random", "cpu", seed=5)
    with pytest.warns(UserWarning):
        b = load_backbone("resnet18", "random", "cpu", seed=5)
    torch.testing.assert_close(a(_images(1)), b(_images(1)))
    assert a.fingerprint == b.fingerprint


def test_fingerprint_depends_on_weights(tmp_path):
    with pytest.warns(UserWarning):
        a = load_backbone("resnet18", "random", "cpu", seed=1)
        b = load_backbone("resnet18", "random", "cpu", seed=2)
    assert a.fingerprint != b.fingerprint


def test_auto_offline_names_both_alternatives(offline_weights):
    with pytest.raises(WeightsUnavailable) as info:
        load_backbone("resnet18", "auto", "cpu")
    assert "--weights PATH" in str(info.value) and "--weights random" in str(info.value)


def test_bad_weights_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="not a readable state dict"):
        load_backbone("resnet18", path, "cpu")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsUnavailable, match="do not fit"):
        load_backbone("resnet18", tmp_path / "wrong.pth", "cpu")


def test_unknown_model():
    with pytest.raises(ConfigError, match="not one of"):
        load_backbone("vgg16")


def test_compiled_models_pad_odd_batches_without_changing_results():
    with pytest.warns(UserWarning):
        backbone = load_backbone("resnet18", "random", "cpu")
    images = _images(3)
    expected = backbone(images)
    backbone.compiled = True  # the padding path, without paying for torch.compile on 2 cores
    torch.testing.assert_close(backbone(images), expected)


class _ShapeRecorder(torch.nn.Module):
    """Wraps a module and records the batch sizes it is called with (what a compiled graph sees)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.sizes = module, []

    def forward(self, images):
        self.sizes.append(images.shape[0])
        return self.module(images)


def test_compiled_models_pad_to_the_callers_batch_size():
    backbone = load_backbone("pixels", "auto", "cpu")
    expected = backbone(_images(5))
    backbone.compiled = True
    backbone.module = recorder = _ShapeRecorder(backbone.module)
    torch.testing.assert_close(backbone(_images(5), pad_to=16), expected)
    torch.testing.assert_close(backbone(_images(5)), expected)
    backbone(_images(16), pad_to=16)
    backbone(_images(20), pad_to=16)  # larger than pad_to: the next power of two instead
    assert recorder.sizes == [16, 8, 16, 32]


def test_extraction_with_a_compiled_model_runs_one_batch_size(three_groups):
    """A short last batch and batches with skipped files reuse the full-batch graph (no recompiles)."""
    from engine.features import extract_features
    from engine.loaders import make_loader

    paths = sorted(three_groups.rglob("*.jpg"))[:11]
    paths.insert(3, three_groups / "missing.jpg")  # a batch with a skipped file
    backbone = load_backbone("pixels", "auto", "cpu")
    expected = extract_features(paths, make_loader("pil", torch.device("cpu")), backbone, 8).features
    backbone.compiled = True
    backbone.module = recorder = _ShapeRecorder(backbone.module)
    got = extract_features(paths, make_loader("pil", torch.device("cpu")), backbone, 8)  # 7 good + 4
    torch.testing.assert_close(got.features, expected)
    assert len(got.failures) == 1 and recorder.sizes == [8, 8]


def test_cpu_precision_and_layout(monkeypatch):
    """'auto' follows the CPU's native bf16; pixels stays fp32; channels_last can be turned off and
    gives the same features (up to float rounding)."""
    from engine import device

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "_cpu_bf16", lambda native=native: device.Capability("cpu bf16", native))
        with pytest.warns(UserWarning):
            assert load_backbone("resnet18", "random", "cpu").precision == expected
        assert load_backbone("pixels", "auto", "cpu").precision == "fp32"
    with pytest.warns(UserWarning):
        nhwc = load_backbone("resnet18", "random", "cpu", precision="fp32")
    with pytest.warns(UserWarning):
        nchw = load_backbone("resnet18", "random", "cpu", precision="fp32", channels_last=False)
    assert nhwc.channels_last and not nchw.channels_last
    assert next(nhwc.module.parameters()).dim() == 4 and next(nhwc.module.parameters()).is_contiguous(
        memory_format=torch.channels_last)
    images = _images(2)
    torch.testing.assert_close(nhwc(images), nchw(images), rtol=1e-4, atol=1e-4)


def test_a_pickled_whole_model_gets_a_state_dict_hint(tmp_path):
    import torchvision

    from engine.backbones import load_backbone
    from engine.errors import WeightsUnavailable

    path = tmp_path / "full.pt"
    torch.save(torchvision.models.resnet18(), path)  # the whole module, not its state dict
    with pytest.raises(WeightsUnavailable, match=r"pickled Python objects \(a whole model\?\), not a plain state dict.*model\.state_dict\(\)"):
        load_backbone("resnet18", weights=path, device="cpu")


def test_missing_keys_are_named_and_an_empty_list_is_not_printed(tmp_path):
    import torchvision

    from engine.backbones import load_backbone
    from engine.errors import WeightsUnavailable

    state = torchvision.models.resnet18().state_dict()
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailable) as info:
        load_backbone("resnet18", weights=path, device="cpu")
    assert "1 missing keys (e.g. layer1.0.conv1.weight)" in str(info.value)
    assert "unexpected" not in str(info.value) and "[]" not in str(info.value)


def test_weights_given_with_pixels_are_said_to_be_unused(tmp_path):
    """--model pixels takes no weights: a weights file or "random" given with it is not silently dropped."""
    from engine.backbones import load_backbone

    said = []
    load_backbone("pixels", "random", "cpu", warn=said.append)
    load_backbone("pixels", "auto", "cpu", warn=said.append)  # the default: nothing to say
    assert said == ["--model pixels has no weights: --weights 'random' is not used"]
