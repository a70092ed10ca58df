"""The analysis endpoints: the face stage, then per-face networks on the faces not filtered."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from app.errors import request_id_of
from app.pipeline import FaceOptions, FacePipeline
from app.respond import action_units_out, analysis_response, expression_out
from app.routes.deps import Upload, face_options, image_upload, pipeline_of
from app.schemas import AnalyzeResponse, DetectActionUnitsResponse, DetectFacesResponse, RecognizeExpressionResponse

router = APIRouter(tags=["analysis"])

LANDMARKS = Query(False, description="include the 468 mesh points of each face")


def action_units_of(pipeline: FacePipeline):
    return lambda face: action_units_out(pipeline.models.au.predict(face.aligned), face)


def expression_of(pipeline: FacePipeline):
    return lambda face: expression_out(pipeline.models.expression.predict(face.aligned))


@router.post("/detect-faces", response_model=DetectFacesResponse)
def detect_faces(
    request: Request,
    upload: Upload = Depends(image_upload),
    options: FaceOptions = Depends(face_options),
    landmarks: bool = LANDMARKS,
    pipeline: FacePipeline = Depends(pipeline_of),
) -> DetectFacesResponse:
    """Find faces; landmarks, head pose, occlusion and the pre-filters for each."""
    analysis = pipeline.analyze(upload.image, options, upload.timings)
    return analysis_response(DetectFacesResponse, request_id_of(request), analysis, landmarks)


@router.post("/detect-au", response_model=DetectActionUnitsResponse)
def detect_action_units(
    request: Request,
    upload: Upload = Depends(image_upload),
    options: FaceOptions = Depends(face_options),
    landmarks: bool = LANDMARKS,
    pipeline: FacePipeline = Depends(pipeline_of),
) -> DetectActionUnitsResponse:
    """Find faces and, for each face that passes the pre-filters, the FACS Action Units it shows: per AU a
    probability, a present/absent decision (per-AU threshold) and, when present, the AU's region box."""
    analysis = pipeline.analyze(upload.image, options, upload.timings)
    return analysis_response(
        DetectActionUnitsResponse, request_id_of(request), analysis, landmarks, action_units=action_units_of(pipeline)
    )


@router.post("/recognize-expression", response_model=RecognizeExpressionResponse)
def recognize_expression(
    request: Request,
    upload: Upload = Depends(image_upload),
    options: FaceOptions = Depends(face_options),
    landmarks: bool = LANDMARKS,
    pipeline: FacePipeline = Depends(pipeline_of),
) -> RecognizeExpressionResponse:
    """Find faces and, for each face that passes the pre-filters, the facial expression it appears to show
    (8 FER+ classes: calibrated probabilities, the top label, and an ``uncertain`` flag when the face is
    unlike the faces the model learnt from). This describes the face's appearance, not what anyone feels."""
    analysis = pipeline.analyze(upload.image, options, upload.timings)
    return analysis_response(
        RecognizeExpressionResponse, request_id_of(request), analysis, landmarks, expression=expression_of(pipeline)
    )


@router.post("/analyze", response_model=AnalyzeResponse)
def analyze(
    request: Request,
    upload: Upload = Depends(image_upload),
    options: FaceOptions = Depends(face_options),
    landmarks: bool = LANDMARKS,
    pipeline: FacePipeline = Depends(pipeline_of),
) -> AnalyzeResponse:
    """Everything in one call (one decode, one face stage): faces with both their Action Units and the
    expression they appear to show. Filtered faces carry null for both."""
    analysis = pipeline.analyze(upload.image, options, upload.timings)
    return analysis_response(
        AnalyzeResponse,
        request_id_of(request),
        analysis,
        landmarks,
        action_units=action_units_of(pipeline),
        expression=expression_of(pipeline),
    )


