"""benchmarks/step_cache.py --quick on the bundled model: the report's shape and its invariants."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import step_cache


def test_quick_run_reports_every_setting_against_the_uncached_baseline(tmp_path: Path) -> None:
    out = tmp_path / "step_cache.json"
    assert step_cache.main(["--quick", "--true-cfg", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and report["clips"] == 2 and report["steps"] == 10 and report["true_cfg"]
    rows = {row["setting"]: row for row in report["rows"]}
    assert list(rows) == ["off", "teacache:0.05", "first_block:0.05"]
    off = rows["off"]
    assert (off["speedup"], off["skipped"], off["computed"]) == (1.0, 0, 2 * 10)
    assert off["points_lost"] == {"color": 0.0, "shape": 0.0, "motion": 0.0}
    for row in rows.values():
        assert row["computed"] + row["skipped"] == 2 * 10
        assert row["computed"] >= 2 * 2  # the first and last step of each clip
        assert set(row["accuracy"]) == {"color", "shape", "motion"}
    flops = report["flops_13b_720p"]
    assert (flops["width"], flops["height"], flops["frames"]) == (1280, 720, 129)
    assert 0 < flops["saved_first_block"] < flops["saved_teacache"] < flops["step_flops"]
    assert "| off | 1.00x |" in step_cache.markdown(report)
