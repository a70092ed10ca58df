"""Measure the rest position of the iris (app.gaze.NEUTRAL_OFFSET) and the pitch bias of the head pose with
landmarks v2, on the CK+ peak frames (frontal and looking at the camera by the CK+ protocol), as
training/calibrate_pose.py does for the 468-point mesh.

    python -m tools.calibrate_gaze

Prints the median (nasal, down) iris offset per eye in eye widths and the median raw head pitch.
"""
from __future__ import annotations

import numpy as np

from app.gaze import LEFT_EYE, NEUTRAL_OFFSET, RIGHT_EYE, eye_offset
from app.landmarks import LandmarkStage
from app.model_zoo.face_landmarker import FaceLandmarker
from app.pose import face_axes, raw_head_pose
from app.settings import get_settings
from training.data import ckplus_rows, read_bgr


def main() -> None:
    stage = LandmarkStage(FaceLandmarker(get_settings().models_dir))
    rows, pitches = [], []
    for row in ckplus_rows():
        if row.is_peak:
            points = stage.from_face_crop(read_bgr(row.path)).landmarks
            axes = face_axes(points[:468])
            rows.append(eye_offset(points, axes, RIGHT_EYE) + eye_offset(points, axes, LEFT_EYE))
            pitches.append(raw_head_pose(points[:468]).pitch)
    offsets = np.array(rows)
    median = np.median(offsets, axis=0)
    print(f"CK+ peak frames: {len(offsets)}")
    print(f"right eye (nasal, down) {median[0]:+.3f} {median[1]:+.3f}; left eye {median[2]:+.3f} {median[3]:+.3f}")
    print(f"both eyes: nasal {np.median(offsets[:, [0, 2]]):+.3f}, down {np.median(offsets[:, [1, 3]]):+.3f} "
          f"(app.gaze.NEUTRAL_OFFSET is {NEUTRAL_OFFSET})")
    print(f"median raw head pitch with landmarks v2: {np.median(pitches):+.1f} degrees")


if __name__ == "__main__":
    main()
