"""Per-region occlusion classifier: is each of eyes, nose, mouth, brows covered in an aligned face crop?

A small CNN trained on FER+ aligned crops with synthetic occluders (see models/OCCLUSION.md). It reads
the canonical crop of app/align.py, converted to grey and resized to the model's input side; the manifest
entry's optional ``preprocess`` (``Preprocess.parse``) can low-pass that input or add its mirror.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.align import AlignedFace, grey_input
from app.model_zoo.base import ModelError, OnnxModel, Runtime

REGIONS = ("eyes", "nose", "mouth", "brows")
UPSAMPLING = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
MIRROR = ("max", "mean")


@dataclass(frozen=True)
class Preprocess:
    """How the aligned crop becomes the network input. All off (the default): grey, ``cv2.INTER_AREA`` to the
    input side. ``blur``: Gaussian sigma on the grey crop first; ``via``: ``INTER_AREA`` down to via x via and
    back up (``up``: linear or cubic), a band limit; ``mirror``: the max or mean of the scores of the input and
    its left-right mirror (every region maps to itself)."""

    blur: float = 0.0
    via: int = 0
    up: str = "linear"
    mirror: str = ""

    @classmethod
    def parse(cls, spec: str) -> Preprocess:
        """``"via=48,up=cubic,blur=0.8,mirror=max"``; ``""``: the default."""
        try:
            fields = dict(item.split("=") for item in spec.replace(" ", "").split(",") if item)
            out = cls(blur=float(fields.pop("blur", 0.0)), via=int(fields.pop("via", 0)),
                      up=fields.pop("up", "linear"), mirror=fields.pop("mirror", ""))
        except ValueError as exc:
            raise ModelError(f"occlusion preprocess {spec!r}: {exc}") from None
        if fields or out.up not in UPSAMPLING or out.mirror not in ("", *MIRROR):
            raise ModelError(f"occlusion preprocess {spec!r}: expected blur=, via=, up=linear|cubic, mirror=max|mean")
        return out

    def __call__(self, crop: np.ndarray, size: int) -> np.ndarray:
        """(1 or 2 with ``mirror``, 1, size, size) float32 network input of one crop."""
        grey = grey_input(crop, crop.shape[0])
        if self.blur:
            grey = cv2.GaussianBlur(grey, (0, 0), self.blur)
        if self.via:
            grey = cv2.resize(grey_input(grey, self.via), (size, size), interpolation=UPSAMPLING[self.up])
        x = grey_input(grey, size).astype(np.float32)
        return np.stack([x, x[:, ::-1]] if self.mirror else [x])[:, None]


# settings.occlusion_model -> manifest entry: one network (the default), or the mean of four seeds of one recipe
# (fewer false flags on sharp photos, ~0.4 ms more a face: models/OCCLUSION.md, row ED)
OCCLUSION_MODELS = {"single": "occlusion", "ensemble": "occlusion_ensemble"}


class OcclusionClassifier(OnnxModel):
    manifest_name = "occlusion"

    def __init__(self, models_dir: Path, threads: int | Runtime = 1, name: str = "occlusion") -> None:
        self.manifest_name = name  # which manifest entry: "occlusion" or "occlusion_ensemble" (same contract)
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
        self.prep = Preprocess.parse(self.entry.extra.get("preprocess", ""))

    @property
    def thresholds(self) -> dict[str, float]:
        """Per-region decision thresholds from the manifest (probability >= threshold: occluded)."""
        return dict(self._thresholds)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return self.prep(image, self.size)

    def predict(self, aligned: AlignedFace) -> dict[str, float]:
        """Probability that each region is occluded, keyed by region name."""
        return self.predict_batch([aligned])[0]

    def predict_batch(self, faces: list[AlignedFace]) -> list[dict[str, float]]:
        """``predict`` for several faces, in one call when the graph allows."""
        if not faces:
            return []
        inputs = [self.preprocess(face.image) for face in faces]  # (1, or 2 with the mirror, 1, size, size) each
        probs = self.run_batch(np.ascontiguousarray(np.concatenate(inputs)))[0].reshape(len(faces), -1, len(REGIONS))
        probs = probs.max(1) if self.prep.mirror == "max" else probs.mean(1)  # one row a face unless mirrored
        return [{r: float(p) for r, p in zip(REGIONS, row)} for row in probs]
