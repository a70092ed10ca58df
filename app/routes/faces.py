from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from app.errors import request_id_of
from app.pipeline import FaceOptions, FacePipeline
from app.respond import detect_faces_response
from app.routes.deps import Upload, face_options, image_upload, pipeline_of
from app.schemas import DetectFacesResponse

router = APIRouter()


@router.post("/detect-faces", response_model=DetectFacesResponse, tags=["analysis"])
def detect_faces(
    request: Request,
    upload: Upload = Depends(image_upload),
    options: FaceOptions = Depends(face_options),
    landmarks: bool = Query(False, description="include the 468 mesh points of each face"),
    pipeline: FacePipeline = Depends(pipeline_of),
) -> DetectFacesResponse:
    """Find faces; landmarks, head pose, occlusion and the pre-filters for each."""
    analysis = pipeline.analyze(upload.image, options, upload.timings)
    return detect_faces_response(request_id_of(request), analysis, landmarks)
