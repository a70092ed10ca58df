"""Alignment stage: a similarity transform from mesh landmarks to one canonical face crop.

The AU, expression and occlusion networks all read this crop, so they see faces exactly as their
training data did (training/prepare_faces.py runs this same function on FER+ and CK+).

The template holds rigid points only (eye corners and the nose line), so an open mouth or a smile does
not change the crop's scale. Coordinates are fractions of the crop side, the mean positions of those
mesh points over CK+ faces, mirrored to be left/right symmetric. In the crop the brows sit near
y = 0.11, the mouth near 0.69 and the chin near 0.96.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TEMPLATE_INDICES = np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1])
TEMPLATE = np.array(
    [
        (0.1859, 0.2643), (0.3793, 0.2748), (0.6207, 0.2748), (0.8141, 0.2643),  # eye corners
        (0.5000, 0.2347), (0.5000, 0.2870), (0.5000, 0.3327), (0.5000, 0.3744),  # nose root ...
        (0.5000, 0.4192), (0.5000, 0.4734), (0.5000, 0.5146),  # ... to nose tip
    ],
    dtype=np.float64,
)
DEFAULT_SIZE = 112


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray  # (size, size, 3) BGR uint8
    matrix: np.ndarray  # 2x3, image pixels -> crop pixels

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) crop pixels back to original image pixels."""
        inverse = cv2.invertAffineTransform(self.matrix)
        return np.asarray(points, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]

    def box_to_image(self, box: np.ndarray) -> np.ndarray:
        """Map an (x0, y0, x1, y1) crop box to the axis-aligned box around it in the image."""
        x0, y0, x1, y1 = box
        corners = self.to_image(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        return np.concatenate([corners.min(0), corners.max(0)])


def alignment_matrix(landmarks: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    source = np.asarray(landmarks, dtype=np.float64)[TEMPLATE_INDICES, :2]
    matrix, _ = cv2.estimateAffinePartial2D(source, TEMPLATE * size, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks (all points on one spot): no similarity fits
        raise ValueError("landmarks are degenerate; cannot align")
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = DEFAULT_SIZE) -> AlignedFace:
    matrix = alignment_matrix(landmarks, size)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return AlignedFace(image=crop, matrix=matrix)


def grey_input(crop: np.ndarray, size: int) -> np.ndarray:
    """An aligned crop (grey, BGR or BGRA) as the (size, size) uint8 grey image our networks read:
    ``cv2.COLOR_*2GRAY`` then ``cv2.INTER_AREA``. Serving and training both call this."""
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2GRAY if crop.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    if crop.shape[:2] != (size, size):
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop


def landmarks_in_crop(aligned: AlignedFace, landmarks: np.ndarray) -> np.ndarray:
    """(468, 2) landmark positions in the aligned crop's pixels."""
    return np.asarray(landmarks, dtype=np.float64)[:, :2] @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
