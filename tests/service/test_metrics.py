"""hyv/service/metrics.py: GET /metrics survives a process that could not write its metrics file."""

from __future__ import annotations

import logging

import pytest

from hyv.service import metrics


def test_an_empty_metrics_file_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """A worker whose disk is full (or whose file size is limited) leaves an empty
    `histogram_<pid>.db`; prometheus-client's reader raises on it, which made every /metrics a 500."""
    metrics.observe_request("/v1/videos", "GET", 200, 0.01)
    folder = metrics.multiproc_dir()
    empty = folder / "histogram_999999999.db"
    empty.touch()
    try:
        with caplog.at_level(logging.WARNING, logger="hyv.service.metrics"):
            body, _ = metrics.render_metrics()
    finally:
        empty.unlink()
    assert b'hyv_requests_total{code="200",method="GET",route="/v1/videos"}' in body
    assert any("histogram_999999999.db" in r.getMessage() for r in caplog.records)
