"""Extraction records how long the model's thread waited for the loader (decode-bound or not)."""
from __future__ import annotations

import time

from engine.backbones import load_backbone
from engine.features import _waiting, extract_features
from engine.loaders.pil import PILLoader
from engine.sources import discover


class SlowLoader:
    """PILLoader whose every batch takes `delay` seconds longer to arrive."""

    def __init__(self, delay: float):
        self.inner, self.delay = PILLoader(), delay

    def batches(self, paths, batch_size):
        for batch in self.inner.batches(paths, batch_size):
            time.sleep(self.delay)
            yield batch


def test_extraction_counts_the_wait_for_a_slow_loader(three_groups):
    paths = discover([three_groups]).paths  # 60 images: 4 batches of 16
    backbone = load_backbone("pixels")
    slow = extract_features(paths, SlowLoader(0.1), backbone, 16)
    assert slow.waited_for_loader >= 4 * 0.1
    assert slow.waited_for_loader <= slow.seconds
    quick = extract_features(paths, PILLoader(), backbone, 16)
    assert 0 < quick.waited_for_loader <= quick.seconds
    assert quick.waited_for_loader < slow.waited_for_loader - 0.3


def test_waiting_adds_each_wait_and_closes_what_it_wraps():
    closed = []

    def items():
        try:
            for i in range(5):
                time.sleep(0.02)
                yield i
        finally:
            closed.append(True)

    clock = [0.0]
    assert list(_waiting(items(), clock)) == [0, 1, 2, 3, 4]
    assert clock[0] >= 5 * 0.02 and closed == [True]

    clock, closed[:] = [0.0], []
    inner = items()  # held here, so garbage collection cannot be what closes it
    early = _waiting(inner, clock)
    assert next(early) == 0
    early.close()  # the consumer stops early: the loader's generator is closed now, not at collection
    assert closed == [True] and 0.02 <= clock[0] < 0.5
