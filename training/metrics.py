"""The numbers the evaluators report, each with one definition (no torch). Every evaluator and trainer takes its
metrics from here; tests/test_metrics.py checks them against scikit-learn on the edge cases (ties, missing classes).

* ``accuracy(y_true, y_pred)``: the share of faces whose label is right (NaN for no face).
* ``macro_f1(y_true, y_pred)``: the unweighted mean of each class's F1 over **the classes present in** ``y_true``.
  A predicted class that no face truly has gets no F1 term of its own; its predictions still count as misses
  (false negatives) of the faces' true classes. To score a fixed subset of classes (CK+'s 7, taiwanese_dev's 7),
  keep only the faces of those classes first. Equal to scikit-learn's
  ``f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)``.
* ``prf(predicted, truth)``: F1, precision, recall of one binary decision (0 where undefined).
* ``roc_auc(scores, positive)``: the probability that a random positive scores above a random negative, ties
  counted half (scipy's Mann-Whitney U over n1 n0); 0.5 when every score ties, NaN when a class is empty.
* ``ece(probs, y)``: expected calibration error of the top class, equal-width confidence bins (lo, hi].
* Threshold searches: ``best_f1_threshold`` (the centre of the best +-0.05 band of F1 on a 0.01 grid) and
  ``rate_threshold`` (the smallest threshold that at most a given share of negatives reach).
"""
from __future__ import annotations

import itertools

import numpy as np

# ------------------------------------------------------------------------------------------- classification


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) scores."""
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def accuracy(y_true: np.ndarray | list, y_pred: np.ndarray | list) -> float:
    """Share of right labels; NaN when there is no face."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows the true class, columns the predicted one (integer labels)."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def prf(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(F1, precision, recall) of a binary decision; a ratio with nothing to divide by is 0."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    tp = float((predicted & truth).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    return 2 * precision * recall / max(precision + recall, 1e-9), precision, recall


def per_class_f1(y_true: np.ndarray | list, y_pred: np.ndarray | list) -> dict:
    """F1 of each class present in ``y_true`` (labels of any kind: ints or names), in sorted order."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {c.item() if hasattr(c, "item") else c: prf(y_pred == c, y_true == c)[0] for c in np.unique(y_true)}


def macro_f1(y_true: np.ndarray | list, y_pred: np.ndarray | list) -> float:
    """Mean F1 over the classes present in ``y_true`` (see the module's docstring); NaN when there is no face."""
    scores = per_class_f1(y_true, y_pred)
    return float(np.mean(list(scores.values()))) if scores else float("nan")


# --------------------------------------------------------------------------------------------------- ranking


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half: the Mann-Whitney U over n1 n0."""
    from scipy.stats import mannwhitneyu  # here: scipy.stats probes for torch at import (the torch-free check)

    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------------------------- calibration


def ece_of(confidence: np.ndarray, correct: np.ndarray, bins: int = 15, weights: np.ndarray | None = None) -> float:
    """Expected calibration error of the stated ``confidence`` against ``correct`` (0/1) over ``bins`` equal-width
    bins (lo, hi]; with ``weights``, each face counts that much (e.g. 1 / class frequency: a class-balanced ECE)."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    w = np.ones(len(confidence)) if weights is None else np.asarray(weights, np.float64)
    total = 0.0
    for lo, hi in itertools.pairwise(np.linspace(0, 1, bins + 1)):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            share = w[inside].sum() / w.sum()
            gap = (w[inside] * correct[inside]).sum() - (w[inside] * confidence[inside]).sum()
            total += share * abs(gap / w[inside].sum())
    return float(total)


def ece(probs: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, bins: int = 15) -> float:
    """ECE of the top class of (N, C) probabilities against integer labels ``y`` (``ece_of``)."""
    return ece_of(probs.max(1), probs.argmax(1) == np.asarray(y), bins, weights)


# ------------------------------------------------------------------------------------------- threshold search

THRESHOLD_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)
THRESHOLD_WINDOW = 5  # grid steps each side: F1 is averaged over thresholds within +-0.05


def best_f1_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold whose neighbourhood (+-0.05) has the best mean F1: the centre of the best band rather than
    the single best score, which on a few dozen positives is brittle (on the AU detector's CK+ folds: nested F1
    of the 14 required AUs 0.799 with the single best score, 0.807 with the band; models/AU_DETECTOR.md)."""
    f1 = np.array([prf(scores >= t, truth)[0] for t in THRESHOLD_GRID])
    k = THRESHOLD_WINDOW
    smoothed = np.convolve(np.pad(f1, k, mode="edge"), np.ones(2 * k + 1) / (2 * k + 1), mode="valid")
    return float(THRESHOLD_GRID[int(np.argmax(smoothed))])


def rate_threshold(negatives: np.ndarray, max_rate: float, margin: float = 1e-4) -> float:
    """The smallest threshold that at most ``max_rate`` of the ``negatives``' scores reach (score >= threshold):
    just above their (1 - max_rate) quantile, taken at an observed score (numpy's ``method="higher"``)."""
    return float(np.quantile(negatives, 1 - max_rate, method="higher")) + margin
