"""Bounded memory: peak RSS of a whole run at 20,000 and 80,000 small images, each in a fresh process.

The only thing that should grow with the number of images n is the feature data and the arrays
derived from it. Everything else (decode buffers, batches, cache shards in flight) is a constant.
Per phase of the run, a sampler thread in the child process records the peak resident set size
(/proc/self/statm every 5 ms, plus VmHWM at the end). The arrays that are expected to grow are
accounted for explicitly, per phase (f = n x 192 x 4 bytes, the pixels model's features; r = n x
PCA x 4, the reduced features):

  extract   features buffer                                              f
  pca       features + float64 copy + float64 centred copy (reduce.pca_torch)   f + 2f + 2f = 5f
            then transform: features + (features - mean) temporary + reduced     2f + r
  k-search  features + reduced + centred copy in the silhouette + its distance tile
            tile = 8 bytes (float64) x rows x n, rows from engine.silhouette._auto_chunk (a 256 MiB budget on
            the CPU, at least 8 row blocks): 268 MB at 20k and at 80k
  write     features + reduced + CSV text of the paths

Check: for each phase, (peak(80k) - expected(80k)) <= 1.2 x (peak(20k) - expected(20k)), i.e. what
is left after the accounted arrays (the interpreter, torch, buffers, per-image Python objects)
grows by at most 20 % when n grows 4x.

Setup: 32 x 32 random-colour PNGs, generated once into $TMPDIR/imgcluster-bench-memory (about
40 s for 80,000 with 2 processes; reused afterwards), in folders of 1,000; the 20k run reads the
first 20 folders. Runs: pixels model, --k 2:3, --pca 16 (PCA to 16 keeps the exact 80k silhouette
at about 25 s on 2 cores instead of about 2 minutes at 192 dimensions), no report, feature cache on.

Run:  .venv/bin/python benchmarks/bench_memory.py                 (about 3 minutes on 2 cores)
      .venv/bin/python benchmarks/bench_memory.py --sizes 2000,8000   (quick look)
      .venv/bin/python -m pytest benchmarks/bench_memory.py -s       (same as the first, as a test)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PER_DIR = 1000
DIM = 192  # pixels model: 3 x 8 x 8
PCA = 16
PHASES = ("start", "extract", "pca", "k-search", "write")
RATIO_LIMIT = 1.2


# --------------------------------------------------------------------------- corpus


def _write_dir(args) -> int:
    folder, start, count = args
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        colour = rng.integers(0, 256, 3)
        arr = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:06d}.png", compress_level=1)
    return count


def make_corpus(root: Path, n: int) -> list[Path]:
    """n 32x32 PNGs under root/dNNN/ (PER_DIR per folder), generated once; returns the folders."""
    from concurrent.futures import ProcessPoolExecutor

    n_dirs = (n + PER_DIR - 1) // PER_DIR
    dirs = [root / f"d{i:03d}" for i in range(n_dirs)]
    todo = [(str(d), i * PER_DIR, PER_DIR) for i, d in enumerate(dirs)
            if not (d / ".done").exists()]
    if todo:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
            for (folder, _, _), _ in zip(todo, pool.map(_write_dir, todo)):
                (Path(folder) / ".done").touch()
        print(f"generated {len(todo) * PER_DIR} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return dirs


# --------------------------------------------------------------------------- child: one run


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vmhwm_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child(dirs: list[str], out: str) -> dict:
    """Run the pipeline in this process; peak RSS per phase (bytes) and the run's counts."""
    import contextlib

    from engine.config import Config
    from engine.pipeline import run_pipeline
    from engine.progress import Reporter

    peaks = {phase: 0 for phase in PHASES}
    state = {"phase": "start", "stop": False}

    def sample():
        while not state["stop"]:
            rss = _rss_bytes()
            phase = state["phase"]
            peaks[phase] = max(peaks[phase], rss)
            time.sleep(0.005)

    class PhaseReporter(Reporter):
        @contextlib.contextmanager
        def task(self, description, total, transient=False):
            if description.startswith("Finding"):  # discovery: part of the "start" phase
                yield lambda k: None
                return
            state["phase"] = "extract" if description.startswith("Extract") else "k-search"
            yield lambda k: None
            state["phase"] = "pca" if description.startswith("Extract") else "write"

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    config = Config.from_kwargs(model="pixels", k="2:3", pca=PCA, device="cpu")
    t0 = time.perf_counter()
    result = run_pipeline(dirs, config, out_dir=out, reporter=PhaseReporter(), report=False)
    seconds = time.perf_counter() - t0
    state["stop"] = True
    thread.join()
    return {"n": len(result.paths), "seconds": round(seconds, 1), "peaks": peaks, "vmhwm": _vmhwm_bytes(),
            "stage_seconds": {k: v["seconds"] for k, v in result.timings.items()}}


# glibc raises its mmap threshold to the size of the largest block freed so far (up to 32 MiB), after
# which the 19 MB float batches come from the heap and freed ones stay resident, by a varying amount
# (measured: 560 to 1,100 MiB peak for the same 2,000-image extraction). A fixed threshold makes
# blocks over 4 MiB go back to the system when freed, so the peak shows what the program holds.
# It is set for the measurement only; `--allocator default` measures glibc's defaults instead.
FIXED_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(4 * 2**20)}


def measure(dirs: list[Path], workdir: Path, allocator: str = "fixed") -> dict:
    """One run in a fresh interpreter (so nothing of an earlier run is counted)."""
    out = workdir / f"out-{len(dirs)}"
    cmd = [sys.executable, __file__, "--child", str(out), *map(str, dirs)]
    env = dict(os.environ, **(FIXED_ALLOCATOR if allocator == "fixed" else {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- accounting


def _tile_bytes(n: int) -> int:
    """The silhouette's distance tile: rows x n in the CPU's work dtype (float64), rows from the
    engine's own memory budget."""
    import torch

    from engine.silhouette import _auto_chunk, _work_dtype

    cpu = torch.device("cpu")
    return torch.empty(0, dtype=_work_dtype(cpu)).element_size() * _auto_chunk(n, cpu) * n


def expected_bytes(n: int) -> dict[str, int]:
    """Bytes per phase that are expected to scale with n (see the module docstring)."""
    f = n * DIM * 4
    r = n * PCA * 4
    return {"start": 0, "extract": f, "pca": 5 * f, "k-search": f + 2 * r + _tile_bytes(n), "write": f + r}


def compare(small: dict, large: dict) -> tuple[list[dict], bool]:
    rows, ok = [], True
    es, el = expected_bytes(small["n"]), expected_bytes(large["n"])
    for phase in PHASES[1:]:
        ps, pl = small["peaks"][phase], large["peaks"][phase]
        rest_s, rest_l = ps - es[phase], pl - el[phase]
        ratio = rest_l / rest_s if rest_s > 0 else float("inf")
        ok &= ratio <= RATIO_LIMIT
        rows.append({"phase": phase, "peak_small_mb": ps / 2**20, "peak_large_mb": pl / 2**20,
                     "expected_small_mb": es[phase] / 2**20, "expected_large_mb": el[phase] / 2**20,
                     "rest_small_mb": rest_s / 2**20, "rest_large_mb": rest_l / 2**20, "ratio": ratio})
    return rows, ok


def report(small: dict, large: dict) -> bool:
    rows, ok = compare(small, large)
    print(f"n = {small['n']:,} ({small['seconds']} s) vs {large['n']:,} ({large['seconds']} s); "
          f"VmHWM {small['vmhwm'] / 2**20:.0f} MiB vs {large['vmhwm'] / 2**20:.0f} MiB")
    print(f"{'phase':9} {'peak S':>8} {'peak L':>8} {'expect S':>9} {'expect L':>9} {'rest S':>8} {'rest L':>8} "
          f"{'rest L/S':>8}   (MiB)")
    for r in rows:
        print(f"{r['phase']:9} {r['peak_small_mb']:8.0f} {r['peak_large_mb']:8.0f} {r['expected_small_mb']:9.0f} "
              f"{r['expected_large_mb']:9.0f} {r['rest_small_mb']:8.0f} {r['rest_large_mb']:8.0f} {r['ratio']:8.2f}")
    for run_ in (small, large):
        print(f"stage seconds at n = {run_['n']:,}: " + ", ".join(f"{k} {v:.1f}" for k, v in run_["stage_seconds"].items()))
    print(("OK" if ok else "FAIL") + f": what is left after the accounted arrays grows <= {RATIO_LIMIT}x")
    return ok


def run(sizes=(20_000, 80_000), root: Path | None = None, allocator: str = "fixed") -> tuple[dict, dict, bool]:
    root = root or Path(tempfile.gettempdir()) / "imgcluster-bench-memory"
    dirs = make_corpus(root / "images", max(sizes))
    with tempfile.TemporaryDirectory(prefix="imgcluster-bench-memory-out-") as work:
        small = measure(dirs[: sizes[0] // PER_DIR], Path(work), allocator)
        large = measure(dirs[: sizes[1] // PER_DIR], Path(work), allocator)
    return small, large, report(small, large)


def test_peak_rss_is_bounded():
    _, _, ok = run()
    assert ok


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[3:], sys.argv[2])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,80000", help="two image counts, multiples of 1000")
    parser.add_argument("--root", type=Path, default=None, help="where the generated images live")
    parser.add_argument("--allocator", choices=("fixed", "default"), default="fixed",
                        help="fixed: glibc mmap threshold pinned at 4 MiB in the runs (see FIXED_ALLOCATOR)")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    print(f"allocator: {args.allocator}")
    _, _, ok = run(sizes, args.root, args.allocator)
    sys.exit(0 if ok else 1)
