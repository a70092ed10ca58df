"""MediaPipe face mesh: 468 3D landmarks and a face-presence score from a rotated square crop."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.model_zoo.base import OnnxModel, Runtime

NUM_LANDMARKS = 468


@dataclass(frozen=True)
class MeshResult:
    landmarks: np.ndarray  # (468, 3): x, y in image pixels; z in pixels, smaller = nearer the camera
    presence: float  # 0..1, the model's own "this crop holds a face" score


def roi_transform(centre: np.ndarray, size: float, angle_rad: float, out_size: int) -> np.ndarray:
    """Affine matrix (2x3) mapping image pixels into a square crop of ``size`` pixels, rotated by angle."""
    scale = out_size / size
    cos, sin = np.cos(angle_rad) * scale, np.sin(angle_rad) * scale
    # rotate the image by -angle around centre so that the face becomes upright, then scale and shift
    matrix = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=np.float64)
    matrix[:, 2] = out_size / 2 - matrix[:, :2] @ centre
    return matrix


class FaceMesh(OnnxModel):
    manifest_name = "face_landmark"

    def __init__(self, models_dir, threads: int | Runtime = 1) -> None:
        super().__init__(models_dir, threads)
        self.size = int(self.input_shape[2])

    def predict(self, image_bgr: np.ndarray, centre: np.ndarray, size: float, angle_rad: float) -> MeshResult:
        matrix = roi_transform(np.asarray(centre, dtype=np.float64), size, angle_rad, self.size)
        crop = cv2.warpAffine(
            image_bgr, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        tensor = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        raw, presence_logit = self.run(tensor)
        points = raw.reshape(NUM_LANDMARKS, 3).astype(np.float64)
        inverse = cv2.invertAffineTransform(matrix)
        xy = points[:, :2] @ inverse[:, :2].T + inverse[:, 2]
        z = points[:, 2:3] * (size / self.size)
        presence = float(1.0 / (1.0 + np.exp(-float(presence_logit.reshape(-1)[0]))))
        return MeshResult(landmarks=np.hstack([xy, z]), presence=presence)
