"""Response stage: internal results -> the pydantic shapes of app/schemas.py.

Every analysis endpoint answers with the same face objects; an endpoint that runs a per-face network
(AUs, expression) names it as an extra field, computed only for faces the pre-filters let through
(a filtered face carries ``null`` there) and timed under the field's name.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import numpy as np
from pydantic import BaseModel

from app.model_zoo.au_detector import ActionUnit
from app.model_zoo.expression import ExpressionResult
from app.pipeline import FaceAnalysis, ImageAnalysis
from app.schemas import ActionUnitOut, Box, ExpressionOut, ImageInfo, Occlusion, Pose

Response = TypeVar("Response", bound=BaseModel)
PerFace = Callable[[FaceAnalysis], Any]


def unit_interval(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 4)


def box_out(box: np.ndarray) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Box(x=round(x0, 2), y=round(y0, 2), width=round(x1 - x0, 2), height=round(y1 - y0, 2))


def face_out(face_id: int, face: FaceAnalysis, include_landmarks: bool) -> dict:
    """Fields shared by every endpoint's face object."""
    verdict = face.occlusion
    return dict(
        face_id=face_id,
        box=box_out(face.box),
        confidence=unit_interval(face.confidence),
        landmark_confidence=unit_interval(face.landmark_confidence),
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


def action_units_out(units: list[ActionUnit], face: FaceAnalysis) -> list[ActionUnitOut]:
    """AU boxes come out of the network in aligned-crop pixels; map them back to the image."""
    return [
        ActionUnitOut(
            au=u.au,
            name=u.name,
            probability=unit_interval(u.probability),
            present=u.present,
            box=None if u.box is None else box_out(face.aligned.box_to_image(u.box)),
        )
        for u in units
    ]


def expression_out(result: ExpressionResult) -> ExpressionOut:
    return ExpressionOut(
        label=result.label,
        confidence=unit_interval(result.confidence),
        scores={k: unit_interval(v) for k, v in result.scores.items()},
        uncertain=result.uncertain,
    )


def analysis_response(
    response_model: type[Response],
    request_id: str,
    analysis: ImageAnalysis,
    include_landmarks: bool,
    **per_face: PerFace,
) -> Response:
    faces = []
    for face_id, face in enumerate(analysis.faces):
        fields = face_out(face_id, face, include_landmarks)
        for name, compute in per_face.items():
            if face.filtered:
                fields[name] = None
                continue
            with analysis.timings.stage(name):
                fields[name] = compute(face)
        faces.append(fields)
    return response_model(
        request_id=request_id,
        image=ImageInfo(width=analysis.width, height=analysis.height),
        faces=faces,
        timings_ms=analysis.timings.rounded(),
    )
