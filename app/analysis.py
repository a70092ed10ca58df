"""The analysis's data types: per-call options, one face's and one image's results, the stage timings. The
analyzer (app/analyzer.py) fills them, the heads (app/heads.py) read them, the response stage (app/respond.py)
formats them; they import none of those."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.align import AlignedFace
from app.filters import OcclusionVerdict
from app.model_zoo.expression import ExpressionResult
from app.pose import HeadPose
from app.reference import Reference

ImageSource = str | Path | bytes | np.ndarray


@dataclass(frozen=True)
class FaceOptions:
    """Per-call options (the analysis endpoints' query parameters): the face stage's, and the heads'."""

    side_face_filter: bool = True
    occlusion_filter: bool = True
    max_faces: int = 20
    min_face_size: int = 20
    face_crop: bool = False
    expression_prior: str = "balanced"  # the expression head's class prior: "balanced" or "ferplus"
    # the person's neutral face: the AU and expression heads read each face relative to it (app/reference.py)
    reference: Reference | None = field(default=None, compare=False)


@dataclass
class FaceAnalysis:
    box: np.ndarray  # x0, y0, x1, y1, image pixels
    confidence: float
    landmarks: np.ndarray  # (468, 3), image pixels
    landmark_confidence: float
    pose: HeadPose
    aligned: AlignedFace
    occlusion: OcclusionVerdict
    filter_reasons: list[str]
    outputs: dict[str, Any] = field(default_factory=dict)  # head name -> its result; empty when filtered
    # (478, 3) FaceLandmarker v2 points, image pixels: the face stage's own with landmarks v2 (then
    # landmarks == landmarks_v2[:468]); with v1, filled only for the heads that need them (blendshapes, gaze)
    landmarks_v2: np.ndarray | None = None

    @property
    def irises(self) -> np.ndarray | None:
        """(10, 3): the subject's right iris (centre + 4 contour points), then the left; None without v2."""
        return None if self.landmarks_v2 is None else self.landmarks_v2[468:]

    @property
    def filtered(self) -> bool:
        return bool(self.filter_reasons)


@dataclass
class Timings:
    ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - start) * 1000.0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.ms.items()}


@dataclass
class ImageAnalysis:
    image: np.ndarray  # the decoded BGR image the faces were found in
    faces: list[FaceAnalysis]
    heads: tuple[str, ...]  # the heads that were asked for (each unfiltered face has their outputs)
    timings: Timings
    reference: Reference | None = None  # the reference the heads read the faces against, if any
    reference_reading: ExpressionResult | None = None  # the reference's own absolute reading (call's prior)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])
