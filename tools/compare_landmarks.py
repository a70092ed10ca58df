"""Landmarks v1 (468-point face mesh) against v2 (FaceLandmarker, 478 points), through the service's own
detector, regions of interest and pose code, on real faces. Reads numbers only; fits nothing.

    python -m tools.compare_landmarks                 # samples, a CK+ subset, the Taiwanese posed photos
    python -m tools.compare_landmarks --ckplus-step 5 --json compare.json

Measures, for each set:

* agreement: mean distance between the two models' first 468 points, as a fraction of the distance
  between the outer eye corners (33, 263), per face; median and 95th percentile over faces;
* pose: |yaw|, |pitch|, |roll| (``app.pose.head_pose``) of each model, and their differences;
* mirror consistency (no labels needed): the pose of the mirrored image should be (-yaw, pitch, -roll);
  the error |yaw + yaw_mirrored|, |pitch - pitch_mirrored|, |roll + roll_mirrored| per model;
* presence, and the time of one ``predict`` per face (single thread, both models interleaved).

The Taiwanese photos (``taiwanese_dev``: all frontal, studio) are validation data: read here, fit nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from app.detect import FaceDetector
from app.landmarks import LandmarkStage
from app.model_zoo.blazeface import BlazeFaceFullRange, BlazeFaceShortRange
from app.model_zoo.face_landmarker import FaceLandmarker
from app.model_zoo.face_mesh import FaceMesh
from app.pose import PITCH_OFFSET_DEG, PITCH_OFFSET_DEG_V2, head_pose

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICROFACS_DATA", REPO.parent / "shared" / "data"))
MODELS = REPO / "models"


def faces_of(detector: FaceDetector, image: np.ndarray, crop: bool) -> list:
    if crop:
        return [None]
    return detector.detect(image, 0.5, 20, 10)


def measure(stage: LandmarkStage, image: np.ndarray, detection) -> tuple[np.ndarray, float, float]:
    start = time.perf_counter()
    if detection is None:
        result = stage.from_face_crop(image)
    else:
        result = stage.from_detection(image, detection.box, detection.keypoints)
    return result.landmarks, result.presence, (time.perf_counter() - start) * 1000


def pose_of(landmarks: np.ndarray) -> np.ndarray:
    """Each model's pose with its own CK+ pitch calibration (app/pose.py)."""
    p = head_pose(landmarks[:468], PITCH_OFFSET_DEG_V2 if len(landmarks) > 468 else PITCH_OFFSET_DEG)
    return np.array([p.yaw, p.pitch, p.roll])


def run_set(name: str, images: list[np.ndarray], crop: bool, detector, stages) -> dict:
    rows: dict[str, list] = {k: [] for k in ("agreement", "pose_v1", "pose_v2", "mirror_v1", "mirror_v2",
                                             "presence_v1", "presence_v2", "ms_v1", "ms_v2")}
    for image in images:
        mirrored = cv2.flip(image, 1)
        detections = faces_of(detector, image, crop)
        mirror_detections = faces_of(detector, mirrored, crop)
        for det in detections:
            twin = None
            if det is not None:  # the same face in the mirrored image: the detection nearest the mirrored box
                if not mirror_detections:
                    continue
                cx = image.shape[1] - (det.box[0] + det.box[2]) / 2
                twin = min(mirror_detections, key=lambda d: abs((d.box[0] + d.box[2]) / 2 - cx)
                           + abs(d.box[1] - det.box[1]))
            out = {}
            for key, stage in stages.items():
                points, presence, ms = measure(stage, image, det)
                mirror_points, _, _ = measure(stage, mirrored, twin)
                out[key] = points
                pose, mirror_pose = pose_of(points), pose_of(mirror_points)
                rows[f"pose_{key}"].append(pose)
                rows[f"mirror_{key}"].append(np.abs(pose + mirror_pose * [1, -1, 1]))
                rows[f"presence_{key}"].append(presence)
                rows[f"ms_{key}"].append(ms)
            iod = np.linalg.norm(out["v1"][33, :2] - out["v1"][263, :2])
            rows["agreement"].append(np.linalg.norm(out["v1"][:, :2] - out["v2"][:468, :2], axis=1).mean() / iod)
    n = len(rows["agreement"])
    summary: dict = {"faces": n}
    if not n:
        return summary
    agreement = np.array(rows["agreement"])
    summary["agreement_nme_iod"] = {"median": round(float(np.median(agreement)), 4),
                                    "p95": round(float(np.percentile(agreement, 95)), 4)}
    for key in ("v1", "v2"):
        pose = np.abs(np.array(rows[f"pose_{key}"]))
        mirror = np.array(rows[f"mirror_{key}"])
        summary[key] = {
            "median_abs_yaw_pitch_roll": [round(float(v), 2) for v in np.median(pose, 0)],
            "mirror_error_median_yaw_pitch_roll": [round(float(v), 2) for v in np.median(mirror, 0)],
            "mirror_error_p95_yaw_pitch_roll": [round(float(v), 2) for v in np.percentile(mirror, 95, axis=0)],
            "presence_min": round(float(np.min(rows[f"presence_{key}"])), 3),
            "ms_per_face_p50": round(float(np.median(rows[f"ms_{key}"][1:] or rows[f"ms_{key}"])), 2),
        }
    diff = np.abs(np.array(rows["pose_v1"]) - np.array(rows["pose_v2"]))
    summary["pose_difference_median_yaw_pitch_roll"] = [round(float(v), 2) for v in np.median(diff, 0)]
    summary["pose_difference_p95_yaw_pitch_roll"] = [round(float(v), 2) for v in np.percentile(diff, 95, axis=0)]
    print(f"\n== {name}: {n} faces")
    print(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckplus-step", type=int, default=10, help="every n-th CK+ image")
    parser.add_argument("--taiwanese-step", type=int, default=1, help="every n-th Taiwanese photo")
    parser.add_argument("--sets", nargs="*", default=["samples", "ckplus", "taiwanese_dev"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    detector = FaceDetector(BlazeFaceFullRange(MODELS, 1), BlazeFaceShortRange(MODELS, 1))
    stages = {"v1": LandmarkStage(FaceMesh(MODELS, 1)), "v2": LandmarkStage(FaceLandmarker(MODELS, 1))}
    sets = {
        "samples": ("samples (detected faces)", lambda: sorted((DATA / "samples").glob("*.jpg")), False),
        "ckplus": ("CK+ subset (whole image = face)",
                   lambda: sorted((DATA / "ckplus48" / "images").rglob("*.png"))[:: args.ckplus_step], True),
        "taiwanese_dev": ("taiwanese_dev (frontal posed photos, validation only)",
                          lambda: sorted((DATA / "taiwanese_dev").rglob("*.jpg"))[:: args.taiwanese_step], False),
    }
    report = {}
    for key in args.sets:
        title, paths, crop = sets[key]
        images = [image for image in (cv2.imread(str(p)) for p in paths()) if image is not None]
        report[key] = run_set(title, images, crop, detector, stages)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
