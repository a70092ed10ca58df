"""The AU recipe's data, without torch: CK+ faces with their AU boxes drawn from the mesh (``CkPlus``), the FER+
faces whose votes make some AUs certain, the image augmentation, and the manifest's account of it all.
Reads runs/cache/ckplus.npz and ferplus_*.npz (``python -m training.prepare_faces``)."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from app.model_zoo.au_detector import preprocess
from training.au.regions import au_boxes
from training.common import log, require_file
from training.data import CACHE_DIR, PREPARE, mouth_open_ratio

CACHE = CACHE_DIR / "ckplus.npz"
# AUs with enough positives in CK+ (>= 16 sequences). Left out: AU10 (13 sequences), AU16 (9), AU18 (5),
# AU11 (2), AU21 (1), AU22 (0).
CLASSES = ["AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU12", "AU14", "AU15", "AU17", "AU20",
           "AU23", "AU24", "AU25", "AU26", "AU27"]
INPUT_SIZE = 64


def preprocess_crop(grey: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The aligned grey crop as the network reads it, (size, size) float32 in [0, 1]: the service's own."""
    return preprocess(grey, size)[0, 0]


class CkPlus:
    def __init__(self, cache: Path = CACHE, size: int = INPUT_SIZE) -> None:
        data = np.load(require_file(cache, PREPARE + " --only ckplus"))
        self.size = size
        scale = size / data["crops"].shape[1]
        self.images = np.stack([preprocess_crop(c, size) for c in data["crops"]])
        self.landmarks = data["landmarks"].astype(np.float32) * scale
        names = [str(a) for a in data["au_names"]]
        self.labels = data["aus"][:, [names.index(a) for a in CLASSES]].astype(np.float32)
        self.known = np.ones_like(self.labels, bool)  # False: the AU's state is unknown (no loss on its region)
        self.subjects = data["subjects"].astype(str)
        self.emotions = data["emotions"].astype(str)

        self.ckplus = len(self.images)  # CK+ faces come first; FER+ faces (below) after them

    def __len__(self) -> int:
        return len(self.images)

    def add_ferplus(self, crops: np.ndarray, landmarks: np.ndarray, labels: np.ndarray, known: np.ndarray,
                    source: str) -> np.ndarray:
        """FER+ faces with the AUs their votes make certain: ``labels`` 0/1 where ``known``. Neutral faces
        (nothing active, every AU known) teach 'nothing here'; smiling / surprised faces teach that FER+-looking
        faces have AUs too (so 'FER+ look = no AU' is no shortcut). Returns their indices; they never enter a CV
        test fold."""
        scale = self.size / crops.shape[1]
        start = len(self.images)
        self.images = np.concatenate([self.images, np.stack([preprocess_crop(c, self.size) for c in crops])])
        self.landmarks = np.concatenate([self.landmarks, landmarks.astype(np.float32) * scale])
        self.labels = np.concatenate([self.labels, labels.astype(np.float32)])
        self.known = np.concatenate([self.known, known.astype(bool)])
        self.subjects = np.concatenate([self.subjects, np.full(len(crops), source)])
        self.emotions = np.concatenate([self.emotions, np.full(len(crops), source)])
        return np.arange(start, len(self.images))

    def targets(self, landmarks: np.ndarray, labels: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """(T, 5) class, cx, cy, w, h in crop fractions for the active AUs; class -1 rows are the regions of the
        AUs whose state is unknown (``known`` False): the loss ignores predictions there."""
        known = np.ones(len(labels), bool) if known is None else known
        active = [CLASSES[j] for j in np.flatnonzero((labels > 0) & known)]
        unknown = {CLASSES[j] for j in np.flatnonzero(~known)}
        rows = []
        for au, (x0, y0, x1, y1) in au_boxes(landmarks, active + sorted(unknown), clip=self.size):
            if x1 - x0 > 1 and y1 - y0 > 1:
                cls = -1 if au in unknown else CLASSES.index(au)
                rows.append([cls, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        out = np.array(rows, np.float32).reshape(-1, 5)
        out[:, 1:] /= self.size
        return out


# FER+ faces whose votes make some AUs certain (>= PSEUDO_VOTES of 10 raters): the EMFACS core of the expression.
# Only the two expressions whose core is unambiguous and which FER+ raters agree on; every other AU of those
# faces is unknown (ignored), not absent.
PSEUDO_VOTES = 8
PSEUDO_AUS = {1: ["AU12"], 2: ["AU1", "AU2"]}  # FER+ vote column (happiness, surprise) -> AUs present
# AU25 (lips part) of the FER+ faces from the mesh itself (inner-lip gap / mouth width, the patent's automatic
# labelling from landmarks): on CK+ that ratio alone gives AU25 with F1 0.88 at 0.06; present from twice that,
# absent below half of it, unknown between. Neutral faces with parted lips are not taught "no AU25".
LIPS_APART, LIPS_CLOSED = 0.12, 0.03


def fixed_pick(pool: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` of ``pool``, a seeded random choice, sorted."""
    return np.sort(np.random.default_rng(seed).choice(pool, size=min(count, len(pool)), replace=False))


def neutral_faces(cache_dir: Path, count: int, min_votes: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` FER+ Train faces (fixed random pick) with >= ``min_votes`` of 10 neutral votes: crops, landmarks."""
    with np.load(cache_dir / "ferplus_train.npz") as z:
        pick = fixed_pick(np.flatnonzero(z["votes"][:, 0] >= min_votes), count, seed)
        return z["crops"][pick], z["landmarks"][pick]


def pseudo_positive_faces(cache_dir: Path, count: int, seed: int = 0):
    """Up to ``count`` FER+ Train faces per expression of PSEUDO_AUS (fixed random pick, >= PSEUDO_VOTES votes):
    crops, landmarks, labels (N, C) and known (N, C): the expression's core AUs present, the rest unknown."""
    with np.load(cache_dir / "ferplus_train.npz") as z:
        votes = z["votes"]
        crops, marks, labels, known = [], [], [], []
        for column, aus in PSEUDO_AUS.items():
            pick = fixed_pick(np.flatnonzero(votes[:, column] >= PSEUDO_VOTES), count, seed + column)
            crops.append(z["crops"][pick])
            marks.append(z["landmarks"][pick])
            row = np.array([a in aus for a in CLASSES], np.float32)
            labels.append(np.tile(row, (len(pick), 1)))
            known.append(np.tile(row > 0, (len(pick), 1)))
    return np.concatenate(crops), np.concatenate(marks), np.concatenate(labels), np.concatenate(known)


def augment(image: np.ndarray, marks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip, affine jitter, brightness/contrast/gamma, blur, noise. Landmarks move with the pixels, so the
    AU boxes (recomputed from them) follow; after a flip each side's box lands on the other side."""
    s = image.shape[0]
    marks = marks.copy()
    if rng.random() < 0.5:
        image = image[:, ::-1]
        marks[:, 0] = s - 1 - marks[:, 0]
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.9, 1.1)
    matrix = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.06, 0.06, 2) * s
    image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (s, s), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    marks = marks @ matrix[:, :2].T + matrix[:, 2]
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    image = image * rng.uniform(0.6, 1.4) + rng.uniform(-0.2, 0.2)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.2))
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.01, 0.04), image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32), marks


def ferplus_inputs(split: str, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs (N, S, S) and 8-class vote distributions of the FER+ faces whose votes are mostly for an
    expression (unknown / not-a-face minority)."""
    with np.load(require_file(cache_dir / f"ferplus_{split}.npz", PREPARE)) as z:
        votes = z["votes"].astype(np.float32)
        keep = votes[:, :8].sum(1) > votes[:, 8:].sum(1)
        images = np.stack([preprocess_crop(c) for c in z["crops"][keep]])
    dist = votes[keep, :8]
    return images, dist / dist.sum(1, keepdims=True)


def training_data(train_args: dict) -> str:
    """The manifest's account of what the model was trained on, from its training arguments."""
    text = ("CK+ (CK+48 copy, 759 faces of 94 subjects: the last 3 frames of each emotion sequence), FACS codes of the "
            "peak frame; AU boxes made automatically from the face mesh (training/au/regions.py)")
    if train_args.get("init"):
        text += f"; backbone pretrained on FER+ Train expressions (vote distributions, {train_args['init']})"
    if train_args.get("neutral"):
        text += f"; {train_args['neutral']} FER+ Train faces with >= 8/10 neutral votes as all-AU-absent negatives"
    if train_args.get("pseudo"):
        text += (f"; up to {train_args['pseudo']} FER+ Train faces each with >= {PSEUDO_VOTES}/10 happiness (AU12) or "
                 "surprise (AU1, AU2) votes, their other AUs unknown")
    if train_args.get("lips_from_mesh"):
        text += "; AU25 of the FER+ faces from the mesh's inner-lip gap"
    if train_args.get("extra_per_epoch"):
        text += f" ({train_args['extra_per_epoch']} FER+ faces drawn each epoch)"
    return text


def load_data(cfg: argparse.Namespace) -> tuple[CkPlus, np.ndarray]:
    """CK+ plus the FER+ faces asked for (--neutral negatives, --pseudo positives) and the indices of the latter."""
    data = CkPlus(cfg.cache)
    added = [np.zeros(0, int)]
    if cfg.neutral:
        crops, marks = neutral_faces(cfg.cache.parent, cfg.neutral)
        added.append(data.add_ferplus(crops, marks, np.zeros((len(crops), len(CLASSES))),
                                       np.ones((len(crops), len(CLASSES)), bool), source="ferplus_neutral"))
        log.info(f"{len(crops)} FER+ neutral faces added as negatives")
    if cfg.pseudo:
        crops, marks, labels, known = pseudo_positive_faces(cfg.cache.parent, cfg.pseudo)
        added.append(data.add_ferplus(crops, marks, labels, known, source="ferplus_pseudo"))
        log.info(f"{len(crops)} FER+ faces added with their expression's core AUs ({PSEUDO_AUS}), other AUs unknown")
    extras = np.concatenate(added)
    if cfg.lips_from_mesh and len(extras):
        ratio = mouth_open_ratio(data.landmarks[extras])
        j = CLASSES.index("AU25")
        data.labels[extras, j] = ratio >= LIPS_APART
        data.known[extras, j] = (ratio >= LIPS_APART) | (ratio <= LIPS_CLOSED)
        log.info(f"AU25 of the FER+ faces from the mesh: {int((ratio >= LIPS_APART).sum())} present, "
                 f"{int((ratio <= LIPS_CLOSED).sum())} absent, the rest unknown")
    return data, extras
