"""Pre-filters: side face (head pose) and occlusion (per region). They mark faces, never drop them."""
from __future__ import annotations

from dataclasses import dataclass

from app.pose import HeadPose

SIDE_FACE = "side_face"
OCCLUDED = "occluded"
LOW_LANDMARK_CONFIDENCE = "low_landmark_confidence"


@dataclass(frozen=True)
class OcclusionVerdict:
    scores: dict[str, float]
    thresholds: dict[str, float]

    @property
    def regions(self) -> dict[str, bool]:
        return {r: self.scores[r] >= self.thresholds[r] for r in self.scores}

    @property
    def occluded(self) -> bool:
        return any(self.regions.values())


def is_side_face(pose: HeadPose, max_yaw: float, max_pitch: float) -> bool:
    return abs(pose.yaw) > max_yaw or abs(pose.pitch) > max_pitch


def filter_reasons(
    pose: HeadPose,
    occlusion: OcclusionVerdict,
    landmark_confidence: float,
    *,
    side_face_filter: bool,
    occlusion_filter: bool,
    max_yaw: float,
    max_pitch: float,
    min_landmark_confidence: float,
) -> list[str]:
    """Why a face is excluded from AU and expression analysis; empty when it is not.

    A face whose mesh the landmark model itself rejects is always excluded: alignment, pose and every
    later network would read garbage. The side-face and occlusion filters are the caller's choice."""
    reasons = []
    if landmark_confidence < min_landmark_confidence:
        reasons.append(LOW_LANDMARK_CONFIDENCE)
    if side_face_filter and is_side_face(pose, max_yaw, max_pitch):
        reasons.append(SIDE_FACE)
    if occlusion_filter and occlusion.occluded:
        reasons.append(OCCLUDED)
    return reasons
