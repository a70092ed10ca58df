"""The face identity descriptor (app/model_zoo/face_identity.py) and the same-person grouping (app/identity.py)."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from app.identity import MATCH_DISTANCE, cosine_distance, same_person, same_person_groups
from app.model_zoo.base import ModelError
from app.model_zoo.face_identity import SIZE, FaceIdentity, face_crop
from app.settings import Settings
from tests.helpers import DATA, requires_data

MODELS = Settings().models_dir
PHOTO = {"side_face_filter": False, "occlusion_filter": False, "max_faces": 1}


@pytest.fixture(scope="module")
def identity() -> FaceIdentity:
    return FaceIdentity(MODELS)


def first_face(analyzer, image):
    from app.analyzer import FaceOptions

    faces = analyzer.run(image, FaceOptions(**PHOTO)).faces
    assert faces, "the face stage found no face"
    return faces[0]


# ------------------------------------------------------------------------------------------- the model
def test_model_loads_with_its_manifest_checksum(identity):
    assert identity.entry.name == "face_identity" and len(identity.entry.sha256) == 64
    assert identity.input_shape[1:] == (3, SIZE, SIZE) and identity.dim == 1024
    assert identity.entry.extra["match_threshold"]["cosine_distance"] == pytest.approx(MATCH_DISTANCE, abs=1e-4)


def test_altered_model_file_is_refused(tmp_path):
    manifest = json.loads((MODELS / "manifest.json").read_text())
    entry = manifest["models"]["face_identity"]
    (tmp_path / "manifest.json").write_text(json.dumps({"manifest_version": 1, "models": {"face_identity": entry}}))
    shutil.copy(MODELS / entry["file"], tmp_path / entry["file"])
    FaceIdentity(tmp_path)  # the intact copy loads
    with (tmp_path / entry["file"]).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        FaceIdentity(tmp_path)


def test_not_loaded_at_start_then_loaded_once_on_demand():
    from app.registry import ModelRegistry

    registry = ModelRegistry(Settings())
    assert "face_identity" not in registry.loaded()
    model = registry.identity()
    assert registry.identity() is model and registry.loaded()["face_identity"] is model


def test_embedding_is_a_unit_vector_and_rotation_barely_moves_it(identity, analyzer, astronaut):
    face = first_face(analyzer, astronaut)
    e = identity.embed(astronaut, face.landmarks)
    assert e.shape == (1024,) and e.dtype == np.float32 and abs(np.linalg.norm(e) - 1) < 1e-5
    h, w = astronaut.shape[:2]
    turned = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.0), (w, h),
                            borderMode=cv2.BORDER_REPLICATE)
    face_turned = first_face(analyzer, turned)
    by_landmarks = cosine_distance(e, identity.embed(turned, face_turned.landmarks))
    by_box = cosine_distance(e, identity.embed(turned, face_turned.box))  # a plain box is not turned upright
    assert by_landmarks < 0.05 and by_landmarks < by_box


def test_batch_equals_one_by_one(identity, analyzer, astronaut):
    face = first_face(analyzer, astronaut)
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    face_flipped = first_face(analyzer, flipped)
    batch = identity.embed_batch([(astronaut, face.landmarks), (flipped, face_flipped.landmarks)], batch=2)
    assert np.allclose(batch[0], identity.embed(astronaut, face.landmarks), atol=1e-5)
    assert np.allclose(batch[1], identity.embed(flipped, face_flipped.landmarks), atol=1e-5)
    assert identity.embed_batch([]).shape == (0, 1024)


def test_same_performer_is_closer_than_another_performer(identity, analyzer):
    from training.data import taiwanese_rows

    rows = taiwanese_rows(requires_data(DATA / "taiwanese_dev"))

    def photo(performer: str, neutral: bool):
        row = next(r for r in rows if r.performer == performer and r.neutral == neutral)
        image = cv2.imread(str(row.path))
        return identity.embed(image, first_face(analyzer, image).landmarks)

    a_neutral, a_posed, b_neutral, b_posed = photo("1", True), photo("1", False), photo("2", True), photo("2", False)
    same = [cosine_distance(a_neutral, a_posed), cosine_distance(b_neutral, b_posed)]
    different = [cosine_distance(x, y) for x in (a_neutral, a_posed) for y in (b_neutral, b_posed)]
    assert max(same) < min(different)
    assert same_person_groups(np.stack([a_neutral, b_neutral, a_posed, b_posed])) == [0, 1, 0, 1]


# ----------------------------------------------------------------------------------------- bad input
def test_no_face_is_a_clear_error(identity, analyzer):
    image = cv2.imread(str(requires_data(DATA / "samples" / "free-mountain-vector-01.jpg")))
    from app.analyzer import FaceOptions

    assert analyzer.run(image, FaceOptions(**PHOTO)).faces == []  # nothing to describe: the caller skips it
    with pytest.raises(ValueError, match="too small"):
        identity.embed(image, np.full((468, 3), 50.0))  # landmarks all on one spot
    with pytest.raises(ValueError, match="too small"):
        identity.embed(image, np.array([10.0, 10.0, 12.0, 11.0]))
    with pytest.raises(ValueError, match="landmarks or an"):
        identity.embed(image, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="BGR image"):
        identity.embed(image[:, :, 0], np.array([0.0, 0.0, 100.0, 100.0]))
    with pytest.raises(ValueError, match="empty or too small"):
        identity.embed(image, np.array([0.0, 0.0, np.nan, 100.0]))


def test_crop_is_the_box_with_its_margin():
    image = np.zeros((400, 400, 3), np.uint8)
    image[100:300, 150:250] = 255  # a white 100 x 200 box
    crop = face_crop(image, np.array([150.0, 100.0, 250.0, 300.0]))
    assert crop.shape == (SIZE, SIZE, 3)
    white = crop[:, :, 0] > 127
    # a 10 % margin each side: the box fills 1/1.2 of the crop in both directions (aspect ratio not kept)
    assert abs(white.mean() - (1 / 1.2) ** 2) < 0.02
    assert not white[:10].any() and not white[:, :10].any() and white[SIZE // 2, SIZE // 2]


# ------------------------------------------------------------------------------------------ grouping
def test_groups_of_synthetic_embeddings():
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.normal(size=(64, 3)))[0].T  # three orthogonal directions: cosine distance 1
    people = np.array([2, 0, 1, 0, 2, 1, 1, 0])
    noisy = centres[people] + 0.05 * rng.normal(size=(8, 64))
    groups = same_person_groups(noisy * rng.uniform(0.5, 3.0, size=(8, 1)))  # lengths do not matter
    assert groups == [0, 1, 2, 1, 0, 2, 2, 1]  # ids in order of first appearance
    assert same_person_groups(noisy, threshold=1e-6) == list(range(8))  # nothing within a tiny threshold
    assert len(set(same_person_groups(noisy, threshold=1.5))) == 1  # everything within a huge one


def test_threshold_is_the_authors_and_cuts_where_it_says():
    assert abs(MATCH_DISTANCE - 0.82**2 / 2) < 1e-12

    def pair_at(distance: float) -> np.ndarray:
        angle = np.arccos(1 - distance)
        return np.array([[1.0, 0.0], [np.cos(angle), np.sin(angle)]])

    assert same_person_groups(pair_at(MATCH_DISTANCE - 0.01)) == [0, 0]
    assert same_person_groups(pair_at(MATCH_DISTANCE + 0.01)) == [0, 1]
    assert same_person(*pair_at(MATCH_DISTANCE - 0.01)) and not same_person(*pair_at(MATCH_DISTANCE + 0.01))


def test_average_linkage_does_not_chain():
    # a chain of points 0.3 apart: single linkage would join all of them; average linkage splits the ends
    angles = np.arccos(1 - 0.3) * np.arange(5)
    chain = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    groups = same_person_groups(chain)
    assert groups[0] == groups[1] and groups[0] != groups[4] and len(set(groups)) > 1


def test_grouping_edge_cases():
    assert same_person_groups(np.zeros((0, 8))) == [] and same_person_groups([]) == []
    assert same_person_groups(np.ones((1, 8))) == [0]
    assert same_person_groups(np.ones((3, 8))) == [0, 0, 0]
    with pytest.raises(ValueError, match="all zeros"):
        same_person_groups(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        same_person_groups(np.array([[1.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        same_person_groups(np.ones(4))
