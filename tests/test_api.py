"""The HTTP contract: endpoints, response shape, parameters, and the JSON error for bad input."""
from __future__ import annotations

import cv2
import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.helpers import SAMPLES, encode, post_image, requires_data


def test_service_endpoints(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert {"face_detection_full_range", "face_landmark", "occlusion"} <= set(ready.json()["models"])
    version = client.get("/version").json()
    assert version["limits"]["max_upload_bytes"] == Settings().max_upload_bytes
    # the default 256 MiB decode budget: 40 M pixels without alpha (the pixel limit), fewer with alpha
    assert version["limits"]["max_image_pixels_by_layout"] == {
        "no_alpha": 40_000_000, "alpha_8bit": 256 * 2**20 // 8, "alpha_16bit": 256 * 2**20 // 16}
    assert all(len(m["sha256"]) == 64 for m in version["models"].values())
    assert client.get("/docs").status_code == 200
    assert "/detect-faces" in client.get("/openapi.json").json()["paths"]


def test_detect_faces_contract(client, astronaut):
    response = post_image(client, "/detect-faces", encode(astronaut), landmarks="true")
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["image"] == {"width": 512, "height": 512}
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert set(face["box"]) == {"x", "y", "width", "height"} and face["box"]["width"] > 50
    assert 0 <= face["confidence"] <= 1
    assert set(face["pose"]) == {"yaw", "pitch", "roll"}
    assert set(face["occlusion"]["regions"]) == {"eyes", "nose", "mouth", "brows"}
    assert face["filtered"] is False and face["filter_reasons"] == []
    assert len(face["landmarks"]) == 468 and len(face["landmarks"][0]) == 3
    assert {"decode", "detect", "landmarks", "pose", "occlusion"} <= set(body["timings_ms"])


def test_profile_face_is_reported_filtered_not_dropped(client, cameraman):
    body = post_image(client, "/detect-faces", encode(cameraman)).json()
    assert len(body["faces"]) == 1 and body["faces"][0]["filtered"] is True
    assert "side_face" in body["faces"][0]["filter_reasons"]
    off = post_image(client, "/detect-faces", encode(cameraman), side_face_filter="false").json()
    assert "side_face" not in off["faces"][0]["filter_reasons"]


def test_no_face_is_200_with_empty_list(client):
    blank = np.full((240, 320, 3), 200, np.uint8)
    response = post_image(client, "/detect-faces", encode(blank, ".png"), filename="blank.png")
    assert response.status_code == 200 and response.json()["faces"] == []


def test_face_crop_parameter(client, astronaut):
    body = post_image(client, "/detect-faces", encode(astronaut[50:200, 150:300]), face_crop="true").json()
    assert len(body["faces"]) == 1 and body["faces"][0]["box"] == {"x": 0.0, "y": 0.0, "width": 150.0, "height": 150.0}
    assert "detect" not in body["timings_ms"]


def test_group_photo_over_http(client):
    data = requires_data(SAMPLES / "sample6.jpg").read_bytes()
    body = post_image(client, "/detect-faces", data, max_faces=3).json()
    assert len(body["faces"]) == 3
    assert [f["face_id"] for f in body["faces"]] == [0, 1, 2]


def _assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"} and body["error"]["code"] == code
    assert body["error"]["message"] and body["request_id"] == response.headers["x-request-id"]


def test_bad_uploads_give_json_errors(client, astronaut):
    _assert_error(post_image(client, "/detect-faces", b"not an image at all"), 415, "unsupported_media_type")
    _assert_error(post_image(client, "/detect-faces", b""), 400, "empty_file")
    jpeg = encode(astronaut)
    _assert_error(post_image(client, "/detect-faces", jpeg[: len(jpeg) // 3]), 400, "invalid_image")
    _assert_error(client.post("/detect-faces"), 422, "missing_file")
    _assert_error(client.post("/detect-faces", data={"file": "text"}), 422, "missing_file")
    _assert_error(post_image(client, "/detect-faces", jpeg, max_faces=0), 422, "invalid_request")
    _assert_error(post_image(client, "/detect-faces", jpeg, side_face_filter="maybe"), 422, "invalid_request")
    _assert_error(client.get("/nope"), 404, "not_found")
    _assert_error(client.get("/detect-faces"), 405, "method_not_allowed")


def test_limits_are_enforced_before_decoding(astronaut):
    settings = Settings(max_upload_bytes=50_000, max_image_pixels=100_000, decode_memory_mb=16, max_in_flight=3)
    with TestClient(create_app(settings)) as small:
        big = encode(astronaut, ".png")  # ~500 kB: refused by the body-size guard
        _assert_error(post_image(small, "/detect-faces", big), 413, "payload_too_large")
        pixels = encode(cv2.resize(astronaut, (400, 400)), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 30])
        assert len(pixels) < 50_000  # small file, too many pixels (160,000 > 100,000)
        _assert_error(post_image(small, "/detect-faces", pixels), 413, "image_too_large")
        limits = small.get("/version").json()["limits"]
        assert limits["max_image_pixels"] == 100_000 and limits["decode_memory_mb"] == 16
        # the per-layout limits come from these settings (their arithmetic: tests/test_decode.py)
        assert limits["max_image_pixels_by_layout"] == {"no_alpha": 100_000, "alpha_8bit": 100_000,
                                                        "alpha_16bit": 100_000}
        assert (limits["max_in_flight"], limits["max_queue"]) == (3, 3)


def test_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    response = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["x-request-id"] != "bad id with spaces"


def test_api_key_when_configured(astronaut):
    with TestClient(create_app(Settings(api_key="s3cret"))) as keyed:
        _assert_error(post_image(keyed, "/detect-faces", encode(astronaut)), 401, "unauthorized")
        ok = keyed.post("/detect-faces", files={"file": ("a.jpg", encode(astronaut))}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert keyed.get("/healthz").status_code == 200


def test_docs_are_served_without_a_cdn(client):
    page = client.get("/docs").text
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    asset = next(part.split('"')[0] for part in page.split('src="')[1:] if part.split('"')[0].endswith(".js"))
    assert client.get(asset).status_code == 200


def test_blank_face_crop_is_reported_unusable_not_guessed(client):
    blank = np.full((64, 64, 3), 128, np.uint8)
    body = post_image(client, "/analyze", encode(blank, ".png"), face_crop="true").json()
    (face,) = body["faces"]
    assert face["filtered"] and "low_landmark_confidence" in face["filter_reasons"]
    assert face["action_units"] is None and face["expression"] is None
