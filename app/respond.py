"""Response stage: the analyzer's results -> the pydantic shapes of app/schemas.py. Formatting only: every
network has already run (``app.analyzer``), and AU boxes are already in image pixels (``app.heads``).

The response type follows from the heads that ran: none = /detect-faces, ``au`` = /detect-au,
``expression`` = /recognize-expression, both = /analyze; ``blendshapes`` and ``gaze`` add their opt-in field
to any of them. A face the pre-filters excluded carries ``null`` for each head that was asked for.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from app.gaze import Gaze
from app.model_zoo.au_detector import ActionUnit
from app.model_zoo.expression import ExpressionResult
from app.reference import Reference
from app.schemas import (
    ActionUnitOut,
    AnalysisResponse,
    AnalyzeResponse,
    Box,
    DetectActionUnitsResponse,
    DetectFacesResponse,
    ExpressionOut,
    GazeAngles,
    GazeOut,
    ImageInfo,
    Occlusion,
    Pose,
    RecognizeExpressionResponse,
    ReferenceOut,
)

if TYPE_CHECKING:
    from app.analyzer import FaceAnalysis, ImageAnalysis

RESPONSE_MODELS: dict[frozenset[str], type[AnalysisResponse[Any]]] = {
    frozenset(): DetectFacesResponse,
    frozenset({"au"}): DetectActionUnitsResponse,
    frozenset({"expression"}): RecognizeExpressionResponse,
    frozenset({"au", "expression"}): AnalyzeResponse,
}


def unit_interval(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 4)


def box_out(box: np.ndarray) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Box(x=round(x0, 2), y=round(y0, 2), width=round(x1 - x0, 2), height=round(y1 - y0, 2))


def action_units_out(units: list[ActionUnit]) -> list[ActionUnitOut]:
    out = []
    for u in units:
        fields: dict = {"au": u.au, "name": u.name, "probability": unit_interval(u.probability), "present": u.present,
                        "box": None if u.box is None else box_out(u.box)}
        if u.activation is not None:  # only with the blendshapes: otherwise the field is left out
            fields["activation"] = unit_interval(u.activation)
        if u.absolute_probability is not None:  # only with a reference
            fields["absolute_probability"] = unit_interval(u.absolute_probability)
            fields["absolute_present"] = bool(u.absolute_present)
        out.append(ActionUnitOut(**fields))
    return out


def expression_out(result: ExpressionResult) -> ExpressionOut:
    fields: dict[str, Any] = dict(
        label=result.label,
        confidence=unit_interval(result.confidence),
        scores={k: unit_interval(v) for k, v in result.scores.items()},
        uncertain=result.uncertain,
    )
    if result.reference:  # only with a reference: otherwise the fields are left out
        fields["reference"] = True
        fields["absolute"] = expression_out(result.absolute) if result.absolute is not None else None
    return ExpressionOut(**fields)


def reference_out(reference: Reference, reading: ExpressionResult) -> ReferenceOut:
    return ReferenceOut(source="person" if reference.person_id else "upload", person_id=reference.person_id,
                        faces=reference.faces, expression=expression_out(reading), warnings=list(reference.warnings))


def blendshapes_out(scores: dict[str, float]) -> dict[str, float]:
    return {name: unit_interval(v) for name, v in scores.items()}


def gaze_out(result: Gaze) -> GazeOut:
    def angles(a) -> GazeAngles:
        return GazeAngles(yaw=round(a.yaw, 2), pitch=round(a.pitch, 2))

    return GazeOut(right=angles(result.right), left=angles(result.left), combined=angles(result.combined))


# Head name -> (response field, formatter of the head's result).
FORMATTERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "au": ("action_units", action_units_out),
    "expression": ("expression", expression_out),
    "blendshapes": ("blendshapes", blendshapes_out),
    "gaze": ("gaze", gaze_out),
}
# Heads that choose the response type (the others add an opt-in field to any of them).
TYPED_HEADS = frozenset({"au", "expression"})


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
        key, formatter = FORMATTERS[name]
        fields[key] = None if face.filtered else formatter(face.outputs[name])
    return fields


def analysis_response(request_id: str, analysis: ImageAnalysis, include_landmarks: bool) -> AnalysisResponse[Any]:
    model = RESPONSE_MODELS[frozenset(analysis.heads) & TYPED_HEADS]
    fields: dict[str, Any] = dict(
        request_id=request_id,
        image=ImageInfo(width=analysis.width, height=analysis.height),
        faces=[face_out(i, face, analysis.heads, include_landmarks) for i, face in enumerate(analysis.faces)],
        timings_ms=analysis.timings.rounded(),
    )
    if analysis.reference is not None and analysis.reference_reading is not None:
        fields["reference"] = reference_out(analysis.reference, analysis.reference_reading)
    return model(**fields)
