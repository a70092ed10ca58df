"""The analysis endpoints: each chooses which heads run after the face stage (``app.analyzer``). The work runs
in the app's analysis pool (``app.admission``), off the event loop."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from app.routes.deps import IMAGE_BODY, AnalysisRequest, analysis_request
from app.schemas import AnalyzeResponse, DetectActionUnitsResponse, DetectFacesResponse, RecognizeExpressionResponse

router = APIRouter(tags=["analysis"])


@router.post("/detect-faces", response_model=DetectFacesResponse, openapi_extra=IMAGE_BODY)
async def detect_faces(job: AnalysisRequest = Depends(analysis_request)):
    """Find faces; landmarks, head pose, occlusion and the pre-filters for each."""
    return await job.run(heads=())


@router.post("/detect-au", response_model=DetectActionUnitsResponse, openapi_extra=IMAGE_BODY)
async def detect_action_units(job: AnalysisRequest = Depends(analysis_request)):
    """Find faces and, for each face that passes the pre-filters, the FACS Action Units it shows: per AU a
    probability, a present/absent decision (per-AU threshold) and, when present, the AU's region box."""
    return await job.run(heads={"au"})


@router.post("/recognize-expression", response_model=RecognizeExpressionResponse, openapi_extra=IMAGE_BODY)
async def recognize_expression(job: AnalysisRequest = Depends(analysis_request)):
    """Find faces and, for each face that passes the pre-filters, the facial expression it appears to show
    (8 FER+ classes: calibrated probabilities, the top label, and an ``uncertain`` flag when the face is
    unlike the faces the model learnt from). This describes the face's appearance, not what anyone feels."""
    return await job.run(heads={"expression"})


@router.post("/analyze", response_model=AnalyzeResponse, openapi_extra=IMAGE_BODY)
async def analyze(job: AnalysisRequest = Depends(analysis_request)):
    """Everything in one call (one decode, one face stage): faces with both their Action Units and the
    expression they appear to show. Filtered faces carry null for both."""
    return await job.run(heads={"au", "expression"})
