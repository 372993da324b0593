#!/usr/bin/env bash
# GPU check, for a CUDA machine: the GPU tests, the all-K silhouette at 1M points, and
# `imgcluster bench` (eager and compiled), in under 5 minutes; ends with a short table.
# Usage (repo root):  bash benchmarks/gpu_check.sh        figures also go to $OUT (default /tmp/gpu_check)
# Needs: torch + torchvision with CUDA, triton, scikit-learn, pillow, typer, rich, matplotlib.
# DALI and cuML are optional (their tests skip when they are not installed).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)  date $(date -u +%F)"

echo "== doctor"
timeout 60 "$PY" -m engine.cli doctor 2>&1 | tee "$OUT/doctor.txt"

echo "== GPU tests"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu_tests.txt" | tail -25

echo "== all-K silhouette, 1M x 200, K=2..30"
timeout 90 "$PY" benchmarks/bench_silhouette.py --n 1000000 --k-max 30 --device cuda --backend triton --sklearn no --repeat 1 2>&1 \
  | tee "$OUT/silhouette.txt" | tail -8

echo "== bench (eager, with the seed-like configuration in the same run)"
timeout 150 "$PY" -m engine.cli bench --device cuda --n 4096 --json "$OUT/bench.json" 2>&1 | tail -20
echo "== bench (--compile)"
timeout 150 "$PY" -m engine.cli bench --device cuda --n 2048 --compile --no-seed-like --json "$OUT/bench_compile.json" 2>&1 | tail -16

echo "== summary"
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
for name in ("bench.json", "bench_compile.json"):
    p = out / name
    if not p.exists():
        rows.append((name, "missing", "", "", ""))
        continue
    r = json.loads(p.read_text())
    o = r["ours"]
    rows.append((name, f"{o['end_to_end']['images_per_s']:,.0f}", f"{o['decode_resize']['images_per_s']:,.0f}",
                 f"{o['backbone']['images_per_s']:,.0f}",
                 f"{r['ratio_end_to_end']:.1f}x" if r.get("seed_like") else "-"))
print(f"{'run':<20}{'e2e img/s':>12}{'decode img/s':>14}{'model img/s':>13}{'vs seed':>9}")
for row in rows:
    print(f"{row[0]:<20}{row[1]:>12}{row[2]:>14}{row[3]:>13}{row[4]:>9}")
PY
tail -3 "$OUT/gpu_tests.txt"
