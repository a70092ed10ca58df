"""MediaPipe BlazeFace (short- and full-range) face detector: letterbox, anchors, weighted NMS."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.boxes import box_iou
from app.model_zoo.base import OnnxModel, Runtime

# Keypoint order of BlazeFace: the subject's right eye, left eye, nose tip, mouth centre,
# right ear tragion, left ear tragion.
NUM_KEYPOINTS = 6


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # x0, y0, x1, y1 in image pixels
    score: float
    keypoints: np.ndarray  # (6, 2) image pixels


def ssd_anchors(input_size: int, strides: list[int], anchors_per_cell: list[int]) -> np.ndarray:
    """Anchor centres as in mediapipe's SsdAnchorsCalculator with fixed_anchor_size (normalised)."""
    centres = []
    for stride, repeats in zip(strides, anchors_per_cell):
        cells = int(np.ceil(input_size / stride))
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell_centres, repeats, axis=0))
    return np.concatenate(centres, axis=0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float):
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of the boxes it absorbs."""
    order = np.argsort(-scores)
    kept: list[tuple[np.ndarray, float, np.ndarray]] = []
    while order.size:
        best = order[0]
        ious = box_iou(boxes[best], boxes[order])
        cluster = order[ious > iou_threshold]
        weights = scores[cluster][:, None]
        box = (boxes[cluster] * weights).sum(0) / weights.sum()
        kps = (keypoints[cluster] * weights[:, :, None]).sum(0) / weights.sum()
        kept.append((box, float(scores[best]), kps))
        order = order[ious <= iou_threshold]
    return kept


class BlazeFace(OnnxModel):
    """Square RGB input in [-1, 1]; outputs 16 regressors (box + 6 keypoints) and a logit per anchor."""

    strides: list[int] = []
    anchors_per_cell: list[int] = []

    def __init__(self, models_dir: Path, threads: int | Runtime = 1) -> None:
        super().__init__(models_dir, threads)
        self.size = int(self.input_shape[2])
        self.anchors = ssd_anchors(self.size, self.strides, self.anchors_per_cell)

    def candidates(self, image_bgr: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every anchor scoring above ``threshold``, before NMS: boxes (n, 4) and keypoints (n, 6, 2) in image
        pixels, scores (n,)."""
        h, w = image_bgr.shape[:2]
        scale = self.size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        resized = image_bgr if size == (w, h) else cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        canvas = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        pad_y, pad_x = (self.size - resized.shape[0]) // 2, (self.size - resized.shape[1]) // 2
        canvas[pad_y : pad_y + resized.shape[0], pad_x : pad_x + resized.shape[1]] = resized
        tensor = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        regressors, logits = self.run(tensor.transpose(2, 0, 1)[None])
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1), -80, 80)))
        keep = scores > threshold
        raw = regressors.reshape(-1, 8, 2)[keep] / self.size  # normalised to the letterboxed input
        anchors = self.anchors[keep]
        centre, box_size = raw[:, 0] + anchors, raw[:, 1]
        boxes = np.concatenate([centre - box_size / 2, centre + box_size / 2], axis=1)
        keypoints = raw[:, 2:] + anchors[:, None, :]
        # undo the letterbox: input pixels -> image pixels
        offset = np.array([pad_x, pad_y], dtype=np.float32)
        to_image = lambda pts: (pts * self.size - offset) / scale  # noqa: E731
        boxes = np.concatenate([to_image(boxes[:, :2]), to_image(boxes[:, 2:])], axis=1)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[valid], scores[keep][valid], to_image(keypoints)[valid]

    @staticmethod
    def merge(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float = 0.3):
        """Candidates -> one Detection per face (MediaPipe's weighted NMS)."""
        if not len(scores):
            return []
        merged = weighted_nms(boxes, scores, keypoints, iou_threshold)
        return [Detection(box=b, score=s, keypoints=k) for b, s, k in merged]

    def detect(self, image_bgr: np.ndarray, threshold: float = 0.5, iou_threshold: float = 0.3) -> list[Detection]:
        return self.merge(*self.candidates(image_bgr, threshold), iou_threshold)


class BlazeFaceShortRange(BlazeFace):
    """128x128 input; faces that fill a good part of the picture (selfies, crops)."""

    manifest_name = "face_detection_short_range"
    # mediapipe's four layers (strides 8, 16, 16, 16; 2 anchors each) merge layers of equal stride
    strides = [8, 16]
    anchors_per_cell = [2, 6]


class BlazeFaceFullRange(BlazeFace):
    """192x192 input; small and distant faces (group photos)."""

    manifest_name = "face_detection_full_range"
    strides = [4]
    anchors_per_cell = [1]
