"""Expression recogniser: 8 FER+ expression classes from the aligned face crop, plus an embedding.

The network (training/expression_model.py, trained with statistically screened triplets, see
models/EXPRESSION.md) reads the 112x112 aligned crop converted to grey and resized to 48x48 with
cv2.INTER_AREA, scaled to [0, 1]. Its ONNX file reads each face and its mirror image and returns
calibrated probabilities (the two views averaged, temperature baked in) and the L2-normalised
embedding. A face whose embedding lies farther from every class prototype than the manifest's
threshold is flagged ``uncertain``: the network has seen few faces like it.

Class prior (``prior``): the network learnt FER+'s label frequencies (36 % neutral, 0.7 % disgust). With
``prior="ferplus"`` the scores are the network's own; with ``prior="balanced"`` they are re-weighted to a
uniform prior over the classes: p_bal(c) ∝ p(c)^k / π(c), π = FER+ Train majority-label frequencies and k a
temperature ratio fitted on FER+ Valid weighted to balanced classes (both stored in the manifest by
``python -m training.fit_expression_prior``). The embedding, and so ``uncertain``, does not depend on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.align import grey_input
from app.model_zoo.base import ModelError, OnnxModel, Runtime, sha256_of

INPUT_SIZE = 48
PRIORS = ("balanced", "ferplus")


def preprocess(crop: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Aligned crop (grey, BGR or BGRA) -> (size, size) float32 grey in [0, 1]. Training uses this too."""
    return grey_input(crop, size).astype(np.float32) / 255.0


@dataclass(frozen=True)
class ExpressionResult:
    label: str  # the most probable class
    confidence: float  # its calibrated probability
    scores: dict[str, float] = field(hash=False)  # all classes, summing to 1
    uncertain: bool  # the embedding is farther from every class prototype than the manifest threshold
    # With a reference (app/reference.py): the reading relative to the person's neutral face, and the face's
    # absolute reading kept here.
    reference: bool = False
    absolute: ExpressionResult | None = field(default=None, hash=False)
    probs: np.ndarray | None = field(default=None, hash=False, compare=False, repr=False)  # the network's, FER+ prior


class ExpressionRecognizer(OnnxModel):
    manifest_name = "expression"

    def __init__(self, models_dir, threads: int | Runtime = 1) -> None:
        super().__init__(models_dir, threads)
        extra = self.entry.extra
        self.classes: list[str] = list(extra["classes"])
        self.size = int(self.input_shape[2]) if isinstance(self.input_shape[2], int) else INPUT_SIZE
        proto = extra.get("prototypes", {})
        try:
            proto_path = Path(models_dir) / proto["file"]
            self.threshold = float(proto["threshold"])
        except (KeyError, TypeError) as exc:
            raise ModelError("expression manifest entry lacks prototypes.file / prototypes.threshold") from exc
        if not proto_path.is_file() or sha256_of(proto_path) != proto.get("sha256"):
            raise ModelError(f"{proto_path.name} is missing or does not match its manifest sha256")
        self.prototypes = np.load(proto_path, allow_pickle=False).astype(np.float32)
        if self.prototypes.shape[0] != len(self.classes):
            raise ModelError("expression prototypes do not match the class list")
        priors = extra.get("priors", {})
        try:
            self.ferplus_prior = np.array([float(priors["ferplus"][c]) for c in self.classes], np.float64)
            self.balanced_exponent = float(priors["balanced_exponent"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError("expression manifest entry lacks priors.ferplus (per class) / priors.balanced_exponent"
                             " (python -m training.fit_expression_prior)") from exc
        # The relative reading's anchor (app/reference.py): mean log-probabilities of FER+ Valid neutral faces;
        # None in a manifest written before it (python -m training.fit_reference --write-manifest): then a call
        # with a reference is refused.
        anchor = extra.get("relative", {}).get("neutral_anchor")
        self.neutral_anchor: np.ndarray | None = None
        if anchor is not None:
            try:
                self.neutral_anchor = np.array([float(anchor[c]) for c in self.classes], np.float64)
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError("expression manifest entry: relative.neutral_anchor needs a number per class") from exc

    def reweight(self, probs: np.ndarray, prior: str) -> np.ndarray:
        """(N, C) probabilities under FER+'s class prior -> under ``prior`` ("ferplus" or "balanced")."""
        if prior == "ferplus":
            return probs
        if prior != "balanced":
            raise ValueError(f"prior must be one of {PRIORS}, not {prior!r}")
        q = np.power(np.maximum(probs, 1e-12), self.balanced_exponent) / self.ferplus_prior
        return q / q.sum(axis=-1, keepdims=True)

    def predict_batch(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W[, 3]) uint8 aligned crops -> (probabilities (N, C), unit embeddings (N, d))."""
        tensor = np.stack([preprocess(c, self.size) for c in crops])[:, None]
        probs, emb = self.run_batch(tensor.astype(np.float32))
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return probs, emb

    def nearest_prototype(self, unit_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist = np.linalg.norm(unit_embeddings[:, None, :] - self.prototypes[None], axis=2)
        return dist.argmin(1), dist.min(1)

    def result(self, probs: np.ndarray, distance: float, prior: str = "ferplus") -> ExpressionResult:
        raw = np.asarray(probs)
        probs = self.reweight(probs, prior)
        best = int(np.argmax(probs))
        return ExpressionResult(
            label=self.classes[best],
            confidence=float(probs[best]),
            scores={c: float(p) for c, p in zip(self.classes, probs)},
            uncertain=bool(distance > self.threshold),
            probs=raw,
        )

    def read(self, aligned) -> tuple[np.ndarray, float]:
        """The network's probabilities (C,) under FER+'s prior and the distance to the nearest prototype.
        ``aligned``: app.align.AlignedFace (BGR crop) or a grey/BGR crop array."""
        return self.read_batch([aligned])[0]

    def read_batch(self, faces: list) -> list[tuple[np.ndarray, float]]:
        """``read`` for several faces (crops of one size), in one call when the graph allows."""
        if not faces:
            return []
        probs, emb = self.predict_batch(np.stack([np.asarray(getattr(face, "image", face)) for face in faces]))
        _, dist = self.nearest_prototype(emb)
        return [(probs[n], float(dist[n])) for n in range(len(faces))]

    def predict(self, aligned, prior: str = "ferplus") -> ExpressionResult:
        """``aligned``: app.align.AlignedFace (BGR crop) or a grey/BGR crop array."""
        probs, distance = self.read(aligned)
        return self.result(probs, distance, prior)
