"""--cuda-graphs: the backbone replayed from CUDA graphs (engine.cuda_graphs).

On the CPU the bookkeeping is tested with a stand-in graph that replays by running the forward
into the static output buffer, which has the real graph's one hazard: the next replay overwrites
the buffer a caller may still hold. With a GPU (@pytest.mark.gpu) the real graphs are compared
with the plain forward, also while another thread keeps the GPU busy, as the loader does.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

from engine.backbones import load_backbone
from engine.cuda_graphs import GraphedForward, _Captured
from engine.errors import BackendUnavailable


class _ReplayByRunning:
    def __init__(self, forward, static_in, static_out):
        self.forward, self.static_in, self.static_out = forward, static_in, static_out

    def replay(self):
        self.static_out.copy_(self.forward(self.static_in))


class _CpuGraphs(GraphedForward):
    """GraphedForward with the capture replaced by a replay-by-running stand-in (CPU tensors)."""

    def _capture(self, x):
        static_in = x.clone()
        static_out = self.forward(static_in).clone()
        return _Captured(_ReplayByRunning(self.forward, static_in, static_out), static_in, static_out)


def _images(n, seed=1):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _graphed(backbone, cls=_CpuGraphs, **options):
    backbone.cuda_graphs = True
    backbone._graphed = cls(lambda x: backbone._forward(x, cache_casts=False), **options)
    return backbone._graphed


def test_a_graphed_backbone_returns_copies_that_the_next_batch_does_not_overwrite():
    backbone = load_backbone("pixels", "auto", "cpu")
    a, b = _images(5, seed=1), _images(5, seed=2)
    expected_a, expected_b = backbone(a), backbone(b)
    graphs = _graphed(backbone)
    got_a = backbone(a)
    got_b = backbone(b)  # same padded size (8): the same graph replayed over the same buffer
    torch.testing.assert_close(got_a, expected_a)
    torch.testing.assert_close(got_b, expected_b)
    assert graphs.captures == 1 and backbone.static_shapes


def test_after_prepare_a_new_size_runs_the_plain_forward_instead_of_capturing():
    """Extraction captures before its loader starts; a new size later (after an OOM halving)
    must not be captured while the loader's threads use the GPU."""
    backbone = load_backbone("pixels", "auto", "cpu")
    graphs = _graphed(backbone)
    backbone.prepare_graphs(8, input_dtype=torch.float32)
    assert graphs.captures == 1 and not graphs.capture_new
    plain = load_backbone("pixels", "auto", "cpu")
    torch.testing.assert_close(backbone(_images(4), pad_to=4), plain(_images(4)))  # size 4: not captured
    torch.testing.assert_close(backbone(_images(5), pad_to=8), plain(_images(5)))  # size 8: replayed
    assert graphs.captures == 1
    backbone.release_graphs()
    assert len(graphs._graphs) == 0 and graphs.capture_new


def test_compile_and_cuda_graphs_together_are_refused():
    from engine.config import Config
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="not tested yet"):
        Config.from_kwargs(compile=True, cuda_graphs=True)


def test_one_graph_per_size_and_the_oldest_is_dropped():
    backbone = load_backbone("pixels", "auto", "cpu")
    graphs = _graphed(backbone, max_graphs=2)
    for n in (8, 16, 8, 4, 16):  # 8, 16 captured; 8 reused; 4 evicts 16; 16 captured again
        backbone(_images(n), pad_to=n)
    assert graphs.captures == 4 and len(graphs._graphs) == 2


def test_extraction_with_graphs_runs_one_batch_size(three_groups):
    """A short last batch and a batch with a skipped file are padded to the full batch: one graph."""
    from engine.features import extract_features
    from engine.loaders import make_loader

    paths = sorted(three_groups.rglob("*.jpg"))[:11]
    paths.insert(3, three_groups / "missing.jpg")
    backbone = load_backbone("pixels", "auto", "cpu")
    expected = extract_features(paths, make_loader("pil", torch.device("cpu")), backbone, 8).features
    graphs = _graphed(backbone)
    got = extract_features(paths, make_loader("pil", torch.device("cpu")), backbone, 8)
    torch.testing.assert_close(got.features, expected)
    assert graphs.captures == 1 and len(got.failures) == 1


def test_cuda_graphs_without_cuda_is_an_error_before_any_work(three_groups, tmp_path, runner):
    from engine import ImageClusterer
    from engine.cli import app

    with pytest.raises(BackendUnavailable, match="--cuda-graphs needs a CUDA device"):
        load_backbone("pixels", "auto", "cpu", cuda_graphs=True)
    with pytest.raises(BackendUnavailable, match="--cuda-graphs needs --device cuda"):
        ImageClusterer(model="pixels", device="cpu", cuda_graphs=True).fit([three_groups])
    result = runner.invoke(app, ["run", str(three_groups), "--out", str(tmp_path / "out"), "--model", "pixels",
                                 "--device", "cpu", "--cuda-graphs"])
    assert result.exit_code == 2 and "--cuda-graphs needs --device cuda" in result.output
    assert not (tmp_path / "out").exists()


def test_a_fitted_model_serves_without_the_runs_graphs(three_groups):
    """Requests come in every size: the predictor uses the run's backbone without graphs."""
    from engine import ImageClusterer
    from engine.model import FittedModel

    clusterer = ImageClusterer(model="pixels", device="cpu", pca=10, k="2:4").fit([three_groups])
    clusterer.result_.backbone.cuda_graphs = True
    model = FittedModel.from_result(clusterer.result_)
    assert model.backbone.cuda_graphs is False and model.backbone.module is clusterer.result_.backbone.module
    assert clusterer.result_.backbone.cuda_graphs is True


# -- on a GPU ---------------------------------------------------------------------------------


def _cuda_resnet(cuda_graphs: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone("resnet18", "random", "cuda", seed=0, cuda_graphs=cuda_graphs)


@pytest.mark.gpu
def test_real_graphs_match_the_plain_forward_while_another_thread_uses_the_gpu():
    plain, graphed = _cuda_resnet(False), _cuda_resnet(True)
    batches = [torch.randn(n, 3, 224, 224, device="cuda", dtype=torch.float16) for n in (64, 64, 37)]
    expected = [plain(b, pad_to=64) for b in batches]
    stop = threading.Event()
    errors, iterations = [], [0]

    def busy():  # what a loader's decode thread does after the capture: its own stream, allocations, syncs
        try:
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                x = torch.full((512, 512), 0.5, device="cuda")  # no RNG: the generator is the capture's
                while not stop.is_set():
                    (x @ x).sum().item()
                    iterations[0] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    graphed.prepare_graphs(64)  # captured with no other thread on the GPU, as extraction does
    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        got = [graphed(b, pad_to=64) for b in batches]
        graphed(batches[0], pad_to=128)  # a new size while the thread runs: the plain forward, no capture
    finally:
        stop.set()
        thread.join()
    torch.cuda.synchronize()
    assert not errors and iterations[0] > 0
    assert graphed._graphed.captures == 1
    for g, e in zip(got, expected):
        cos = torch.nn.functional.cosine_similarity(g, e, dim=1)
        assert g.shape == e.shape and cos.min().item() > 0.999


@pytest.mark.gpu
def test_a_run_with_graphs_clusters_as_the_run_without(three_groups):
    from sklearn.metrics import adjusted_rand_score

    from engine import ImageClusterer

    params = dict(model="resnet18", weights="random", device="cuda", pca=10, k="2:4", batch_size=16)
    plain = ImageClusterer(**params).fit([three_groups])
    graphed = ImageClusterer(cuda_graphs=True, **params).fit([three_groups])
    assert graphed.result_.summary["config"]["cuda_graphs"] is True
    assert adjusted_rand_score(plain.labels_, graphed.labels_) == 1.0
    np.testing.assert_array_equal(np.asarray(plain.paths_), np.asarray(graphed.paths_))


def test_out_of_memory_inside_a_capture_is_reported_as_out_of_memory():
    """The capture's own error hides the OOM that caused it; the back-off must still see an OOM."""
    from engine.cuda_graphs import _caused_by_oom

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as exc:
        assert _caused_by_oom(exc)
    assert not _caused_by_oom(RuntimeError("CUDA error: operation not permitted when stream is capturing"))


def test_an_out_of_memory_capture_before_extraction_halves_the_batch(three_groups):
    """The capture before the loader starts goes through the OOM back-off like any batch."""
    from engine.features import extract_features
    from engine.loaders import make_loader

    class OomAbove4(_CpuGraphs):
        def _capture(self, x):
            if x.shape[0] > 4:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated capture at batch 8)")
            return super()._capture(x)

    paths = sorted(three_groups.rglob("*.jpg"))[:10]
    backbone = load_backbone("pixels", "auto", "cpu")
    expected = extract_features(paths, make_loader("pil", torch.device("cpu")), backbone, 8).features
    graphs = _graphed(backbone, cls=OomAbove4)
    notices = []
    got = extract_features(paths, make_loader("pil", torch.device("cpu")), backbone, 8, notify=notices.append)
    torch.testing.assert_close(got.features, expected)
    assert graphs.captures == 1 and any("batch size 4" in n for n in notices)


def test_a_graphed_backbone_pickles_without_its_graphs():
    import pickle

    backbone = load_backbone("pixels", "auto", "cpu")
    _graphed(backbone)
    backbone(_images(2))
    copy = pickle.loads(pickle.dumps(backbone))
    assert copy.cuda_graphs and copy._graphed is None and backbone._graphed is not None


def test_the_backends_line_says_how_the_backbone_ran():
    import torch as _torch

    from engine.pipeline import Backends

    backbone = load_backbone("pixels", "auto", "cpu")
    backends = Backends(_torch.device("cpu"), "pil", "torch")
    assert backends.as_dict(backbone)["backbone"] == "pixels (none, fp32)"
    backbone.cuda_graphs = True
    assert backends.as_dict(backbone)["backbone"] == "pixels (none, fp32, cuda graphs)"
