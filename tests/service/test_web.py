"""The web page at / in a real headless Chromium (Debian's, driven by Playwright's Python client)
against the real API and a real Celery worker, at a desktop and a phone viewport: submit, live
progress, the video playing from the stream, its download and thumbnail, cancelling, recent jobs,
remixing and extending a finished video, a validation error, the favicon, no sideways scrolling.
Screenshots are kept as test artifacts in $HYV_TEST_ARTIFACTS, else tests/artifacts/, named by test
and viewport."""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.service.conftest_api import KEY_A

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
BOTH_VIEWPORTS = pytest.mark.parametrize("viewport", list(VIEWPORTS))


def artifacts_dir() -> Path:
    directory = Path(os.environ.get("HYV_TEST_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _screenshot(browser_page: Any, test: str, viewport: str) -> None:
    path = artifacts_dir() / f"web-{test}-{viewport}.png"
    browser_page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


@pytest.fixture
def viewport() -> str:
    """The page's viewport (a key of VIEWPORTS); a test parametrizes it to run at both."""
    return "desktop"


@pytest.fixture
def page(service_settings: Any, worker: Any, serve_app: Any, viewport: str) -> Iterator[tuple[Any, str]]:
    server = serve_app(service_settings.model_copy(update={"api_keys": [KEY_A]}))
    yield from _browser_on(server.url, viewport)


def _browser_on(url: str, viewport: str) -> Iterator[tuple[Any, str]]:
    """A headless Chromium page (its uncaught errors fail the test) on the served web page; the
    phone viewport is a mobile one (its <meta name=viewport> applies, touch, 2x pixels)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    phone = viewport == "phone"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        try:
            context = browser.new_context(
                viewport=VIEWPORTS[viewport],
                is_mobile=phone,
                has_touch=phone,
                device_scale_factor=2 if phone else 1,
                accept_downloads=True,
            )
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            yield page, url
            assert not [line for line in console if line.startswith("pageerror")], console
        finally:
            browser.close()


def _open(browser_page: Any, url: str) -> None:
    """The page, with the API key entered and the model loaded."""
    browser_page.goto(url)
    browser_page.fill("#api-key", KEY_A)
    browser_page.dispatch_event("#api-key", "change")
    browser_page.wait_for_function("document.getElementById('model').textContent.startsWith('hyv-tiny')")


def _submit(browser_page: Any, size: str, frames: int, steps: int, seed: int = 5) -> str:
    """Submit a job from the form; its id."""
    browser_page.fill("#prompt", "a red circle moving right on a black background")
    browser_page.fill("#size", size)
    browser_page.fill("#num_frames", str(frames))
    browser_page.fill("#steps", str(steps))
    browser_page.fill("#seed", str(seed))
    browser_page.click("#submit")
    browser_page.wait_for_function("window.hyv.videoId !== null")
    return str(browser_page.evaluate("window.hyv.videoId"))


def _wait_status(browser_page: Any, status: str, timeout_ms: int = 120_000) -> None:
    browser_page.wait_for_function(
        f"document.getElementById('status').dataset.status === '{status}'", timeout=timeout_ms
    )


def test_generate_watch_and_list_in_the_browser(page: tuple[Any, str]) -> None:
    browser_page, url = page
    _open(browser_page, url)

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

    _screenshot(browser_page, "generate", "desktop")


@BOTH_VIEWPORTS
def test_a_finished_video_downloads_and_has_a_thumbnail(page: tuple[Any, str], viewport: str) -> None:
    browser_page, url = page
    _open(browser_page, url)
    assert browser_page.is_hidden("#download")  # nothing to download before the job completes
    video_id = _submit(browser_page, "64x48", 9, 4)
    _wait_status(browser_page, "completed")

    # The download button saves the finished MP4 (fetched with the API key), a playable one.
    browser_page.wait_for_selector("#download:not([hidden])")
    with browser_page.expect_download() as download_info:
        browser_page.click("#download")
    download = download_info.value
    assert download.failure() is None
    assert download.suggested_filename == f"{video_id}.mp4"
    data = Path(download.path()).read_bytes()
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data), mode="r") as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (48, 64, 3)
    stored = httpx.get(f"{url}/v1/videos/{video_id}/content", headers={"Authorization": f"Bearer {KEY_A}"})
    assert data == stored.content

    # The recent list shows the video's first frame, small, fetched with the key (an object URL)
    # once it comes near the viewport: on the phone the list starts below the fold.
    thumbnail = f"#recent li[data-id='{video_id}'] img.thumb"
    browser_page.wait_for_selector(thumbnail, state="attached")
    top, src = browser_page.eval_on_selector(thumbnail, "(i) => [i.getBoundingClientRect().top, i.src]")
    if top > VIEWPORTS[viewport]["height"] + 400:
        assert src == ""  # not fetched while far out of view
    browser_page.locator(thumbnail).scroll_into_view_if_needed()
    browser_page.wait_for_function(
        "(selector) => { const image = document.querySelector(selector);"
        " return image && image.complete && image.naturalWidth > 0; }",
        arg=thumbnail,
        timeout=30_000,
    )
    image = browser_page.eval_on_selector(
        thumbnail,
        "(i) => [i.naturalWidth, i.naturalHeight, i.src.slice(0, 5), i.getBoundingClientRect().width]",
    )
    assert image[:3] == [64, 48, "blob:"]
    assert 0 < image[3] <= 48
    _assert_fits(browser_page, viewport)
    _screenshot(browser_page, "download", viewport)


@BOTH_VIEWPORTS
def test_cancelling_a_running_job_shows_cancelled_not_an_error(page: tuple[Any, str], viewport: str) -> None:
    browser_page, url = page
    _open(browser_page, url)
    # 1000 steps at 64x64: seconds of denoising, during which its MP4 stream is already open.
    video_id = _submit(browser_page, "64x64", 17, 1000)
    browser_page.wait_for_function(
        "/denoise step [1-9]/.test(document.getElementById('status').textContent)", timeout=120_000
    )
    # The stream's first bytes (the MP4's init segment) are in the player: the stream the server
    # cuts when the job stops is the one the page is reading.
    browser_page.wait_for_function("window.hyv.initAppendedAt !== null", timeout=30_000)
    browser_page.click("#cancel")
    _wait_status(browser_page, "cancelled", timeout_ms=30_000)
    # The server cut the video's stream when the job stopped: the page asked why, and shows it.
    browser_page.wait_for_function("window.hyv.playback !== null", timeout=30_000)
    assert browser_page.evaluate("window.hyv.playback") == "cancelled"
    status = browser_page.text_content("#status") or ""
    assert re.fullmatch(r"cancelled · \d+%", status), status
    assert browser_page.is_hidden("#error") and browser_page.text_content("#error") == ""
    assert "error" not in browser_page.inner_text("body").lower()
    assert browser_page.is_hidden("#cancel") and browser_page.is_hidden("#download")
    # Shown in the page's neutral colour, not the error red.
    colours = browser_page.evaluate(
        """[getComputedStyle(document.getElementById('status')).color,
            getComputedStyle(document.getElementById('model')).color,
            getComputedStyle(document.getElementById('error')).color]"""
    )
    assert colours[0] == colours[1] != colours[2]

    row = f"#recent li[data-id='{video_id}']"
    browser_page.wait_for_function(
        "(row) => document.querySelector(`${row} .status`)?.textContent === 'cancelled'",
        arg=row,
        timeout=10_000,
    )
    assert browser_page.get_attribute(f"{row} .thumb-placeholder", "data-status") == "cancelled"
    assert browser_page.locator(f"{row} img").count() == 0
    _assert_fits(browser_page, viewport)
    _screenshot(browser_page, "cancelled", viewport)


def _assert_fits(browser_page: Any, viewport: str) -> None:
    """No sideways scrolling, and no visible element reaching past either edge of the viewport."""
    width = VIEWPORTS[viewport]["width"]
    assert browser_page.evaluate("document.documentElement.clientWidth") == width
    scroll_width = browser_page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"scrollWidth {scroll_width} > {width}"
    cut = browser_page.evaluate(
        """(width) => [...document.body.querySelectorAll('*')].filter((element) => {
             const box = element.getBoundingClientRect();
             return box.width > 0 && box.height > 0 && (box.left < -0.5 || box.right > width + 0.5);
           }).map((element) => `${element.tagName}#${element.id}.${element.className}`)""",
        width,
    )
    assert cut == []


@pytest.fixture
def bucketed_page(
    make_api_settings: Any, serve_app: Any, bucketed_bundle_dir: Path, viewport: str
) -> Iterator[tuple[Any, str]]:
    """The page on an API (no worker) serving the tiny bundle at two sizes and two lengths only."""
    server = serve_app(make_api_settings(weights=bucketed_bundle_dir, api_keys=[KEY_A]))
    yield from _browser_on(server.url, viewport)


@BOTH_VIEWPORTS
def test_layout_favicon_and_what_the_model_understands(bucketed_page: tuple[Any, str], viewport: str) -> None:
    browser_page, url = bucketed_page
    _open(browser_page, url)
    # The model's limits and, opened, its grammar and vocabulary: shown, and inside the viewport.
    browser_page.click("#grammar-box summary")
    assert browser_page.text_content("#model") == "hyv-tiny · 32x32, 48x32 · 5, 9 frames"
    for selector in ("#model", "#grammar-template", "#grammar-slots", "#vocabulary"):
        assert browser_page.is_visible(selector), selector
    assert "triangle" in browser_page.inner_text("#vocabulary").split()
    # A queued job in the recent list (no worker here): its placeholder instead of a thumbnail.
    browser_page.click("#grammar-slots .chip[data-value='magenta']")
    browser_page.click("#submit")
    browser_page.wait_for_selector("#recent li .thumb-placeholder[data-status='queued']")

    # The form's four fields: side by side on a desktop, one under another on a phone.
    boxes = [
        browser_page.locator(f"#{field}").bounding_box() for field in ("size", "num_frames", "steps", "seed")
    ]
    if viewport == "phone":
        assert len({round(box["x"]) for box in boxes}) == 1
        assert all(upper["y"] + upper["height"] <= lower["y"] for upper, lower in itertools.pairwise(boxes))
    else:
        assert len({round(box["y"]) for box in boxes}) == 1
    _assert_fits(browser_page, viewport)

    # The favicon: the page's SVG, and /favicon.ico for clients that only ask for that.
    icon = browser_page.evaluate("document.querySelector('link[rel=icon]').href")
    assert icon == f"{url}/web/favicon.svg"
    svg = browser_page.request.get(icon)
    assert (svg.status, svg.headers["content-type"]) == (200, "image/svg+xml")
    assert svg.body().startswith(b"<svg")
    ico = browser_page.request.get(f"{url}/favicon.ico")
    assert (ico.status, ico.headers["content-type"]) == (200, "image/vnd.microsoft.icon")
    assert ico.body()[:4] == b"\x00\x00\x01\x00"  # an ICO header
    _screenshot(browser_page, "layout", viewport)


def _options(browser_page: Any, selector: str) -> list[list[str]]:
    return browser_page.evaluate(
        f"[...document.querySelector('{selector}').options].map((o) => [o.value, o.textContent])"
    )


def test_the_form_offers_what_the_model_serves_and_shows_a_refused_prompt(
    bucketed_page: tuple[Any, str],
) -> None:
    from hyv.engine.prompt_vocabulary import CAPTION_SLOTS, prompt_words

    browser_page, url = bucketed_page
    _open(browser_page, url)
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
    _screenshot(browser_page, "refused-prompt", "desktop")

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


PROMPT = "a red circle moving right on a black background"


def _api_get(url: str, path: str) -> Any:
    response = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {KEY_A}"})
    response.raise_for_status()
    return response.json()


@BOTH_VIEWPORTS
def test_remix_from_the_recent_list_is_followed_and_marked(page: tuple[Any, str], viewport: str) -> None:
    browser_page, url = page
    _open(browser_page, url)
    source_id = _submit(browser_page, "64x48", 9, 4, seed=7)
    _wait_status(browser_page, "completed")
    source_row = f"#recent li[data-id='{source_id}']"
    browser_page.wait_for_selector(f"{source_row} button[data-action='remix']")
    assert browser_page.locator(f"{source_row} .origin").count() == 0  # made from a prompt

    # Remix on the row: the form remixes that video, its prompt in the box to edit; the video shown
    # stays the one it was (the button is not a click on the row).
    browser_page.fill("#prompt", "")
    browser_page.click(f"{source_row} button[data-action='remix']")
    assert browser_page.input_value("#prompt") == PROMPT
    assert browser_page.text_content("#derive-what") == f"Remix of {source_id}"
    assert browser_page.text_content("#submit") == "Remix"
    assert browser_page.is_hidden("#create-fields") and browser_page.is_hidden("#extend-length")
    assert browser_page.evaluate("window.hyv.videoId") == source_id
    _assert_fits(browser_page, viewport)
    _screenshot(browser_page, "remix-form", viewport)

    browser_page.fill("#prompt", "a blue circle moving right on a black background")
    browser_page.click("#submit")
    browser_page.wait_for_function("(source) => window.hyv.videoId !== source", arg=source_id)
    remix_id = str(browser_page.evaluate("window.hyv.videoId"))
    assert remix_id.startswith("video_")
    # The form is back to making new videos; the remix is followed as a new generation is.
    assert browser_page.is_hidden("#derive-bar") and browser_page.text_content("#submit") == "Generate"
    assert browser_page.is_visible("#size") and browser_page.is_hidden("#error")
    _wait_status(browser_page, "completed")
    state = browser_page.evaluate("window.hyv")
    assert state["events"][-1] == "video.completed" and "video.progress" in state["events"]
    assert browser_page.evaluate("document.getElementById('progress').value") == 100
    assert re.fullmatch(r"completed · 100%", browser_page.text_content("#status") or "")
    browser_page.wait_for_function(
        """() => { const v = document.getElementById('player');
                   return v.readyState >= 2 && v.videoWidth === 64 && v.videoHeight === 48
                          && Number.isFinite(v.duration); }""",
        timeout=30_000,
    )
    duration = browser_page.evaluate("document.getElementById('player').duration")
    assert duration == pytest.approx(9 / 8, abs=0.2)
    assert browser_page.evaluate("window.hyv.playback") == "ended"
    short = f"{source_id[:12]}\u2026"
    assert browser_page.text_content("#job-origin") == f"remix of {short}"

    # Its row in the recent list says what it was remixed from (the full id as the tooltip).
    remix_row = f"#recent li[data-id='{remix_id}']"
    browser_page.wait_for_function(
        "(row) => document.querySelector(`${row} .status`)?.textContent === 'completed'",
        arg=remix_row,
        timeout=10_000,
    )
    assert browser_page.text_content(f"{remix_row} .origin") == f"remix of {short}"
    assert browser_page.get_attribute(f"{remix_row} .origin", "title") == source_id
    assert browser_page.text_content(f"{remix_row} .prompt") == (
        f"remix of {short}a blue circle moving right on a black background"
    )
    assert browser_page.locator(f"{remix_row} .row-actions button").all_text_contents() == ["Remix", "Extend"]

    remix = _api_get(url, f"/v1/videos/{remix_id}")
    assert (remix["operation"], remix["source_video_id"], remix["remixed_from_video_id"]) == (
        "remix",
        source_id,
        source_id,
    )
    assert (remix["status"], remix["prompt"], remix["size"], remix["num_frames"], remix["seed"]) == (
        "completed",
        "a blue circle moving right on a black background",
        "64x48",
        9,
        7,
    )
    content = httpx.get(f"{url}/v1/videos/{remix_id}/content", headers={"Authorization": f"Bearer {KEY_A}"})
    with av.open(io.BytesIO(content.content), mode="r") as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (48, 64, 3)
    listed = [video["id"] for video in _api_get(url, "/v1/videos?limit=10")["data"]]
    assert listed[:2] == [remix_id, source_id]
    _assert_fits(browser_page, viewport)
    _screenshot(browser_page, "remix", viewport)


def test_extend_on_a_model_without_image_input_shows_the_servers_reason(page: tuple[Any, str]) -> None:
    browser_page, url = page
    _open(browser_page, url)
    source_id = _submit(browser_page, "64x48", 9, 4)
    _wait_status(browser_page, "completed")

    # Extend on the video shown: its prompt to edit, and the lengths the model renders (the test
    # bundle: any 4n+1 up to 17 frames at 8 fps) as the seconds each adds, its default (5) chosen.
    browser_page.wait_for_selector("#extend:not([hidden])")
    assert browser_page.is_visible("#remix")
    browser_page.fill("#prompt", "")
    browser_page.click("#extend")
    assert browser_page.input_value("#prompt") == PROMPT
    assert browser_page.text_content("#derive-what") == f"Extend {source_id}"
    assert browser_page.text_content("#submit") == "Extend"
    assert _options(browser_page, "#extend-frames") == [
        ["5", "+0.5 s"],
        ["9", "+1 s"],
        ["13", "+1.5 s"],
        ["17", "+2 s"],
    ]
    assert browser_page.input_value("#extend-frames") == "5"
    browser_page.select_option("#extend-frames", "9")
    browser_page.click("#submit")

    # The tiny model takes no image: the server's 422 and its reason, in the error box.
    browser_page.wait_for_selector("#error:not([hidden])")
    assert browser_page.text_content("#error") == (
        "model 'hyv-tiny' cannot extend a video: it takes no image condition"
    )
    assert browser_page.get_attribute("#error", "data-param") == "video"
    # Nothing else changed: the source still shown and completed, the form still extending it with
    # the user's choices, no new job.
    assert browser_page.evaluate("window.hyv.videoId") == source_id
    assert browser_page.get_attribute("#status", "data-status") == "completed"
    assert browser_page.is_visible("#derive-bar") and browser_page.text_content("#submit") == "Extend"
    assert browser_page.input_value("#prompt") == PROMPT
    assert browser_page.input_value("#extend-frames") == "9"
    assert browser_page.is_enabled("#submit")
    assert _api_get(url, "/v1/videos?limit=1")["data"][0]["id"] == source_id
    _screenshot(browser_page, "extend-refused", "desktop")

    # Back to a new video: the create form again, the error gone.
    browser_page.click("#derive-back")
    assert browser_page.is_hidden("#derive-bar") and browser_page.is_hidden("#error")
    assert browser_page.text_content("#submit") == "Generate"
    assert browser_page.is_visible("#size") and browser_page.is_enabled("#size")
