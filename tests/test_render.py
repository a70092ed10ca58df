"""The overlay: app/render.py (shared by the CLI) and ?render=true / Accept: image/png on the endpoints."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.render import AU_BOX, FACE_FILTERED, FACE_KEPT, draw_analysis, expression_text
from tests.helpers import encode, post_image


def colour_mask(image: np.ndarray, bgr: tuple[int, int, int], tol: int = 12) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - np.array(bgr)) <= tol, axis=2)


def synthetic_result() -> dict:
    kept = {"face_id": 0, "box": {"x": 40, "y": 60, "width": 120, "height": 120}, "confidence": 0.93,
            "filtered": False, "filter_reasons": [],
            "action_units": [
                {"au": "AU12", "name": "Lip Corner Puller", "probability": 0.91, "present": True,
                 "box": {"x": 70, "y": 140, "width": 60, "height": 25}},
                {"au": "AU04", "name": "Brow Lowerer", "probability": 0.10, "present": False, "box": None},
                {"au": "AU45", "name": "Blink", "probability": 0.8, "present": True, "box": None}],
            "expression": {"label": "happiness", "confidence": 0.93, "scores": {"happiness": 0.93}, "uncertain": False}}
    dropped = {"face_id": 1, "box": {"x": 250, "y": 60, "width": 100, "height": 100}, "confidence": 0.8,
               "filtered": True, "filter_reasons": ["side_face"], "action_units": None, "expression": None}
    return {"image": {"width": 400, "height": 300}, "faces": [kept, dropped]}


def test_draw_analysis_marks_faces_aus_and_expression():
    image = np.full((300, 400, 3), 90, np.uint8)
    drawn = draw_analysis(image, synthetic_result())
    assert drawn.shape == image.shape and np.array_equal(image, np.full_like(image, 90)), "input untouched"
    kept, filtered, au = colour_mask(drawn, FACE_KEPT), colour_mask(drawn, FACE_FILTERED), colour_mask(drawn, AU_BOX)
    assert kept[60:181, 38:43].sum() > 100, "left edge of the kept face, lime"
    assert filtered[60:161, 248:253].sum() > 80, "left edge of the filtered face, red"
    assert au[140:166, 68:73].sum() > 20, "the AU12 box, amber"
    assert kept[181:215, 40:200].sum() > 300, "the expression label under the kept face"
    assert expression_text(synthetic_result()["faces"][0]["expression"]) == "appears: happiness 0.93"
    assert not filtered[:, :240].any() and not kept[:, 240:].any()


def test_draw_handles_grey_and_rgba_images():
    result = synthetic_result()
    assert draw_analysis(np.zeros((300, 400), np.uint8), result).shape == (300, 400, 3)
    assert draw_analysis(np.zeros((300, 400, 4), np.uint8), result).shape == (300, 400, 3)


def test_render_query_returns_png(client, astronaut):
    response = post_image(client, "/detect-faces", encode(astronaut), render="true")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-request-id"]
    drawn = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == astronaut.shape
    face = post_image(client, "/detect-faces", encode(astronaut)).json()["faces"][0]["box"]
    ys, xs = np.nonzero(colour_mask(drawn, FACE_KEPT, tol=20))
    assert len(xs) > 200 and face["x"] - 3 <= np.median(xs) <= face["x"] + face["width"] + 3


def test_accept_header_and_errors_stay_json(client, astronaut):
    png = client.post("/detect-faces", files={"file": ("a.jpg", encode(astronaut))}, headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    as_json = client.post("/detect-faces", files={"file": ("a.jpg", encode(astronaut))},
                          headers={"Accept": "application/json, image/png"})
    assert as_json.headers["content-type"].startswith("application/json")
    bad = post_image(client, "/detect-faces", b"not an image", render="true")
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_media_type"
    wrong = post_image(client, "/detect-faces", encode(astronaut), render="maybe")
    assert wrong.status_code == 422


@pytest.mark.parametrize("path", ["/detect-faces", "/detect-au", "/recognize-expression", "/analyze"])
def test_every_analysis_endpoint_documents_render(client, path):
    post = client.get("/openapi.json").json()["paths"][path]["post"]
    assert "render" in [p["name"] for p in post["parameters"]]
    assert "image/png" in post["responses"]["200"]["content"]
    response = post_image(client, path, encode(np.full((64, 64, 3), 128, np.uint8), ".png"), render="true")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
