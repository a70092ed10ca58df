"""The in-process API (app.analyzer.Analyzer) and its agreement with the HTTP API; settings read per app."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.analyzer import Analyzer, FaceOptions
from app.errors import ApiError
from app.main import create_app
from app.schemas import AnalyzeResponse, DetectActionUnitsResponse, DetectFacesResponse, RecognizeExpressionResponse
from app.settings import Settings
from app.table import EXPRESSION_LABELS
from tests.helpers import SAMPLES, encode, post_image, requires_data


def comparable(body: dict) -> dict:
    """A response without what differs between two calls on the same image (request id and timings)."""
    return {k: v for k, v in body.items() if k not in ("request_id", "timings_ms")}


def grid(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.vstack([np.hstack([image] * cols)] * rows)


@pytest.mark.parametrize("path, heads", [
    ("/detect-faces", ()), ("/detect-au", {"au"}), ("/recognize-expression", {"expression"}),
    ("/analyze", {"au", "expression"}),
])
def test_in_process_result_is_the_endpoints_json(client, analyzer, path, heads):
    photo = requires_data(SAMPLES / "multi_face.jpg")
    over_http = post_image(client, path, photo.read_bytes())
    assert over_http.status_code == 200, over_http.text
    in_process = analyzer.analyze(photo, heads=heads)
    assert comparable(in_process.model_dump(mode="json")) == comparable(over_http.json())
    assert len(in_process.faces) >= 3
    assert set(in_process.timings_ms) >= {"decode", "detect", "landmarks", "pose", "align", "occlusion"}


def test_heads_choose_the_response_type(analyzer, astronaut):
    assert type(analyzer.analyze(astronaut, heads=())) is DetectFacesResponse
    au = analyzer.analyze(astronaut, heads={"au"})
    assert type(au) is DetectActionUnitsResponse and au.faces[0].action_units
    assert "expression" not in au.model_dump()["faces"][0]
    assert type(analyzer.analyze(astronaut, heads={"expression"})) is RecognizeExpressionResponse
    both = analyzer.analyze(astronaut)
    assert type(both) is AnalyzeResponse
    assert both.faces[0].expression.label == "happiness"
    assert {"action_units", "expression"} <= set(both.timings_ms)


def test_filtered_faces_get_null_heads_and_no_head_runs(analyzer, cameraman):
    analysis = analyzer.run(cameraman, FaceOptions(), heads={"au", "expression"})
    assert analysis.faces and all(face.filtered for face in analysis.faces)
    assert all(face.outputs == {} for face in analysis.faces)
    assert "action_units" not in analysis.timings.ms, "no head ran: nothing to time"
    result = analyzer.analyze(cameraman)
    assert result.faces[0].action_units is None and result.faces[0].expression is None


def test_au_boxes_come_out_in_image_pixels(analyzer, astronaut):
    """The same face shifted in a larger canvas: AU boxes shift with it (image space, not crop space)."""
    canvas = np.full((astronaut.shape[0] + 100, astronaut.shape[1] + 60, 3), 127, np.uint8)
    canvas[100:, 60:] = astronaut
    here = {u.au: u.box for u in analyzer.analyze(astronaut, heads={"au"}).faces[0].action_units if u.present}
    there = {u.au: u.box for u in analyzer.analyze(canvas, heads={"au"}).faces[0].action_units if u.present}
    assert here and set(here) & set(there)
    for au in set(here) & set(there):
        assert there[au].x == pytest.approx(here[au].x + 60, abs=3) and there[au].y == pytest.approx(
            here[au].y + 100, abs=3)


def test_sources_path_bytes_and_arrays_agree(analyzer, astronaut, tmp_path):
    png = encode(astronaut, ".png")
    path = tmp_path / "astronaut.png"
    path.write_bytes(png)
    reference = comparable(analyzer.analyze(path).model_dump())
    assert comparable(analyzer.analyze(str(path)).model_dump()) == reference
    assert comparable(analyzer.analyze(png).model_dump()) == reference
    assert comparable(analyzer.analyze(astronaut).model_dump()) == reference
    rgb = cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)
    assert comparable(analyzer.analyze(rgb, channel_order="rgb").model_dump()) == reference
    rgba = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    assert comparable(analyzer.analyze(rgba).model_dump()) == reference
    grey = analyzer.analyze(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY), heads=())
    assert len(grey.faces) == 1


@pytest.mark.parametrize("source, kwargs, status, code", [
    (b"not an image", {}, 415, "unsupported_media_type"),
    (b"", {}, 400, "empty_file"),
    ("/no/such/photo.jpg", {}, 400, "invalid_image"),
    (np.zeros((8, 8, 3), np.float32), {}, 422, "invalid_image"),
    (np.zeros((8, 8, 2), np.uint8), {}, 422, "invalid_image"),
    (np.zeros((64, 64, 3), np.uint8), {"max_faces": 0}, 422, "invalid_request"),
    (np.zeros((64, 64, 3), np.uint8), {"max_faces": 101}, 422, "invalid_request"),
    (np.zeros((64, 64, 3), np.uint8), {"heads": {"au", "gaze_of_the_soul"}}, 422, "invalid_request"),
    (np.zeros((64, 64, 3), np.uint8), {"channel_order": "bgra"}, 422, "invalid_request"),
])
def test_bad_input_raises_the_api_error(analyzer, source, kwargs, status, code):
    with pytest.raises(ApiError) as caught:
        analyzer.analyze(source, **kwargs)
    assert (caught.value.status, caught.value.code) == (status, code)


def test_to_dataframe_has_the_cli_columns(analyzer, astronaut):
    pd = pytest.importorskip("pandas", reason="the dataframe extra: pip install -e '.[dataframe]'")
    frame = analyzer.analyze(grid(astronaut, 1, 2)).to_dataframe(source="two.jpg")
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2
    assert list(frame.columns[:5]) == ["frame", "face_id", "timestamp", "confidence", "success"]
    assert {"pose_Rx", "AU12_c", "AU12_p", f"expr_{EXPRESSION_LABELS[0]}", "filter_reasons"} <= set(frame.columns)
    assert not any(c.endswith("_r") for c in frame.columns), "probabilities are not OpenFace intensities"
    assert (frame["AU12_c"] == 1).all() and (frame["expression"] == "happiness").all()
    assert frame["pose_Ry"].abs().max() < 0.5, "radians"
    empty = analyzer.analyze(np.full((120, 160, 3), 200, np.uint8)).to_dataframe()
    assert len(empty) == 1 and empty.loc[0, "success"] == 0 and pd.isna(empty.loc[0, "face_id"])


def test_settings_are_read_from_the_app_not_frozen_at_import(client, astronaut):
    six_faces = encode(grid(cv2.resize(astronaut, (200, 200)), 2, 3))
    assert post_image(client, "/detect-faces", six_faces, max_faces=150).status_code == 422  # default limit 100
    settings = Settings(max_faces_limit=200, default_max_faces=5)
    with TestClient(create_app(settings)) as other:
        assert other.get("/version").json()["limits"]["max_faces"] == 200
        assert len(post_image(other, "/detect-faces", six_faces).json()["faces"]) == 5
        wide = post_image(other, "/detect-faces", six_faces, max_faces=150)
        assert wide.status_code == 200 and len(wide.json()["faces"]) == 6
        too_many = post_image(other, "/detect-faces", six_faces, max_faces=201)
        assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "invalid_request"


def test_an_analyzer_of_its_own(astronaut):
    """Analyzer() alone (no app, no server) loads the models and answers."""
    analyzer = Analyzer(Settings(default_max_faces=1))
    result = analyzer.analyze(grid(astronaut, 1, 2), heads=())
    assert len(result.faces) == 1 and result.request_id
