"""The AU detector: region map and labels, the served ONNX model and its decoding, /detect-au, a training smoke run."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from app.analyzer import FaceOptions
from app.manifest import sha256_of
from app.model_zoo.au_detector import AuDetector, decode, face_decisions, preprocess
from app.settings import Settings
from tests.helpers import REPO, encode, post_image

CACHE = REPO / "runs" / "cache" / "ckplus.npz"


@pytest.fixture(scope="module")
def detector() -> AuDetector:
    return AuDetector(Settings().models_dir)


def synthetic_landmarks(size: int = 112, seed: int = 0) -> np.ndarray:
    """A constructed 468-point set: a mean-like face (eye/brow/mouth rows) plus points at the crop's edges."""
    rng = np.random.default_rng(seed)
    marks = rng.uniform(0.1 * size, 0.9 * size, (468, 2))
    marks[[33, 133]] = [0.19 * size, 0.26 * size], [0.38 * size, 0.27 * size]
    marks[[362, 263]] = [0.62 * size, 0.27 * size], [0.81 * size, 0.26 * size]
    marks[[10, 152]] = [0.5 * size, -0.1 * size], [0.5 * size, 1.05 * size]  # beyond the crop: must be clipped
    marks[[234, 454]] = [-2.0, 0.4 * size], [size + 3, 0.4 * size]
    return marks


def test_region_map_boxes_inside_crop():
    from training.au.labels import draw
    from training.au.regions import AU_REGIONS, FACS_NAMES, au_boxes

    assert set(AU_REGIONS) == set(FACS_NAMES)
    marks = synthetic_landmarks()
    boxes = au_boxes(marks, list(AU_REGIONS), clip=112)
    assert {au for au, _ in boxes} == set(AU_REGIONS)
    for au, (x0, y0, x1, y1) in boxes:
        assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112, (au, x0, y0, x1, y1)
    assert len(au_boxes(marks, ["AU12"])) == 2 and len(au_boxes(marks, ["AU25"])) == 1  # two sides / midline
    picture = draw(np.full((112, 112), 128, np.uint8), boxes, scale=2)
    assert picture.shape == (224, 224, 3) and (picture != 128).any()


def test_decode_and_face_decisions():
    anchors = np.array([[0.2, 0.2], [0.4, 0.3]], np.float32)
    raw = np.zeros((8 * 8 * 2, 5 + 3), np.float32)
    raw[10, 4] = 6.0  # one confident box, cell row 0, col 5, anchor 0
    raw[10, 5 + 1] = 6.0
    boxes, scores = decode(raw, anchors)
    assert boxes.shape == (128, 4) and scores.shape == (128, 3)
    np.testing.assert_allclose(boxes[10], [(5.5 / 8) - 0.1, 0.5 / 8 - 0.1, 5.5 / 8 + 0.1, 0.5 / 8 + 0.1], atol=1e-6)
    probability, best = face_decisions(raw, anchors)
    assert probability.argmax() == 1 and probability[1] > 0.99
    np.testing.assert_allclose(best[1], boxes[10])
    assert probability[1] == scores[:, 1].max()


def test_onnx_model_loads_and_decodes(detector):
    entry = detector.entry.extra
    assert entry["licence"].startswith("research use only")
    assert len(detector.classes) == len(entry["thresholds"]) and detector.anchors.shape[1] == 2
    (raw,) = detector.run(preprocess(np.full((112, 112, 3), 120, np.uint8), detector.size))
    assert raw.shape == (1, (detector.size // 8) ** 2 * len(detector.anchors), 5 + len(detector.classes))
    probability, _ = face_decisions(raw[0], detector.anchors)
    assert np.isfinite(probability).all() and ((probability >= 0) & (probability <= 1)).all()


def test_astronaut_action_units(analyzer, detector, astronaut):
    """The AU head through the analyzer: every AU, boxes already mapped to image pixels, inside the face."""
    analysis = analyzer.run(astronaut, FaceOptions(), heads={"au"})
    assert len(analysis.faces) == 1
    face = analysis.faces[0]
    units = face.outputs["au"]
    assert [u.au for u in units] == detector.classes
    in_crop = {u.au: u for u in detector.predict(face.aligned)}
    x0, y0, x1, y1 = face.box
    pad_x, pad_y = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    for unit in units:
        assert 0.0 <= unit.probability <= 1.0 and unit.name
        assert unit.present == (unit.box is not None)
        if unit.box is not None:
            np.testing.assert_allclose(unit.box, face.aligned.box_to_image(in_crop[unit.au].box))
            bx0, by0, bx1, by1 = unit.box
            assert x0 - pad_x <= bx0 < bx1 <= x1 + pad_x and y0 - pad_y <= by0 < by1 <= y1 + pad_y, unit
    by_code = {u.au: u for u in units}
    assert by_code["AU12"].present, "the astronaut smiles: Lip Corner Puller"


def test_detect_au_endpoint(client, astronaut):
    response = post_image(client, "/detect-au", encode(astronaut))
    assert response.status_code == 200, response.text
    body = response.json()
    face = body["faces"][0]
    assert face["action_units"] and {"au", "name", "probability", "present", "box"} <= set(face["action_units"][0])
    present = [u for u in face["action_units"] if u["present"]]
    assert all(u["box"]["width"] > 0 and u["box"]["height"] > 0 for u in present)
    assert "action_units" in body["timings_ms"]


@pytest.mark.slow
def test_training_smoke_exports_loadable_onnx(tmp_path, face_cache):
    import json

    from training.au.train import main

    cache = str(face_cache / "ckplus.npz")
    main(["--pretrain", "--epochs", "1", "--max-batches", "1", "--out", str(tmp_path), "--cache", cache])
    assert (tmp_path / "pretrain.pt").is_file()  # the FER+-pretrained backbone the AU layers start from
    main(["--smoke", "--out", str(tmp_path), "--max-batches", "2", "--cache", cache, "--init",
          str(tmp_path / "pretrain.pt"), "--neutral", "4", "--pseudo", "4", "--extra-per-epoch", "4"])
    path = tmp_path / "au_detector.onnx"
    meta = json.loads((tmp_path / "au_detector.json").read_text())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (raw,) = session.run(None, {"input": preprocess(np.zeros((112, 112), np.uint8), meta["input_size"])})
    probability, _ = face_decisions(raw[0], np.asarray(meta["anchors"], np.float32))
    assert probability.shape == (len(meta["classes"]),)


def test_unknown_regions_are_left_out_of_the_no_object_loss():
    """A class -1 row (an AU whose state is unknown) assigns nothing and silences the no-object loss in its cell,
    so a FER+ face labelled only with its expression's core AUs does not teach 'no AU' elsewhere."""
    import torch

    from training.au.model import yolo_loss

    anchors = torch.tensor([[0.2, 0.2], [0.4, 0.3]])
    raw = torch.zeros(1, 8 * 8 * 2, 5 + 3)
    raw[0, :, 4] = 2.0  # every prediction claims an object
    cell = [0.5 + 1 / 16, 0.5 + 1 / 16, 0.2, 0.2]  # centre in cell row 4, col 4
    empty, _ = yolo_loss(raw, [np.zeros((0, 5), np.float32)], anchors)
    unknown, parts = yolo_loss(raw, [np.array([[-1, *cell]], np.float32)], anchors)
    assert parts["cls"] == 0 and parts["box"] == 0  # nothing assigned
    per_prediction = float(torch.nn.functional.softplus(torch.tensor(2.0)))  # BCE of logit 2 against 0
    assert float(empty) - float(unknown) == pytest.approx(2 * per_prediction, rel=1e-4)  # the cell's 2 anchors
    _, parts = yolo_loss(raw, [np.array([[1, *cell]], np.float32)], anchors)
    assert parts["cls"] > 0  # a known AU is assigned and learnt


def test_pseudo_labelled_ferplus_faces_mark_other_aus_unknown():
    from training.au.data import CLASSES, PSEUDO_AUS, CkPlus

    data = CkPlus.__new__(CkPlus)
    data.size = 64
    labels = np.array([a in PSEUDO_AUS[1] for a in CLASSES], np.float32)  # a smiling face: AU12 only known
    rows = data.targets(synthetic_landmarks(64), labels, known=labels > 0)
    assert {CLASSES[int(c)] for c in rows[rows[:, 0] >= 0, 0]} == {"AU12"}
    assert (rows[:, 0] == -1).sum() > 10  # the regions of every other AU are unknown, not absent
    assert (data.targets(synthetic_landmarks(64), np.zeros(len(CLASSES), np.float32))).shape == (0, 5)


def test_threshold_and_f1_helpers():
    from training.au.evaluate import EMFACS
    from training.metrics import best_f1_threshold, prf

    truth = np.array([1, 1, 0, 0, 1], bool)
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.6])
    t = best_f1_threshold(scores, truth)
    assert 0.3 < t <= 0.6 and prf(scores >= t, truth)[0] == 1.0
    assert EMFACS["happy"] == [6, 12]


def test_activation_comes_with_the_blendshapes_only(client, astronaut):
    """?blendshapes=true adds each AU's activation (its matching blendshapes); without it the JSON is as before."""
    plain = post_image(client, "/detect-au", encode(astronaut)).json()["faces"][0]["action_units"]
    assert all("activation" not in unit for unit in plain)
    units = post_image(client, "/detect-au", encode(astronaut), blendshapes="true").json()["faces"][0]["action_units"]
    by_au = {unit["au"]: unit for unit in units}
    from app.activation import BLENDSHAPES_OF_AU

    assert {au for au, unit in by_au.items() if "activation" in unit} == set(BLENDSHAPES_OF_AU) & set(by_au)
    assert by_au["AU12"]["activation"] > 0.6  # a broad smile pulls the lip corners
    assert by_au["AU4"]["activation"] < 0.2 and by_au["AU15"]["activation"] < 0.2  # no frown, no lowered brows
    assert {k: v for k, v in by_au["AU12"].items() if k != "activation"} == next(
        u for u in plain if u["au"] == "AU12")  # the detector's own outputs do not change


def test_activation_is_low_on_neutral_faces(analyzer):
    """FER+ Test faces that >= 9 of 10 raters called neutral: the smile and the brow raise stay low."""
    import csv

    from tests.helpers import DATA, requires_data

    labels = requires_data(DATA / "ferplus" / "FER2013Test" / "label.csv")
    with labels.open() as f:
        rows = [r for r in csv.reader(f) if int(r[2]) >= 9][:20]
    smiles, brows = [], []
    for row in rows:
        face = analyzer.analyze(labels.parent / row[0], heads={"au", "blendshapes"}, face_crop=True,
                                side_face_filter=False, occlusion_filter=False).faces[0]
        by_au = {u.au: u.activation for u in face.action_units}
        smiles.append(by_au["AU12"])
        brows.append(by_au["AU1"])
    assert np.median(smiles) < 0.1 and np.median(brows) < 0.2, (smiles, brows)


@pytest.fixture(scope="module")
def fused(client):
    """The analyzer with MICROFACS_AU_MODEL=fused (the session's models, plus the fusion)."""
    from app.analyzer import Analyzer
    from app.model_zoo.au_fusion import AuFusion

    registry = client.app.state.registry
    settings = Settings(au_model="fused")
    registry.au_fusion = AuFusion(settings.models_dir)  # what ModelRegistry(settings) loads for this setting
    try:
        yield Analyzer(settings, registry)
    finally:
        registry.au_fusion = None


def test_fused_au_model_keeps_the_boxes_and_the_smile(fused, astronaut):
    units = fused.analyze(astronaut, heads={"au"}).faces[0].action_units
    by_au = {u.au: u for u in units}
    assert by_au["AU12"].present and by_au["AU12"].box is not None  # the detector's box, in image pixels
    assert all(0.0 <= u.probability <= 1.0 for u in units)
    assert all((u.box is not None) == u.present for u in units)
    thresholds = dict(zip(fused.models.au_fusion.classes, fused.models.au_fusion.thresholds))
    assert all(u.present == (u.probability >= thresholds[u.au] - 1e-4) for u in units)  # the fusion decides


def ferplus_test_faces(vote_column: int, min_votes: int, count: int) -> list:
    """Paths of the first ``count`` FER+ Test faces (never trained on) with >= ``min_votes`` of 10 votes in a column
    (2 neutral, 3 happiness, 4 surprise of label.csv)."""
    import csv

    from tests.helpers import DATA, requires_data

    labels = requires_data(DATA / "ferplus" / "FER2013Test" / "label.csv")
    with labels.open() as f:
        return [labels.parent / r[0] for r in csv.reader(f) if int(r[vote_column]) >= min_votes][:count]


def present_aus(which, paths) -> list[set[str]]:
    """The AUs present on each face the mesh accepts (a face filtered as low_landmark_confidence has none)."""
    faces = [which.analyze(p, heads={"au"}, face_crop=True, side_face_filter=False, occlusion_filter=False).faces[0]
             for p in paths]
    return [{u.au for u in face.action_units if u.present} for face in faces if not face.filtered]


def test_neutral_faces_light_few_aus(fused, analyzer):
    """FER+ Test faces that >= 9 of 10 raters called neutral: the served detector (trained with FER+ Train neutral
    faces as negatives; the previous one lit 3 AUs a face) and the fusion report at most one AU in two faces."""
    paths = ferplus_test_faces(2, 9, 30)
    for which in (analyzer, fused):
        counts = [len(aus) for aus in present_aus(which, paths)]
        assert np.mean(counts) <= 0.5, counts


def test_smiles_and_surprise_of_new_faces_keep_their_aus(analyzer):
    """The neutral negatives must not teach 'FER+-looking faces have no AU': FER+ Test faces (never trained on) that
    >= 9 of 10 raters saw as happy show AU12, surprised ones raise their brows (AU1 or AU2)."""
    happy = present_aus(analyzer, ferplus_test_faces(3, 9, 20))
    surprised = present_aus(analyzer, ferplus_test_faces(4, 9, 20))
    assert len(happy) >= 15 and len(surprised) >= 15
    assert np.mean(["AU12" in aus for aus in happy]) >= 0.8, happy
    assert np.mean([bool({"AU1", "AU2"} & aus) for aus in surprised]) >= 0.6, surprised


def _tiny_onnx(path, weight: float, bias: float, op: str = "Add"):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((1, 1, 3, 3), weight, np.float32), "w")
    b = numpy_helper.from_array(np.array([bias], np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c", "b"], ["raw"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 1, 4, 4])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_weight_soup_averages_weights_of_identical_graphs_only(tmp_path):
    """training/au/soup.py: the soup's weights are the members' mean (so its output is the mean for this linear
    net), the folds must hold out the same subjects, and different graphs are refused."""
    import json

    from training.au.soup import average_onnx, soup_folds
    from training.common import TrainingError

    runs = [tmp_path / "a", tmp_path / "b"]
    for run, (w, b) in zip(runs, [(1.0, 0.0), (3.0, 2.0)]):
        (run / "cv").mkdir(parents=True)
        _tiny_onnx(run / "cv" / "fold0.onnx", w, b)
        meta = {"fold": 0, "test_index": [1, 2], "anchors": [[0.2, 0.2]], "classes": ["AU1"], "input_size": 4,
                "train_args": {"init": "pretrain.pt", "seed": 0}, "torch_scores": [[0.5], [0.5]]}
        (run / "cv" / "fold0.json").write_text(json.dumps(meta))
    soup_folds(runs, tmp_path / "soup")
    x = np.ones((1, 1, 4, 4), np.float32)

    def run_model(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    souped = run_model(tmp_path / "soup" / "cv" / "fold0.onnx")
    members = [run_model(r / "cv" / "fold0.onnx") for r in runs]
    assert np.allclose(souped, (members[0] + members[1]) / 2) and not np.allclose(members[0], members[1])
    meta = json.loads((tmp_path / "soup" / "cv" / "fold0.json").read_text())
    assert "torch_scores" not in meta and len(meta["soup_of"]) == 2

    _tiny_onnx(tmp_path / "other.onnx", 1.0, 0.0, op="Sub")
    with pytest.raises(TrainingError, match="not the same network"):
        average_onnx([runs[0] / "cv" / "fold0.onnx", tmp_path / "other.onnx"], tmp_path / "x.onnx")
    meta["test_index"] = [3, 4]
    meta["train_args"] = {"init": "pretrain.pt"}
    (runs[1] / "cv" / "fold0.json").write_text(json.dumps(meta))
    with pytest.raises(TrainingError, match="same folds"):
        soup_folds(runs, tmp_path / "soup2")


def test_the_final_soup_goes_to_its_out_folder_and_into_models_only_with_install(tmp_path):
    """training.au.soup reads each run's --final model (au_detector.onnx + manifest_entry.json), writes the soup to
    OUT and a scratch copy of models/; the models folder changes only with --install."""
    import json
    import shutil

    from app.manifest import Manifest
    from training.au.soup import main as soup

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "models" / "manifest.json", models / "manifest.json")
    shutil.copy(REPO / "models" / "au_detector.onnx", models / "au_detector.onnx")
    before = (models / "manifest.json").read_bytes()
    runs = [tmp_path / "a", tmp_path / "b"]
    for run, (w, b) in zip(runs, [(1.0, 0.0), (3.0, 2.0)]):
        (run / "cv").mkdir(parents=True)
        _tiny_onnx(run / "cv" / "fold0.onnx", w, b)
        _tiny_onnx(run / "au_detector.onnx", w, b)
        meta = {"fold": 0, "test_index": [1], "anchors": [[0.2, 0.2]], "classes": ["AU1"], "input_size": 4,
                "train_args": {"init": "pretrain.pt", "seed": 0}}
        (run / "cv" / "fold0.json").write_text(json.dumps(meta))
        entry = dict(Manifest.load(models).models["au_detector"], export_check="max |torch - onnx| = 2.0e-06 on x",
                     architecture={"train_args": meta["train_args"]})
        (run / "manifest_entry.json").write_text(json.dumps(entry))
    out = tmp_path / "soup"
    soup([*map(str, runs), "--out", str(out), "--models-dir", str(models)])
    assert (models / "manifest.json").read_bytes() == before  # untouched without --install
    scratch = Manifest.load(out / "models").models["au_detector"]
    assert scratch["sha256"] == sha256_of(out / "au_detector.onnx") and "2.0e-06" in scratch["export_check"]
    soup([*map(str, runs), "--out", str(out), "--models-dir", str(models), "--install"])
    assert Manifest.load(models).models["au_detector"]["sha256"] == sha256_of(models / "au_detector.onnx")
    assert sha256_of(models / "au_detector.onnx") == sha256_of(out / "au_detector.onnx")


def test_the_exported_fusion_graph_is_the_fitted_regressions(tmp_path):
    """training.au.fuse: each AU's regression (L-BFGS, converged) on [its detector logit, 52 standardised
    blendshapes] folds into one MatMul + Add + Sigmoid over [17 logits, 52 raw blendshapes], as the service feeds it."""
    from app.model_zoo.base import OnnxFile
    from training.au.fuse import FusionData, export, fit_all, logit
    from training.fitting import apply_logistic

    rng = np.random.default_rng(0)
    classes = [f"AU{i}" for i in range(1, 18)]
    n, m = 120, 60
    shapes, nv_shapes = rng.random((n, 52)), rng.random((m, 52))
    truth = rng.random((n, 17)) < 0.3
    oof = np.clip(np.where(truth, 0.7, 0.2) + rng.normal(0, 0.15, (n, 17)), 0.01, 0.99)
    data = FusionData(classes, oof, truth, shapes, rng.integers(0, 5, n), rng.uniform(0.01, 0.3, (m, 17)), nv_shapes,
                      rng.integers(0, 5, m))
    weights = fit_all(data)
    path, entry = export(tmp_path, data, [f"s{i:02d}" for i in range(52)], weights, np.full(17, 0.5), {})
    got = OnnxFile(path).run(np.hstack([logit(oof), shapes]).astype(np.float32))[0]
    expected = np.stack([apply_logistic(w, data.design(oof[:, c], shapes)) for c, w in enumerate(weights)], 1)
    assert np.abs(got - expected).max() < 1e-4
    assert entry["sha256"] == sha256_of(path) and entry["classes"] == classes
