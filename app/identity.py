"""Which faces are the same person: group identity descriptors (app/model_zoo/face_identity.py).

``same_person_groups`` clusters unit descriptors by agglomerative clustering (scipy, average linkage on the
cosine distance) cut at ``MATCH_DISTANCE``. That threshold is the descriptor authors' own: HSE_FaceRec_tf
clusters the faces of a photo album with a distance threshold of 0.82 (age_gender_identity/config.txt,
``DistanceThreshold``) on the Euclidean distance of L2-normalised descriptors, and for unit vectors
|a - b|^2 = 2 (1 - cos), so 0.82 is a cosine distance of 0.82^2 / 2 = 0.3362. It is not fitted to any of
our data; what it gives on taiwanese_dev (validation only) is in the manifest entry ``face_identity``
(training/evaluate_identity.py). The authors cut a single-linkage tree; average linkage is less prone to
chaining two people together through one ambiguous photo.

The model is loaded on demand (``ModelRegistry.identity()``), not at server start.
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

AUTHORS_EUCLIDEAN_THRESHOLD = 0.82
MATCH_DISTANCE = AUTHORS_EUCLIDEAN_THRESHOLD**2 / 2  # cosine distance, 0.3362


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected (N, D) embeddings, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is all zeros: it has no direction to compare")
    return x / norms


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b) of two descriptors (0: same direction, 2: opposite)."""
    x = _unit_rows(np.stack([np.ravel(a), np.ravel(b)]))
    return float(max(0.0, 1.0 - x[0] @ x[1]))


def same_person(a: np.ndarray, b: np.ndarray, threshold: float = MATCH_DISTANCE) -> bool:
    return cosine_distance(a, b) <= threshold


def same_person_groups(embeddings: np.ndarray, threshold: float = MATCH_DISTANCE) -> list[int]:
    """A cluster id per row of ``embeddings`` (N, D): rows with the same id are taken to show the same person.

    Average-linkage agglomerative clustering on the cosine distance, cut where merging would put the average
    distance between two groups above ``threshold`` (default ``MATCH_DISTANCE``). Ids are 0, 1, 2, ... in the
    order of each group's first row. ValueError for a non-2-D array, NaN / infinite values or an all-zero row.
    """
    x = _unit_rows(embeddings) if len(np.asarray(embeddings)) else np.zeros((0, 1))
    if len(x) < 2:
        return [0] * len(x)
    distances = np.clip(pdist(x, metric="cosine"), 0.0, None)  # round-off can make a 0 slightly negative
    labels = fcluster(linkage(distances, method="average"), t=threshold, criterion="distance")
    first_seen: dict[int, int] = {}
    return [first_seen.setdefault(int(label), len(first_seen)) for label in labels]
