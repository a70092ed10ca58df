"""The JSON of every analysis endpoint stays what it was when the answers in tests/golden/ were recorded: speed work
(batched heads, rewritten model graphs, execution providers) must not move the outputs beyond float noise.

The images are built from scikit-image's public-domain astronaut and cameraman (PNG: lossless, so the decode is
exact): one face on a 640x480 canvas, a group of four faces of different sizes and angles, a face in profile
(filtered) and a face crop. Regenerate the answers only for a change that is meant to move them:

    MICROFACS_WRITE_GOLDEN=1 python -m pytest -q tests/test_outputs_unchanged.py
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import encode

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
WRITE = os.environ.get("MICROFACS_WRITE_GOLDEN") == "1"
# Float tolerances (absolute): pixels for boxes and landmarks, degrees for angles, and the 0..1 outputs (probabilities,
# scores, blendshapes: rounded to 4 decimals in the JSON). Rewritten graphs and batched calls move them by float
# rounding only (~1e-5); the margins leave room for another OpenCV or onnxruntime build.
PIXELS, DEGREES, UNIT = 0.05, 0.05, 2e-3
ANGLE_KEYS = {"yaw", "pitch", "roll"}
PIXEL_KEYS = {"x", "y", "width", "height", "landmarks"}


def images() -> dict[str, bytes]:
    from skimage import data

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    camera = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    one = np.full((480, 640, 3), 128, np.uint8)
    one[:, 64:576] = cv2.resize(astronaut, (512, 480), interpolation=cv2.INTER_AREA)
    tiles = [
        astronaut,
        astronaut[:, ::-1],
        cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((256, 256), 12, 1.0), (512, 512),
                       borderMode=cv2.BORDER_REPLICATE),
        cv2.resize(cv2.resize(astronaut, (320, 320), interpolation=cv2.INTER_AREA), (512, 512),
                   interpolation=cv2.INTER_LINEAR),
    ]
    group = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    group = cv2.resize(group, (800, 800), interpolation=cv2.INTER_AREA)
    crop = astronaut[20:260, 110:350]
    # a frontal face beside a larger one in profile: one filtered, one not
    mixed = np.hstack([cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA),
                       cv2.resize(camera, (768, 768), interpolation=cv2.INTER_AREA)[192:576]])
    return {"one_face": encode(one, ".png"), "group": encode(group, ".png"), "profile": encode(camera, ".png"),
            "crop": encode(crop, ".png"), "mixed": encode(mixed, ".png")}


# (name, endpoint, image, query, with the one-face image as the multipart `reference`)
CALLS = [
    ("detect_faces_landmarks", "/detect-faces", "group", {"landmarks": "true"}, False),
    ("detect_au_blendshapes_gaze", "/detect-au", "group", {"blendshapes": "true", "gaze": "true"}, False),
    ("recognize_expression_ferplus", "/recognize-expression", "group", {"prior": "ferplus"}, False),
    ("analyze_one", "/analyze", "one_face", {}, False),
    ("analyze_group", "/analyze", "group", {}, False),
    ("analyze_profile", "/analyze", "profile", {}, False),
    ("analyze_profile_unfiltered", "/analyze", "profile", {"side_face_filter": "false"}, False),
    ("analyze_crop", "/analyze", "crop", {"face_crop": "true"}, False),
    ("analyze_mixed", "/analyze", "mixed", {}, False),
    ("analyze_group_reference", "/analyze", "group", {}, True),
]


def answer(client, endpoint: str, image: bytes, query: dict, reference: bytes | None) -> dict:
    files = {"file": ("image.png", image, "image/png")}
    if reference is not None:
        files["reference"] = ("reference.png", reference, "image/png")
    response = client.post(endpoint, files=files, params=query)
    assert response.status_code == 200, response.text
    body = response.json()
    body.pop("request_id")
    body.pop("timings_ms")
    return body


def differences(expected, actual, path: str = "", key: str = "") -> list[str]:
    """Where ``actual`` is not ``expected``: same keys, lists, strings and booleans; numbers within the tolerance
    of their field."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return [f"{path}: keys {sorted(expected) if isinstance(expected, dict) else expected} != "
                    f"{sorted(actual) if isinstance(actual, dict) else actual}"]
        return [d for k in expected for d in differences(expected[k], actual[k], f"{path}.{k}", k)]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [f"{path}: length {len(expected)} != {len(actual) if isinstance(actual, list) else actual}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{path}[{i}]", key)]
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        tolerance = PIXELS if key in PIXEL_KEYS else DEGREES if key in ANGLE_KEYS else UNIT
        if key == "face_id" or (key in ("width", "height") and path.startswith(".image")):
            tolerance = 0  # counts and the image's own size: exact
        return [] if math.isclose(expected, actual, abs_tol=tolerance) else [f"{path}: {expected} != {actual}"]
    return [f"{path}: {expected!r} != {actual!r}"]


@pytest.fixture(scope="module")
def answers(client) -> dict[str, dict]:
    photos = images()
    return {name: answer(client, endpoint, photos[image], query, photos["one_face"] if reference else None)
            for name, endpoint, image, query, reference in CALLS}


def test_every_endpoint_answers_as_recorded(answers):
    if WRITE:
        GOLDEN.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    recorded = json.loads(GOLDEN.read_text())
    assert set(recorded) == set(answers)
    problems = {name: differences(recorded[name], answers[name]) for name in recorded}
    problems = {name: p[:5] for name, p in problems.items() if p}
    assert not problems, problems


def test_the_recorded_answers_cover_what_they_should(answers):
    """The golden set is worth comparing: several faces, filtered and unfiltered, every head, a reference."""
    group = answers["analyze_group"]["faces"]
    assert len(group) >= 3 and all(f["action_units"] and f["expression"] for f in group)
    assert any(f["filtered"] for f in answers["analyze_profile"]["faces"])
    assert sorted(f["filtered"] for f in answers["analyze_mixed"]["faces"]) == [False, True]
    assert any(not f["filtered"] for f in answers["analyze_profile_unfiltered"]["faces"])
    assert all(f["blendshapes"] and f["gaze"] for f in answers["detect_au_blendshapes_gaze"]["faces"])
    assert answers["analyze_group_reference"]["reference"] is not None
    assert answers["analyze_crop"]["faces"][0]["action_units"]


def test_the_comparison_catches_a_moved_output(answers):
    moved = json.loads(json.dumps(answers["analyze_one"]))
    moved["faces"][0]["expression"]["confidence"] += 0.01
    moved["faces"][0]["box"]["x"] += 0.2
    found = differences(answers["analyze_one"], moved)
    assert len(found) == 2 and any("confidence" in d for d in found) and any("box.x" in d for d in found)
