"""The face stage on real faces: detection, mesh, head pose, side-face filter, alignment."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.align import TEMPLATE, TEMPLATE_INDICES, align_face, landmarks_in_crop
from app.analyzer import FaceOptions
from tests.helpers import SAMPLES, requires_data

ASTRONAUT_FACE = (170, 60, 285, 185)  # x0, y0, x1, y1 drawn by hand around her face (hair excluded)


def test_astronaut_one_frontal_face(analyzer, astronaut):
    faces = analyzer.run(astronaut, FaceOptions()).faces
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    hx0, hy0, hx1, hy1 = ASTRONAUT_FACE
    inter = max(0, min(x1, hx1) - max(x0, hx0)) * max(0, min(y1, hy1) - max(y0, hy0))
    union = (x1 - x0) * (y1 - y0) + (hx1 - hx0) * (hy1 - hy0) - inter
    assert inter / union > 0.6
    assert face.confidence > 0.8 and face.landmark_confidence > 0.9
    assert abs(face.pose.yaw) < 12 and abs(face.pose.pitch) < 15 and abs(face.pose.roll) < 10
    assert not face.filtered, face.filter_reasons
    # every mesh point lies in or near the face box
    assert (face.landmarks[:, 0] > x0 - 20).all() and (face.landmarks[:, 0] < x1 + 20).all()


def test_profile_face_is_turned_and_filtered(analyzer, astronaut, cameraman):
    frontal = analyzer.run(astronaut, FaceOptions()).faces[0]
    turned = analyzer.run(cameraman, FaceOptions()).faces
    assert len(turned) == 1
    assert abs(turned[0].pose.yaw) > abs(frontal.pose.yaw) + 20
    assert "side_face" in turned[0].filter_reasons
    unfiltered = analyzer.run(cameraman, FaceOptions(side_face_filter=False)).faces[0]
    assert "side_face" not in unfiltered.filter_reasons


def test_yaw_sign_follows_the_image(analyzer, cameraman):
    """Mirroring the image mirrors the yaw (and the roll) and leaves the pitch."""
    face = analyzer.run(cameraman, FaceOptions()).faces[0]
    mirrored = analyzer.run(cv2.flip(cameraman, 1), FaceOptions()).faces[0]
    assert np.sign(face.pose.yaw) == -np.sign(mirrored.pose.yaw)
    assert abs(face.pose.yaw + mirrored.pose.yaw) < 8
    assert abs(face.pose.pitch - mirrored.pose.pitch) < 8


def test_roll_measures_an_in_plane_rotation(analyzer, astronaut):
    base = analyzer.run(astronaut, FaceOptions()).faces[0].pose.roll
    h, w = astronaut.shape[:2]
    # cv2's positive angle turns the picture anticlockwise, so the head leans anticlockwise: roll falls
    rotated = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h))
    roll = analyzer.run(rotated, FaceOptions()).faces[0].pose.roll
    assert roll == pytest.approx(base - 20, abs=4)


def test_alignment_puts_template_points_in_place(analyzer, astronaut):
    face = analyzer.run(astronaut, FaceOptions()).faces[0]
    aligned = align_face(astronaut, face.landmarks, size=112)
    points = landmarks_in_crop(aligned, face.landmarks)[TEMPLATE_INDICES]
    assert np.abs(points - TEMPLATE * 112).max() < 6
    # and a crop box maps back inside the face box
    x0, y0, x1, y1 = aligned.box_to_image(np.array([30, 60, 82, 90]))
    fx0, fy0, fx1, fy1 = face.box
    assert fx0 - 10 < x0 < x1 < fx1 + 10 and fy0 - 10 < y0 < y1 < fy1 + 10


def test_face_crop_mode_treats_whole_image_as_face(analyzer, astronaut):
    crop = astronaut[50:200, 150:300]
    faces = analyzer.run(crop, FaceOptions(face_crop=True)).faces
    assert len(faces) == 1
    assert faces[0].box.tolist() == [0.0, 0.0, 150.0, 150.0]
    assert faces[0].landmark_confidence > 0.9 and abs(faces[0].pose.yaw) < 15


def test_no_face_gives_empty_list(analyzer):
    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (9, 9), 3)
    assert analyzer.run(noise, FaceOptions()).faces == []


def test_max_faces_and_min_face_size(analyzer):
    image = cv2.imread(str(requires_data(SAMPLES / "multi_face.jpg")))
    all_faces = analyzer.run(image, FaceOptions()).faces
    assert len(all_faces) >= 4
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in all_faces]
    assert areas == sorted(areas, reverse=True)
    assert len(analyzer.run(image, FaceOptions(max_faces=2)).faces) == 2
    smallest_side = min(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in all_faces)
    fewer = analyzer.run(image, FaceOptions(min_face_size=int(smallest_side) + 1)).faces
    assert len(fewer) < len(all_faces)


@pytest.mark.parametrize("name, at_least", [("sample1.jpg", 3), ("sample3.jpg", 2), ("sample4.jpg", 3),
                                            ("sample5.jpg", 3), ("sample6.jpg", 4)])
def test_group_photos(analyzer, name, at_least):
    image = cv2.imread(str(requires_data(SAMPLES / name)))
    faces = analyzer.run(image, FaceOptions()).faces
    assert len(faces) >= at_least
    assert all(f.landmark_confidence > 0.5 for f in faces)


def test_no_face_sample(analyzer):
    image = cv2.imread(str(requires_data(SAMPLES / "free-mountain-vector-01.jpg")))
    assert analyzer.run(image, FaceOptions()).faces == []


class CountingShortRange:
    """Wraps the short-range model and counts the images it reads."""

    def __init__(self, model) -> None:
        self.model, self.calls, self.size = model, 0, model.size

    def detect(self, image, threshold):
        self.calls += 1
        return self.model.detect(image, threshold)


def test_short_range_model_runs_only_where_it_can_add_a_face(analyzer, astronaut):
    from app.detect import FaceDetector

    counting = CountingShortRange(analyzer.detector.short_range)
    detector = FaceDetector(analyzer.detector.full_range, counting)
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[:, 64:576] = cv2.resize(astronaut, (512, 480))
    assert len(detector.detect(canvas, 0.5, 20, 5)) == 1
    assert counting.calls == 0  # the full-range model found the face and nothing else lit up
    # a close-up (the face fills the frame) is beyond the full-range model: the short-range one finds it
    face = detector.detect(canvas, 0.5, 20, 1)[0].box.astype(int)
    side = int(1.1 * max(face[2] - face[0], face[3] - face[1]))
    cx, cy = (face[0] + face[2]) // 2, (face[1] + face[3]) // 2
    close_up = cv2.copyMakeBorder(canvas, side, side, side, side, cv2.BORDER_REPLICATE)[
        cy + side - side // 2 : cy + side + side // 2, cx + side - side // 2 : cx + side + side // 2
    ]
    assert not analyzer.detector.full_range.detect(close_up, 0.5)
    assert len(detector.detect(close_up, 0.5, 20, 5)) == 1
    assert counting.calls == 1


def test_large_images_are_shrunk_once_with_the_same_faces(analyzer, astronaut):
    from app.detect import shrink

    small = analyzer.detector.detect(astronaut, 0.5, 20, 5)
    big_image = cv2.resize(astronaut, (512 * 5 + 3, 512 * 5 + 3), interpolation=cv2.INTER_CUBIC)
    reduced, stretch = shrink(big_image, 192)
    kept = 2563 - 2563 % (2563 // 384)  # reduced 6x first (to >= 2 x 192 px): 1 px left out
    assert max(reduced.shape[:2]) == 192 and np.allclose(stretch, kept / 192)
    big = analyzer.detector.detect(big_image, 0.5, 20, 5)
    assert len(big) == len(small) == 1
    assert np.abs(big[0].box / 5 - small[0].box).max() < 4  # the same box, mapped back to image pixels
