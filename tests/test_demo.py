"""GET /demo in a real headless browser (Debian's chromium driven by playwright): upload the astronaut,
wait for the analysis, and check that the screenshot shows the face box drawn over the face; upload a clip
and check its timeline; upload files the service refuses and check that its own error message is shown."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.helpers import REPO, SAMPLES, encode, requires_data

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
SCREENSHOTS = Path(os.environ.get("MICROFACS_SCREENSHOTS", REPO / "runs" / "screenshots"))


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on this machine: `apt-get install -y chromium` (.ci/run does it) to run the browser test")


def wait_until(page, expression: str, timeout_s: float = 30.0) -> None:
    """``page.wait_for_function`` without it: that one evaluates its string with ``new Function``, which the
    demo's Content-Security-Policy (no 'unsafe-eval') forbids. ``page.evaluate`` runs outside the CSP."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def lime_mask(bgr: np.ndarray) -> np.ndarray:
    return (bgr[:, :, 1] > 230) & (bgr[:, :, 0] < 60) & (bgr[:, :, 2] < 60)


def test_demo_page_served(client):
    page = client.get("/demo")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/demo.js" in page.text and "appears to show" in page.text
    script = client.get("/static/demo.js")
    assert script.status_code == 200
    assert "/analyze-video" in script.text and 'id="every"' in page.text
    # expressions are what a face appears to show, never a reading of feelings
    assert "emotion" not in (page.text + script.text).lower()


def test_demo_in_browser_draws_the_overlay(live_url, astronaut, tmp_path):
    image_path = tmp_path / "astronaut.png"
    image_path.write_bytes(encode(astronaut, ".png"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with demo_page(live_url) as (page, errors, requests):
        page.set_input_files("#file", str(image_path))
        page.wait_for_selector("#status[data-state=done]", timeout=30_000)
        assert "1 face" in page.inner_text("#status")
        assert '"faces"' in page.inner_text("#json")
        page.screenshot(path=str(SCREENSHOTS / "demo_page.png"), full_page=True)
        canvas_png = page.locator("#canvas").screenshot(path=str(SCREENSHOTS / "demo_canvas.png"))
        face = page.evaluate("JSON.parse(document.getElementById('json').textContent).faces[0]")
        box = face["box"]

        # Toggling a pre-filter re-runs the analysis with it off.
        page.uncheck("#occlusion_filter")
        wait_until(page, "document.getElementById('status').dataset.state === 'done' && "
                   "document.getElementById('json').textContent.includes('request_id')")
        page.wait_for_timeout(200)
        assert any("occlusion_filter=false" in url for url in requests), requests
        assert not errors, errors

    shot = cv2.imdecode(np.frombuffer(canvas_png, np.uint8), cv2.IMREAD_COLOR)
    scale = shot.shape[1] / astronaut.shape[1]  # the canvas may be shown smaller than the image
    mask = lime_mask(shot)
    assert mask.sum() > 150, "the face box (lime) is on the screenshot"
    ys, xs = np.nonzero(mask)
    x0, y0 = box["x"] * scale, box["y"] * scale
    x1, y1 = (box["x"] + box["width"]) * scale, (box["y"] + box["height"]) * scale
    inside = (xs >= x0 - 25) & (xs <= x1 + 25) & (ys >= y0 - 40) & (ys <= y1 + 40)
    assert inside.mean() > 0.9, "the lime pixels are where the face is"
    present = [au for au in face.get("action_units") or [] if au["present"] and au.get("box")]
    assert present, "the astronaut smiles: the demo's default endpoint reports present AUs with their boxes"
    amber = (shot[:, :, 2] > 230) & (np.abs(shot[:, :, 1].astype(int) - 176) < 30) & (shot[:, :, 0] < 60)
    assert amber.sum() > 50, "present AUs' boxes are drawn in amber"
    # and the photo itself is drawn under the overlay (not a blank canvas)
    assert shot.std() > 30


@contextlib.contextmanager
def browser_page(**page_options: object) -> Iterator[tuple[Any, list[str]]]:
    """A page in a fresh headless chromium (playwright gives every launch its own temporary profile) and
    the problems it reports: page errors and Content-Security-Policy violations."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    executable = chromium_path()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(**page_options)
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            yield page, problems
        finally:
            browser.close()


@contextlib.contextmanager
def demo_page(live_url: str) -> Iterator[tuple[Any, list[str], list[str]]]:
    """The demo page, its endpoints loaded: (page, page errors and CSP violations, POSTed URLs)."""
    with browser_page(viewport={"width": 1280, "height": 900}) as (page, errors):
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.goto(f"{live_url}/demo")
        wait_until(page, "document.querySelectorAll('#endpoint option').length > 0")
        yield page, errors, posts


def test_demo_in_browser_draws_a_clip_timeline(live_url):
    clip = requires_data(SAMPLES / "single_face.mp4")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with demo_page(live_url) as (page, errors, posts):
        assert page.input_value("#every") == "2"
        page.set_input_files("#file", str(clip))
        page.wait_for_selector("#status[data-state=done]", timeout=180_000)
        status = page.inner_text("#status")
        assert "1 track" in status and "frames analysed" in status, status
        assert any("/analyze-video?" in url and "every=2" in url for url in posts), posts
        assert '"tracks"' in page.inner_text("#json")
        result = page.evaluate("JSON.parse(document.getElementById('json').textContent)")
        assert len(result["tracks"]) == 1 and result["tracks"][0]["events"]
        timelines = page.locator("#timelines canvas.timeline")
        assert timelines.count() == 1
        assert page.locator("#canvas").is_hidden(), "the image canvas makes way for the timeline"
        section = page.inner_text("#timelines")
        assert "Track 0" in section and "probability" in section and "micro" in section  # heading and legend
        if any(e["kind"] == "expression" for e in result["tracks"][0]["events"]):
            assert "appears to show" in section
        page.screenshot(path=str(SCREENSHOTS / "demo_video.png"), full_page=True)
        png = timelines.first.screenshot(path=str(SCREENSHOTS / "demo_video_timeline.png"))
        assert not errors, errors

    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape[0] > 150 and shot.shape[1] > 300
    assert shot.std() > 20, "the timeline is drawn (not a blank canvas)"
    spread = shot.max(axis=2).astype(int) - shot.min(axis=2).astype(int)
    assert (spread > 100).sum() > 500, "coloured curves and event bands are on the timeline"


def test_demo_shows_the_servers_error_and_clears_the_previous_result(live_url, astronaut, tmp_path):
    image = tmp_path / "astronaut.png"
    image.write_bytes(encode(astronaut, ".png"))
    broken_clip = tmp_path / "broken.mp4"
    broken_clip.write_bytes(b"this is not a video at all" * 40)
    text = tmp_path / "notes.txt"
    text.write_text("not an image either")
    with demo_page(live_url) as (page, errors, posts):
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#status[data-state=done]", timeout=30_000)
        assert page.locator("#faces li").count() == 1

        # a clip the service cannot read: its JSON error on the page, the astronaut's result gone
        page.set_input_files("#file", str(broken_clip))
        page.wait_for_selector("#status[data-state=error]", timeout=30_000)
        status = page.inner_text("#status")
        assert "415" in status and "not a video in a supported container" in status, status
        assert '"unsupported_media_type"' in page.inner_text("#json")
        assert '"faces"' not in page.inner_text("#json")
        assert page.locator("#faces li").count() == 0 and page.locator("#canvas").is_hidden()
        assert page.locator("#timelines canvas").count() == 0
        assert any("/analyze-video" in url for url in posts), posts

        # a file that is neither: the image endpoint answers, and its message (not a browser error) is shown
        page.set_input_files("#file", str(text))
        wait_until(page, "document.getElementById('status').textContent.includes('not an image')")
        assert page.get_attribute("#status", "data-state") == "error"
        assert "InvalidStateError" not in page.inner_text("#status")
        page.screenshot(path=str(SCREENSHOTS / "demo_error.png"), full_page=True)
        assert not errors, errors


@pytest.mark.parametrize("name", ["multi_face.jpg", "sample1.jpg"])
def test_demo_labels_do_not_overlap_in_group_photos(live_url, name):
    photo = requires_data(SAMPLES / name)
    with demo_page(live_url) as (page, errors, _):
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#status[data-state=done]", timeout=30_000)
        faces = page.evaluate("JSON.parse(document.getElementById('json').textContent).faces.length")
        rects = page.evaluate("document.getElementById('canvas').labelRects")
        page.locator("#canvas").screenshot(path=str(SCREENSHOTS / f"demo_labels_{Path(name).stem}.png"))
        assert not errors, errors
    assert faces >= 3 and len(rects) >= faces  # every face's label is drawn ...
    for i, a in enumerate(rects):  # ... and no two labels share a pixel
        for b in rects[i + 1 :]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or
                     a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, (a, b)


@pytest.mark.parametrize("path, ready", [("/docs", ".swagger-ui .auth-wrapper .authorize"), ("/redoc", ".api-content")])
def test_docs_pages_work_under_their_content_security_policy(live_url, path, ready):
    """/docs and /redoc load their local assets and run under the CSP the service sends; /docs offers
    "Authorize" (the OpenAPI securitySchemes: X-API-Key and bearer). Redoc's attempt to fetch its logo from
    its CDN is blocked, as it should be for an offline service: only blocks of our own assets count."""
    with browser_page() as (page, problems):
        response = page.goto(f"{live_url}{path}")
        assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
        page.wait_for_selector(ready, timeout=30_000)
    own = [p for p in problems if "https://cdn." not in p]  # a blocked third-party load is the CSP doing its job
    assert not own, own


def test_demo_reads_a_face_against_a_neutral_reference(live_url, astronaut, tmp_path):
    image_path = tmp_path / "astronaut.png"
    image_path.write_bytes(encode(astronaut, ".png"))
    with demo_page(live_url) as (page, errors, requests):
        page.set_input_files("#reference", str(image_path))
        page.set_input_files("#file", str(image_path))
        wait_until(page, "document.getElementById('status').dataset.state === 'done' && "
                   "document.getElementById('json').textContent.includes('\"reference\"')")
        body = page.evaluate("JSON.parse(document.getElementById('json').textContent)")
        assert body["reference"]["source"] == "upload"
        assert body["faces"][0]["expression"]["reference"] is True
        assert "relative to the neutral reference" in page.inner_text("#faces")
        page.click("#reference_clear")
        wait_until(page, "document.getElementById('status').dataset.state === 'done' && "
                   "!document.getElementById('json').textContent.includes('\"reference\"')")
        assert not errors, errors
