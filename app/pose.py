"""Head pose (degrees) from the face mesh's own 3D points.

Axes are the image's: x to the right, y down, z away from the camera. A face frame is built from the
mesh: ``x_f`` from the subject's right side to their left (eye corners and cheeks), ``y_f`` from
forehead to chin, made orthogonal to ``x_f``. The face points along ``-z_f = -(x_f × y_f)``.

* ``yaw``   > 0: the face turns towards the image's right (the subject's own left).
* ``pitch`` > 0: the face tilts up (chin forward, looking above the camera).
* ``roll``  > 0: the head leans clockwise in the image (the subject's left eye, on the image's right,
  is lower than the right one).

The mesh's forehead-to-chin line is not exactly upright on a face looking straight at the camera;
``PITCH_OFFSET_DEG`` removes that bias. It is the median raw pitch of the CK+ peak frames (frontal by
protocol), measured by ``training/calibrate_pose.py``; ``PITCH_OFFSET_DEG_V2`` is the same median for the
478-point FaceLandmarker v2 (``tools/calibrate_gaze.py``), which the face stage uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIGHT_SIDE = [33, 133, 234, 93, 132]  # subject's right: eye corners, cheek contour
LEFT_SIDE = [263, 362, 454, 323, 361]
FOREHEAD, CHIN = 10, 152
PITCH_OFFSET_DEG = -5.3
PITCH_OFFSET_DEG_V2 = -4.0


@dataclass(frozen=True)
class HeadPose:
    yaw: float
    pitch: float
    roll: float


def face_axes(landmarks: np.ndarray) -> np.ndarray:
    """3x3 matrix whose columns are the face's x, y, z axes in image coordinates."""
    points = np.asarray(landmarks, dtype=np.float64)
    x_axis = points[LEFT_SIDE].mean(0) - points[RIGHT_SIDE].mean(0)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = points[CHIN] - points[FOREHEAD]
    y_axis -= (y_axis @ x_axis) * x_axis
    y_axis /= np.linalg.norm(y_axis)
    return np.stack([x_axis, y_axis, np.cross(x_axis, y_axis)], axis=1)


def raw_head_pose(landmarks: np.ndarray) -> HeadPose:
    axes = face_axes(landmarks)
    forward = -axes[:, 2]
    yaw = np.degrees(np.arctan2(forward[0], -forward[2]))
    pitch = np.degrees(np.arctan2(-forward[1], np.hypot(forward[0], forward[2])))
    roll = np.degrees(np.arctan2(axes[1, 0], axes[0, 0]))
    return HeadPose(yaw=float(yaw), pitch=float(pitch), roll=float(roll))


def head_pose(landmarks: np.ndarray, pitch_offset: float = PITCH_OFFSET_DEG) -> HeadPose:
    raw = raw_head_pose(landmarks)
    return HeadPose(yaw=raw.yaw, pitch=raw.pitch - pitch_offset, roll=raw.roll)
