"""Detection stage: both BlazeFace models, merged, size-filtered and sorted largest first."""
from __future__ import annotations

import cv2
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
        # Both models read a small letterboxed copy: shrink a large image once (INTER_AREA on a 2-megapixel
        # photo costs ~10 ms), not once per model, then map the results back.
        side = max(self.full_range.size, self.short_range.size)
        scale = min(1.0, side / max(image.shape[:2]))
        small = image
        if scale < 1.0:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        stretch = np.array([image.shape[1] / small.shape[1], image.shape[0] / small.shape[0]])

        def to_image(d: Detection) -> Detection:
            return Detection(box=d.box * np.tile(stretch, 2), score=d.score, keypoints=d.keypoints * stretch)

        faces = [to_image(d) for d in self.full_range.detect(small, threshold)]
        for candidate in map(to_image, self.short_range.detect(small, threshold)):
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
