"""Service settings, read from the environment (prefix ``MICROFACS_``)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MICROFACS_", env_file=None)

    models_dir: Path = REPO_ROOT / "models"
    onnx_threads: int = Field(1, ge=1, description="intra-op threads per ONNX session")

    # Upload limits, all checked before the image is decoded.
    max_upload_bytes: int = Field(15 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64)
    max_image_side: int = Field(12_000, ge=8)
    min_image_side: int = Field(16, ge=1)

    # Face stage.
    detection_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    landmark_presence_threshold: float = Field(0.5, ge=0.0, le=1.0)
    default_max_faces: int = Field(20, ge=1)
    max_faces_limit: int = Field(100, ge=1)
    default_min_face_size: int = Field(20, ge=0, description="pixels, shorter side of the face box")
    landmark_model: Literal["v1", "v2"] = Field(
        "v2", description="face stage landmarks: v2 = FaceLandmarker 478 points (irises), v1 = the 468-point mesh; "
        "with v1, blendshapes and gaze run v2 as well, per face"
    )

    # Pre-filters.
    side_face_max_yaw: float = Field(30.0, gt=0.0, le=90.0, description="degrees")
    side_face_max_pitch: float = Field(25.0, gt=0.0, le=90.0, description="degrees")
    occlusion_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="overrides the per-region thresholds in the manifest"
    )

    # The server.
    cors_origins: list[str] = []
    api_key: str | None = Field(None, description="when set, requests must send it in X-API-Key")


@lru_cache
def get_settings() -> Settings:
    return Settings()
