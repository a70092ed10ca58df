"""The analysis endpoints: the face stage, then per-face networks on the faces not filtered."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from app.pipeline import FacePipeline
from app.respond import PerFace, Response, action_units_out, analysis_response, expression_out
from app.routes.deps import AnalysedUpload, analysed_upload
from app.schemas import AnalyzeResponse, DetectActionUnitsResponse, DetectFacesResponse, RecognizeExpressionResponse

router = APIRouter(tags=["analysis"])


def action_units_of(pipeline: FacePipeline) -> PerFace:
    return lambda face: action_units_out(pipeline.models.au.predict(face.aligned), face)


def expression_of(pipeline: FacePipeline) -> PerFace:
    return lambda face: expression_out(pipeline.models.expression.predict(face.aligned))


def respond(model: type[Response], job: AnalysedUpload, **per_face: PerFace) -> Response:
    return analysis_response(model, job.request_id, job.analysis, job.include_landmarks, **per_face)


@router.post("/detect-faces", response_model=DetectFacesResponse)
def detect_faces(job: AnalysedUpload = Depends(analysed_upload)) -> DetectFacesResponse:
    """Find faces; landmarks, head pose, occlusion and the pre-filters for each."""
    return respond(DetectFacesResponse, job)


@router.post("/detect-au", response_model=DetectActionUnitsResponse)
def detect_action_units(job: AnalysedUpload = Depends(analysed_upload)) -> DetectActionUnitsResponse:
    """Find faces and, for each face that passes the pre-filters, the FACS Action Units it shows: per AU a
    probability, a present/absent decision (per-AU threshold) and, when present, the AU's region box."""
    return respond(DetectActionUnitsResponse, job, action_units=action_units_of(job.pipeline))


@router.post("/recognize-expression", response_model=RecognizeExpressionResponse)
def recognize_expression(job: AnalysedUpload = Depends(analysed_upload)) -> RecognizeExpressionResponse:
    """Find faces and, for each face that passes the pre-filters, the facial expression it appears to show
    (8 FER+ classes: calibrated probabilities, the top label, and an ``uncertain`` flag when the face is
    unlike the faces the model learnt from). This describes the face's appearance, not what anyone feels."""
    return respond(RecognizeExpressionResponse, job, expression=expression_of(job.pipeline))


@router.post("/analyze", response_model=AnalyzeResponse)
def analyze(job: AnalysedUpload = Depends(analysed_upload)) -> AnalyzeResponse:
    """Everything in one call (one decode, one face stage): faces with both their Action Units and the
    expression they appear to show. Filtered faces carry null for both."""
    return respond(
        AnalyzeResponse, job, action_units=action_units_of(job.pipeline), expression=expression_of(job.pipeline)
    )
