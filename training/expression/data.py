"""The expression model's data, without torch: FER+ cache splits, majority labels and soft targets, synthetic
smoke-test faces.

Shared by the trainer, the exporter, the class-prior fit and the ONNX evaluator (which imports no torch).
Reads runs/cache/ferplus_{train,valid,test}.npz written by ``python -m training.prepare_faces``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.model_zoo.expression import INPUT_SIZE, preprocess
from training.common import require_file
from training.data import CACHE_DIR, FERPLUS_CLASSES, PREPARE

NC = len(FERPLUS_CLASSES)
SPLITS = ("train", "valid", "test")


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


def have_cache(cache: Path = CACHE_DIR) -> bool:
    return all((cache / f"ferplus_{s}.npz").is_file() for s in SPLITS)


def load_split(split: str, cache: Path = CACHE_DIR, limit: int = 0) -> dict[str, Any]:
    """One FER+ split: network inputs ``x`` (N, 1, 48, 48), majority labels ``y``, vote distributions ``soft``;
    faces without a majority are left out (counted)."""
    with np.load(require_file(cache / f"ferplus_{split}.npz", PREPARE)) as z:
        crops, votes = z["crops"], z["votes"]
    if limit:
        crops, votes = crops[:limit], votes[:limit]
    y = majority_labels(votes)
    ok = y >= 0
    x = np.stack([preprocess(c) for c in crops[ok]])[:, None]
    return {"x": x, "y": y[ok], "soft": soft_targets(votes[ok]), "dropped_no_majority": int((~ok).sum()),
            "total": len(y)}


def synthetic_split(n: int, seed: int) -> dict[str, Any]:
    """Random 'faces' for the smoke run when no cache exists (CI): the class changes a bright patch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NC, n)
    x = rng.uniform(0.2, 0.4, (n, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 6 * c: 6 * c + 6, :] += 0.5
    soft = np.eye(NC, dtype=np.float32)[y]
    return {"x": x, "y": y, "soft": soft, "dropped_no_majority": 0, "total": n}
