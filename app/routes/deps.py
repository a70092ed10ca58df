"""What every analysis endpoint takes: the upload, the face-stage options, the pipeline."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi import Depends, File, Query, Request, UploadFile

from app.decode import ImageLimits, decode_image
from app.errors import ApiError, request_id_of
from app.pipeline import FaceOptions, FacePipeline, ImageAnalysis, Timings
from app.settings import Settings, get_settings


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def pipeline_of(request: Request) -> FacePipeline:
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None:
        raise ApiError(503, "not_ready", "models are still loading; retry shortly")
    return pipeline


def limits_of(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        min_side=settings.min_image_side,
    )


@dataclass
class Upload:
    image: np.ndarray
    timings: Timings


def image_upload(
    request: Request,
    file: UploadFile = File(description="the image: JPEG, PNG, WebP or BMP"),
    settings: Settings = Depends(settings_of),
) -> Upload:
    timings = Timings()
    with timings.stage("decode"):
        data = file.file.read(settings.max_upload_bytes + 1)
        image = decode_image(data, limits_of(settings))
    request.state.image = image  # for ?render=true (app/render_http.py)
    return Upload(image=image, timings=timings)


_defaults = get_settings()


def face_options(
    side_face_filter: bool = Query(True, description="mark faces whose |yaw| or |pitch| exceed the thresholds"),
    occlusion_filter: bool = Query(True, description="mark faces with an occluded region"),
    max_faces: int = Query(_defaults.default_max_faces, ge=1, le=_defaults.max_faces_limit),
    min_face_size: int = Query(_defaults.default_min_face_size, ge=0, le=10_000, description="pixels"),
    face_crop: bool = Query(False, description="the upload is one cropped face: skip detection"),
    settings: Settings = Depends(settings_of),
) -> FaceOptions:
    if max_faces > settings.max_faces_limit:
        raise ApiError(422, "invalid_request", f"max_faces: at most {settings.max_faces_limit}")
    return FaceOptions(side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop)


@dataclass
class AnalysedUpload:
    """An upload after the face stage: what every analysis route answers from."""

    request_id: str
    analysis: ImageAnalysis
    include_landmarks: bool
    pipeline: FacePipeline


def analysed_upload(
    request: Request,
    upload: Upload = Depends(image_upload),
    options: FaceOptions = Depends(face_options),
    landmarks: bool = Query(False, description="include the 468 mesh points of each face"),
    pipeline: FacePipeline = Depends(pipeline_of),
) -> AnalysedUpload:
    analysis = pipeline.analyze(upload.image, options, upload.timings)
    return AnalysedUpload(request_id_of(request), analysis, landmarks, pipeline)


def require_api_key(request: Request, settings: Settings = Depends(settings_of)) -> None:
    if settings.api_key and request.headers.get("x-api-key") != settings.api_key:
        raise ApiError(401, "unauthorized", "send a valid API key in the X-API-Key header")
