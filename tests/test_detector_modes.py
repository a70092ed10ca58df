"""MICROFACS_DETECTOR: full (the default: every face down to min_face_size) or short (the short-range model alone, as
MediaPipe's FaceLandmarker: close-ups only). The trade-off must be real both ways: the short mode finds a portrait's
face where the full mode does, and misses faces of a group photo that the full mode finds."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.analyzer import Analyzer
from app.boxes import box_iou
from app.main import create_app
from app.settings import Settings
from tests.helpers import SAMPLES, requires_data


@pytest.fixture(scope="module")
def short(analyzer) -> Analyzer:
    return Analyzer(Settings(detector="short"), analyzer.models)


def test_the_short_mode_finds_a_portraits_face_where_the_full_mode_does(analyzer, short, astronaut):
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[:, 64:576] = cv2.resize(astronaut, (512, 480))  # the benchmark's one-face photo
    for image in (astronaut, canvas):
        (full,) = analyzer.detect(image)
        (close,) = short.detect(image)
        assert box_iou(full.box, close.box[None])[0] > 0.6
    face = short.analyze(canvas, heads={"au", "expression"}).faces[0]
    assert not face.filtered and face.expression is not None and face.expression.label == "happiness"


def test_the_short_mode_misses_small_faces_the_full_mode_finds(analyzer, short):
    image = cv2.imread(str(requires_data(SAMPLES / "multi_face.jpg")))
    full, close = analyzer.detect(image), short.detect(image)
    assert len(full) == 5 and len(close) < len(full)
    for face in close:  # what it finds is one of the full mode's faces
        assert box_iou(face.box, np.array([f.box for f in full])).max() > 0.3


def test_version_publishes_the_detector():
    with TestClient(create_app(Settings(detector="short"))) as client:
        assert client.get("/version").json()["defaults"]["detector"] == "short"
