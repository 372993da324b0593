"""Every (reference, fast) pair of engine.pairs, both sides timed in the same run at the pair's
bench_size, with the agreement checked on the same inputs. CUDA pairs skip without a GPU.

    .venv/bin/python -m pytest benchmarks/bench_pairs.py --benchmark-group-by=group
    .venv/bin/python -m pytest benchmarks/bench_pairs.py -k cpu        # the CPU pairs only
Each group prints one line with the ratio (reference time / fast time) once both sides have run.
"""
from __future__ import annotations

import pytest

from engine.pairs import PAIRS

_inputs: dict[str, object] = {}
_outputs: dict[str, dict[str, object]] = {}
_seconds: dict[str, dict[str, float]] = {}


def _params():
    return [pytest.param(p, id=p.id, marks=[pytest.mark.gpu] if p.device == "cuda" else []) for p in PAIRS]


# side varies fastest: for each pair the reference runs first, then the fast path reports the ratio
@pytest.mark.parametrize("side", ["reference", "fast"])
@pytest.mark.parametrize("pair", _params())
def test_pair(benchmark, pair, side, capsys):
    reason = pair.missing()
    if reason:
        pytest.skip(reason)
    if pair.id not in _inputs:
        _inputs[pair.id] = pair.make_inputs(pair.bench_size)
    inputs = _inputs[pair.id]
    run = pair.run_reference if side == "reference" else pair.run_fast
    benchmark.group = f"{pair.stage} n={pair.bench_size}: {pair.fast} on {pair.device} vs {pair.reference}"
    benchmark.extra_info.update(pair=pair.id, side=side, n=pair.bench_size)
    # the fast side warms up once (CUDA context, cuBLAS handles, Triton compile); a reference run is long enough
    out = benchmark.pedantic(run, args=(inputs,), rounds=3 if side == "fast" else 1, iterations=1,
                             warmup_rounds=1 if side == "fast" else 0)
    _outputs.setdefault(pair.id, {})[side] = out
    _seconds.setdefault(pair.id, {})[side] = benchmark.stats.stats.median
    if side == "fast" and "reference" in _outputs[pair.id]:
        gap = pair.discrepancy(out, _outputs[pair.id]["reference"])
        ratio = _seconds[pair.id]["reference"] / _seconds[pair.id]["fast"]
        benchmark.extra_info.update(ratio=round(ratio, 2), discrepancy=gap)
        with capsys.disabled():
            print(f"\n[{pair.id} n={pair.bench_size}] reference {_seconds[pair.id]['reference']:.3f} s, "
                  f"fast {_seconds[pair.id]['fast']:.3f} s, ratio {ratio:.1f}x; {pair.measure} = {gap:.2g}")
        assert gap <= pair.tolerance
