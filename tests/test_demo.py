"""GET /demo in a real headless browser (Debian's chromium driven by playwright): upload the astronaut,
wait for the analysis, and check that the screenshot shows the face box drawn over the face."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import REPO, encode

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


def lime_mask(bgr: np.ndarray) -> np.ndarray:
    return (bgr[:, :, 1] > 230) & (bgr[:, :, 0] < 60) & (bgr[:, :, 2] < 60)


def test_demo_page_served(client):
    page = client.get("/demo")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/demo.js" in page.text and "appears to show" in page.text
    assert client.get("/static/demo.js").status_code == 200


def test_demo_in_browser_draws_the_overlay(live_url, astronaut, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    executable = chromium_path()
    image_path = tmp_path / "astronaut.png"
    image_path.write_bytes(encode(astronaut, ".png"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        # playwright gives every launch a fresh temporary profile (its own --user-data-dir)
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url) if r.method == "POST" else None)
            page.goto(f"{live_url}/demo")
            page.wait_for_function("document.querySelectorAll('#endpoint option').length > 0")
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
            page.wait_for_function("document.getElementById('status').dataset.state === 'done' && "
                                   "document.getElementById('json').textContent.includes('request_id')")
            page.wait_for_timeout(200)
            assert any("occlusion_filter=false" in url for url in requests), requests
            assert not errors, errors
        finally:
            browser.close()

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
