"""The occlusion recipe's data, without torch: FER+ expressive classes (hard negatives), and every crop scored the
way the service scores it (``score``: ``app.model_zoo.occlusion.OcclusionClassifier.predict``). Shared by the
trainer, the threshold rule (training/occlusion/thresholds.py) and the evaluators."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from app.align import AlignedFace, grey_input
from app.model_zoo.occlusion import OcclusionClassifier
from training.occlusion.occluders import REGIONS

FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
FERPLUS_CLASSES = FERPLUS_VOTES[:8]
EXPRESSIVE = ("happiness", "surprise", "disgust", "fear")  # broad smiles, open mouths, bared teeth, stretched lips
INPUT_SIZE = 64  # the network reads 64x64 grey


def majority_class(votes: np.ndarray) -> np.ndarray:
    """Index into FERPLUS_CLASSES of the most voted of the 8 expression classes (unknown / NF not counted)."""
    return votes[:, :8].argmax(1)


def expressive_mask(votes: np.ndarray, classes: Sequence[str] = EXPRESSIVE) -> np.ndarray:
    """FER+ faces whose majority vote is one of ``classes`` (default happiness, surprise, disgust, fear)."""
    return np.isin(majority_class(votes), [FERPLUS_VOTES.index(c) for c in classes])


def aligned_from_grey(crop: np.ndarray) -> AlignedFace:
    """A cached 112x112 grey crop as the service's ``AlignedFace`` (BGR, identity transform)."""
    return AlignedFace(image=cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR), matrix=np.eye(2, 3))


def score(model: OcclusionClassifier, crops: np.ndarray) -> np.ndarray:
    """(N, 4) probabilities, ``REGIONS`` order, of cached crops through the serving class (its preprocessing)."""
    out = np.zeros((len(crops), len(REGIONS)), np.float32)
    for i, crop in enumerate(crops):
        probs = model.predict(aligned_from_grey(crop))
        out[i] = [probs[r] for r in REGIONS]
    return out


def to_input(crop: np.ndarray) -> np.ndarray:
    """112x112 grey uint8 -> the network's 64x64 float32 0..255 input (exactly what the serving class does)."""
    return grey_input(crop, INPUT_SIZE).astype(np.float32)
