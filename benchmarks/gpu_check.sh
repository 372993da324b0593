#!/usr/bin/env bash
# GPU check, for a CUDA machine: the GPU tests, the all-K silhouette at 1M points, `imgcluster
# bench`: eager with the seed-like run, --compile, and (when nvImageCodec is usable) both again with
# --decoder nvimgcodec, then (last, so a short budget cuts the diagnosis, not the targets) a profile
# of the nvJPEG loader's pieces with extract rows of its knobs and of nvImageCodec under the model;
# ends with a short table. Opt-in steps: TUNE=1 (the Triton
# kernels' table at 200k points; #4 is done, run 3 has it), KSEARCH=1 (batched K search against one
# K at a time), GRAPHS=1 (eager with --cuda-graphs; run 3: no faster).
# Each step has its own time limit, so one that hangs or fails still leaves the others' figures.
# BUDGET (default 570 s) keeps the whole script inside one device call (600 s); the later steps are
# skipped when it is spent. Earlier H100 runs: 406 s (run 1), 331 s (run 2, without the profile),
# 388 s (run 3, every step, BUDGET=480), 352 s (run 4, silhouette steps shrunk).
# Usage (repo root):  bash benchmarks/gpu_check.sh        figures also go to $OUT (default /tmp/gpu_check)
#   from the device tool (its $OUT returns at most 8 files, this writes ~11: keep them in one tarball):
#     mkdir -p /tmp/gc; COMMIT=<git rev-parse --short HEAD here> BUDGET=540 OUT=/tmp/gc \
#       bash benchmarks/gpu_check.sh 2>&1 | tee /tmp/gc/log.txt; tar czf $OUT/gc.tgz -C /tmp gc
#   with timeout_s about BUDGET + 25, and carry [".whl"] for the nvImageCodec steps. The device
#   session has 15 minutes in all, start-up included (~30-60 s): 540 leaves a few minutes for one
#   short follow-up call.
# Needs: torch + torchvision with CUDA, triton, scikit-learn, pillow, typer, rich, matplotlib.
# DALI and cuML are optional (their tests skip when they are not installed). nvImageCodec too: the
# device image lacks it, so its wheels travel with the tree (carry ".whl", 29 MB; see .whl below)
# and are installed first; its bench steps run when `doctor` finds it usable.
# Opt-in steps: TUNE=1 (Triton kernels' table; #4 is done, run 3 has it), KSEARCH=1, GRAPHS=1.
# Dry run of the script itself on a CPU machine (small sizes, same steps and table):
#   DEVICE=cpu BENCH_N=16 COMPILE_N=8 SIL_N=3000 SIL_BACKENDS=torch MODEL=resnet18 \
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-resnet152}"
BENCH_N="${BENCH_N:-4096}"        # images for the eager bench (with the seed-like run)
# images for the --compile bench: more than the eager one, since at 4,096 the fixed costs (PCA's
# stage took ~30 ms on the H100, the first batch's decode, the clustering) are a large share of the
# ~0.4 s a 10k img/s run would take; the extra images are hard links (make_bench_set), no cost
COMPILE_N="${COMPILE_N:-8192}"
SIL_N="${SIL_N:-1000000}"         # points for the all-K silhouette target (K = 2..30, d = 200)
SIL_BACKENDS="${SIL_BACKENDS:-triton,tiled:fp16x3:nosplit}"  # bench_silhouette.py specs
TUNE_N="${TUNE_N:-200000}"        # points for the kernels' table (methods, precisions, launch configurations)
TUNE_ONLY="${TUNE_ONLY:-tiled}"   # its candidates (substrings; "" = all): the fused ones are in RESULTS.md (run 2)
BUDGET="${BUDGET:-570}"           # seconds for the whole script (one device call may run 600)
mkdir -p "$OUT"
stamp() { echo "(t = ${SECONDS} s)"; }

# run_step LIMIT CMD...: CMD with a time limit of LIMIT seconds, or less when less of BUDGET is
# left (15 s are kept for the summary); skipped when under 20 s are left. Later steps are the
# optional ones, so a slow machine loses the tuning tables, not the targets or the summary.
run_step() {
  local want=$1 left=$((BUDGET - SECONDS - 15))
  shift
  if [ "$left" -lt 20 ]; then echo "(skipped: the time budget of ${BUDGET} s is spent)"; return 0; fi
  timeout -k 5 $(( want < left ? want : left )) "$@"
}

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch, torchvision, triton; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
# COMMIT: pass it in where the copy of the tree has no .git (the device machine's copy)
echo "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}  date $(date -u +%F)"

echo "== carried wheels (.whl/: nvImageCodec and the nvJPEG library, for --decoder nvimgcodec)"
# Made on the development machine with:
#   pip download --no-deps -d .whl nvidia-nvimgcodec-cu13 nvidia-nvjpeg==13.0.*
if "$PY" -c "import nvidia.nvimgcodec" 2>/dev/null; then
  echo "(nvImageCodec already installed: nothing installed)"
elif ls .whl/*.whl >/dev/null 2>&1; then
  # (--break-system-packages only where the first try is refused: a system Python under PEP 668)
  run_step 60 "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check .whl/*.whl 2>&1 | tail -3 \
    || run_step 60 "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check \
         --break-system-packages .whl/*.whl 2>&1 | tail -3
  "$PY" -c "from nvidia import nvimgcodec; print('nvimgcodec', nvimgcodec.__version__)" 2>&1 | tail -1
else
  echo "(none carried)"
fi

echo "== doctor"
run_step 60 "$PY" -m engine.cli doctor 2>&1 | tee "$OUT/doctor.txt"

echo "== GPU tests"
run_step 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests/ 2>&1 | tee "$OUT/gpu_tests.txt" | tail -25
stamp

if [ "${TUNE:-0}" = 1 ]; then  # opt-in since #4 was resolved (run 3 has the table)
echo "== Triton silhouette kernels, ${TUNE_N} x 200, K=2..30: methods, precisions, launch configurations"
run_step 130 "$PY" benchmarks/tune_silhouette_triton.py --n "$TUNE_N" --only "$TUNE_ONLY" 2>&1 | tee "$OUT/triton_tune.txt" | tail -14
stamp
fi

echo "== all-K silhouette, ${SIL_N} x 200, K=2..30 (target <= 10 s on an H100)"
run_step 90 "$PY" benchmarks/bench_silhouette.py --n "$SIL_N" --k-max 30 --device "$DEVICE" --backend "$SIL_BACKENDS" \
  --sklearn no --repeat 1 2>&1 | tee "$OUT/silhouette.txt" | tail -8
stamp

if [ "${KSEARCH:-0}" = 1 ]; then  # opt-in since the --cuda-graphs bench joined: the budget is for the targets
echo "== K search at the bench's size: every K in one batch (kmeans_all_k) vs one K at a time, same GPU"
run_step 45 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_pairs.py -k "kmeans_search and $DEVICE" -s \
  2>&1 | tee "$OUT/kmeans_search.txt" | grep "^\[" 
stamp
fi

echo "== bench (eager, with the seed-like configuration in the same run)"
run_step 120 "$PY" -m engine.cli bench --device "$DEVICE" --model "$MODEL" --n "$BENCH_N" --json "$OUT/bench.json" 2>&1 \
  | tee "$OUT/bench.txt" | tail -20
stamp
if [ "${GRAPHS:-0}" = 1 ]; then  # opt-in since run 3 measured it no faster than eager
echo "== bench (--cuda-graphs: the eager model replayed from CUDA graphs, one launch per batch; run 3: no faster than eager)"
if [ "$DEVICE" = cpu ]; then echo "(skipped: CUDA graphs need CUDA)"; else
run_step 75 "$PY" -m engine.cli bench --device "$DEVICE" --model "$MODEL" --n "$BENCH_N" --cuda-graphs --no-seed-like \
  --json "$OUT/bench_graphs.json" 2>&1 | tee "$OUT/bench_graphs.txt" | tail -16
fi
stamp
fi
echo "== bench (--compile)"
run_step 150 "$PY" -m engine.cli bench --device "$DEVICE" --model "$MODEL" --n "$COMPILE_N" --compile --no-seed-like \
  --json "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt" | tail -16
stamp
# --decoder nvimgcodec: when doctor found nvImageCodec usable (its nvJPEG library included)
if grep -q "nvImageCodec decoder.*yes" "$OUT/doctor.txt" 2>/dev/null; then
echo "== bench (--compile --decoder nvimgcodec)"
run_step 120 "$PY" -m engine.cli bench --device "$DEVICE" --model "$MODEL" --n "$COMPILE_N" --compile --no-seed-like \
  --decoder nvimgcodec --json "$OUT/bench_compile_nvimgcodec.json" 2>&1 | tee "$OUT/bench_compile_nvimgcodec.txt" | tail -16
stamp
echo "== bench (eager, --decoder nvimgcodec)"
run_step 60 "$PY" -m engine.cli bench --device "$DEVICE" --model "$MODEL" --n "$BENCH_N" --no-seed-like \
  --decoder nvimgcodec --json "$OUT/bench_nvimgcodec.json" 2>&1 | tee "$OUT/bench_nvimgcodec.txt" | tail -16
stamp
else
echo "(nvimgcodec benches skipped: doctor did not find nvImageCodec usable; see doctor.txt)"
fi

echo "== nvJPEG loader, piece by piece (decode was the bottleneck in the first runs; last: the benches above are the targets)"
# with the A/B rows of the loader's knobs (decode look-ahead, stream priority, resize overlap) under the model
run_step 130 "$PY" benchmarks/profile_nvjpeg.py --n 2048 --device "$DEVICE" --model "$MODEL" --extract-n "$BENCH_N" \
  --rounds "${ROUNDS:-3}" 2>&1 \
  | tee "$OUT/nvjpeg_profile.txt" | tail -22
stamp

echo "== summary"
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'bench':<31}{'e2e img/s':>12}{'decode img/s':>14}{'model img/s':>13}{'vs seed':>9}{'waited s':>10}")
optional = ("bench_graphs.json", "bench_compile_nvimgcodec.json", "bench_nvimgcodec.json")
for name in ("bench.json", "bench_graphs.json", "bench_compile.json", *optional[1:]):
    p = out / name
    if name in optional and not p.exists():
        continue  # opt-in (GRAPHS=1) or needs nvImageCodec
    if not p.exists():
        print(f"{name:<31}{'missing (see ' + name.replace('.json', '.txt') + ')':>48}")
        continue
    r = json.loads(p.read_text())
    o = r["ours"]
    ratio = f"{r['ratio_end_to_end']:.1f}x" if r.get("seed_like") else "-"
    print(f"{name:<31}{o['end_to_end']['images_per_s']:>12,.0f}{o['decode_resize']['images_per_s']:>14,.0f}"
          f"{o['backbone']['images_per_s']:>13,.0f}{ratio:>9}{o['extract'].get('waited_for_loader_s', float('nan')):>10.3f}")
for name in ("silhouette.txt", "triton_tune.txt"):
    if name == "triton_tune.txt" and not (out / name).exists():
        continue  # opt-in step (TUNE=1)
    lines = (out / name).read_text().splitlines() if (out / name).exists() else []
    table = [ln for ln in lines if ln.startswith(("silhouette all K", "backend", "torch", "triton", "auto", "tiled",
                                                  "Triton", "float64", "candidate", "fused"))]
    print("\n".join(table) if table else f"{name}: no table (see the step's output above)")
search = out / "kmeans_search.txt"
if search.exists():
    print("\n".join(ln for ln in search.read_text().splitlines() if ln.startswith("[")))
profile = out / "nvjpeg_profile.txt"
if profile.exists():
    print("\n".join(ln for ln in profile.read_text().splitlines() if "img/s" in ln or "profile" in ln
                    or "auto chose" in ln or ln.startswith("launch tax")))
PY
# Skipped GPU tests are paths this run did not check (the device image has no DALI or cuML): say so
grep "^SKIPPED" "$OUT/gpu_tests.txt" 2>/dev/null | sed 's/^/NOT CHECKED: /'
tail -1 "$OUT/gpu_tests.txt"
