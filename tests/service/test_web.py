"""The web page at / in a real headless Chromium (Debian's, driven by Playwright's Python client)
against the real API and a real Celery worker: submit, live progress, the video playing from the
stream, recent jobs, a validation error; a screenshot is kept in tests/service/artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest_api import KEY_A

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page(service_settings: Any, worker: Any, serve_app: Any) -> Iterator[tuple[Any, str]]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    server = serve_app(service_settings.model_copy(update={"api_keys": [KEY_A]}))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            yield page, server.url
            assert not [line for line in console if line.startswith("pageerror")], console
        finally:
            browser.close()


def test_generate_watch_and_list_in_the_browser(page: tuple[Any, str]) -> None:
    browser_page, url = page
    browser_page.goto(url)
    browser_page.fill("#api-key", KEY_A)
    browser_page.dispatch_event("#api-key", "change")
    browser_page.wait_for_function("document.getElementById('model').textContent.startsWith('hyv-tiny')")

    # A value the model refuses: the API's message is shown next to the form.
    browser_page.fill("#prompt", "a red circle moving right")
    browser_page.fill("#size", "33x32")
    browser_page.click("#submit")
    browser_page.wait_for_selector("#error:not([hidden])")
    assert "multiple of 16" in browser_page.text_content("#error")

    browser_page.fill("#size", "64x64")
    browser_page.fill("#num_frames", "9")
    browser_page.fill("#steps", "300")
    browser_page.fill("#seed", "5")
    browser_page.click("#submit")
    browser_page.wait_for_function(
        "document.getElementById('status').dataset.status === 'completed'", timeout=120_000
    )
    # The duration is +Infinity while the stream is open; endOfStream() after the last chunk fixes it.
    browser_page.wait_for_function(
        """() => { const v = document.getElementById('player');
                   return v.readyState >= 2 && v.videoWidth === 64 && Number.isFinite(v.duration); }""",
        timeout=30_000,
    )
    state = browser_page.evaluate("window.hyv")
    assert state["mode"] == "mse"  # played from the stream through Media Source Extensions
    # The page fetched the MP4 while the job was still rendering (the server's streaming path).
    assert state["streamedWhile"] in ("queued", "in_progress")
    assert state["initAppendedAt"] is not None and state["firstMediaAt"] is not None
    assert state["events"][-1] == "video.completed" and "video.progress" in state["events"]
    assert browser_page.evaluate("document.getElementById('progress').value") == 100
    duration = browser_page.evaluate("document.getElementById('player').duration")
    assert duration == pytest.approx(9 / 8, abs=0.2)
    browser_page.wait_for_function("document.getElementById('player').currentTime > 0", timeout=10_000)

    video_id = state["videoId"]
    browser_page.wait_for_selector(f"#recent li[data-id='{video_id}']")
    assert "completed" in browser_page.text_content(f"#recent li[data-id='{video_id}']")

    ARTIFACTS.mkdir(exist_ok=True)
    browser_page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)
    assert (ARTIFACTS / "web.png").stat().st_size > 10_000
