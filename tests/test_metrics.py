"""training/metrics.py and training/fitting.py against scikit-learn, on the cases that went wrong before: ties,
classes missing from the truth or the predictions, empty classes, fits that stop before their optimum."""
from __future__ import annotations

import numpy as np
import pytest

from training import fitting
from training.metrics import (
    accuracy,
    best_f1_threshold,
    ece,
    ece_of,
    macro_f1,
    per_class_f1,
    prf,
    rate_threshold,
    roc_auc,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def sk_macro_f1(y_true, y_pred) -> float:
    """The documented definition, in scikit-learn's terms: classes present in the truth, 0 where undefined."""
    return sklearn_metrics.f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)


# ------------------------------------------------------------------------------------------------ macro-F1
@pytest.mark.parametrize("y_true, y_pred", [
    ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),  # perfect
    ([0, 0, 1, 1], [0, 7, 1, 7]),  # a class predicted that no face has: no F1 term, but misses of 0 and 1
    ([0, 0, 0, 1], [0, 0, 0, 0]),  # a class never predicted: its F1 is 0
    ([3, 3, 3], [3, 3, 3]),  # one class only
    ([1, 1, 2], [2, 2, 1]),  # every label wrong
    (["sadness", "fear", "fear", "anger"], ["fear", "fear", "contempt", "anger"]),  # names, contempt absent
])
def test_macro_f1_is_scikit_learns_over_the_classes_present(y_true, y_pred):
    assert macro_f1(y_true, y_pred) == pytest.approx(sk_macro_f1(y_true, y_pred), abs=1e-12)
    assert set(per_class_f1(y_true, y_pred)) == set(y_true)


def test_macro_f1_on_random_labels_with_missing_classes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        y_true = rng.choice(rng.permutation(8)[:int(rng.integers(1, 8))], n)  # some of the 8 classes absent
        y_pred = rng.integers(0, 8, n)
        assert macro_f1(y_true, y_pred) == pytest.approx(sk_macro_f1(y_true, y_pred), abs=1e-12)


def test_macro_f1_of_no_face_is_nan_and_accuracy_too():
    assert np.isnan(macro_f1([], []))
    assert np.isnan(accuracy([], []))


def test_accuracy_and_binary_prf_match_scikit_learn():
    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(1, 30))
        truth, predicted = rng.random(n) < rng.random(), rng.random(n) < rng.random()
        f1, precision, recall = prf(predicted, truth)
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(truth, predicted, average="binary",
                                                                    zero_division=0)
        assert (f1, precision, recall) == pytest.approx((f, p, r), abs=1e-9)
        assert accuracy(truth, predicted) == pytest.approx(sklearn_metrics.accuracy_score(truth, predicted))


# ------------------------------------------------------------------------------------------------ ROC AUC
def test_roc_auc_matches_scikit_learn_with_many_ties():
    rng = np.random.default_rng(2)
    for _ in range(100):
        n = int(rng.integers(2, 60))
        scores = rng.integers(0, 4, n).astype(float)  # few distinct values: ties everywhere
        positive = rng.random(n) < 0.4
        if positive.all() or not positive.any():
            continue
        assert roc_auc(scores, positive) == pytest.approx(sklearn_metrics.roc_auc_score(positive, scores), abs=1e-12)


def test_roc_auc_edge_cases():
    assert roc_auc(np.full(10, 0.3), np.arange(10) < 4) == 0.5  # all tied: chance, not 0 (the old occlusion auc)
    assert roc_auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert roc_auc(np.array([0.9, 0.1]), np.array([False, True])) == 0.0
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))  # scikit-learn raises here
    scores = np.array([0.2, 0.2, 0.5, 0.7])
    positive = np.array([True, False, True, False])
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))


# ----------------------------------------------------------------------------------------------- calibration
def test_ece_by_hand_and_with_weights():
    confidence = np.array([0.95, 0.95, 0.55, 0.55])  # two bins of 15: (0.9333, 1] and (0.5333, 0.6]
    correct = np.array([1, 0, 1, 1])
    assert ece_of(confidence, correct) == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55))
    assert ece_of(confidence, correct, weights=np.ones(4)) == pytest.approx(ece_of(confidence, correct))
    # weights: the first two faces count 3 times as much
    weighted = ece_of(confidence, correct, weights=np.array([3, 3, 1, 1]))
    assert weighted == pytest.approx(0.75 * abs(0.5 - 0.95) + 0.25 * abs(1.0 - 0.55))
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.45, 0.55]])
    assert ece(probs, np.array([0, 0, 0, 1])) == pytest.approx(ece_of(confidence, correct))
    assert ece_of(np.array([0.7, 0.7]), np.array([1, 1]), bins=10) == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------- threshold search
def test_best_f1_threshold_finds_the_separating_band():
    rng = np.random.default_rng(3)
    truth = np.arange(200) < 50
    scores = np.where(truth, rng.uniform(0.6, 1.0, 200), rng.uniform(0.0, 0.4, 200))
    t = best_f1_threshold(scores, truth)
    assert 0.4 < t <= 0.6 and prf(scores >= t, truth)[0] == 1.0


def test_rate_threshold_lets_at_most_that_share_of_negatives_through():
    rng = np.random.default_rng(4)
    for rate in (0.01, 0.05, 0.2):
        negatives = rng.random(1000)
        t = rate_threshold(negatives, rate)
        assert np.mean(negatives >= t) <= rate
        assert np.mean(negatives >= t - 2e-4) > rate - 1e-3  # and no higher than it must be
    assert rate_threshold(np.full(50, 0.3), 0.01) == pytest.approx(0.3001)  # ties: above all of them


# ------------------------------------------------------------------------------------------------- fitting
def _sklearn_logistic(l2: float, n: int, **kw):
    linear_model = pytest.importorskip("sklearn.linear_model")
    # scikit-learn minimises C * sum(loss) + |w|^2 / 2, i.e. mean(loss) + |w|^2 / (2 C n): C = 1 / (l2 n)
    return linear_model.LogisticRegression(C=1.0 / (l2 * n), tol=1e-12, max_iter=100_000, **kw)


def test_fit_logistic_is_scikit_learns_optimum():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 6))
    y = (x @ rng.normal(size=6) + 0.5 + rng.normal(size=400) > 0).astype(float)
    l2 = 1e-2
    w = fitting.fit_logistic(x, y, l2)
    reference = _sklearn_logistic(l2, len(y)).fit(x, y)
    np.testing.assert_allclose(w[:-1], reference.coef_[0], atol=1e-5)
    assert w[-1] == pytest.approx(reference.intercept_[0], abs=1e-5)
    np.testing.assert_allclose(fitting.apply_logistic(w, x), reference.predict_proba(x)[:, 1], atol=1e-6)


def test_fit_logistic_on_separable_data_still_converges():
    """Without a penalty the optimum of separable data is at infinity; the L2 term keeps it finite, and the
    solver must reach it (a fixed-step loop just stops somewhere)."""
    x = np.linspace(-1, 1, 40)[:, None]
    y = (x[:, 0] > 0).astype(float)
    w = fitting.fit_logistic(x, y, l2=1e-3)
    _, gradient = fitting.logistic_objective(w, x, y, 1e-3)
    assert np.abs(gradient).max() < fitting.GRADIENT_TOL
    reference = _sklearn_logistic(1e-3, len(y)).fit(x, y)
    assert w[0] == pytest.approx(reference.coef_[0, 0], rel=1e-4)


def test_fit_softmax_is_scikit_learns_class_balanced_optimum():
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(4, 5)) * 2
    y = rng.choice(4, 300, p=[0.55, 0.25, 0.15, 0.05])  # unbalanced: the class weights matter
    x = centres[y] + rng.normal(size=(300, 5))
    l2 = 1e-2
    w = fitting.fit_softmax(x, y, 4, l2, balanced=True)
    # scikit-learn's "balanced" weights are n / (K count): they sum to n, so the same C = 1 / (l2 n)
    reference = _sklearn_logistic(l2, len(y), class_weight="balanced").fit(x, y)
    np.testing.assert_allclose(w[:-1], reference.coef_.T, atol=1e-4)
    z = fitting.with_bias(x) @ w
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), reference.predict_proba(x), atol=1e-5)
    assert (fitting.predict_softmax(w, x) == reference.predict(x)).mean() > 0.99


def test_a_fit_that_cannot_converge_says_so(monkeypatch):
    monkeypatch.setattr(fitting, "MAX_ITERATIONS", 2)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 10))
    y = (x[:, 0] + 0.1 * rng.normal(size=200) > 0).astype(float)
    with pytest.raises(fitting.NotConverged, match="logistic regression"):
        fitting.fit_logistic(x, y, l2=1e-4)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(20000, 5)) * 3
    z = logits / 2.0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = fitting.fit_temperature(logits, y)
    assert t == pytest.approx(2.0, rel=0.05)
    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 400))
    assert fitting.nll(logits, y, t) <= min(fitting.nll(logits, y, g) for g in grid) + 1e-9
