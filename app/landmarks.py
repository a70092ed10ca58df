"""Landmark stage: the face mesh on a rotated square region around each face."""
from __future__ import annotations

import numpy as np

from app.model_zoo.face_landmarker import FaceLandmarker
from app.model_zoo.face_mesh import FaceMesh, MeshResult, Roi

# Mesh indices used to place the region of interest and by the later stages.
RIGHT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_INNER, LEFT_EYE_OUTER = 33, 133, 362, 263
ROI_SCALE = 1.5  # as MediaPipe: the crop is 1.5x the face


def eye_angle(right_eye: np.ndarray, left_eye: np.ndarray) -> float:
    """Angle (radians) of the line from the subject's right eye to their left eye, image axes."""
    delta = np.asarray(left_eye, dtype=np.float64) - np.asarray(right_eye, dtype=np.float64)
    return float(np.arctan2(delta[1], delta[0]))


def roi_from_detection(box: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, float, float]:
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    size = max(box[2] - box[0], box[3] - box[1]) * ROI_SCALE
    return centre, float(size), eye_angle(keypoints[0], keypoints[1])


def roi_from_landmarks(landmarks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The region the mesh itself says the face occupies, measured in the face's upright frame."""
    right = landmarks[[RIGHT_EYE_OUTER, RIGHT_EYE_INNER], :2].mean(0)
    left = landmarks[[LEFT_EYE_OUTER, LEFT_EYE_INNER], :2].mean(0)
    angle = eye_angle(right, left)
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    upright = landmarks[:, :2] @ rot.T
    lo, hi = upright.min(0), upright.max(0)
    centre = rot.T @ ((lo + hi) / 2)
    return centre, float((hi - lo).max() * ROI_SCALE), angle


class LandmarkStage:
    def __init__(self, mesh: FaceMesh | FaceLandmarker) -> None:
        self.mesh = mesh

    def from_regions(self, image: np.ndarray, regions: list[Roi]) -> list[MeshResult]:
        """The mesh on several faces' regions (``roi_from_detection`` / ``roi_from_landmarks``): one call."""
        return self.mesh.predict_batch(image, regions)

    def from_detection(self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray) -> MeshResult:
        return self.mesh.predict(image, *roi_from_detection(box, keypoints))

    def from_face_crop(self, image: np.ndarray) -> MeshResult:
        """The whole image is one face (FER+/CK+ style): a first pass on the image, then a pass on the
        region the first pass found, as MediaPipe's tracking does."""
        h, w = image.shape[:2]
        first = self.mesh.predict(image, np.array([w / 2, h / 2]), float(max(w, h)) * 1.1, 0.0)
        return self.mesh.predict(image, *roi_from_landmarks(first.landmarks))

    def from_landmarks(self, image: np.ndarray, previous: np.ndarray) -> MeshResult:
        """The mesh on the region a previous mesh (e.g. the last video frame's) gives: MediaPipe's tracking."""
        return self.mesh.predict(image, *roi_from_landmarks(previous))
