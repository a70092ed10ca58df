"""The occlusion model's data selections, without torch: FER+ expressive classes, mesh-open mouths, the CK+
subject split. Shared by the trainer (hard negatives, threshold sets) and the ONNX evaluator (which imports
no torch)."""
from __future__ import annotations

import numpy as np

FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
FERPLUS_CLASSES = FERPLUS_VOTES[:8]
EXPRESSIVE = ("happiness", "surprise", "disgust", "fear")  # broad smiles, open mouths, bared teeth, stretched lips
MOUTH_OPEN = 0.15  # inner-lip gap / mouth width (mesh landmarks) above which a mouth counts as wide open
CKPLUS_HOLDOUT_EVERY = 5  # every 5th CK+ subject (sorted ids) held out, as training/train_expression.py does


def majority_class(votes: np.ndarray) -> np.ndarray:
    """Index into FERPLUS_CLASSES of the most voted of the 8 expression classes (unknown / NF not counted)."""
    return votes[:, :8].argmax(1)


def mouth_open_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(N, 468, 2) -> inner-lip gap (13-14) over mouth width (61-291): the mesh's own evidence of an open mouth."""
    gap = np.linalg.norm(landmarks[:, 13] - landmarks[:, 14], axis=1)
    return gap / np.maximum(np.linalg.norm(landmarks[:, 61] - landmarks[:, 291], axis=1), 1e-6)


def expressive_mask(votes: np.ndarray, classes: tuple[str, ...] = EXPRESSIVE) -> np.ndarray:
    """FER+ faces whose majority vote is one of ``classes`` (default happiness, surprise, disgust, fear)."""
    return np.isin(majority_class(votes), [FERPLUS_VOTES.index(c) for c in classes])


def ckplus_heldout(subjects: np.ndarray, every: int = CKPLUS_HOLDOUT_EVERY) -> np.ndarray:
    """True for the faces of every ``every``-th CK+ subject (sorted ids): split by subject, never by image."""
    ids = sorted(set(subjects.tolist()))
    held = {sid for i, sid in enumerate(ids) if i % every == 0}
    return np.array([sid in held for sid in subjects])
