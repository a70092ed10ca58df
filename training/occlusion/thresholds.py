"""The occlusion model's threshold rule and the screening of FER+ "clean" faces, without torch: the trainer picks
its thresholds with it, ``evaluate --derive-thresholds`` re-applies it to an exported model through the serving
class. taiwanese_dev plays no part in it (validation only).

Rule: per region, the smallest t >= ``MIN_THRESHOLD`` (0.5) for which at most ``MAX_FALSE_OCCLUSION`` (1 %) of the
screened clean FER+ Valid faces, and at most twice that of each expressive FER+ Valid class (>= 50 faces) and of
the CK+ held-out subjects, score >= t (``training.metrics.rate_threshold`` per set, the largest wins).
Screening: FER+ faces the previous occlusion model scores >= ``DROP_CLEAN_ABOVE`` in any region are really
occluded (hands, sunglasses, text: label noise); they leave the clean sets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from app.model_zoo.occlusion import OcclusionClassifier
from training.metrics import rate_threshold
from training.occlusion.data import EXPRESSIVE, FERPLUS_VOTES, score
from training.occlusion.occluders import REGIONS

MAX_FALSE_OCCLUSION = 0.01  # on the screened FER+ Valid clean faces; 2x that per expressive class and on CK+
MIN_THRESHOLD = 0.5
DROP_CLEAN_ABOVE = 0.9  # the previous model's score that marks a FER+ "clean" face as really occluded
MIN_CLASS_FACES = 50  # an expressive FER+ Valid class joins the threshold rule from this many screened faces


def choose_thresholds(clean_probs: np.ndarray, max_rate: float = MAX_FALSE_OCCLUSION,
                      extra: list[tuple[np.ndarray, float]] | None = None,
                      floor: float = MIN_THRESHOLD) -> dict[str, float]:
    """Per region, the smallest t >= ``floor`` with at most ``max_rate`` of ``clean_probs`` at or above t and
    at most each ``extra`` set's own rate of its faces (CK+ held-out subjects, FER+ expressive classes)."""
    out = {}
    for k, name in enumerate(REGIONS):
        t = floor
        for probs, rate in [(clean_probs, max_rate), *(extra or [])]:
            if len(probs):
                t = max(t, rate_threshold(probs[:, k], rate))
        out[name] = round(min(t, 0.99), 4)
    return out


def thresholds_for(clean_p: np.ndarray, ck_p: np.ndarray | None, valid_keep: np.ndarray, valid_major: np.ndarray,
                   max_rate: float = MAX_FALSE_OCCLUSION, floor: float = MIN_THRESHOLD) -> dict[str, float]:
    """``choose_thresholds`` on the screened (``valid_keep``) clean FER+ Valid faces (``max_rate``), each
    expressive FER+ Valid class (``valid_major``) with at least 50 screened faces and the CK+ held-out subjects
    (twice that)."""
    extra = []
    for c in EXPRESSIVE:
        members = valid_keep & (valid_major == FERPLUS_VOTES.index(c))
        if members.sum() >= MIN_CLASS_FACES:
            extra.append((clean_p[members], 2 * max_rate))
    if ck_p is not None:
        extra.append((ck_p, 2 * max_rate))
    return choose_thresholds(clean_p[valid_keep], max_rate, extra, floor)


def region_flags(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """(N, 4) scores -> (N,) True where any region is at or above its threshold."""
    return np.asarray(np.stack([probs[:, k] >= thresholds[r] for k, r in enumerate(REGIONS)], 1).any(1))


def previous_model_scores(crops: np.ndarray, models_dir: Path) -> np.ndarray:
    """(N, 4) scores of the previous (installed) occlusion model of ``models_dir``."""
    return score(OcclusionClassifier(models_dir), crops)


def screen_natural_occlusions(crops: np.ndarray, models_dir: Path, threshold: float = DROP_CLEAN_ABOVE) -> np.ndarray:
    """True where the previous occlusion model scores any region >= ``threshold``: FER+ "clean" faces that are
    really occluded (hands, sunglasses, text...). They leave the clean pool."""
    return np.asarray((previous_model_scores(crops, models_dir) >= threshold).any(1))
