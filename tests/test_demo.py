"""`imgcluster demo` works offline and finds the sample set's groups."""
from __future__ import annotations

import json

from sklearn.metrics import adjusted_rand_score

from engine.cli import app
from engine.sample_data import GROUPS
from tests.helpers import group_labels, read_rows


def test_demo_offline_falls_back_to_pixels(runner, tmp_path, offline_weights):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--per-group", "20"])
    assert result.exit_code == 0, result.output
    assert "pixels features instead" in result.output
    assert "Chosen K = 6" in result.output
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["config"]["model"] == "pixels" and summary["k"] == len(GROUPS)
    truth, pred = group_labels(read_rows(out / "results" / "predictions.csv"))
    assert adjusted_rand_score(truth, pred) >= 0.95
    assert (out / "results" / "report" / "index.html").exists()
