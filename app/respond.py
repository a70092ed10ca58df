"""Response stage: internal results -> the pydantic shapes of app/schemas.py."""
from __future__ import annotations

import numpy as np

from app.pipeline import FaceAnalysis, ImageAnalysis
from app.schemas import Box, DetectFacesResponse, Face, ImageInfo, Occlusion, Pose


def box_out(box: np.ndarray) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Box(x=round(x0, 2), y=round(y0, 2), width=round(x1 - x0, 2), height=round(y1 - y0, 2))


def face_out(face_id: int, face: FaceAnalysis, include_landmarks: bool) -> dict:
    """Fields shared by every endpoint's face object (a dict, so endpoints can add theirs)."""
    verdict = face.occlusion
    return dict(
        face_id=face_id,
        box=box_out(face.box),
        confidence=round(min(max(face.confidence, 0.0), 1.0), 4),
        landmark_confidence=round(min(max(face.landmark_confidence, 0.0), 1.0), 4),
        pose=Pose(yaw=round(face.pose.yaw, 2), pitch=round(face.pose.pitch, 2), roll=round(face.pose.roll, 2)),
        occlusion=Occlusion(
            occluded=verdict.occluded,
            regions=verdict.regions,
            scores={k: round(v, 4) for k, v in verdict.scores.items()},
            thresholds=verdict.thresholds,
        ),
        filtered=face.filtered,
        filter_reasons=list(face.filter_reasons),
        landmarks=np.round(face.landmarks, 2).tolist() if include_landmarks else None,
    )


def detect_faces_response(request_id: str, analysis: ImageAnalysis, include_landmarks: bool) -> DetectFacesResponse:
    return DetectFacesResponse(
        request_id=request_id,
        image=ImageInfo(width=analysis.width, height=analysis.height),
        faces=[Face(**face_out(i, f, include_landmarks)) for i, f in enumerate(analysis.faces)],
        timings_ms=analysis.timings.rounded(),
    )
