"""Detection stage: both BlazeFace models, merged, size-filtered and sorted largest first."""
from __future__ import annotations

import numpy as np

from app.boxes import overlap_of_smaller
from app.model_zoo.blazeface import BlazeFaceFullRange, BlazeFaceShortRange, Detection

SAME_FACE_OVERLAP = 0.4  # intersection over the smaller box: the short-range box of a face is often larger


class FaceDetector:
    """The full-range model finds small faces in group photos; the short-range one adds large close-ups
    the full-range model can miss. A short-range box that mostly covers, or lies mostly inside, a
    full-range box is the same face."""

    def __init__(self, full_range: BlazeFaceFullRange, short_range: BlazeFaceShortRange) -> None:
        self.full_range = full_range
        self.short_range = short_range

    def detect(self, image: np.ndarray, threshold: float, min_face_size: float, max_faces: int) -> list[Detection]:
        faces = self.full_range.detect(image, threshold)
        for candidate in self.short_range.detect(image, threshold):
            kept = np.array([f.box for f in faces]) if faces else np.zeros((0, 4))
            if not len(kept) or overlap_of_smaller(candidate.box, kept).max() <= SAME_FACE_OVERLAP:
                faces.append(candidate)
        h, w = image.shape[:2]
        clipped = []
        for face in faces:
            box = np.clip(face.box, [0, 0, 0, 0], [w, h, w, h])
            if min(box[2] - box[0], box[3] - box[1]) >= max(min_face_size, 1):
                clipped.append(Detection(box=box, score=face.score, keypoints=face.keypoints))
        clipped.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return clipped[:max_faces]
