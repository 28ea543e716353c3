"""The web page at / in a real headless Chromium (Debian's, driven by Playwright's Python client)
against the real API and a real Celery worker: submit, live progress, the video playing from the
stream, recent jobs, a validation error; a screenshot is kept in tests/service/artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest_api import KEY_A

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page(service_settings: Any, worker: Any, serve_app: Any) -> Iterator[tuple[Any, str]]:
    server = serve_app(service_settings.model_copy(update={"api_keys": [KEY_A]}))
    yield from _browser_on(server.url)


def _browser_on(url: str) -> Iterator[tuple[Any, str]]:
    """A headless Chromium page (its console errors fail the test) on the served web page."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            yield page, url
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


@pytest.fixture
def bucketed_page(
    make_api_settings: Any, serve_app: Any, bucketed_bundle_dir: Path
) -> Iterator[tuple[Any, str]]:
    """The page on an API (no worker) serving the tiny bundle at two sizes and two lengths only."""
    server = serve_app(make_api_settings(weights=bucketed_bundle_dir, api_keys=[KEY_A]))
    yield from _browser_on(server.url)


def _options(browser_page: Any, selector: str) -> list[list[str]]:
    return browser_page.evaluate(
        f"[...document.querySelector('{selector}').options].map((o) => [o.value, o.textContent])"
    )


def test_the_form_offers_what_the_model_serves_and_shows_a_refused_prompt(
    bucketed_page: tuple[Any, str],
) -> None:
    from hyv.engine.prompt_vocabulary import CAPTION_SLOTS, prompt_words

    browser_page, url = bucketed_page
    browser_page.goto(url)
    browser_page.fill("#api-key", KEY_A)
    browser_page.dispatch_event("#api-key", "change")
    browser_page.wait_for_function("document.getElementById('model').textContent.startsWith('hyv-tiny')")
    assert browser_page.text_content("#model") == "hyv-tiny · 32x32, 48x32 · 5, 9 frames"

    # Exactly the model's sizes and lengths, as dropdowns set to its defaults.
    assert browser_page.evaluate("document.getElementById('size').tagName") == "SELECT"
    assert _options(browser_page, "#size") == [["32x32", "32x32"], ["48x32", "48x32"]]
    assert _options(browser_page, "#num_frames") == [["5", "5 (0.5 s)"], ["9", "9 (1 s)"]]
    assert browser_page.input_value("#size") == "32x32" and browser_page.input_value("#num_frames") == "5"

    # The grammar, its values as chips that write the prompt, and the vocabulary.
    assert browser_page.is_visible("#grammar-box")
    browser_page.click("#grammar-box summary")
    assert browser_page.text_content("#grammar-template") == (
        "a {color} {shape} {motion} on a {background} background"
    )
    chips = browser_page.locator("#grammar-slots .chip")
    assert chips.count() == sum(len(values) for values in CAPTION_SLOTS.values())
    for value in ("blue", "square", "growing", "gray"):
        browser_page.click(f"#grammar-slots .chip[data-value='{value}']")
    assert browser_page.input_value("#prompt") == "a blue square growing on a gray background"
    pressed = browser_page.eval_on_selector_all(
        "#grammar-slots .chip[aria-pressed='true']", "(chips) => chips.map((c) => c.dataset.value)"
    )
    assert pressed == ["blue", "square", "growing", "gray"]
    assert "triangle" in browser_page.text_content("#vocabulary").split()
    assert browser_page.is_hidden("#prompt-hint")

    # The page reads words as the server does.
    samples = ["A Red, circle!", "一只猫 在弹钢琴", "café-crème", "red\u200bcircle 🐱", "moving—left…"]
    for text in samples:
        assert browser_page.evaluate("(text) => promptWords(text)", text) == prompt_words(text), text

    # Typing an off-vocabulary prompt flags the words; submitting it shows the API's 422 message.
    browser_page.fill("#prompt", "a cat playing piano")
    browser_page.wait_for_selector("#prompt-hint:not([hidden])")
    assert browser_page.text_content("#prompt-hint") == (
        "Not in this model's vocabulary: 'cat', 'playing', 'piano'"
    )
    browser_page.click("#submit")
    browser_page.wait_for_selector("#error:not([hidden])")
    assert browser_page.text_content("#error") == (
        "prompt: words outside this model's vocabulary: 'cat', 'playing', 'piano'; "
        "see GET /v1/models/hyv-tiny for the vocabulary and grammar"
    )
    assert browser_page.get_attribute("#error", "data-param") == "prompt"
    assert "invalid" in (browser_page.get_attribute("#prompt", "class") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    browser_page.screenshot(path=str(ARTIFACTS / "web-refused-prompt.png"), full_page=True)

    # A caption from the chips, the second size and length: queued as chosen.
    browser_page.click("#grammar-slots .chip[data-value='white']")
    assert browser_page.input_value("#prompt") == "a white square growing on a gray background"
    assert "invalid" not in (browser_page.get_attribute("#prompt", "class") or "")  # edited since
    browser_page.select_option("#size", "48x32")
    browser_page.select_option("#num_frames", "9")
    browser_page.click("#submit")
    browser_page.wait_for_function("window.hyv.videoId !== null")
    assert browser_page.is_hidden("#error")
    video_id = browser_page.evaluate("window.hyv.videoId")
    video = httpx.get(f"{url}/v1/videos/{video_id}", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert (video["prompt"], video["size"], video["num_frames"]) == (
        "a white square growing on a gray background",
        "48x32",
        9,
    )
