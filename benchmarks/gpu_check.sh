#!/usr/bin/env bash
# GPU check, for a CUDA machine: the GPU tests, `imgcluster bench` (eager and compiled), the
# all-K silhouette at 1M points, then the Triton kernel's precision modes and launch configurations
# at 200k; ends with a short table. Each step has its own time limit, so one that hangs or fails
# still leaves the others' figures; the targets come first. Estimated 5-7 minutes on an H100 (not
# yet run on one); one device call allows 10, and BUDGET (570 s) keeps the whole script inside it.
# Usage (repo root):  bash benchmarks/gpu_check.sh        figures also go to $OUT (default /tmp/gpu_check)
#   from the device tool: COMMIT=<git rev-parse --short HEAD here> bash benchmarks/gpu_check.sh
# Needs: torch + torchvision with CUDA, triton, scikit-learn, pillow, typer, rich, matplotlib.
# DALI and cuML are optional (their tests skip when they are not installed).
# Dry run of the script itself on a CPU machine (small sizes, same steps and table):
#   DEVICE=cpu BENCH_N=16 COMPILE_N=8 SIL_N=3000 SWEEP_N=2000 SIL_BACKENDS=torch SWEEP_BACKENDS=torch,auto \
#     MODEL=resnet18 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-resnet152}"
BENCH_N="${BENCH_N:-4096}"        # images for the eager bench (with the seed-like run)
COMPILE_N="${COMPILE_N:-2048}"    # images for the --compile bench
SIL_N="${SIL_N:-1000000}"         # points for the all-K silhouette target (K = 2..30, d = 200)
SIL_BACKENDS="${SIL_BACKENDS:-triton,triton:tf32:tf32}"
SWEEP_N="${SWEEP_N:-200000}"      # points for the precision sweep, against IEEE-fp32 torch
SWEEP_BACKENDS="${SWEEP_BACKENDS:-torch,triton,triton:tf32:tf32}"
TUNE_N="${TUNE_N:-200000}"        # points for the kernel's launch-configuration table
BUDGET="${BUDGET:-570}"           # seconds for the whole script (one device call may run 600)
mkdir -p "$OUT"

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

echo "== doctor"
run_step 60 "$PY" -m engine.cli doctor 2>&1 | tee "$OUT/doctor.txt"

echo "== GPU tests"
run_step 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests/ 2>&1 | tee "$OUT/gpu_tests.txt" | tail -25

echo "== bench (eager, with the seed-like configuration in the same run)"
run_step 150 "$PY" -m engine.cli bench --device "$DEVICE" --model "$MODEL" --n "$BENCH_N" --json "$OUT/bench.json" 2>&1 \
  | tee "$OUT/bench.txt" | tail -20
echo "== bench (--compile)"
run_step 150 "$PY" -m engine.cli bench --device "$DEVICE" --model "$MODEL" --n "$COMPILE_N" --compile --no-seed-like \
  --json "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt" | tail -16

echo "== all-K silhouette, ${SIL_N} x 200, K=2..30 (target <= 10 s on an H100)"
run_step 120 "$PY" benchmarks/bench_silhouette.py --n "$SIL_N" --k-max 30 --device "$DEVICE" --backend "$SIL_BACKENDS" \
  --sklearn no --repeat 1 2>&1 | tee "$OUT/silhouette.txt" | tail -8

echo "== Triton precision modes, ${SWEEP_N} x 200, K=2..30 (mean difference against the first row)"
run_step 90 "$PY" benchmarks/bench_silhouette.py --n "$SWEEP_N" --k-max 30 --device "$DEVICE" --backend "$SWEEP_BACKENDS" \
  --sklearn no --repeat 1 2>&1 | tee "$OUT/silhouette_sweep.txt" | tail -8

echo "== Triton kernel launch configurations, ${TUNE_N} x 200, K=2..30 (for tuning default_config)"
run_step 120 "$PY" benchmarks/tune_silhouette_triton.py --n "$TUNE_N" 2>&1 | tee "$OUT/triton_tune.txt" | tail -14

echo "== summary"
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'bench':<20}{'e2e img/s':>12}{'decode img/s':>14}{'model img/s':>13}{'vs seed':>9}")
for name in ("bench.json", "bench_compile.json"):
    p = out / name
    if not p.exists():
        print(f"{name:<20}{'missing (see ' + name.replace('.json', '.txt') + ')':>48}")
        continue
    r = json.loads(p.read_text())
    o = r["ours"]
    ratio = f"{r['ratio_end_to_end']:.1f}x" if r.get("seed_like") else "-"
    print(f"{name:<20}{o['end_to_end']['images_per_s']:>12,.0f}{o['decode_resize']['images_per_s']:>14,.0f}"
          f"{o['backbone']['images_per_s']:>13,.0f}{ratio:>9}")
for name in ("silhouette.txt", "silhouette_sweep.txt"):
    lines = (out / name).read_text().splitlines() if (out / name).exists() else []
    table = [ln for ln in lines if ln.startswith(("silhouette all K", "backend", "torch", "triton", "auto"))]
    print("\n".join(table) if table else f"{name}: no table (see the step's output above)")
PY
tail -13 "$OUT/triton_tune.txt" 2>/dev/null
tail -3 "$OUT/gpu_tests.txt"
