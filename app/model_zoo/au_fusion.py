"""The AU fusion (``MICROFACS_AU_MODEL=fused``): the AU detector's probabilities and MediaPipe's 52 blendshapes
-> one fused probability and decision per AU, trained with neutral faces as negatives (``python -m
training.fuse_au --export``; models/AU_DETECTOR.md). A logistic regression per AU, as one small ONNX graph."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from app.model_zoo.base import OnnxModel, Runtime


class AuFusion(OnnxModel):
    manifest_name = "au_fusion"

    def __init__(self, models_dir: Path, threads: int | Runtime = 1) -> None:
        super().__init__(models_dir, threads)
        extra = self.entry.extra
        self.classes: list[str] = list(extra["classes"])
        self.blendshapes: list[str] = list(extra["blendshapes"])
        self.thresholds = np.array([float(extra["thresholds"][a]) for a in self.classes], np.float32)

    def fuse(self, detector_probabilities: np.ndarray, blendshapes: Mapping[str, float]) -> np.ndarray:
        """(C,) detector probabilities (order = classes) and the face's blendshapes -> (C,) fused probabilities."""
        p = np.clip(np.asarray(detector_probabilities, np.float64), 1e-5, 1 - 1e-5)
        logits = np.log(p / (1 - p))
        features = np.concatenate([logits, [blendshapes[name] for name in self.blendshapes]]).astype(np.float32)
        (probabilities,) = self.run(features[None])
        return probabilities[0]
