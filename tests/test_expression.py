"""Expression recogniser: statistical screening, the shipped ONNX model, the service path, a training smoke run."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.expression.screening import (
    ScreeningBounds,
    batch_stats,
    keep_negative,
    keep_positive,
    sphere_stats,
    z_quantile,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


# ------------------------------------------------------------------------------------------ screening
def test_z_quantile_matches_normal_table():
    assert z_quantile(0.05) == pytest.approx(1.6449, abs=1e-4)
    assert z_quantile(0.01) == pytest.approx(2.3263, abs=1e-4)
    with pytest.raises(ValueError):
        z_quantile(0.0)


def test_sphere_stats_formula_and_simulation():
    s, d = 16.0, 64
    mu, sigma = sphere_stats(s, d)
    assert mu == pytest.approx(math.sqrt(2) * s)
    assert sigma == pytest.approx(s / math.sqrt(2 * d))
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, d))
    b = rng.normal(size=(4000, d))
    a = s * a / np.linalg.norm(a, axis=1, keepdims=True)
    b = s * b / np.linalg.norm(b, axis=1, keepdims=True)
    dist = np.linalg.norm(a - b, axis=1)
    assert dist.mean() == pytest.approx(mu, rel=0.01)
    assert dist.std() == pytest.approx(sigma, rel=0.1)


def keeps_triplet(d_ap, d_an, bounds: ScreeningBounds):
    """The patent's triplet test: each distance passes its own test."""
    return keep_positive(d_ap, bounds) & keep_negative(d_an, bounds)


def test_screening_keeps_and_discards_constructed_tuples():
    s, d = 16.0, 64
    mu, sigma = sphere_stats(s, d)
    bounds = ScreeningBounds(mu, sigma, 0.05, 0.05)
    z = z_quantile(0.05)
    # ordinary tuple: positive close, negative at the typical unrelated distance
    assert keeps_triplet(0.5 * mu, mu, bounds)
    # positive far beyond mu + z sigma: as far as (farther than) unrelated faces -> label noise, discarded
    assert not keeps_triplet(mu + 3 * z * sigma, mu, bounds)
    # negative well below mu - z sigma: abnormally close to the anchor -> discarded
    assert not keeps_triplet(0.5 * mu, mu - 3 * z * sigma, bounds)
    # just inside both bounds is kept
    assert keeps_triplet(mu + 0.99 * z * sigma, mu - 0.99 * z * sigma, bounds)


def test_alpha_moves_the_cut():
    mu, sigma = 10.0, 1.0
    d_ap = mu + 2.0 * sigma  # between z(0.05)=1.64 and z(0.01)=2.33
    assert not keep_positive(d_ap, ScreeningBounds(mu, sigma, alpha_p=0.05, alpha_n=0.05))
    assert keep_positive(d_ap, ScreeningBounds(mu, sigma, alpha_p=0.01, alpha_n=0.05))
    d_an = mu - 2.0 * sigma
    assert not keep_negative(d_an, ScreeningBounds(mu, sigma, alpha_p=0.05, alpha_n=0.05))
    assert keep_negative(d_an, ScreeningBounds(mu, sigma, alpha_p=0.05, alpha_n=0.01))


def test_vectorised_masks():
    b = ScreeningBounds(mu=10.0, sigma=1.0, alpha_p=0.05, alpha_n=0.05)
    d_ap = np.array([5.0, 12.0, 5.0, 5.0])
    d_an = np.array([10.0, 10.0, 7.0, 10.0])
    d_nn = np.array([10.0, 10.0, 10.0, 7.0])
    assert keeps_triplet(d_ap, d_an, b).tolist() == [True, False, False, True]
    assert (keeps_triplet(d_ap, d_an, b) & keep_negative(d_nn, b)).tolist() == [True, False, False, False]


def test_batch_stats_uses_cross_class_pairs_only():
    dist = np.array([[0, 1, 10, 12], [1, 0, 14, 16], [10, 14, 0, 2], [12, 16, 2, 0]], dtype=float)
    y = np.array([0, 0, 1, 1])
    mu, sigma = batch_stats(dist, y[:, None] == y[None, :])
    assert mu == pytest.approx(13.0)
    assert sigma == pytest.approx(np.std([10, 12, 14, 16], ddof=1))


def test_metric_loss_screening_removes_outlier_positive():
    torch = pytest.importorskip("torch")
    from training.expression.train import metric_loss

    s, d = 16.0, 8
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, d))
    y = np.repeat(np.arange(4), 8)
    e = centres[y] + 0.05 * rng.normal(size=(32, d))
    e[0] = -centres[0]  # a "mislabelled" class-0 face far from its class
    e = s * e / np.linalg.norm(e, axis=1, keepdims=True)
    emb, yt = torch.tensor(e, dtype=torch.float32), torch.tensor(y)
    kw = dict(s=s, d=d, margin=0.3, alpha_p=0.05, alpha_n=0.05)
    loss_all, st = metric_loss(emb, yt, screening=False, **kw)
    loss_scr, st2 = metric_loss(emb, yt, screening=True, **kw)
    assert st["screened_frac"] > 0
    assert float(loss_scr) < float(loss_all)


def test_metric_loss_mines_the_hardest_triplet_that_passes_screening():
    """Brute force over every (a, p, n): with screening, the loss is the mean over anchors of the hardest
    surviving triplet's hinge, a triplet surviving when d(a, p) passes keep_positive and d(a, n) keep_negative."""
    torch = pytest.importorskip("torch")
    from training.expression.train import metric_loss

    s, d, margin = 16.0, 8, 0.3
    gen = torch.Generator().manual_seed(3)
    emb = s * torch.nn.functional.normalize(torch.randn(20, d, generator=gen), dim=1)
    y = torch.randint(0, 3, (20,), generator=gen)
    kw = dict(s=s, d=d, margin=margin, alpha_p=0.2, alpha_n=0.2)
    for screening in (False, True):
        loss, stats = metric_loss(emb, y, screening=screening, **kw)
        dist = torch.cdist(emb.double(), emb.double())
        bounds = ScreeningBounds(stats["mu_batch"], stats["sigma_batch"], 0.2, 0.2)
        terms, kept, total = [], 0, 0
        for a in range(20):
            triplets = [(p, n) for p in range(20) for n in range(20) if p != a and y[p] == y[a] and y[n] != y[a]]
            passing = [(p, n) for p, n in triplets if bool(keeps_triplet(dist[a, p], dist[a, n], bounds))]
            total, kept = total + len(triplets), kept + len(passing)
            allowed = passing if screening else triplets
            if allowed:  # the hardest allowed triplet: farthest positive, closest negative
                hard_p = max(float(dist[a, p]) for p, _ in allowed)
                hard_n = min(float(dist[a, n]) for _, n in allowed)
                terms.append(max(hard_p - hard_n + margin * s, 0.0))
        assert stats["screened_frac"] == pytest.approx(1 - kept / total)
        assert float(loss) == pytest.approx(np.mean(terms) / s, rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------- shipped model
def _recognizer():
    from app.model_zoo.expression import ExpressionRecognizer

    return ExpressionRecognizer(MODELS)


def test_onnx_loads_and_probabilities_sum_to_one():
    rec = _recognizer()
    assert rec.classes == CLASSES
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 112, 112), dtype=np.uint8)
    probs, emb = rec.predict_batch(crops)
    assert probs.shape == (3, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    result = rec.predict(np.dstack([crops[0]] * 3))
    assert set(result.scores) == set(CLASSES)
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.label == max(result.scores, key=result.scores.get)
    _, distance = rec.nearest_prototype(emb[:1])
    assert result.uncertain == bool(distance[0] > rec.threshold)


def test_mirror_image_reads_the_same():
    """The shipped graph averages each face with its mirror image, so a face and its mirror give the same
    probabilities and embedding; a single-view network would not (its outputs differ by 1e-2 or more)."""
    rec = _recognizer()
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (4, 112, 112), dtype=np.uint8)
    probs, emb = rec.predict_batch(crops)
    probs_m, emb_m = rec.predict_batch(crops[:, :, ::-1])
    np.testing.assert_allclose(probs_m, probs, atol=1e-4)
    np.testing.assert_allclose(emb_m, emb, atol=1e-4)


def test_astronaut_appears_happy(analyzer, astronaut):
    """skimage's astronaut (a smiling woman) through the service's face stage, then the recogniser."""
    rec = _recognizer()
    from app.analyzer import FaceOptions

    faces = analyzer.run(astronaut, FaceOptions()).faces
    assert faces, "the face stage found no face in astronaut"
    result = rec.predict(faces[0].aligned)
    assert result.label == "happiness", result.scores


def test_surprised_faces_appear_surprised(analyzer):
    """The peak frames of CK+ surprise sequences (posed, labelled by CK+'s FACS coders; the shipped network
    never saw CK+: it was trained on FER+ only), through the in-process API as face crops: 12 subjects, one
    frame each. All 20 first ones read as surprise today; the test allows two misses."""
    import csv

    from tests.helpers import DATA, requires_data

    labels = requires_data(DATA / "ckplus48" / "au_labels.csv")
    with labels.open() as f:
        peaks = [r for r in csv.DictReader(f) if r["emotion"] == "surprise" and r["is_peak_frame"] == "1"][:12]
    assert len({r["subject"] for r in peaks}) == 12
    read = [analyzer.analyze(labels.parent / r["path"], heads={"expression"}, face_crop=True).faces[0].expression
            for r in peaks]
    assert sum(e is not None and e.label == "surprise" for e in read) >= 10, [e and e.label for e in read]


def test_recognize_expression_endpoint(client, astronaut, cameraman):
    _recognizer()
    import cv2

    for image, filtered in ((astronaut, False), (cameraman, True)):
        ok, png = cv2.imencode(".png", image)
        response = client.post("/recognize-expression", files={"file": ("face.png", png.tobytes(), "image/png")})
        assert response.status_code == 200, response.text
        faces = response.json()["faces"]
        assert faces
        face = faces[0]
        assert face["filtered"] is filtered
        if filtered:
            assert face["expression"] is None
        else:
            expr = face["expression"]
            assert expr["label"] == "happiness"
            assert set(expr["scores"]) == set(CLASSES)
            assert sum(expr["scores"].values()) == pytest.approx(1.0, abs=1e-3)
            assert isinstance(expr["uncertain"], bool)
    ok, png = cv2.imencode(".png", astronaut[30:230, 120:320])
    files = {"file": ("f.png", png.tobytes(), "image/png")}
    response = client.post("/recognize-expression?face_crop=true", files=files)
    assert response.status_code == 200, response.text
    assert len(response.json()["faces"]) == 1


# ----------------------------------------------------------------------------------- training smoke
@pytest.mark.slow
def test_training_smoke_exports_loadable_onnx(tmp_path, face_cache):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from training.expression.train import parse_args, train

    args = ["--smoke", "--loss", "triplet", "--screening", "--out", str(tmp_path / "run"), "--cache", str(face_cache)]
    out = train(parse_args(args))
    onnx_path = out / "expression.onnx"
    assert onnx_path.is_file()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "embedding"]
    probs, emb = sess.run(None, {"input": np.random.default_rng(0).random((2, 1, 48, 48), dtype=np.float32)})
    assert probs.shape == (2, 8) and emb.shape[0] == 2
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    mirror = np.random.default_rng(0).random((2, 1, 48, 48), dtype=np.float32)
    p1, _ = sess.run(None, {"input": mirror})
    p2, _ = sess.run(None, {"input": mirror[..., ::-1].copy()})
    np.testing.assert_allclose(p1, p2, atol=1e-5)  # mirror averaging is in the exported graph


@pytest.mark.slow
def test_ablation_table_reads_a_trained_run(tmp_path, face_cache, capsys):
    pytest.importorskip("torch")
    from experiments.ablation_expression import main as ablation
    from training.expression.train import parse_args, train

    out = train(parse_args(["--smoke", "--loss", "ce", "--out", str(tmp_path / "ce"), "--cache", str(face_cache)]))
    capsys.readouterr()
    ablation([str(out), "--cache", str(face_cache), "--limit", "32"])
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "ce" and row[2].strip() == "1"
    accuracies = [float(v) for cell in row[3:5] for v in cell.split("/")]
    assert len(accuracies) == 4 and all(0.0 <= a <= 1.0 for a in accuracies)


# ---------------------------------------------------------------------------------- class prior
@pytest.mark.parametrize("prior", ["balanced", "ferplus"])
def test_scores_sum_to_one_under_either_prior(client, astronaut, prior):
    from tests.helpers import encode, post_image

    body = post_image(client, "/recognize-expression", encode(astronaut), prior=prior).json()
    scores = body["faces"][0]["expression"]["scores"]
    assert set(scores) == set(CLASSES) and sum(scores.values()) == pytest.approx(1.0, abs=1e-3)
    assert body["faces"][0]["expression"]["label"] == "happiness"


def test_balanced_prior_lifts_rare_classes_and_is_the_default(client, analyzer, astronaut):
    """Balanced scores divide by FER+'s label frequencies: a rare class (disgust, 0.6 % of FER+ Train) gains
    against the most common one (neutral) on any face; the default is the setting, published by /version."""
    ferplus = analyzer.analyze(astronaut, heads={"expression"}, prior="ferplus").faces[0].expression.scores
    balanced = analyzer.analyze(astronaut, heads={"expression"}, prior="balanced").faces[0].expression.scores
    assert balanced["disgust"] / balanced["neutral"] > 10 * ferplus["disgust"] / max(ferplus["neutral"], 1e-4)
    assert client.get("/version").json()["defaults"]["prior"] == analyzer.settings.expression_prior == "balanced"
    default = analyzer.analyze(astronaut, heads={"expression"}).faces[0].expression.scores
    assert default == balanced


def test_unknown_prior_is_a_clear_422(client, astronaut):
    from tests.helpers import encode, post_image

    response = post_image(client, "/recognize-expression", encode(astronaut), prior="uniformish")
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
