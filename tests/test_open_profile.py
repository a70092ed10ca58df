"""MICROFACS_PROFILE=open (app/profiles.py, models/OPEN_PROFILE.md): every endpoint served by the Apache-2.0 models
alone, no research-only file opened, the profile in every response; the rules (app/blendshape_aus.py,
app/prototypes.py); LICENSE and NOTICE against the manifest."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from app import prototypes
from app.blendshape_aus import OPEN_AUS, PRESENCE_LEVEL, au_sides, au_values
from app.main import create_app
from app.model_zoo.base import ModelError
from app.model_zoo.face_landmarker import BLENDSHAPE_NAMES
from app.registry import ModelRegistry
from app.settings import Settings
from tests.helpers import REPO, SAMPLES, encode, requires_data

MODELS = REPO / "models"
MANIFEST = json.loads((MODELS / "manifest.json").read_text())["models"]
OPEN_FILES = {e["file"] for e in MANIFEST.values() if "open" in e.get("profiles", [])}
MODEL_FILES = {p.name for p in MODELS.iterdir() if p.suffix in (".onnx", ".npy")}


# -- which files a process opens -------------------------------------------------------------------------------

class OpenedFiles:
    """Files under models/ opened while recording: by Python (an audit hook sees every open(), np.load and the
    sha256 check included) and by onnxruntime (its C++ opens the file itself: the session constructor is wrapped)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.recording = False
        self.lock = threading.Lock()
        sys.addaudithook(self._hook)  # audit hooks cannot be removed: it records only while `recording`

    def _hook(self, event: str, args: tuple) -> None:
        if self.recording and event == "open" and args and isinstance(args[0], (str, Path)):
            self.note(args[0])

    def note(self, path: str | Path) -> None:
        path = Path(path)
        if path.parent.resolve() == MODELS.resolve():
            with self.lock:
                self.names.add(path.name)


@pytest.fixture(scope="module")
def opened(monkeypatch_module) -> OpenedFiles:
    files = OpenedFiles()
    real = ort.InferenceSession

    def session(path_or_bytes, *args, **kwargs):
        if files.recording and isinstance(path_or_bytes, (str, Path)):
            files.note(path_or_bytes)
        return real(path_or_bytes, *args, **kwargs)

    monkeypatch_module.setattr(ort, "InferenceSession", session)
    return files


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def open_client(opened):
    """The app with MICROFACS_PROFILE=open over the full models/ folder (research files present, never opened);
    records every model file opened from its start to the end of this module's tests."""
    opened.recording = True
    try:
        with TestClient(create_app(Settings(profile="open"))) as client:
            yield client
    finally:
        opened.recording = False


def post(client, path, image, reference=None, **params):
    files = [("file", ("face.jpg", encode(image), "image/jpeg"))]
    if reference is not None:
        files.append(("reference", ("ref.jpg", encode(reference), "image/jpeg")))
    return client.post(path, files=files, params=params)


# -- every endpoint, and what it opened ------------------------------------------------------------------------

def test_every_endpoint_serves_in_the_open_profile(open_client, astronaut):
    c = open_client
    for path in ("/healthz", "/readyz", "/version", "/metrics", "/openapi.json", "/docs", "/demo"):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert r.headers["x-microfacs-profile"] == "open", path
    assert set(c.get("/readyz").json()["models"]) == {n for n, e in MANIFEST.items() if e["file"] in OPEN_FILES}
    for path in ("/detect-faces", "/detect-au", "/recognize-expression", "/analyze"):
        r = post(c, path, astronaut, blendshapes="true", gaze="true", landmarks="true")
        assert r.status_code == 200, (path, r.text[:300])
        body = r.json()
        assert body["profile"] == "open" and r.headers["x-microfacs-profile"] == "open"
        (face,) = body["faces"]
        assert not face["filtered"] and face["occlusion"] == {"occluded": False, "regions": {}, "scores": {},
                                                              "thresholds": {}}
        assert len(face["blendshapes"]) == 52 and face["gaze"]["combined"] and len(face["landmarks"]) == 468
    # the smiling astronaut: AU12 present with its box, happiness, read by the rules
    face = post(c, "/analyze", astronaut).json()["faces"][0]
    units = {u["au"]: u for u in face["action_units"]}
    assert list(units) == list(OPEN_AUS)
    assert units["AU12"]["present"] and units["AU12"]["box"] and units["AU12"]["activation"] == units["AU12"][
        "probability"]
    assert all((u["box"] is not None) == u["present"] for u in units.values())
    x, y, w, h = (face["box"][k] for k in ("x", "y", "width", "height"))
    box = units["AU12"]["box"]  # a lip corner, inside the lower half of the face
    assert x <= box["x"] and box["x"] + box["width"] <= x + w and y + h / 2 <= box["y"] <= y + h
    assert face["expression"]["label"] == "happiness" and not face["expression"]["uncertain"]
    assert sum(face["expression"]["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    # rendering, a reference photo, enrolled persons, video
    assert c.post("/analyze", files={"file": ("a.jpg", encode(astronaut), "image/jpeg")},
                  params={"render": "true"}).headers["content-type"].startswith("image/")
    rel = post(c, "/analyze", astronaut, reference=astronaut).json()
    assert rel["profile"] == "open" and rel["faces"][0]["expression"]["label"] == "neutral"
    assert not [u for u in rel["faces"][0]["action_units"] if u["present"]]  # nothing changed from the reference
    assert [u["au"] for u in rel["faces"][0]["action_units"] if u["absolute_present"]]
    assert rel["reference"]["expression"]["label"] == "happiness"
    person = c.post("/persons", files=[("file", ("p.jpg", encode(astronaut), "image/jpeg"))])
    assert person.status_code == 201, person.text
    pid = person.json()["person_id"]
    assert person.json()["profile"] == "open" and set(person.json()["models"]) == {"face_blendshapes",
                                                                                    "blendshape_aus"}
    assert c.get(f"/persons/{pid}").status_code == 200
    by_person = c.post("/analyze", files={"file": ("a.jpg", encode(astronaut), "image/jpeg")},
                       params={"person": pid}).json()
    assert by_person["reference"]["person_id"] == pid and by_person["faces"][0]["expression"]["reference"]
    assert c.delete(f"/persons/{pid}").status_code == 204
    clip = (requires_data(SAMPLES / "single_face.mp4")).read_bytes()
    for baseline in ("none", "auto"):
        video = c.post("/analyze-video", files={"file": ("c.mp4", clip, "video/mp4")},
                       params={"every": 6, "baseline": baseline})
        assert video.status_code == 200, video.text[:300]
        body = video.json()
        assert body["profile"] == "open" and body["tracks"]
        frame = body["tracks"][0]["frames"][0]
        assert set(frame["action_units"]) == set(OPEN_AUS) and frame["expression"]["label"]
        assert ("baseline" in body["tracks"][0]) == (baseline == "auto")
    # errors carry the profile too
    bad = c.post("/analyze")
    assert bad.status_code == 422 and bad.headers["x-microfacs-profile"] == "open"


def test_no_research_only_file_was_opened(open_client, opened, astronaut):
    post(open_client, "/analyze", astronaut)  # at least one analysis, whatever ran before
    opened.recording = False  # what later tests open (the research app among them) is not the open app's
    assert opened.names, "the recorder saw nothing: it is broken"
    assert "manifest.json" in opened.names and "face_blendshapes.onnx" in opened.names
    assert opened.names <= OPEN_FILES | {"manifest.json"}, sorted(opened.names - OPEN_FILES)
    assert not opened.names & (MODEL_FILES - OPEN_FILES)


def test_version_lists_only_apache_licensed_models(open_client):
    version = open_client.get("/version").json()
    assert version["profile"] == "open" and version["filters"] == {"side_face": True, "occlusion": False}
    assert {MANIFEST[name]["file"] for name in version["models"]} == OPEN_FILES
    assert all(m["licence"].startswith("Apache-2.0") for m in version["models"].values())
    assert version["defaults"]["au_model"] == "blendshapes"
    metrics = open_client.get("/metrics").text
    assert 'model="face_blendshapes"' in metrics and 'model="au_detector"' not in metrics


def test_the_open_app_runs_from_a_folder_with_only_the_open_files(tmp_path, astronaut):
    for name in [*OPEN_FILES, "manifest.json"]:
        (tmp_path / name).symlink_to(MODELS / name)
    with TestClient(create_app(Settings(profile="open", models_dir=tmp_path))) as client:
        assert post(client, "/analyze", astronaut).json()["faces"][0]["expression"]["label"] == "happiness"
    with pytest.raises(ModelError):  # the research profile needs the other files
        ModelRegistry(Settings(models_dir=tmp_path))


def test_the_research_profile_says_so(client, astronaut):
    r = post(client, "/analyze", astronaut)
    assert r.json()["profile"] == "research" and r.headers["x-microfacs-profile"] == "research"
    version = client.get("/version").json()
    assert version["profile"] == "research" and version["filters"]["occlusion"]
    assert "au_detector" in version["models"] and "research use only" in version["models"]["au_detector"]["licence"]


def test_the_registry_refuses_a_model_not_marked_for_its_profile(tmp_path):
    for name in OPEN_FILES:
        (tmp_path / name).symlink_to(MODELS / name)
    manifest = json.loads((MODELS / "manifest.json").read_text())
    manifest["models"]["face_landmark"]["profiles"] = ["research"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="face_landmark.onnx is not part of the open profile"):
        ModelRegistry(Settings(profile="open", models_dir=tmp_path))
    with pytest.raises(ModelError, match="face identity model is not part of the open profile"):
        ModelRegistry(Settings(profile="open")).identity()  # VGGFace2: excluded from open


# -- the rules ------------------------------------------------------------------------------------------------

def shapes(**values: float) -> dict[str, float]:
    out = {name: 0.0 for name in BLENDSHAPE_NAMES}
    out.update(values)
    return out


def read(**values: float):
    return prototypes.read(au_values(shapes(**values)), au_sides(shapes(**values)))


def test_au_values_follow_the_map():
    v = au_values(shapes(mouthSmileLeft=0.8, mouthSmileRight=0.6, jawOpen=0.7, mouthClose=0.3, mouthRollUpper=0.5))
    assert list(v) == list(OPEN_AUS)
    assert v["AU12"] == pytest.approx(0.7) and v["AU26"] == pytest.approx(0.7) and v["AU25"] == pytest.approx(0.4)
    assert v["AU28"] == pytest.approx(0.5) and v["AU4"] == 0.0
    assert au_values(shapes(jawOpen=0.3, mouthClose=0.3))["AU25"] == 0.0  # lips closed over an open jaw
    assert PRESENCE_LEVEL == 0.4 and prototypes.rule_aus() <= set(OPEN_AUS)


@pytest.mark.parametrize(("values", "label", "uncertain"), [
    ({}, "neutral", False),
    ({"jawOpen": 0.5}, "neutral", False),  # lips apart alone: speech, rest
    ({"mouthSmileLeft": 0.7, "mouthSmileRight": 0.7}, "happiness", False),  # 12C
    ({"mouthSmileLeft": 0.45, "mouthSmileRight": 0.45}, "neutral", True),  # 12B alone: nothing fits, nearest
    ({"browInnerUp": 0.6, "browOuterUpLeft": 0.6, "browOuterUpRight": 0.6, "jawOpen": 0.6}, "surprise", False),
    ({"browInnerUp": 0.6, "browOuterUpLeft": 0.6, "browOuterUpRight": 0.6, "eyeWideLeft": 0.5,
      "eyeWideRight": 0.5}, "surprise", False),  # 1+2+5B
    ({"browInnerUp": 0.6, "browOuterUpLeft": 0.6, "browOuterUpRight": 0.6, "eyeWideLeft": 0.9,
      "eyeWideRight": 0.9}, "fear", False),  # AU5 stronger than B: fear, not surprise
    ({"browInnerUp": 0.6, "browDownLeft": 0.5, "browDownRight": 0.5, "mouthFrownLeft": 0.5,
      "mouthFrownRight": 0.5}, "sadness", False),
    ({"browDownLeft": 0.6, "browDownRight": 0.6, "eyeSquintLeft": 0.6, "eyeSquintRight": 0.6,
      "mouthPressLeft": 0.6, "mouthPressRight": 0.6}, "anger", False),
    ({"mouthUpperUpLeft": 0.6, "mouthUpperUpRight": 0.6}, "disgust", False),
    ({"mouthDimpleLeft": 0.6, "mouthDimpleRight": 0.1}, "contempt", False),  # one side only
    ({"mouthShrugLower": 0.7}, None, True),  # a lone AU17: AUs present, no prototype
])
def test_expression_rules(values, label, uncertain):
    result = read(**values)
    if label is not None:
        assert result.label == label
    assert result.uncertain == uncertain
    assert sum(result.scores.values()) == pytest.approx(1.0)
    assert result.confidence == max(result.scores.values())


def test_a_symmetric_dimple_is_not_contempt():
    assert read(mouthDimpleLeft=0.6, mouthDimpleRight=0.6).label != "contempt"


# -- LICENSE, NOTICE, manifest ----------------------------------------------------------------------------------

def test_licence_files_match_the_manifest():
    licence = (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in licence
    done = subprocess.run([sys.executable, str(REPO / "tools" / "licences.py"), "--check"], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    notice = (REPO / "NOTICE").read_text()
    for file in MODEL_FILES:  # every model file in models/ has its row, with its entry's licence
        rows = [line for line in notice.splitlines() if line.startswith(f"| models/{file} |")]
        assert len(rows) == 1, file
        entry = next(e for e in MANIFEST.values() if file in (e["file"], (e.get("prototypes") or {}).get("file")))
        assert entry["licence"] in rows[0] and ", ".join(entry["profiles"]) in rows[0]
    for name, entry in MANIFEST.items():  # open: Apache-2.0 weights and commercial use allowed; nothing else
        is_open = "open" in entry["profiles"]
        assert is_open == entry["commercial_use"]["allowed"], name
        assert not is_open or entry["licence"].startswith("Apache-2.0"), name
        assert not is_open or not any(s in entry.get("training_data", "") for s in ("FER", "CK+", "VGGFace2")), name
    assert "open" not in MANIFEST["face_identity"]["profiles"]
    assert "pyproject" not in licence and "Apache-2.0" in (REPO / "pyproject.toml").read_text()


def test_readme_says_what_may_be_used_for_what_on_its_first_screen():
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:40])
    assert "MICROFACS_PROFILE=open" in first_screen and "research use only" in first_screen.lower()
    assert "NOTICE" in first_screen and "LICENSE" in first_screen


def test_the_card_has_the_scripts_tables():
    card = (REPO / "models" / "OPEN_PROFILE.md").read_text()
    start, end = "<!-- evaluate_profiles:start -->", "<!-- evaluate_profiles:end -->"
    table = card.split(start, 1)[1].split(end, 1)[0]
    assert "python -m training.evaluate_profiles" in table and "| AU12 |" in table and "FER+ Test" in table


def test_relative_open_reading_is_the_noisy_or_of_the_values(open_client, astronaut):
    analyzer = open_client.app.state.analyzer
    reference = analyzer.reference([astronaut])
    assert reference.au_probability.shape == (len(OPEN_AUS),)
    assert analyzer.reference_models() == {"face_blendshapes": analyzer.models.blendshapes.version,
                                           "blendshape_aus": "blendshape-aus-1"}
    units = analyzer.analyze(astronaut, heads={"au"}, reference=reference).faces[0].action_units
    # the reference's landmarks v2 start from the mesh, the analysis's from the detection: nearly the same values
    absolute = np.array([u.absolute_probability for u in units])
    assert np.allclose(absolute, reference.au_probability, atol=0.05)
    r = np.clip(reference.au_probability, 0, 1)
    expected = np.clip((absolute - r) / np.where(r < 1, 1 - r, 1), 0, 1)  # noisy-OR
    assert np.allclose([u.probability for u in units], expected, atol=1e-3)
    assert not [u.au for u in units if u.present]  # (near r = 0.9, noisy-OR magnifies small differences)
