"""Where the nvJPEG loader's time goes, piece by piece, on one GPU.

    python benchmarks/profile_nvjpeg.py --n 2048 --batch 256       # on a CUDA machine

The first H100 runs (benchmarks/RESULTS.md) measured the whole loader at 1.9k-2.3k img/s against
15.5k for nvJPEG batched decode alone (DESIGN.md), so something around the decode costs most of
the time. Each row times one piece over the same files, after a warm-up, in images per second:
- read: the files' bytes, in the loader's thread pool;
- front end (N io): read + header probe + tensor for every file, the loader's own front end
  (`frontend.FrontEnd`) with N io threads ("auto", the default, then 1, 2, 4, 8, 16);
- decode_jpeg (CUDA): `torchvision.io.decode_jpeg(list, device="cuda")` on pre-read bytes, per batch;
  then per call size (64 .. 1024 files a call): the hardware decoder's rate may depend on it, and
  the loader makes one call per batch (the H100's auto batch is 512);
- resize+crop: `batched_resize_crop` on the decoded images, per batch;
- decode_batch: everything after the CPU stage (decode, EXIF, resize, normalize), per batch;
- nvimgcodec decode / decode_batch (nvimgcodec): the same two with nvImageCodec decoding the JPEGs
  (--decoder nvimgcodec; its GPU decoders on CUDA, libjpeg-turbo on the CPU), when installed;
- loader (N io): `NvJpegLoader.batches` end to end (what `bench` calls decode_resize) with N io
  threads: the row that decides DEFAULT_IO_THREADS on a GPU machine;
- launch tax: the host time of a tiny op (a kernel launch) alone and while the loader runs;
- extract (CUDA, --extract-n images, the bench's batch size): the loader and a bf16 ResNet-152
  together (`extract_features`, what `bench` calls extract) for EXTRACT_VARIANTS: the nvJPEG
  loader's defaults, its best knob in run 4 (2 batches ahead), all its knobs; nvImageCodec
  decoding, alone, 2 ahead, on its own stream; with the seconds the model waited for decoded batches.
Dry run on a CPU machine: --device cpu (decode_jpeg then runs libjpeg; no loader row).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def main(argv=None) -> int:
    from engine.bench import make_bench_set
    from engine.loaders.decode import DEFAULT_MAX_PIXELS, read_bytes
    from engine.loaders.frontend import DEFAULT_IO_THREADS, FrontEnd
    from engine.loaders.nvjpeg import (NVJPEG_FORMATS, NvJpegLoader, PreparedJpeg, batched_resize_crop,
                                       decode_batch, prepare_jpeg_file)
    from torchvision.io import ImageReadMode, decode_jpeg

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "imgcluster-bench"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="resnet152", help="backbone for the extract rows")
    p.add_argument("--extract-n", type=int, default=4096, help="images for the extract rows (0: none)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of the extract rows (run 4: 3 were too few)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    paths = make_bench_set(Path(args.folder), args.n)[: args.n]
    threads = min(32, os.cpu_count() or 1)
    batches = [paths[i:i + args.batch] for i in range(0, len(paths), args.batch)]
    print(f"nvJPEG loader profile: {len(paths)} files, batch {args.batch}, read row on {threads} threads, "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}", flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def row(name, fn, images=len(paths)):
        fn()  # warm-up: pools, nvJPEG handles, kernels
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        seconds = time.perf_counter() - t0
        print(f"{name:<24}{images / seconds:>12,.0f} img/s{seconds:>9.3f} s", flush=True)

    with ThreadPoolExecutor(threads) as pool:
        row("read", lambda: list(pool.map(read_bytes, paths)))
    # the loader's front end (runs of files per io task, 2 batches ahead) runs Python under the
    # GIL: how its rate moves with the number of io threads
    io_counts = [None, *sorted({1, 2, 4, 8, 16, DEFAULT_IO_THREADS})]  # None: "auto" (the default)
    for count in io_counts:
        with FrontEnd(NVJPEG_FORMATS, DEFAULT_MAX_PIXELS, PreparedJpeg, io_threads=count) as front:
            row(f"front end ({count or 'auto'} io)", lambda: [len(r) for _, r in front.batches(paths, args.batch, 2)])

    prepared = [[prepare_jpeg_file(q, DEFAULT_MAX_PIXELS) for q in b] for b in batches]
    encoded = [[pj.tensor for pj in b if pj.probe is not None] for b in prepared]  # the JPEG fast path only
    decoded = [decode_jpeg(e, mode=ImageReadMode.RGB, device=device) for e in encoded]
    row("decode_jpeg", lambda: [decode_jpeg(e, mode=ImageReadMode.RGB, device=device) for e in encoded])
    flat = [t for e in encoded for t in e]
    for size in (64, 128, 512, 1024):
        if size <= len(flat):
            calls = [flat[i:i + size] for i in range(0, len(flat), size)]
            row(f"decode_jpeg ({size}/call)", lambda: [decode_jpeg(c, mode=ImageReadMode.RGB, device=device) for c in calls],
                images=len(flat))
    row("resize+crop", lambda: [batched_resize_crop(d) for d in decoded])
    row("decode_batch", lambda: [decode_batch(i * args.batch, b, device, torch.float16, DEFAULT_MAX_PIXELS)
                                 for i, b in enumerate(prepared)])
    nvimgcodec_rows(prepared, device, args.batch, row)
    if device.type == "cuda":
        for count in io_counts:
            loader = NvJpegLoader(device, io_threads=count)
            row(f"loader ({count or 'auto'} io)", lambda: [b.images.shape for b in loader.batches(paths, args.batch)])
            if count is None:
                print(f"  (auto chose {loader.io_threads_used} io threads)", flush=True)
        tuned = NvJpegLoader(device, **ALL_KNOBS)
        row("loader (all knobs)", lambda: [b.images.shape for b in tuned.batches(paths, args.batch)])
        if nvimgcodec_usable(device):
            from engine.loaders.nvimgcodec import NvImageCodecLoader

            other = NvImageCodecLoader(device)
            row("loader (nvimgcodec)", lambda: [b.images.shape for b in other.batches(paths, args.batch)])

    def whole_loader():  # the front end alone on the CPU (no nvJPEG there)
        if device.type == "cuda":
            return [b.images.shape for b in NvJpegLoader(device).batches(paths, args.batch)]
        with FrontEnd(NVJPEG_FORMATS, DEFAULT_MAX_PIXELS, PreparedJpeg) as front:
            return [len(r) for _, r in front.batches(paths, args.batch, 2)]

    launch_tax(whole_loader, device)
    if device.type == "cuda" and args.extract_n > 0:
        extract_rows(Path(args.folder), args.extract_n, args.model, device, repeats=args.rounds)
    return 0


def nvimgcodec_usable(device: torch.device) -> bool:
    """nvImageCodec importable, and on CUDA its GPU decoders' nvJPEG library found (engine.device)."""
    from engine.device import capabilities

    if device.type == "cuda":
        return capabilities()["nvimgcodec"].available
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ImportError:  # no `nvidia` package at all
        return False


def nvimgcodec_rows(prepared: list, device: torch.device, batch: int, row) -> None:
    """The decode alone and decode_batch with nvImageCodec decoding the JPEGs, per batch."""
    if not nvimgcodec_usable(device):
        print("nvimgcodec rows: skipped (nvImageCodec or its nvJPEG library is not installed)", flush=True)
        return
    from engine.loaders.decode import DEFAULT_MAX_PIXELS
    from engine.loaders.nvimgcodec import NvImageCodecJpegs
    from engine.loaders.nvjpeg import decode_batch

    jpegs = NvImageCodecJpegs(device)
    items = [[(k, pj.probe, pj.tensor) for k, pj in enumerate(b) if pj.probe is not None] for b in prepared]
    context = torch.cuda.device(device) if device.type == "cuda" else _nothing()
    with context:
        row("nvimgcodec decode", lambda: [jpegs(group, DEFAULT_MAX_PIXELS, {}, []) for group in items])
        row("decode_batch (nvimgcodec)", lambda: [decode_batch(i * batch, b, device, torch.float16, DEFAULT_MAX_PIXELS,
                                                               jpeg_decoder=jpegs) for i, b in enumerate(prepared)])


def _nothing():
    import contextlib

    return contextlib.nullcontext()


# The loader's tuning knobs (NvJpegLoader): the defaults (H100 run 3's loader), each change alone, all.
ALL_KNOBS = dict(decode_ahead=2, high_priority=True, overlap_resize=True)
# (row name, decoder, loader knobs). Run 4 compared the nvJPEG loader's knobs: all correct, the
# timings inside the defaults' spread, "+ 2 ahead" the best median. Its rows stay; nvImageCodec's join.
EXTRACT_VARIANTS = (
    ("nvjpeg defaults", "nvjpeg", dict()),
    ("nvjpeg + 2 ahead", "nvjpeg", dict(decode_ahead=2)),
    ("nvjpeg all knobs", "nvjpeg", ALL_KNOBS),
    ("nvimgcodec", "nvimgcodec", dict()),
    ("nvimgcodec + 2 ahead", "nvimgcodec", dict(decode_ahead=2)),
    ("nvimgcodec own stream", "nvimgcodec", dict(own_stream=True)),
)


def extract_rows(folder: Path, n: int, model: str, device: torch.device, repeats: int = 3) -> None:
    """Loader + model together for each of EXTRACT_VARIANTS, at the bench's batch size: img/s and
    the seconds the model waited for decoded batches, the median of `repeats` timed runs taken in
    rounds (every variant once per round, so drift over time does not favour one), after a warm-up
    run of each."""
    import statistics

    import warnings

    from engine.backbones import load_backbone
    from engine.bench import make_bench_set
    from engine.features import auto_batch_size, extract_features
    from engine.loaders.nvjpeg import NvJpegLoader

    paths = make_bench_set(folder, n)[:n]
    batch = auto_batch_size(device, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are intended here
        backbone = load_backbone(model, "random", device)
    print(f"extract: {n} files, batch {batch}, {model} {backbone.precision}, median of {repeats} rounds",
          flush=True)
    loaders = {name: NvJpegLoader(device, **knobs) for name, decoder, knobs in EXTRACT_VARIANTS if decoder == "nvjpeg"}
    if nvimgcodec_usable(device):
        from engine.loaders.nvimgcodec import NvImageCodecLoader

        loaders.update({name: NvImageCodecLoader(device, **knobs)
                        for name, decoder, knobs in EXTRACT_VARIANTS if decoder == "nvimgcodec"})
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
    for loader in loaders.values():
        extract_features(paths, loader, backbone, batch)  # warm-up: threads, streams, cuDNN plans
    for _ in range(repeats):
        for name, loader in loaders.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            extraction = extract_features(paths, loader, backbone, batch)  # ends with a device sync
            timings[name].append((time.perf_counter() - t0, extraction.waited_for_loader))
    for name, runs in timings.items():
        seconds = statistics.median(s for s, _ in runs)
        waited = statistics.median(w for _, w in runs)
        spread = max(s for s, _ in runs) - min(s for s, _ in runs)
        print(f"extract {name:<22}{n / seconds:>9,.0f} img/s{seconds:>8.3f} s (spread {spread:.3f})   "
              f"model waited {waited:.3f} s", flush=True)


def launch_tax(run_loader, device: torch.device, ops: int = 20000) -> None:
    """Host time per tiny tensor op (a kernel launch on CUDA, what the model thread does ~670
    times per bf16 ResNet-152 forward) alone and while the loader runs on other threads: every op
    releases and retakes the GIL, which the loader's Python threads hold meanwhile. On the 2-core VM
    with the front end alone: 1 io thread 1.9-6.8x slower ops, 16 io threads 11-34x."""
    import threading

    x = torch.zeros(4, device=device)

    def per_op() -> float:
        t0 = time.perf_counter()
        for _ in range(ops):
            x.add_(1)
        return (time.perf_counter() - t0) / ops * 1e6

    alone = min(per_op() for _ in range(3))
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            run_loader()

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    time.sleep(0.5)  # past the loader's start-up
    during = min(per_op() for _ in range(3))
    stop.set()
    thread.join()
    print(f"launch tax: a tiny op {alone:.1f} us alone, {during:.1f} us while the loader runs "
          f"({during / alone:.1f}x)", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
