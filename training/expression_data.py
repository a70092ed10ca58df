"""The expression model's data, without torch: FER+ cache splits, majority labels and soft targets, the
service's pre-filters on training faces, the CK+ split, label corruption, synthetic smoke-test faces.

Shared by the trainer, the exporter, the ablation table and the ONNX evaluator (which imports no torch).
Reads runs/cache/ferplus_{train,valid,test}.npz and ckplus.npz written by ``python -m training.prepare_faces``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from app.filters import LOW_LANDMARK_CONFIDENCE, OCCLUDED, SIDE_FACE, OcclusionVerdict, filter_reasons
from app.model_zoo.expression import INPUT_SIZE, preprocess
from app.pose import HeadPose
from app.settings import Settings
from training.common import require_file
from training.data import CKPLUS_TO_FERPLUS, FERPLUS_CLASSES, REPO_ROOT, RUNS_DIR

CACHE = RUNS_DIR / "cache"
MODELS_DIR = REPO_ROOT / "models"
NC = len(FERPLUS_CLASSES)
SPLITS = ("train", "valid", "test")
PREPARE = "python -m training.prepare_faces"


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """Index of the strict plurality of the 10 votes, -1 when unknown/NF win or on a tie (FerPlusRow.majority)."""
    votes = np.asarray(votes, dtype=np.int64)
    top = votes.max(1, keepdims=True)
    winners = votes == top
    label = votes.argmax(1)
    bad = (winners.sum(1) != 1) | (label >= NC)
    return np.where(bad, -1, label)


def soft_targets(votes: np.ndarray) -> np.ndarray:
    v = np.asarray(votes, dtype=np.float32)[:, :NC]
    return v / np.maximum(v.sum(1, keepdims=True), 1.0)


def prescreen_mask(pose: np.ndarray, presence: np.ndarray, occluded: np.ndarray | None = None,
                   settings: Settings | None = None) -> dict[str, np.ndarray]:
    """The service's own pre-filters (app.filters.filter_reasons, thresholds from Settings: its defaults unless
    ``settings`` is given) on training faces: side face (pose), mesh presence, occlusion."""
    s = settings or Settings.model_construct()  # the field defaults, whatever the environment says
    occ = np.zeros(len(presence), bool) if occluded is None else np.asarray(occluded, bool)
    reasons = [filter_reasons(HeadPose(*map(float, p)), OcclusionVerdict({"any": float(o)}, {"any": 0.5}), float(c),
                              side_face_filter=True, occlusion_filter=True, max_yaw=s.side_face_max_yaw,
                              max_pitch=s.side_face_max_pitch, min_landmark_confidence=s.landmark_presence_threshold)
               for p, c, o in zip(pose, presence, occ)]
    mask = {key: np.array([reason in r for r in reasons], bool)
            for key, reason in (("side_face", SIDE_FACE), ("low_presence", LOW_LANDMARK_CONFIDENCE),
                                ("occluded", OCCLUDED))}
    mask["keep"] = np.array([not r for r in reasons], bool)
    return mask


def occluded_faces(crops: np.ndarray, models_dir: Path = MODELS_DIR) -> np.ndarray:
    """The service's occlusion verdict (models/occlusion.onnx, manifest thresholds, any region) per crop,
    scored the way training/evaluate_occlusion.py scores it."""
    from app.model_zoo.occlusion import REGIONS, OcclusionClassifier
    from training.evaluate_occlusion import score

    model = OcclusionClassifier(models_dir)
    limits = np.array([model.thresholds[r] for r in REGIONS], dtype=np.float32)
    return (score(model, crops) >= limits).any(1)


def have_cache(cache: Path = CACHE) -> bool:
    return all((cache / f"ferplus_{s}.npz").is_file() for s in SPLITS)


def load_split(split: str, cache: Path = CACHE, limit: int = 0, occlusion: bool = False) -> dict[str, np.ndarray]:
    """One FER+ split: network inputs ``x`` (N, 1, 48, 48), majority labels ``y``, vote distributions ``soft``,
    ``pose``, mesh ``presence``; faces without a majority are left out (counted)."""
    with np.load(require_file(cache / f"ferplus_{split}.npz", PREPARE)) as z:
        crops, votes, pose, presence = z["crops"], z["votes"], z["pose"], z["presence"]
    if limit:
        crops, votes, pose, presence = crops[:limit], votes[:limit], pose[:limit], presence[:limit]
    y = majority_labels(votes)
    ok = y >= 0
    x = np.stack([preprocess(c) for c in crops[ok]])[:, None]
    split_data = {"x": x, "y": y[ok], "soft": soft_targets(votes[ok]), "pose": pose[ok], "presence": presence[ok],
                  "dropped_no_majority": int((~ok).sum()), "total": len(y)}
    if occlusion:
        split_data["occluded"] = occluded_faces(crops[ok])
    return split_data


def ckplus_split(cache: Path, holdout: bool, holdout_every: int = 5) -> dict[str, np.ndarray]:
    """CK+ dev faces (posed, another domain) with one-hot targets. Subjects are split, never images: every
    ``holdout_every``-th subject (sorted ids) is held out for evaluation, the rest may join training."""
    with np.load(require_file(cache / "ckplus.npz", PREPARE + " --only ckplus")) as z:
        crops, emotions, subjects = z["crops"], z["emotions"], z["subjects"]
    ids = sorted(set(subjects.tolist()))
    held = {sid for i, sid in enumerate(ids) if i % holdout_every == 0}
    take = np.array([(sid in held) == holdout for sid in subjects])
    y = np.array([FERPLUS_CLASSES.index(CKPLUS_TO_FERPLUS[e]) for e in emotions[take]])
    x = np.stack([preprocess(c) for c in crops[take]])[:, None]
    return {"x": x, "y": y, "soft": np.eye(NC, dtype=np.float32)[y], "subjects": subjects[take]}


def corrupt_labels(split: dict[str, np.ndarray], fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A copy of ``split`` in which ``fraction`` of the faces (seeded pick) carry a wrong class, uniformly
    among the other classes, as label and as one-hot target: the abnormal samples screening should reject."""
    rng = np.random.default_rng(seed + 7919)
    n = len(split["y"])
    hit = np.zeros(n, bool)
    hit[rng.choice(n, size=round(fraction * n), replace=False)] = True
    y = split["y"].copy()
    y[hit] = (y[hit] + rng.integers(1, NC, int(hit.sum()))) % NC
    soft = split["soft"].copy()
    soft[hit] = np.eye(NC, dtype=np.float32)[y[hit]]
    return {**split, "y": y, "soft": soft, "corrupted": hit}


def synthetic_split(n: int, seed: int) -> dict[str, np.ndarray]:
    """Random 'faces' for the smoke run when no cache exists (CI): the class changes a bright patch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NC, n)
    x = rng.uniform(0.2, 0.4, (n, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 6 * c: 6 * c + 6, :] += 0.5
    soft = np.eye(NC, dtype=np.float32)[y]
    return {"x": x, "y": y, "soft": soft, "pose": np.zeros((n, 3), np.float32),
            "presence": np.ones(n, np.float32), "occluded": np.zeros(n, bool), "dropped_no_majority": 0, "total": n}
