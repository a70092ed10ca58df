"""Response stage: the analyzer's results -> the pydantic shapes of app/schemas.py. Formatting only: every
network has already run (``app.analyzer``), and AU boxes are already in image pixels (``app.heads``).

The response type follows from the heads that ran (``ENDPOINTS``: none = /detect-faces, ``au`` = /detect-au,
``expression`` = /recognize-expression, both = /analyze); the opt-in heads (``app.heads.SPECS``) add their field
to any of them. A face the pre-filters excluded carries ``null`` for each head that was asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.analysis import FaceAnalysis, ImageAnalysis
from app.formats import (
    action_units_out,
    blendshapes_out,
    box_out,
    expression_out,
    gaze_out,
    reference_out,
    unit_interval,
)
from app.heads import SPECS, TYPED
from app.schemas import (
    AnalysisResponse,
    AnalyzeResponse,
    DetectActionUnitsResponse,
    DetectFacesResponse,
    ImageInfo,
    Occlusion,
    Pose,
    RecognizeExpressionResponse,
)

__all__ = ["ENDPOINTS", "RESPONSE_MODELS", "Endpoint", "action_units_out", "analysis_response", "blendshapes_out",
           "box_out", "expression_out", "face_out", "gaze_out", "reference_out", "unit_interval"]


@dataclass(frozen=True)
class Endpoint:
    """An image analysis endpoint: its path, the heads it chooses (the opt-in heads add to any), its response."""

    path: str
    heads: frozenset[str]
    model: type[AnalysisResponse[Any]]

    @property
    def name(self) -> str:  # the SDK's and the CLI's name for it: detect_au
        return self.path.strip("/").replace("-", "_")


ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (
    Endpoint("/detect-faces", frozenset(), DetectFacesResponse),
    Endpoint("/detect-au", frozenset({"au"}), DetectActionUnitsResponse),
    Endpoint("/recognize-expression", frozenset({"expression"}), RecognizeExpressionResponse),
    Endpoint("/analyze", frozenset({"au", "expression"}), AnalyzeResponse),
)}
# The response type follows from the endpoint-chosen heads that ran.
RESPONSE_MODELS: dict[frozenset[str], type[AnalysisResponse[Any]]] = {e.heads: e.model for e in ENDPOINTS.values()}


def face_out(face_id: int, face: FaceAnalysis, heads: tuple[str, ...], include_landmarks: bool) -> dict[str, Any]:
    verdict = face.occlusion
    fields: dict[str, Any] = dict(
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
    for name in heads:
        spec = SPECS[name]
        fields[spec.field] = None if face.filtered else spec.format(face.outputs[name])
    return fields


def analysis_response(request_id: str, analysis: ImageAnalysis, include_landmarks: bool) -> AnalysisResponse[Any]:
    model = RESPONSE_MODELS[frozenset(analysis.heads) & TYPED]
    fields: dict[str, Any] = dict(
        request_id=request_id,
        image=ImageInfo(width=analysis.width, height=analysis.height),
        faces=[face_out(i, face, analysis.heads, include_landmarks) for i, face in enumerate(analysis.faces)],
        timings_ms=analysis.timings.rounded(),
    )
    if analysis.reference is not None and analysis.reference_reading is not None:
        fields["reference"] = reference_out(analysis.reference, analysis.reference_reading)
    return model(**fields)
