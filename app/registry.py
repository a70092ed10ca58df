"""Loads every ONNX model the service uses, once, and warms it up: those of the settings' profile only
(app/profiles.py). In the open profile the research-only models are never opened: their attributes are None."""
from __future__ import annotations

import threading
from typing import TypeVar

from app.model_zoo.au_detector import AuDetector
from app.model_zoo.au_fusion import AuFusion
from app.model_zoo.base import ModelError, OnnxModel
from app.model_zoo.blazeface import BlazeFaceFullRange, BlazeFaceShortRange
from app.model_zoo.expression import ExpressionRecognizer
from app.model_zoo.face_identity import FaceIdentity
from app.model_zoo.face_landmarker import FaceBlendshapes, FaceLandmarker
from app.model_zoo.face_mesh import FaceMesh
from app.model_zoo.occlusion import OCCLUSION_MODELS, OcclusionClassifier
from app.profiles import entry_profiles
from app.providers import Runtime
from app.settings import Settings

T = TypeVar("T")


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        # threads: the sessions' runtime (intra-op threads and MICROFACS_PROVIDERS' execution providers)
        models_dir, threads = settings.models_dir, Runtime.resolve(settings.providers, settings.onnx_threads)
        self.runtime = threads
        self.profile = settings.profile
        self.full_range = BlazeFaceFullRange(models_dir, threads)
        self.short_range = BlazeFaceShortRange(models_dir, threads)
        self.mesh = FaceMesh(models_dir, threads)  # landmarks v1 (settings.landmark_model = "v1")
        self.landmarker = FaceLandmarker(models_dir, threads)  # landmarks v2: 478 points with irises
        self.blendshapes = FaceBlendshapes(models_dir, threads)
        # Research-only models (FER2013 / CK+ training data): None in the open profile, their files never opened.
        self.occlusion: OcclusionClassifier | None = None
        self.expression: ExpressionRecognizer | None = None
        self.au: AuDetector | None = None
        self.au_fusion: AuFusion | None = None
        if self.profile == "research":
            self.occlusion = OcclusionClassifier(models_dir, threads, OCCLUSION_MODELS[settings.occlusion_model])
            self.expression = ExpressionRecognizer(models_dir, threads)
            self.au = AuDetector(models_dir, threads)
            # only with settings.au_model = "fused" (its manifest entry is written by training.fuse_au --export)
            self.au_fusion = AuFusion(models_dir, threads) if settings.au_model == "fused" else None
        for model in self.loaded().values():
            self._check_profile(model)
        # the face identity model: not loaded here (only the automatic neutral baseline needs it); identity()
        self._identity_args = (models_dir, threads)
        self._identity: FaceIdentity | None = None
        self._identity_lock = threading.Lock()

    def _check_profile(self, model: OnnxModel) -> None:
        """A model whose manifest entry does not list this profile is refused (it may not be loaded here)."""
        if self.profile not in entry_profiles(model.entry.extra):
            raise ModelError(f"{model.entry.file} is not part of the {self.profile} profile (its manifest entry's "
                             f"profiles: {entry_profiles(model.entry.extra)})")

    def require(self, model: T | None, name: str) -> T:
        """``model``, or a ModelError saying that ``name`` is not loaded in this profile."""
        if model is None:
            raise ModelError(f"the {name} is not loaded in the {self.profile} profile (MICROFACS_PROFILE)")
        return model

    def identity(self) -> FaceIdentity:
        """The face identity model (app/model_zoo/face_identity.py), loaded on the first call, then kept.
        ModelError if its file is missing or does not match the manifest, or in the open profile (VGGFace2's
        terms are unclear: models/OPEN_PROFILE.md)."""
        if self.profile != "research":
            raise ModelError("the face identity model is not part of the open profile (trained on VGGFace2, whose "
                             "terms do not clearly allow commercial use): name each file's person instead")
        with self._identity_lock:
            if self._identity is None:
                self._identity = FaceIdentity(*self._identity_args)
                self._check_profile(self._identity)
            return self._identity

    def loaded(self) -> dict[str, OnnxModel]:
        return {m.entry.name: m for m in vars(self).values() if isinstance(m, OnnxModel)}

    def providers(self) -> dict[str, str]:
        """Model name -> the execution provider its session runs on (the identity model once loaded)."""
        return {name: model.provider for name, model in self.loaded().items()}

    def warm_up(self) -> None:
        for model in self.loaded().values():
            model.warm_up()
