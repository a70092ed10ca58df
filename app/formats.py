"""Formatting of the heads' results and of the face stage's values into the pydantic shapes of app/schemas.py:
rounding, clipping to [0, 1], boxes as x/y/width/height. Each head's formatter is named in its registry entry
(``app.heads.SPECS``); the response stage (app/respond.py) and the video path use these too."""
from __future__ import annotations

from typing import Any

import numpy as np

from app.gaze import Gaze
from app.gaze import GazeAngles as Angles
from app.model_zoo.au_detector import ActionUnit
from app.model_zoo.expression import ExpressionResult
from app.reference import Reference
from app.schemas import ActionUnitOut, Box, ExpressionOut, GazeAngles, GazeOut, ReferenceOut


def unit_interval(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 4)


def box_out(box: np.ndarray) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Box(x=round(x0, 2), y=round(y0, 2), width=round(x1 - x0, 2), height=round(y1 - y0, 2))


def action_units_out(units: list[ActionUnit]) -> list[ActionUnitOut]:
    out = []
    for u in units:
        fields: dict[str, Any] = {"au": u.au, "name": u.name, "probability": unit_interval(u.probability),
                                  "present": u.present, "box": None if u.box is None else box_out(u.box)}
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
    def angles(a: Angles) -> GazeAngles:
        return GazeAngles(yaw=round(a.yaw, 2), pitch=round(a.pitch, 2))

    return GazeOut(right=angles(result.right), left=angles(result.left), combined=angles(result.combined))
