"""Our FACS Action Unit detector (patent CN109344744): YOLO-style AU boxes on the aligned face crop.

The network (training/au_model.py) outputs, per grid cell and anchor, box offsets, an objectness logit
and one logit per AU. Here, in numpy: decode the boxes, score each AU as objectness x class probability,
per-AU NMS (``detections``), and one decision per AU per face: its best box's score (the first box NMS keeps,
so ``face_decisions`` takes it directly) against the AU's threshold (chosen on subject-wise cross-validation,
stored in the manifest).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.align import AlignedFace, grey_input
from app.boxes import box_iou
from app.model_zoo.base import OnnxModel


@dataclass(frozen=True)
class ActionUnit:
    au: str  # FACS code, e.g. "AU12"
    name: str  # FACS name, e.g. "Lip Corner Puller"
    probability: float
    present: bool
    box: np.ndarray | None  # x0, y0, x1, y1 of the best box (None when absent): aligned-crop pixels from
    # AuDetector.predict, image pixels from the analyzer's AU head (app/heads.py)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def preprocess(crop_bgr_or_grey: np.ndarray, size: int) -> np.ndarray:
    """Aligned crop (BGR or grey, any square size) -> (1, 1, size, size) float32 grey in [0, 1]."""
    return grey_input(crop_bgr_or_grey, size).astype(np.float32)[None, None] / 255.0


def decode(raw: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, 5+C) logits of one face -> boxes (M, 4) x0, y0, x1, y1 in crop fractions, scores (M, C)."""
    a = len(anchors)
    g = int(round((raw.shape[0] / a) ** 0.5))
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    cell = np.repeat(np.stack([cols.ravel(), rows.ravel()], 1), a, axis=0).astype(np.float32)
    wh_anchor = np.tile(np.asarray(anchors, np.float32), (g * g, 1))
    centre = (cell + sigmoid(raw[:, :2])) / g
    size = wh_anchor * np.exp(np.minimum(raw[:, 2:4], 4.0))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    scores = sigmoid(raw[:, 4:5]) * sigmoid(raw[:, 5:])
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, min_score: float = 1e-3) -> np.ndarray:
    """Indices of the kept boxes, best first."""
    order = np.argsort(-scores)
    order = order[scores[order] >= min_score]
    kept = []
    while order.size:
        kept.append(order[0])
        order = order[1:][box_iou(boxes[order[0]], boxes[order[1:]]) <= iou_threshold]
    return np.array(kept, dtype=int)


def detections(raw: np.ndarray, anchors: np.ndarray, iou_threshold: float = 0.5,
               min_score: float = 0.05) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """All boxes per AU after per-AU NMS: {class index: (boxes (K, 4) crop fractions, scores (K,))}."""
    boxes, scores = decode(raw, anchors)
    out = {}
    for c in range(scores.shape[1]):
        kept = nms(boxes, scores[:, c], iou_threshold, min_score)
        out[c] = (boxes[kept], scores[kept, c])
    return out


def face_decisions(raw: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One decision per AU per face: the max over its boxes, i.e. the first box per-AU NMS would keep.
    Returns probability (C,) and that box (C, 4) in crop fractions."""
    boxes, scores = decode(raw, anchors)
    best = scores.argmax(0)
    return scores[best, np.arange(scores.shape[1])].astype(np.float32), boxes[best].astype(np.float32)


class AuDetector(OnnxModel):
    manifest_name = "au_detector"

    def __init__(self, models_dir: Path, threads: int = 1) -> None:
        super().__init__(models_dir, threads)
        extra = self.entry.extra
        self.classes: list[str] = list(extra["classes"])
        self.names: dict[str, str] = dict(extra.get("names", {}))
        self.anchors = np.asarray(extra["anchors"], np.float32)
        self.size = int(extra["input"]["shape"][2])
        self.thresholds = np.array([float(extra["thresholds"][a]) for a in self.classes], np.float32)

    def predict(self, aligned: AlignedFace) -> list[ActionUnit]:
        (raw,) = self.run(preprocess(aligned.image, self.size))
        probability, boxes = face_decisions(raw[0], self.anchors)
        side = aligned.size
        out = []
        for c, au in enumerate(self.classes):
            present = bool(probability[c] >= self.thresholds[c])
            box = np.clip(boxes[c] * side, 0, side).astype(np.float64) if present else None
            out.append(ActionUnit(au=au, name=self.names.get(au, au), probability=float(probability[c]),
                                  present=present, box=box))
        return out
