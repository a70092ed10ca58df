"""Person-relative reading (app/reference.py): a reference photo, enrolled persons, and their errors."""
from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.errors import ApiError
from app.main import create_app
from app.persons import PersonStore, key_scope
from app.reference import Reference, most_neutral, relative_au_probability
from app.settings import Settings
from tests.helpers import DATA, encode, requires_data


def post(client, path, image, reference=None, params=None, headers=None):
    files = [("file", ("face.jpg", encode(image), "image/jpeg"))]
    if reference is not None:
        files.append(("reference", ("ref.jpg", encode(reference), "image/jpeg")))
    return client.post(path, files=files, params=params or {}, headers=headers or {})


def two_faces(image: np.ndarray) -> np.ndarray:
    """The image beside a smaller copy of itself: two faces, the first the larger."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (w * 2 // 3, h * 2 // 3))
    canvas = np.full((h, w + small.shape[1], 3), 255, np.uint8)
    canvas[:, :w] = image
    canvas[: small.shape[0], w:] = small
    return canvas


def taiwanese(performer: str, intended: str) -> list[np.ndarray]:
    import csv

    root = requires_data(DATA / "taiwanese_dev")
    with (root / "labels.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["performer"] == performer and r["intended"] == intended]
    return [cv2.imread(str(root / "images" / r["file"])) for r in rows]


# -- the rule, in numbers --------------------------------------------------------------------------------------


def test_a_face_read_against_itself_reads_neutral_with_no_au(analyzer, astronaut):
    absolute = analyzer.analyze(astronaut)
    relative = analyzer.analyze(astronaut, reference=astronaut)
    face, rel = absolute.faces[0], relative.faces[0]
    assert face.expression.label == "happiness"  # a broad smile, read absolutely
    assert rel.expression.reference is True and rel.expression.label == "neutral"
    assert rel.expression.absolute.label == "happiness"
    assert rel.expression.absolute.scores == face.expression.scores  # the absolute reading is kept as it was
    assert [u.au for u in face.action_units if u.present]  # the smile's AUs, absolutely
    assert not [u.au for u in rel.action_units if u.present]  # nothing changed from the reference
    assert all(u.probability == 0.0 for u in rel.action_units)
    assert [u.absolute_present for u in rel.action_units] == [u.present for u in face.action_units]


def test_a_smile_against_the_same_persons_neutral_face(analyzer):
    neutral, happy = taiwanese("2", "neutral"), taiwanese("2", "happy")
    result = analyzer.analyze(happy[0], reference=neutral[0])
    face = result.faces[0]
    assert face.expression.label == "happiness" and face.expression.reference
    units = {u.au: u for u in face.action_units}
    assert units["AU12"].present and units["AU12"].box is not None
    assert units["AU12"].probability <= units["AU12"].absolute_probability
    # another neutral photo of the same person: no AU lights up, and it reads neutral
    rest = analyzer.analyze(neutral[1], reference=neutral[0]).faces[0]
    assert not [u.au for u in rest.action_units if u.present]
    assert rest.expression.label == "neutral"
    # several reference photos make one reference (their mean)
    several = analyzer.analyze(happy[0], reference=neutral[:3])
    assert several.reference.faces == 3


def test_noisy_or_relative_au_probability():
    ref = Reference(np.zeros(8), np.array([0.0, 0.5, 0.9, 1.0]), 1)
    rel = relative_au_probability(np.array([0.6, 0.75, 0.5, 1.0]), ref)
    assert np.allclose(rel, [0.6, 0.5, 0.0, 0.0])  # (p - r) / (1 - r), never below 0; r = 1 leaves nothing


def test_most_neutral_picks_the_top_share():
    picked = most_neutral([0.1, 0.9, np.nan, 0.5, 0.8], fraction=0.5)
    assert list(picked) == [1, 4]  # 2 of the 4 valid faces, most neutral first; NaN (no reading) never chosen
    assert list(most_neutral([0.2], fraction=0.1)) == [0]
    assert len(most_neutral([np.nan], fraction=0.5)) == 0


# -- over HTTP -----------------------------------------------------------------------------------------------


def test_reference_upload_changes_the_reading_and_is_marked(client, astronaut):
    plain = post(client, "/analyze", astronaut)
    assert plain.status_code == 200
    assert "reference" not in plain.json() and "absolute" not in plain.json()["faces"][0]["expression"]
    assert "absolute_probability" not in plain.json()["faces"][0]["action_units"][0]
    r = post(client, "/analyze", astronaut, reference=astronaut)
    assert r.status_code == 200, r.text
    body = r.json()
    expression = body["faces"][0]["expression"]
    assert expression["reference"] is True and expression["label"] == "neutral"
    assert expression["absolute"]["label"] == plain.json()["faces"][0]["expression"]["label"]
    assert body["reference"]["source"] == "upload" and body["reference"]["faces"] == 1
    assert body["reference"]["expression"]["label"] == "happiness"
    assert any(w.startswith("reference_not_neutral") for w in body["reference"]["warnings"])
    for path in ("/recognize-expression", "/detect-au"):
        assert post(client, path, astronaut, reference=astronaut).json()["reference"]["faces"] == 1


def test_reference_errors_are_clear_4xx(client, astronaut, cameraman):
    blank = np.full((200, 200, 3), 128, np.uint8)
    r = post(client, "/analyze", astronaut, reference=blank)
    assert r.status_code == 422 and r.json()["error"]["code"] == "reference_no_face"
    r = post(client, "/analyze", astronaut, reference=cameraman)  # a face seen in profile
    assert r.status_code == 422 and r.json()["error"]["code"] == "reference_filtered"
    r = post(client, "/analyze", astronaut, reference=two_faces(astronaut))
    assert r.status_code == 200  # documented choice: the largest face is used, with a warning
    assert any(w.startswith("reference_faces: 2 faces") for w in r.json()["reference"]["warnings"])
    r = client.post("/analyze", files=[("file", ("a.jpg", encode(astronaut), "image/jpeg")),
                                       ("photo", ("b.jpg", encode(astronaut), "image/jpeg"))])
    assert r.status_code == 422 and "unexpected file field 'photo'" in r.json()["error"]["message"]
    r = client.post("/analyze", files=[("reference", ("b.jpg", encode(astronaut), "image/jpeg"))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_file"
    r = post(client, "/analyze", astronaut, reference=astronaut, params={"person": "x" * 22})
    assert r.status_code == 404 and r.json()["error"]["code"] == "person_not_found"  # unknown, before the body


def test_persons_lifecycle(tmp_path, astronaut):
    settings = Settings(persons_dir=tmp_path / "persons", api_keys=["key-a", "key-b"])
    a, b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
    with TestClient(create_app(settings)) as client:
        files = [("file", (f"{i}.jpg", encode(astronaut), "image/jpeg")) for i in range(2)]
        r = client.post("/persons", files=files, headers=a)
        assert r.status_code == 201, r.text
        person = r.json()
        pid = person["person_id"]
        assert r.headers["location"] == f"/persons/{pid}" and person["faces"] == 2
        assert set(person["models"]) >= {"expression", "au_detector"}
        # only model outputs are kept: no pixels, no landmarks, no key
        record = json.loads((tmp_path / "persons" / f"{pid}.json").read_text())
        assert set(record["reference"]) == {"expression_log_probs", "au_probability", "faces", "models", "warnings"}
        assert "key-a" not in json.dumps(record) and record["scope"] == key_scope("key-a")
        assert client.get(f"/persons/{pid}", headers=a).json()["person_id"] == pid
        r = post(client, "/analyze", astronaut, params={"person": pid}, headers=a)
        assert r.status_code == 200 and r.json()["reference"] == {**r.json()["reference"], "source": "person",
                                                                   "person_id": pid, "faces": 2}
        assert r.json()["faces"][0]["expression"]["label"] == "neutral"
        # another key's person is not found, whatever the route
        assert client.get(f"/persons/{pid}", headers=b).status_code == 404
        assert post(client, "/analyze", astronaut, params={"person": pid}, headers=b).status_code == 404
        assert client.delete(f"/persons/{pid}", headers=b).status_code == 404
        # both a reference photo and a person: one of them, please
        r = post(client, "/analyze", astronaut, reference=astronaut, params={"person": pid}, headers=a)
        assert r.status_code == 422 and "not both" in r.json()["error"]["message"]
        # no key: 401 before anything
        assert client.get(f"/persons/{pid}").status_code == 401
    with TestClient(create_app(settings)) as client:  # the file store outlives the process
        assert client.get(f"/persons/{pid}", headers=a).status_code == 200
        assert client.delete(f"/persons/{pid}", headers=a).status_code == 204
        assert client.get(f"/persons/{pid}", headers=a).status_code == 404
        assert not list((tmp_path / "persons").glob("*.json"))


def test_persons_enrolment_errors(client, astronaut):
    blank = np.full((200, 200, 3), 128, np.uint8)
    r = client.post("/persons", files=[("file", ("a.jpg", encode(blank), "image/jpeg"))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "reference_no_face"
    assert "reference photo" in r.json()["error"]["message"]
    too_many = [("file", (f"{i}.jpg", encode(astronaut), "image/jpeg")) for i in range(6)]
    r = client.post("/persons", files=too_many)
    assert r.status_code == 422 and "at most 5 in 'file'" in r.json()["error"]["message"]
    r = client.post("/persons", files=[])
    assert r.status_code == 422
    assert client.get("/persons/../../etc/passwd").status_code == 404
    assert client.get("/persons/short").json()["error"]["code"] == "person_not_found"
    assert client.get("/version").json()["limits"]["max_reference_photos"] == 5


def test_person_store_expiry_and_limit():
    now = [1000.0]
    store = PersonStore(None, ttl_s=60, max_persons=2, clock=lambda: now[0])
    ref = Reference(np.zeros(8), np.zeros(17), 1)
    first = store.create("s", ref)
    store.create("s", ref)
    with pytest.raises(ApiError) as full:
        store.create("s", ref)
    assert full.value.status == 429
    now[0] += 61
    with pytest.raises(ApiError):
        store.get("s", first.person_id)  # expired
    assert store.create("s", ref).person_id  # the expired ones made room


def test_a_reference_from_other_model_versions_is_refused(analyzer, astronaut):
    reference = analyzer.reference([astronaut])
    stale = replace(reference, models={**reference.models, "expression": "an-older-version"})
    with pytest.raises(ApiError) as error:
        analyzer.analyze(astronaut, reference=stale)
    assert error.value.status == 409 and error.value.code == "reference_stale"


def test_analyzer_reference_keeps_no_pixels(analyzer, astronaut):
    reference = analyzer.reference([astronaut, astronaut])
    assert reference.faces == 2
    assert reference.expression_log_probs.shape == (len(analyzer.models.expression.classes),)
    assert reference.au_probability.shape == (len(analyzer.models.au.classes),)


# -- the SDK and the CLI -----------------------------------------------------------------------------------------


def test_sdk_reference_and_persons(live_url, astronaut):
    import asyncio

    from microfacs_client import AsyncClient, Client, MicroFACSError

    with Client(live_url, timeout=60) as sdk:
        result = sdk.analyze(astronaut, reference=astronaut)
        assert result.reference.source == "upload" and result.faces[0].expression.reference
        assert result.faces[0].expression.label == "neutral"
        assert result.faces[0].expression.absolute.label == "happiness"
        assert result.faces[0].action_units[0].absolute_probability is not None
        person = sdk.create_person([astronaut, astronaut])
        assert person.faces == 2 and sdk.get_person(person.person_id).person_id == person.person_id
        by_person = sdk.recognize_expression(astronaut, person=person.person_id)
        assert by_person.reference.person_id == person.person_id
        sdk.delete_person(person.person_id)
        with pytest.raises(MicroFACSError) as error:
            sdk.get_person(person.person_id)
        assert error.value.status == 404 and error.value.code == "person_not_found"

    async def go():
        async with AsyncClient(live_url) as client:
            return await client.detect_au(astronaut, reference=astronaut)

    assert not [u for u in asyncio.run(go()).faces[0].action_units if u.present]


def test_cli_reference_and_automatic_baseline(tmp_path, astronaut):
    from microfacs_cli.main import main

    folder = tmp_path / "session"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(encode(astronaut))
    reference = tmp_path / "neutral.jpg"
    reference.write_bytes(encode(astronaut))
    out = tmp_path / "out.jsonl"
    assert main([str(folder), "--reference", str(reference), "-o", str(out), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line["faces"][0]["expression"]["reference"] for line in lines)
    # --baseline auto with a person column: each person's most neutral faces are their reference
    persons = tmp_path / "who.csv"
    persons.write_text("file,person\na.jpg,p1\nb.jpg,p1\n")
    out = tmp_path / "auto.jsonl"
    assert main([str(folder), "--baseline", "auto", "--persons", str(persons), "-o", str(out), "--no-progress"]) == 0
    faces = [json.loads(line)["faces"][0] for line in out.read_text().splitlines()]
    assert [f["expression"]["label"] for f in faces] == ["neutral", "neutral"]  # the same face as its baseline
    assert all(f["expression"]["absolute"]["label"] == "happiness" for f in faces)
    # without a person column: grouped by the identity model (both photos are one person)
    out = tmp_path / "identity.jsonl"
    assert main([str(folder), "--baseline", "auto", "-o", str(out), "--no-progress"]) == 0
    faces = [json.loads(line)["faces"][0] for line in out.read_text().splitlines()]
    assert [f["expression"]["label"] for f in faces] == ["neutral", "neutral"]
    # errors are said plainly, before any work
    assert main([str(folder), "--baseline", "auto", "--url", "http://127.0.0.1:9"]) == 2
    assert main([str(folder), "--person", "abc"]) == 2
    assert main([str(folder), "--reference", str(tmp_path / "missing.jpg")]) == 1


def test_video_tracks_relative_to_their_own_resting_frames(client):
    from app.video.analyze import VideoAnalyzer

    clip = requires_data(DATA / "samples" / "single_face.mp4")
    video = VideoAnalyzer(client.app.state.analyzer)
    plain = video.analyze(clip, video.options(every=5, max_frames=30)).model_dump(exclude_unset=True)
    relative = video.analyze(clip, video.options(every=5, max_frames=30, baseline="auto")).model_dump()
    assert "baseline" not in plain["tracks"][0]
    track = relative["tracks"][0]
    assert track["baseline"]["frames"] >= 1 and track["baseline"]["expression"]["label"]
    for before, after in zip(plain["tracks"][0]["frames"], track["frames"]):
        if before["action_units"] is None:
            continue
        for au, p in after["action_units"].items():  # noisy-OR: never above the absolute probability
            assert p <= before["action_units"][au] + 1e-6
    r = client.post("/analyze-video", params={"baseline": "sometimes"},
                    files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")})
    assert r.status_code == 422
