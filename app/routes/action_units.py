"""POST /detect-au: the face stage, then our AU detector on every face that is not filtered."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from app.errors import request_id_of
from app.model_zoo.au_detector import ActionUnit
from app.pipeline import FaceAnalysis, FaceOptions, FacePipeline
from app.respond import box_out, face_out
from app.routes.deps import Upload, face_options, image_upload, pipeline_of
from app.schemas import ActionUnitOut, DetectActionUnitsResponse, FaceWithActionUnits, ImageInfo

router = APIRouter()


def action_unit_out(unit: ActionUnit, face: FaceAnalysis) -> ActionUnitOut:
    box = None if unit.box is None else box_out(face.aligned.box_to_image(unit.box))
    return ActionUnitOut(au=unit.au, name=unit.name, probability=round(min(max(unit.probability, 0.0), 1.0), 4),
                         present=unit.present, box=box)


@router.post("/detect-au", response_model=DetectActionUnitsResponse, tags=["analysis"])
def detect_action_units(
    request: Request,
    upload: Upload = Depends(image_upload),
    options: FaceOptions = Depends(face_options),
    landmarks: bool = Query(False, description="include the 468 mesh points of each face"),
    pipeline: FacePipeline = Depends(pipeline_of),
) -> DetectActionUnitsResponse:
    """Find faces and, for each face that passes the pre-filters, the FACS Action Units it shows: per AU a
    probability, a present/absent decision (per-AU threshold) and, when present, the AU's region box."""
    analysis = pipeline.analyze(upload.image, options, upload.timings)
    detector = pipeline.models.au
    faces = []
    for i, face in enumerate(analysis.faces):
        units = None
        if not face.filtered:
            with analysis.timings.stage("action_units"):
                units = [action_unit_out(u, face) for u in detector.predict(face.aligned)]
        faces.append(FaceWithActionUnits(**face_out(i, face, landmarks), action_units=units))
    return DetectActionUnitsResponse(
        request_id=request_id_of(request),
        image=ImageInfo(width=analysis.width, height=analysis.height),
        faces=faces,
        timings_ms=analysis.timings.rounded(),
    )
