"""The face stage as one call: detect -> landmarks -> pose -> align -> occlusion -> filters.

Routes call ``FacePipeline.analyze`` and then run the AU or expression network on each face that is
not filtered, reusing the aligned crop made here.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from app.align import AlignedFace, align_face
from app.detect import FaceDetector
from app.filters import OcclusionVerdict, filter_reasons
from app.landmarks import LandmarkStage
from app.model_zoo.blazeface import Detection
from app.pose import HeadPose, head_pose
from app.registry import ModelRegistry
from app.settings import Settings


@dataclass(frozen=True)
class FaceOptions:
    side_face_filter: bool = True
    occlusion_filter: bool = True
    max_faces: int = 20
    min_face_size: int = 20
    face_crop: bool = False


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
    width: int
    height: int
    faces: list[FaceAnalysis]
    timings: Timings


class FacePipeline:
    def __init__(self, models: ModelRegistry, settings: Settings) -> None:
        self.models = models
        self.settings = settings
        self.detector = FaceDetector(models.full_range, models.short_range)
        self.landmarks = LandmarkStage(models.mesh)
        thresholds = models.occlusion.thresholds
        if settings.occlusion_threshold is not None:  # one setting overrides every region's threshold
            thresholds = {region: settings.occlusion_threshold for region in thresholds}
        self.occlusion_thresholds = thresholds

    def analyze(self, image: np.ndarray, options: FaceOptions, timings: Timings | None = None) -> ImageAnalysis:
        timings = timings or Timings()
        h, w = image.shape[:2]
        if options.face_crop:
            detections = [None]
        else:
            with timings.stage("detect"):
                detections = self.detector.detect(
                    image, self.settings.detection_threshold, options.min_face_size, options.max_faces
                )
        faces = [self._analyze_face(image, detection, options, timings) for detection in detections]
        return ImageAnalysis(width=w, height=h, faces=faces, timings=timings)

    def _analyze_face(
        self, image: np.ndarray, detection: Detection | None, options: FaceOptions, timings: Timings
    ) -> FaceAnalysis:
        with timings.stage("landmarks"):
            if detection is None:
                mesh = self.landmarks.from_face_crop(image)
            else:
                mesh = self.landmarks.from_detection(image, detection.box, detection.keypoints)
        with timings.stage("pose"):
            pose = head_pose(mesh.landmarks)
        with timings.stage("align"):
            aligned = align_face(image, mesh.landmarks)
        with timings.stage("occlusion"):
            scores = self.models.occlusion.predict(aligned)
            occlusion = OcclusionVerdict(scores=scores, thresholds=self.occlusion_thresholds)
        reasons = filter_reasons(
            pose,
            occlusion,
            mesh.presence,
            side_face_filter=options.side_face_filter,
            occlusion_filter=options.occlusion_filter,
            max_yaw=self.settings.side_face_max_yaw,
            max_pitch=self.settings.side_face_max_pitch,
            min_landmark_confidence=self.settings.landmark_presence_threshold,
        )
        if detection is None:
            h, w = image.shape[:2]
            box, confidence = np.array([0.0, 0.0, w, h]), mesh.presence
        else:
            box, confidence = detection.box, detection.score
        return FaceAnalysis(
            box=box,
            confidence=float(confidence),
            landmarks=mesh.landmarks,
            landmark_confidence=mesh.presence,
            pose=pose,
            aligned=aligned,
            occlusion=occlusion,
            filter_reasons=reasons,
        )
