"""MediaPipe face mesh: 468 3D landmarks and a face-presence score from a rotated square crop."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from app.model_zoo.base import OnnxModel, Runtime

NUM_LANDMARKS = 468
Roi = tuple[np.ndarray, float, float]  # centre (x, y) in image pixels, side in pixels, angle in radians


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


class MeshModel(OnnxModel):
    """A landmark network on rotated square crops (the 468-point mesh, FaceLandmarker v2): ``predict`` one face,
    ``predict_batch`` several faces of one image in one call (when the graph's batch dimension is free)."""

    num_landmarks = NUM_LANDMARKS

    def __init__(self, models_dir, threads: int | Runtime = 1) -> None:
        super().__init__(models_dir, threads)
        self.size = int(self.input_shape[2])

    def predict(self, image_bgr: np.ndarray, centre: np.ndarray, size: float, angle_rad: float) -> MeshResult:
        return self.predict_batch(image_bgr, [(centre, size, angle_rad)])[0]

    def predict_batch(self, image_bgr: np.ndarray, rois: Sequence[Roi]) -> list[MeshResult]:
        if not rois:
            return []
        matrices, crops = [], []
        for centre, size, angle_rad in rois:
            matrix = roi_transform(np.asarray(centre, dtype=np.float64), size, angle_rad, self.size)
            crops.append(cv2.warpAffine(image_bgr, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE))
            matrices.append(matrix)
        rgb = np.stack([cv2.cvtColor(crop, cv2.COLOR_BGR2RGB) for crop in crops])
        tensor = rgb.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        raw, presence_logit = self.run_batch(tensor)[:2]
        out = []
        for n, ((_, size, _), matrix) in enumerate(zip(rois, matrices)):
            points = raw[n].reshape(self.num_landmarks, 3).astype(np.float64)
            inverse = cv2.invertAffineTransform(matrix)
            xy = points[:, :2] @ inverse[:, :2].T + inverse[:, 2]
            z = points[:, 2:3] * (size / self.size)
            presence = float(1.0 / (1.0 + np.exp(-float(presence_logit[n].reshape(-1)[0]))))
            out.append(MeshResult(landmarks=np.hstack([xy, z]), presence=presence))
        return out


class FaceMesh(MeshModel):
    manifest_name = "face_landmark"
