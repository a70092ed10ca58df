"""Eye gaze (degrees) from the iris landmarks of FaceLandmarker v2, with the axes and signs of head pose
(``app/pose.py``):

* ``yaw``   > 0: the eye looks towards the image's right (the subject's own left);
* ``pitch`` > 0: the eye looks up.

Per eye, the iris centre's offset from the middle of the eye corners is measured in the face's own frame
(``app.pose.face_axes``: x from the subject's right to their left, y from forehead to chin), as a fraction
of the eye's width (corner to corner). An eyeball turns the iris on a sphere, so the eye-in-head angles are
``asin(offset / EYEBALL_RADIUS_IN_EYE_WIDTHS)``; that direction is then turned by the head's own rotation
(the face axes), so the result is the gaze in the camera's frame, like the head pose: a face turned to the
right with the eyes straight ahead in the head gives a gaze yaw near the head's yaw. ``combined`` is the
mean direction of the two eyes.

Constants (none fitted to validation data):

* ``EYEBALL_RADIUS_IN_EYE_WIDTHS = 0.4``: anatomical averages, adult eyeball radius ~12 mm over an eye
  (palpebral fissure) width of ~30 mm; an approximation that scales the angles, not their signs.
* ``NEUTRAL_OFFSET``: the median iris offset (nasal, down) of the CK+ peak frames (frontal, looking at the
  camera by protocol), as ``training/calibrate_pose.py`` does for head pitch; measured by
  ``python tools/calibrate_gaze.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.pose import PITCH_OFFSET_DEG_V2, face_axes

EYEBALL_RADIUS_IN_EYE_WIDTHS = 0.4
# (nasal, down) offset of the iris centre at rest, fractions of the eye width (tools/calibrate_gaze.py on CK+)
NEUTRAL_OFFSET = (-0.032, -0.061)  # 253 CK+ peak frames; both eyes alike (right -0.032/-0.064, left -0.033/-0.058)

# Eye corners (outer, inner) and iris centres of the 478-point layout (app/model_zoo/face_landmarker.py)
RIGHT_EYE = (33, 133, 468)  # the subject's right eye: outer corner, inner corner, iris centre
LEFT_EYE = (263, 362, 473)


@dataclass(frozen=True)
class GazeAngles:
    yaw: float
    pitch: float


@dataclass(frozen=True)
class Gaze:
    right: GazeAngles  # the subject's right eye (on the image's left for a frontal face)
    left: GazeAngles
    combined: GazeAngles


def eye_offset(points: np.ndarray, axes: np.ndarray, eye: tuple[int, int, int]) -> tuple[float, float]:
    """(nasal, down) offset of the iris centre from the middle of the corners, in eye widths."""
    outer, inner, iris = (points[i] for i in eye)
    width = np.linalg.norm(outer - inner)
    delta = iris - (outer + inner) / 2
    towards_nose = np.sign((inner - outer) @ axes[:, 0])  # +1 for the right eye, -1 for the left
    return float(delta @ axes[:, 0] * towards_nose / width), float(delta @ axes[:, 1] / width)


def direction_angles(direction: np.ndarray) -> GazeAngles:
    """Yaw and pitch (degrees) of a direction in image axes, as ``app.pose.raw_head_pose`` measures them."""
    yaw = np.degrees(np.arctan2(direction[0], -direction[2]))
    pitch = np.degrees(np.arctan2(-direction[1], np.hypot(direction[0], direction[2])))
    return GazeAngles(yaw=float(yaw), pitch=float(pitch - PITCH_OFFSET_DEG_V2))


def eye_direction(points: np.ndarray, axes: np.ndarray, eye: tuple[int, int, int]) -> np.ndarray:
    nasal, down = eye_offset(points, axes, eye)
    towards_nose = 1.0 if eye == RIGHT_EYE else -1.0
    x = (nasal - NEUTRAL_OFFSET[0]) * towards_nose  # along the face's x (the subject's right -> left)
    y = down - NEUTRAL_OFFSET[1]
    sin_yaw = np.clip(x / EYEBALL_RADIUS_IN_EYE_WIDTHS, -1.0, 1.0)
    sin_pitch = np.clip(y / EYEBALL_RADIUS_IN_EYE_WIDTHS, -1.0, 1.0)
    # unit direction in the face frame: the face looks along -z_f
    in_face = np.array([sin_yaw, sin_pitch, -np.sqrt(max(0.0, 1.0 - sin_yaw**2 - sin_pitch**2))])
    return axes @ in_face


def gaze(landmarks: np.ndarray) -> Gaze:
    """Gaze of both eyes from the 478 landmarks (x, y, z in image pixels)."""
    points = np.asarray(landmarks, dtype=np.float64)
    axes = face_axes(points[:468])
    right, left = eye_direction(points, axes, RIGHT_EYE), eye_direction(points, axes, LEFT_EYE)
    both = right + left
    return Gaze(right=direction_angles(right), left=direction_angles(left),
                combined=direction_angles(both / np.linalg.norm(both)))
