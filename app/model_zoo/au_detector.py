"""Our FACS Action Unit detector (patent CN109344744): YOLO-style AU boxes on the aligned face crop.

The network (training/au_model.py) outputs, per grid cell and anchor, box offsets, an objectness logit
and one logit per AU. Here, in numpy: decode the boxes, score each AU as objectness x class probability,
and one decision per AU per face: its best box's score (the box per-AU NMS would keep first, so no NMS
is run) against the AU's threshold (chosen on subject-wise cross-validation, stored in the manifest).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.align import AlignedFace, grey_input
from app.model_zoo.base import OnnxModel, Runtime


@dataclass(frozen=True)
class ActionUnit:
    au: str  # FACS code, e.g. "AU12"
    name: str  # FACS name, e.g. "Lip Corner Puller"
    probability: float
    present: bool
    box: np.ndarray | None  # x0, y0, x1, y1 of the best box (None when absent): aligned-crop pixels from
    # AuDetector.predict, image pixels from the analyzer's AU head (app/heads.py)
    activation: float | None = None  # from the blendshapes, when the call computed them (app/activation.py)
    # With a reference (app/reference.py): probability and present are relative to the person's neutral face,
    # and the detector's own reading of this face is kept here.
    absolute_probability: float | None = None
    absolute_present: bool | None = None


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def preprocess(crop_bgr_or_grey: np.ndarray, size: int) -> np.ndarray:
    """Aligned crop (BGR or grey, any square size) -> (1, 1, size, size) float32 grey in [0, 1]."""
    return grey_input(crop_bgr_or_grey, size).astype(np.float32)[None, None] / 255.0


def decode(raw: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, 5+C) logits of one face -> boxes (M, 4) x0, y0, x1, y1 in crop fractions, scores (M, C)."""
    a = len(anchors)
    g = round((raw.shape[0] / a) ** 0.5)
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    cell = np.repeat(np.stack([cols.ravel(), rows.ravel()], 1), a, axis=0).astype(np.float32)
    wh_anchor = np.tile(np.asarray(anchors, np.float32), (g * g, 1))
    centre = (cell + sigmoid(raw[:, :2])) / g
    size = wh_anchor * np.exp(np.minimum(raw[:, 2:4], 4.0))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    scores = sigmoid(raw[:, 4:5]) * sigmoid(raw[:, 5:])
    return boxes, scores


def face_decisions(raw: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One decision per AU per face: the max over its boxes, i.e. the first box per-AU NMS would keep.
    Returns probability (C,) and that box (C, 4) in crop fractions."""
    boxes, scores = decode(raw, anchors)
    best = scores.argmax(0)
    return scores[best, np.arange(scores.shape[1])].astype(np.float32), boxes[best].astype(np.float32)


class AuDetector(OnnxModel):
    manifest_name = "au_detector"

    def __init__(self, models_dir: Path, threads: int | Runtime = 1) -> None:
        super().__init__(models_dir, threads)
        extra = self.entry.extra
        self.classes: list[str] = list(extra["classes"])
        self.names: dict[str, str] = dict(extra.get("names", {}))
        self.anchors = np.asarray(extra["anchors"], np.float32)
        self.size = int(extra["input"]["shape"][2])
        self.thresholds = np.array([float(extra["thresholds"][a]) for a in self.classes], np.float32)

    def scores(self, aligned: AlignedFace) -> tuple[np.ndarray, np.ndarray]:
        """Per AU its probability (C,) and its best box (C, 4), aligned-crop pixels, present or not."""
        return self.scores_batch([aligned])[0]

    def scores_batch(self, faces: list[AlignedFace]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``scores`` for several faces, in one call when the graph allows."""
        if not faces:
            return []
        (raw,) = self.run_batch(np.concatenate([preprocess(face.image, self.size) for face in faces]))
        out = []
        for n, aligned in enumerate(faces):
            probability, boxes = face_decisions(raw[n], self.anchors)
            out.append((probability, np.clip(boxes * aligned.size, 0, aligned.size).astype(np.float64)))
        return out

    def units(self, probability: np.ndarray, boxes: np.ndarray, thresholds: np.ndarray) -> list[ActionUnit]:
        """Decisions against ``thresholds``; a box only for the AUs present."""
        return [ActionUnit(au=au, name=self.names.get(au, au), probability=float(probability[c]),
                           present=bool(probability[c] >= thresholds[c]),
                           box=boxes[c] if probability[c] >= thresholds[c] else None)
                for c, au in enumerate(self.classes)]

    def predict(self, aligned: AlignedFace) -> list[ActionUnit]:
        probability, boxes = self.scores(aligned)
        return self.units(probability, boxes, self.thresholds)
