"""Measure the pitch bias of the mesh-based head pose on frontal faces (CK+ peak frames).

    python -m training.calibrate_pose

Prints the median raw yaw/pitch/roll over CK+ peak frames (frontal by the CK+ protocol). The median
raw pitch is app.pose.PITCH_OFFSET_DEG; yaw and roll need no offset (they come out near 0).
"""
from __future__ import annotations

import numpy as np

from app.landmarks import LandmarkStage
from app.model_zoo.face_mesh import FaceMesh
from app.pose import PITCH_OFFSET_DEG, raw_head_pose
from app.settings import get_settings
from training.data import ckplus_rows, read_bgr


def main() -> None:
    stage = LandmarkStage(FaceMesh(get_settings().models_dir))
    rows = []
    for row in ckplus_rows():
        if row.is_peak:
            pose = raw_head_pose(stage.from_face_crop(read_bgr(row.path)).landmarks)
            rows.append((pose.yaw, pose.pitch, pose.roll))
    poses = np.array(rows)
    median = np.median(poses, axis=0)
    print(f"CK+ peak frames: {len(poses)}")
    print(f"median raw yaw {median[0]:+.1f}, pitch {median[1]:+.1f}, roll {median[2]:+.1f} degrees")
    print(f"10-90% pitch: {np.percentile(poses[:, 1], 10):+.1f} .. {np.percentile(poses[:, 1], 90):+.1f}")
    print(f"app.pose.PITCH_OFFSET_DEG is {PITCH_OFFSET_DEG:+.1f}")


if __name__ == "__main__":
    main()
