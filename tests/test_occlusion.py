"""The per-region occlusion classifier: model file, behaviour on a real face, occluder labels, training."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from app.align import AlignedFace, align_face, landmarks_in_crop
from app.filters import OcclusionVerdict
from app.landmarks import LandmarkStage
from app.model_zoo.base import sha256_of
from app.model_zoo.blazeface import BlazeFaceFullRange
from app.model_zoo.face_mesh import FaceMesh
from app.model_zoo.occlusion import REGIONS, OcclusionClassifier
from app.settings import get_settings

MODELS = get_settings().models_dir


@pytest.fixture(scope="module")
def classifier() -> OcclusionClassifier:
    return OcclusionClassifier(MODELS)


@pytest.fixture(scope="module")
def astronaut_face():
    """The astronaut's aligned crop and its mesh landmarks in crop pixels, from the service's face stage."""
    from skimage import data

    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    detections = BlazeFaceFullRange(MODELS).detect(image)
    assert len(detections) == 1
    mesh = LandmarkStage(FaceMesh(MODELS)).from_detection(image, detections[0].box, detections[0].keypoints)
    aligned = align_face(image, mesh.landmarks)
    return aligned, landmarks_in_crop(aligned, mesh.landmarks)


def flagged_regions(classifier, probs: dict[str, float]) -> list[str]:
    """The service's own decision (app/filters.py) with the manifest thresholds."""
    regions = OcclusionVerdict(scores=probs, thresholds=classifier.thresholds).regions
    return [r for r, occluded in regions.items() if occluded]


def _with(aligned: AlignedFace, image: np.ndarray) -> AlignedFace:
    return AlignedFace(image=image, matrix=aligned.matrix)


def test_model_loads_and_matches_manifest(classifier):
    assert classifier.entry.extra["classes"] == list(REGIONS)
    assert set(classifier.thresholds) == set(REGIONS)
    assert all(0.0 < t < 1.0 for t in classifier.thresholds.values())
    assert classifier.input_shape[1:] == (1, 64, 64)
    classifier.warm_up()
    probs = classifier.predict(AlignedFace(image=np.full((112, 112, 3), 128, np.uint8), matrix=np.eye(2, 3)))
    assert set(probs) == set(REGIONS) and all(0.0 <= p <= 1.0 for p in probs.values())


def test_clean_real_face_is_not_occluded(classifier, astronaut_face):
    aligned, _ = astronaut_face
    probs = classifier.predict(aligned)
    assert flagged_regions(classifier, probs) == [], probs


def test_bar_over_the_eyes_flags_eyes_not_mouth(classifier, astronaut_face):
    aligned, marks = astronaut_face
    image = aligned.image.copy()
    eyes = marks[[33, 133, 362, 263, 159, 145, 386, 374]]
    y0, y1 = int(eyes[:, 1].min()) - 5, int(eyes[:, 1].max()) + 5
    cv2.rectangle(image, (int(eyes[:, 0].min()) - 8, y0), (int(eyes[:, 0].max()) + 8, y1), (20, 20, 20), -1)
    probs = classifier.predict(_with(aligned, image))
    flagged = flagged_regions(classifier, probs)
    assert "eyes" in flagged, probs
    assert "mouth" not in flagged, probs


def test_scarf_over_the_mouth_flags_mouth(classifier, astronaut_face):
    aligned, marks = astronaut_face
    image = aligned.image.copy()
    top = int(marks[[0, 37, 267]][:, 1].min()) - 4  # just above the upper lip
    cv2.rectangle(image, (0, top), (111, 111), (90, 60, 140), -1)  # a plain purple scarf
    probs = classifier.predict(_with(aligned, image))
    flagged = flagged_regions(classifier, probs)
    assert "mouth" in flagged, probs
    assert "eyes" not in flagged and "brows" not in flagged, probs


def test_occluder_labels_follow_the_region_masks(astronaut_face):
    from training.occlusion.occluders import (
        FAMILIES,
        HELDOUT_IMAGES,
        TRAIN_IMAGES,
        coverage_fractions,
        labels_from_fractions,
        load_images,
        occlude,
        region_masks,
    )

    aligned, marks = astronaut_face
    crop = cv2.cvtColor(aligned.image, cv2.COLOR_BGR2GRAY)
    masks = region_masks(marks)
    assert masks.shape == (4, 112, 112) and all(m.sum() > 20 for m in masks)
    # masks sit where the regions are: brows above eyes above nose above mouth
    centres_y = [np.nonzero(m)[0].mean() for m in masks]
    eyes, nose, mouth, brows = centres_y
    assert brows < eyes < nose < mouth

    # an alpha that covers exactly the mouth mask: mouth 1, others 0
    labels, weights = labels_from_fractions(coverage_fractions(masks, masks[2].astype(np.float32)))
    assert labels.tolist() == [0, 0, 1, 0] and weights.tolist() == [1, 1, 1, 1]
    # a quarter covered is ambiguous (ignored in training); nothing covered is clean
    part = np.zeros((112, 112), np.float32)
    ys, xs = np.nonzero(masks[0])
    part[ys[: len(ys) // 5], xs[: len(ys) // 5]] = 1.0
    labels, weights = labels_from_fractions(coverage_fractions(masks, part))
    assert labels[0] == 0 and weights[0] == 0

    ctx = {"images": load_images(TRAIN_IMAGES[:2]), "heldout_images": load_images(HELDOUT_IMAGES[:2]),
           "other_crop": lambda r: crop}
    rng = np.random.default_rng(0)
    for family in FAMILIES:
        for _ in range(5):
            occ = occlude(crop, marks, rng, ctx, families=(family,), weights=None, count=1)
            assert occ.image.shape == crop.shape and occ.image.dtype == np.uint8
            assert np.allclose(occ.fractions, coverage_fractions(masks, occ.alpha))
            assert np.array_equal(occ.labels, (occ.fractions >= 0.3).astype(np.float32))
            # the crop is untouched away from the occluder
            outside = occ.alpha < 1e-3
            assert np.abs(occ.image[outside].astype(int) - crop[outside]).max(initial=0) <= 1
    # clear glasses: only the rims cover anything, the eyes stay visible through the lenses
    eye_cover = [occlude(crop, marks, rng, ctx, families=("glasses",), weights=None, count=1).fractions[0]
                 for _ in range(10)]
    assert np.median(eye_cover) < 0.15, eye_cover
    # fingers laid over the brows / pressed on the mouth and hair fringes make positives too
    for family, region in (("fingers", None), ("hair", 3), ("cup", 2)):
        labels = np.array([occlude(crop, marks, rng, ctx, families=(family,), weights=None, count=1).labels
                           for _ in range(20)])
        assert labels.any(), family
        if region is not None:
            assert labels[:, region].any(), family
    # sunglasses always cover the eyes, masks and scarves never touch the brows
    for _ in range(10):
        assert occlude(crop, marks, rng, ctx, families=("sunglasses",), weights=None, count=1).fractions[0] > 0.3
        for fam in ("mask", "scarf"):
            assert occlude(crop, marks, rng, ctx, families=(fam,), weights=None, count=1).labels[3] == 0


@pytest.mark.slow
def test_training_smoke_run_exports_a_loadable_model(tmp_path, face_cache):
    pytest.importorskip("torch")
    from training.occlusion.train import main

    out = tmp_path / "run"
    main(["--smoke", "--out", str(out), "--cache", str(face_cache)])
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(out / "occlusion.onnx", models / "occlusion.onnx")
    entry = json.loads((out / "manifest_entry.json").read_text())
    entry["sha256"] = sha256_of(models / "occlusion.onnx")
    (models / "manifest.json").write_text(json.dumps({"manifest_version": 1, "models": {"occlusion": entry}}))
    model = OcclusionClassifier(models)
    probs = model.predict(AlignedFace(image=np.zeros((112, 112, 3), np.uint8), matrix=np.eye(2, 3)))
    assert set(probs) == set(REGIONS)


# ------------------------------------------------------------------ real occlusions and hard negatives (v2)
def _largest_face_flags(analyzer, image) -> tuple[list[str], dict[str, float]]:
    from app.analyzer import FaceOptions
    from training.occlusion.evaluate import largest_face

    analysis = analyzer.run(image, FaceOptions(side_face_filter=False, occlusion_filter=False))
    assert analysis.faces, "no face found"
    face = largest_face(analysis.faces)
    return [r for r, hit in face.occlusion.regions.items() if hit], face.occlusion.scores


def test_hand_across_the_forehead_flags_brows_not_the_laughing_mouth(analyzer):
    """Image_with_alpha.png: a hand lies across the forehead and brows of a laughing man (teeth showing)."""
    from tests.helpers import SAMPLES, requires_data

    path = requires_data(SAMPLES / "Image_with_alpha.png")
    flagged, scores = _largest_face_flags(analyzer, path.read_bytes())
    assert "brows" in flagged, scores
    assert "mouth" not in flagged, scores


def test_hand_over_the_mouth_in_a_video_frame_flags_mouth(analyzer):
    """Frame 200 of WolfgangLanger_Pexels.mp4: fingers pressed over the mouth."""
    from tests.helpers import SAMPLES, requires_data

    path = requires_data(SAMPLES / "WolfgangLanger_Pexels.mp4")
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, frame = capture.read()
    capture.release()
    assert ok
    flagged, scores = _largest_face_flags(analyzer, frame)
    assert "mouth" in flagged, scores
    assert "brows" not in flagged, scores


def test_broad_smiles_of_held_out_ckplus_subjects_are_not_flagged(analyzer):
    """Posed happiness peaks (broad smiles, teeth) of the CK+ subjects the trainer holds out (every 5th sorted
    subject id, training/occlusion/train.py): none may be flagged occluded."""
    import csv

    from app.analyzer import FaceOptions
    from tests.helpers import DATA, requires_data

    root = requires_data(DATA / "ckplus48")
    with (root / "au_labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    subjects = sorted({r["subject"] for r in rows})
    held = {s for i, s in enumerate(subjects) if i % 5 == 0}
    smiles = [r for r in rows if r["subject"] in held and r["emotion"] == "happy" and r["is_peak_frame"] == "1"]
    assert len(smiles) >= 5
    flagged = {}
    for r in smiles:
        image = cv2.imread(str(root / r["path"]), cv2.IMREAD_COLOR)
        face = analyzer.run(image, FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)).faces[0]
        if face.occlusion.occluded:
            flagged[r["path"]] = face.occlusion.scores
    assert not flagged, flagged


def test_preprocess_option_default_band_limit_and_mirror(astronaut_face):
    from app.align import grey_input
    from app.model_zoo.base import ModelError
    from app.model_zoo.occlusion import Preprocess

    crop = astronaut_face[0].image
    assert Preprocess.parse("") == Preprocess()
    assert np.array_equal(Preprocess()(crop, 64)[0, 0], grey_input(crop, 64).astype(np.float32))
    band = Preprocess.parse("via=48, up=cubic")(crop, 64)
    assert band.shape == (1, 1, 64, 64) and not np.array_equal(band[0, 0], grey_input(crop, 64))
    mirrored = Preprocess.parse("mirror=mean")(crop, 64)
    assert mirrored.shape == (2, 1, 64, 64) and np.array_equal(mirrored[1, 0], mirrored[0, 0, :, ::-1])
    for bad in ("via=x", "mirror=min", "sharpen=1"):
        with pytest.raises(ModelError):
            Preprocess.parse(bad)


def test_pseudo_labelled_real_occlusions_keep_their_labels_and_ignore_the_unsure_regions(astronaut_face):
    """``--real-positives``: a FER+ face the previous model scores as occluded is shown as it is (no synthetic
    occluder), with its pseudo-labels; a region it was unsure of (-1) weighs nothing. Ordinary faces (NaN rows) are
    drawn clean or covered as usual."""
    pytest.importorskip("torch")
    from training.occlusion.train import OccludedTrainSet

    aligned, marks = astronaut_face
    grey = cv2.cvtColor(aligned.image, cv2.COLOR_BGR2GRAY)
    fixed = np.array([[1.0, -1.0, 0.0, 0.0], [np.nan] * 4], np.float32)
    data = OccludedTrainSet(np.stack([grey, grey]), np.stack([marks, marks]).astype(np.float32), seed=0,
                            clean_fraction=0.0, fixed_labels=fixed)
    _, labels, weights = data[0]
    assert labels.tolist() == [1.0, 0.0, 0.0, 0.0] and weights.tolist() == [1.0, 0.0, 1.0, 1.0]
    covered = []
    for epoch in range(10):  # clean_fraction 0: an ordinary face always gets occluders (some cover < 30 %)
        data.epoch = epoch
        covered.append(float(data[1][1].sum()) > 0)
        assert data[0][1].tolist() == [1.0, 0.0, 0.0, 0.0]  # the pseudo-labelled face, every epoch
    assert sum(covered) >= 5


def test_ambiguous_regions_weigh_nothing_in_the_loss():
    """The trainer's loss is BCE averaged over the regions that have a label: a region of weight 0 (15-30 % covered,
    or unsure pseudo-labels) changes nothing, whatever its target."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from training.occlusion.model import OcclusionNet
    from training.occlusion.train import train_epoch

    class Still:  # no parameter update: the returned loss is the first (and only) batch's
        def zero_grad(self):
            pass

        def step(self):
            pass

    torch.manual_seed(0)
    net = OcclusionNet(4)
    x = torch.rand(6, 1, 64, 64) * 255
    y = torch.randint(0, 2, (6, 4)).float()
    w = torch.ones(6, 4)
    w[:, 1] = 0
    losses = []
    for target in (y, torch.where(w > 0, y, 1 - y)):  # flip the targets of the weightless region
        torch.manual_seed(1)  # the same dropout mask each time
        losses.append(train_epoch(net, [(x, target, w)], Still(), Still(), steps=1))
    torch.manual_seed(1)
    with torch.no_grad():
        logits = net.train()(x)
    expected = F.binary_cross_entropy_with_logits(logits[:, [0, 2, 3]], y[:, [0, 2, 3]]).item()
    assert abs(losses[0] - losses[1]) < 1e-6 and abs(losses[0] - expected) < 1e-4


def test_video_labels_and_metrics():
    """The hand-labelled frame ranges of the Pexels clip: no overlaps, frame 200 is a covered mouth; the metric code
    counts recall on covered frames and false flags on visible ones."""
    from training.occlusion.video import SEGMENTS, frame_labels, score_variant

    spans = sorted((a, b) for a, b, _ in SEGMENTS)
    assert all(b0 < a1 for (_, b0), (a1, _) in zip(spans, spans[1:]))
    labels = frame_labels(472)
    assert labels[200, REGIONS.index("mouth")] == 1 and np.isnan(labels[60]).all()

    class MouthAlways:
        thresholds = dict.fromkeys(REGIONS, 0.5)

        def predict(self, aligned):
            return {r: 0.9 if r == "mouth" else 0.1 for r in REGIONS}

    crops = [object()] * 472
    crops[80] = None  # a frame without a face is left out, not counted as a miss
    r = score_variant(MouthAlways(), crops, labels)
    assert r["faces_found"] == 471 and r["regions"]["mouth"]["recall"] == 1.0
    assert r["regions"]["mouth"]["false_flags"] == 1.0 and r["clean_any_flagged"] == 1.0
    assert r["regions"]["eyes"]["false_flags"] == 0.0 and r["regions"]["eyes"]["recall"] is None


def test_real_hands_in_the_pexels_clip_frame_by_frame(analyzer):
    """The whole WolfgangLanger_Pexels.mp4 clip, hand-labelled frame ranges (training.occlusion.video): the
    served model finds the hand over nose and mouth on most covered frames and leaves the clean frames (crying,
    laughing with bared teeth) alone. Bounds sit under the served 2.0.0's measured numbers (mouth 0.65, nose 1.0,
    clean frames flagged 0.3 %), so a regression on real hands fails here."""
    from tests.helpers import SAMPLES, requires_data
    from training.occlusion.video import score_variant, video_crops

    path = requires_data(SAMPLES / "WolfgangLanger_Pexels.mp4")
    crops, labels = video_crops(path, analyzer)
    r = score_variant(analyzer.models.occlusion, crops, labels)
    assert r["faces_found"] >= 460
    assert r["regions"]["mouth"]["recall"] >= 0.5 and r["regions"]["nose"]["recall"] >= 0.9, r
    assert r["clean_any_flagged"] <= 0.02, r


def test_output_ensemble_graph_is_the_mean_of_its_members(tmp_path):
    """training.occlusion.ensemble: one ONNX file whose probabilities are the mean of its members' (a member with a
    shifted final bias, so the two differ); a member with other input/output names is refused."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from training.common import TrainingError
    from training.occlusion.ensemble import check, mean_graph

    first = onnx.load(MODELS / "occlusion.onnx")
    second = onnx.load(MODELS / "occlusion.onnx")
    bias = second.graph.initializer[-1]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, bias.name))
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for model, path in zip((first, second), paths):
        onnx.save(model, path)
    onnx.save(mean_graph([first, second]), tmp_path / "mean.onnx")
    x = np.random.default_rng(1).uniform(0, 255, (3, 1, 64, 64)).astype(np.float32)
    outs = [ort.InferenceSession(str(p)).run(None, {"input": x})[0] for p in paths]
    assert np.abs(outs[0] - outs[1]).max() > 1e-3
    assert check(tmp_path / "mean.onnx", paths) < 1e-6
    second.graph.output[0].name = "scores"
    with pytest.raises(TrainingError):
        mean_graph([first, second])


def test_occlusion_model_setting_serves_the_seed_ensemble():
    """``MICROFACS_OCCLUSION_MODEL=ensemble``: the registry loads the manifest entry ``occlusion_ensemble`` (its own
    file, checksum and thresholds) in place of ``occlusion``; the hand across the forehead is still flagged `brows`
    and its laughing mouth is not."""
    from app.analyzer import Analyzer
    from app.settings import Settings
    from tests.helpers import SAMPLES, requires_data

    settings = Settings(occlusion_model="ensemble")
    analyzer = Analyzer(settings)
    model = analyzer.models.occlusion
    assert model.entry.name == "occlusion_ensemble" and model.path.name == "occlusion_ensemble.onnx"
    assert set(model.thresholds) == set(REGIONS)
    path = requires_data(SAMPLES / "Image_with_alpha.png")
    flagged, scores = _largest_face_flags(analyzer, path.read_bytes())
    assert "brows" in flagged and "mouth" not in flagged, scores
