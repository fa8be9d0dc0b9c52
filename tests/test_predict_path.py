"""One prediction's path through matmeta/predict/: at most six files, none re-entered more than twice (issue 32)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_prediction_passes_through_at_most_six_predict_files_and_reenters_none_more_than_twice():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from trace_predict_path import trace
    finally:
        sys.path.pop(0)
    path = trace(["predict", str(ROOT / "data" / "structures" / "ZnO.cif")])
    counts = Counter(path)
    assert len(counts) <= 6, path
    assert max(counts.values()) <= 3, path  # entered at most three times = re-entered at most twice
    assert path[0] == "api.py" and "calibration.py" in counts  # the calibration is applied in one module
