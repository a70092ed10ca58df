"""Where the datasets live, how their label files read, and the face caches every recipe trains on (no torch).

Datasets: MICROFACS_DATA or ../shared/data. Face caches: runs/cache/{ferplus_train,ferplus_valid,ferplus_test,
ckplus}.npz, written by ``python -m training.prepare_faces`` (the service's own face stage)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.common import MissingDataError, require_file

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO_ROOT / "runs"
CACHE_DIR = RUNS_DIR / "cache"
PREPARE = "python -m training.prepare_faces"
FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FERPLUS_SPLITS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
# CK+ folder names -> FER+ class names
CKPLUS_TO_FERPLUS = {
    "neutral": "neutral", "happy": "happiness", "happiness": "happiness", "surprise": "surprise",
    "sadness": "sadness", "sad": "sadness", "anger": "anger", "angry": "anger", "disgust": "disgust",
    "fear": "fear", "contempt": "contempt",
}


def read_bgr(path: Path | str) -> np.ndarray:
    """A dataset image as BGR uint8 (cv2.IMREAD_COLOR); MissingDataError when absent or unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MissingDataError(f"{path}: absent or not an image; the datasets are read from {data_root()}")
    return image


def data_root() -> Path:
    return Path(os.environ.get("MICROFACS_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@dataclass(frozen=True)
class FerPlusRow:
    path: Path
    votes: tuple[int, ...]  # 10 numbers: the 8 classes, unknown, not-a-face

    @property
    def majority(self) -> int | None:
        """Index into FERPLUS_CLASSES of the strict plurality, None when unknown/NF win or on a tie."""
        top = max(self.votes)
        winners = [i for i, v in enumerate(self.votes) if v == top]
        if len(winners) != 1 or winners[0] >= len(FERPLUS_CLASSES):
            return None
        return winners[0]


def ferplus_rows(split: str, root: Path | None = None) -> list[FerPlusRow]:
    folder = (root or data_root()) / "ferplus" / FERPLUS_SPLITS[split]
    rows = []
    with (folder / "label.csv").open() as handle:
        for record in csv.reader(handle):
            if len(record) < 12:
                continue
            rows.append(FerPlusRow(folder / record[0], tuple(int(v) for v in record[2:12])))
    return rows


@dataclass(frozen=True)
class CkPlusRow:
    path: Path
    sequence: str
    subject: str
    emotion: str
    is_peak: bool
    aus: dict[str, int]


def ckplus_rows(root: Path | None = None) -> list[CkPlusRow]:
    folder = (root or data_root()) / "ckplus48"
    rows = []
    with (folder / "au_labels.csv").open() as handle:
        for record in csv.DictReader(handle):
            aus = {k: int(v) for k, v in record.items() if k.startswith("AU")}
            rows.append(
                CkPlusRow(folder / record["path"], record["sequence"], record["subject"], record["emotion"],
                          record["is_peak_frame"] == "1", aus)
            )
    return rows

# taiwanese_dev label -> FER+ class (the same expressions under other names; the database has no contempt).
TW_TO_FERPLUS = {"neutral": "neutral", "happy": "happiness", "sad": "sadness", "angry": "anger",
                 "disgust": "disgust", "fear": "fear", "surprise": "surprise"}


@dataclass(frozen=True)
class TaiwaneseRow:
    """One taiwanese_dev photo (VALIDATION ONLY: read to report numbers, never fitted to)."""

    path: Path
    performer: str
    neutral: bool  # performance_type 0: the performer's neutral face
    intended: str  # what the performer was asked to show (the database's names: happy, sad, angry, ...)
    top_vote: str  # what most observers saw


def taiwanese_rows(root: Path | None = None) -> list[TaiwaneseRow]:
    folder = root or data_root() / "taiwanese_dev"
    with (folder / "labels.csv").open(newline="") as handle:
        return [TaiwaneseRow(folder / "images" / r["file"], r["performer"], r["performance_type"] == "0",
                             r["intended"], r["top_vote"]) for r in csv.DictReader(handle)]


# ----------------------------------------------------------------------------------------------- face caches
CKPLUS_HOLDOUT_EVERY = 5  # every 5th CK+ subject (sorted ids) is held out by the expression and occlusion recipes
MOUTH_OPEN = 0.15  # inner-lip gap / mouth width (mesh landmarks) above which a mouth counts as wide open


def load_cache(name: str, cache_dir: Path = CACHE_DIR) -> dict[str, np.ndarray]:
    """Every array of one face cache (``crops`` (N, 112, 112) uint8, ``landmarks`` (N, 468, 2) float32, ``presence``,
    ``pose``, and the set's labels: ``votes`` for FER+, ``subjects``, ``emotions``, ``aus``... for CK+);
    MissingDataError naming the command that makes it."""
    with np.load(require_file(Path(cache_dir) / f"{name}.npz", PREPARE)) as data:
        out = {key: data[key] for key in data.files}
    out["landmarks"] = out["landmarks"].astype(np.float32)
    return out


def ckplus_heldout(subjects: np.ndarray, every: int = CKPLUS_HOLDOUT_EVERY) -> np.ndarray:
    """True for the faces of every ``every``-th CK+ subject (sorted ids): split by subject, never by image."""
    ids = sorted(set(np.asarray(subjects).tolist()))
    held = {sid for i, sid in enumerate(ids) if i % every == 0}
    return np.array([sid in held for sid in np.asarray(subjects).tolist()], bool)


def subject_folds(subjects: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number of every CK+ image for the AU recipe's cross-validation; all images of a subject share a fold
    (never split by image)."""
    unique = np.array(sorted(set(subjects)))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[s] for s in subjects])


def mouth_open_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(N, 468, 2) -> inner-lip gap (13-14) over mouth width (61-291): the mesh's own evidence of an open mouth."""
    gap = np.linalg.norm(landmarks[:, 13] - landmarks[:, 14], axis=1)
    return gap / np.maximum(np.linalg.norm(landmarks[:, 61] - landmarks[:, 291], axis=1), 1e-6)
