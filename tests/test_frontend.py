"""The GPU loaders' front end: "auto" io threads (one while reading is GIL-bound work, more when
reads wait on storage)."""
from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

import engine.loaders.frontend as frontend
from engine.loaders.frontend import AUTO_MAX_IO_THREADS, FrontEnd, auto_io_threads
from engine.loaders.nvjpeg import NVJPEG_FORMATS, PreparedJpeg


def test_auto_rule():
    assert auto_io_threads(0.0, 1.0) == 1
    assert auto_io_threads(1.0, 1.0) == 1  # waiting no longer than working: GIL-bound, one thread
    assert auto_io_threads(1.5, 1.0) == AUTO_MAX_IO_THREADS  # reads wait: many in flight
    assert auto_io_threads(5.0, 0.0) == AUTO_MAX_IO_THREADS
    assert auto_io_threads(5.0, 1.0, cap=4) == 4


@pytest.fixture()
def jpegs(tmp_path):
    paths = []
    for i in range(96):
        path = tmp_path / f"{i:03d}.jpg"
        Image.new("RGB", (16 + i % 5, 12), (i, 0, 0)).save(path)
        paths.append(path)
    return paths


def _slow_storage(monkeypatch, delay_s: float):
    """Every read waits `delay_s` off the GIL (as a network file system would); returns a dict
    with the largest number of reads seen waiting at once."""
    real = frontend.probe_file
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow_probe(path, *args):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(delay_s)
        with lock:
            state["now"] -= 1
        return real(path, *args)

    monkeypatch.setattr(frontend, "probe_file", slow_probe)
    return state


@pytest.mark.parametrize("io_threads", [None, 1])
def test_waiting_reads_get_more_threads_only_in_auto(jpegs, monkeypatch, io_threads):
    state = _slow_storage(monkeypatch, 0.004)
    with FrontEnd(NVJPEG_FORMATS, 10**9, PreparedJpeg, io_threads=io_threads, name="t") as front:
        sizes = [(p.probe.width, p.probe.height) for _, batch in front.batches(jpegs, 16, 2) for p in batch]
    assert sizes == [(16 + i % 5, 12) for i in range(96)]  # every file, in order, whatever the threads
    if io_threads is None:
        assert front.threads_in_use == AUTO_MAX_IO_THREADS and state["most"] > 1
    else:
        assert front.threads_in_use == 1 and state["most"] == 1
