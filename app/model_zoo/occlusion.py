"""Per-region occlusion classifier: is each of eyes, nose, mouth, brows covered in an aligned face crop?

A small CNN trained on FER+ aligned crops with synthetic occluders (see models/OCCLUSION.md). It reads
the canonical crop of app/align.py, converted to grey and resized to the model's input side.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from app.align import AlignedFace, grey_input
from app.model_zoo.base import ModelError, OnnxModel

REGIONS = ("eyes", "nose", "mouth", "brows")


class OcclusionClassifier(OnnxModel):
    manifest_name = "occlusion"

    def __init__(self, models_dir: Path, threads: int = 1) -> None:
        super().__init__(models_dir, threads)
        self.size = int(self.input_shape[2])
        classes = tuple(self.entry.extra.get("classes", REGIONS))
        if classes != REGIONS:
            raise ModelError(f"occlusion model classes {classes} are not {REGIONS}")
        raw = self.entry.extra.get("thresholds", {})
        missing = [r for r in REGIONS if r not in raw]
        if missing:
            raise ModelError(f"occlusion manifest entry has no threshold for {missing}")
        self._thresholds = {r: float(raw[r]) for r in REGIONS}

    @property
    def thresholds(self) -> dict[str, float]:
        """Per-region decision thresholds from the manifest (probability >= threshold: occluded)."""
        return dict(self._thresholds)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return grey_input(image, self.size).astype(np.float32)[None, None]

    def predict(self, aligned: AlignedFace) -> dict[str, float]:
        """Probability that each region is occluded, keyed by region name."""
        probs = self.run(self.preprocess(aligned.image))[0].reshape(-1)
        return {r: float(p) for r, p in zip(REGIONS, probs)}
