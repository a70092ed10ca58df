"""Detection stage: the full-range BlazeFace model, the short-range one where it can add a face, merged,
size-filtered and sorted largest first."""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from app.boxes import overlap_of_smaller
from app.model_zoo.blazeface import BlazeFaceFullRange, BlazeFaceShortRange, Detection

SAME_FACE_OVERLAP = 0.4  # intersection over the smaller box: the short-range box of a face is often larger
# A close-up the full-range model misses still lights some of its anchors: on CK+ faces zoomed until the
# full-range model missed them (145 cases, `python tools/compare_detection.py --hint-study`), its best anchor scored
# at least 0.185; a photo with no face scored at most 0.074.
CLOSE_UP_HINT = 0.15


# Above this many pixels the copy for the detectors is first reduced by a whole factor (OpenCV's INTER_AREA is
# ~10x faster then: a 12-megapixel phone photo takes ~2 ms instead of ~20). Smaller images keep the one
# INTER_AREA resize, so their boxes (and everything measured on them) stay exactly as they were.
FAST_SHRINK_PIXELS = 6_000_000


def shrink(image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy whose longer side is ``side`` (INTER_AREA), and the (x, y) factors that map it back. An image
    of more than ``FAST_SHRINK_PIXELS`` is first reduced by a whole factor to at least twice ``side`` (the
    last factor-1 rows and columns at most are left out)."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image, np.ones(2)
    factor = max(h, w) // (2 * side)
    if factor >= 2 and h * w > FAST_SHRINK_PIXELS:
        h, w = h - h % factor, w - w % factor
        image = cv2.resize(image[:h, :w], (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    scale = side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, np.array([w / small.shape[1], h / small.shape[0]])


def scaled(d: Detection, stretch: np.ndarray) -> Detection:
    """A detection on the small copy -> image pixels."""
    return Detection(box=d.box * np.tile(stretch, 2), score=d.score, keypoints=d.keypoints * stretch)


class FaceDetector:
    """The full-range model finds small faces in group photos; the short-range one adds large close-ups the
    full-range model can miss. It runs only when it can add one: when the full-range model found no face,
    or when some of its anchors score above ``CLOSE_UP_HINT`` outside the faces it found. A short-range box
    that mostly covers, or lies mostly inside, a full-range box is the same face.

    ``mode="short"`` (``MICROFACS_DETECTOR=short``) runs the short-range model alone, as MediaPipe's FaceLandmarker
    does: close-ups only, faster; small faces in group photos are missed."""

    def __init__(self, full_range: BlazeFaceFullRange, short_range: BlazeFaceShortRange,
                 mode: Literal["full", "short"] = "full") -> None:
        self.full_range = full_range
        self.short_range = short_range
        self.mode = mode  # "short": the short-range model alone (MICROFACS_DETECTOR): close-ups only

    def detect(self, image: np.ndarray, threshold: float, min_face_size: float, max_faces: int) -> list[Detection]:
        if self.mode == "short":
            small, stretch = shrink(image, self.short_range.size)
            faces = self.short_range.detect(small, threshold)
            return self._finish(image, [scaled(d, stretch) for d in faces], min_face_size, max_faces)
        # Both models read a small letterboxed copy: shrink a large image once, not once per model.
        small, stretch = shrink(image, max(self.full_range.size, self.short_range.size))

        def to_image(d: Detection) -> Detection:
            return scaled(d, stretch)

        boxes, scores, keypoints = self.full_range.candidates(small, min(threshold, CLOSE_UP_HINT))
        strong = scores > threshold
        merged = self.full_range.merge(boxes[strong], scores[strong], keypoints[strong])
        faces = [to_image(d) for d in merged]
        found = np.array([d.box for d in merged]) if merged else np.zeros((0, 4))  # the small copy's pixels, as hints
        if not faces or any(overlap_of_smaller(hint, found).max() <= SAME_FACE_OVERLAP for hint in boxes[~strong]):
            for candidate in map(to_image, self.short_range.detect(small, threshold)):
                kept = np.array([f.box for f in faces]) if faces else np.zeros((0, 4))
                if not len(kept) or overlap_of_smaller(candidate.box, kept).max() <= SAME_FACE_OVERLAP:
                    faces.append(candidate)
        return self._finish(image, faces, min_face_size, max_faces)

    @staticmethod
    def _finish(image: np.ndarray, faces: list[Detection], min_face_size: float, max_faces: int) -> list[Detection]:
        """Boxes clipped to the image, those below ``min_face_size`` left out, largest first, ``max_faces`` at most."""
        h, w = image.shape[:2]
        clipped = []
        for face in faces:
            box = np.clip(face.box, [0, 0, 0, 0], [w, h, w, h])
            if min(box[2] - box[0], box[3] - box[1]) >= max(min_face_size, 1):
                clipped.append(Detection(box=box, score=face.score, keypoints=face.keypoints))
        clipped.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return clipped[:max_faces]
