"""Every JSON shape the API returns, in one place."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Box(BaseModel):
    x: float = Field(description="left edge, pixels of the original (EXIF-rotated) image")
    y: float = Field(description="top edge, pixels")
    width: float
    height: float


class Pose(BaseModel):
    yaw: float = Field(description="degrees; > 0 when the face turns towards the image's right (subject's left)")
    pitch: float = Field(description="degrees; > 0 when the face tilts up")
    roll: float = Field(description="degrees; > 0 when the head leans clockwise in the image")


class Occlusion(BaseModel):
    occluded: bool
    regions: dict[str, bool] = Field(description="per region (eyes, nose, mouth, brows): occluded or not")
    scores: dict[str, float] = Field(description="per region: the classifier's probability of occlusion")
    thresholds: dict[str, float] = Field(description="per region: the probability above which it counts as occluded")


class Face(BaseModel):
    face_id: int = Field(description="index in this response, largest face first")
    box: Box
    confidence: float = Field(ge=0.0, le=1.0, description="face detector score (face_crop: face-mesh presence)")
    landmark_confidence: float = Field(ge=0.0, le=1.0, description="face-mesh presence score")
    pose: Pose
    occlusion: Occlusion
    filtered: bool = Field(description="true when a pre-filter (or an unusable mesh) excludes the face from analysis")
    filter_reasons: list[str] = Field(description="side_face, occluded, low_landmark_confidence")
    landmarks: list[list[float]] | None = Field(
        None, description="468 x (x, y, z) mesh points in image pixels, with ?landmarks=true"
    )


class ImageInfo(BaseModel):
    width: int
    height: int


class DetectFacesResponse(BaseModel):
    request_id: str
    image: ImageInfo
    faces: list[Face]
    timings_ms: dict[str, float]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: dict[str, str]


class ModelInfo(BaseModel):
    version: str
    sha256: str
    licence: str


class Limits(BaseModel):
    max_upload_bytes: int
    max_image_pixels: int
    max_image_side: int
    min_image_side: int
    formats: list[str]
    max_faces: int


class VersionResponse(BaseModel):
    service: str
    version: str
    models: dict[str, ModelInfo]
    limits: Limits
