"""The analysis endpoints: each runs the heads its entry in ``app.respond.ENDPOINTS`` chooses after the face stage
(``app.analyzer``), and answers that entry's response model. The work runs
in the app's analysis pool (``app.admission``), off the event loop."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from app.respond import ENDPOINTS
from app.routes.deps import IMAGE_BODY, AnalysisRequest, analysis_request

router = APIRouter(tags=["analysis"])


@router.post("/detect-faces", response_model=ENDPOINTS["/detect-faces"].model, openapi_extra=IMAGE_BODY)
async def detect_faces(job: AnalysisRequest = Depends(analysis_request)):
    """Find faces; landmarks, head pose, occlusion and the pre-filters for each."""
    return await job.run(heads=ENDPOINTS["/detect-faces"].heads)


@router.post("/detect-au", response_model=ENDPOINTS["/detect-au"].model, openapi_extra=IMAGE_BODY)
async def detect_action_units(job: AnalysisRequest = Depends(analysis_request)):
    """Find faces and, for each face that passes the pre-filters, the FACS Action Units it shows: per AU a
    probability, a present/absent decision (per-AU threshold) and, when present, the AU's region box."""
    return await job.run(heads=ENDPOINTS["/detect-au"].heads)


@router.post("/recognize-expression", response_model=ENDPOINTS["/recognize-expression"].model, openapi_extra=IMAGE_BODY)
async def recognize_expression(job: AnalysisRequest = Depends(analysis_request)):
    """Find faces and, for each face that passes the pre-filters, the facial expression it appears to show
    (8 FER+ classes: calibrated probabilities, the top label, and an ``uncertain`` flag when the face is
    unlike the faces the model learnt from). This describes the face's appearance, not what anyone feels."""
    return await job.run(heads=ENDPOINTS["/recognize-expression"].heads)


@router.post("/analyze", response_model=ENDPOINTS["/analyze"].model, openapi_extra=IMAGE_BODY)
async def analyze(job: AnalysisRequest = Depends(analysis_request)):
    """Everything in one call (one decode, one face stage): faces with both their Action Units and the
    expression they appear to show. Filtered faces carry null for both."""
    return await job.run(heads=ENDPOINTS["/analyze"].heads)
