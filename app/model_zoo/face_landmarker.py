"""MediaPipe FaceLandmarker v2 (Apache-2.0): 478 3D landmarks (the 468-point mesh plus 5 points per iris)
and a face-presence score from a rotated square crop, and the 52 blendshape coefficients computed from
146 of those landmarks. Converted from ``face_landmarker.task`` by ``tools/convert_mediapipe.py --landmarker``.

Landmark layout (MediaPipe's): 0-467 the same mesh topology as the 468-point model (``app/model_zoo/face_mesh.py``);
468 the centre of the subject's right iris and 469-472 its contour; 473 the centre of the subject's left
iris and 474-477 its contour (MediaPipe's FACEMESH_RIGHT_IRIS / FACEMESH_LEFT_IRIS).
"""
from __future__ import annotations

import numpy as np

from app.model_zoo.base import OnnxModel
from app.model_zoo.face_mesh import MeshModel

NUM_LANDMARKS = 478
MESH_POINTS = 468
RIGHT_IRIS = slice(468, 473)  # subject's right: centre, then 4 contour points
LEFT_IRIS = slice(473, 478)

# The 146 landmarks the blendshape model reads, in its input order: MediaPipe,
# mediapipe/tasks/cc/vision/face_landmarker/face_blendshapes_graph.cc (kLandmarksSubsetIdxs). MediaPipe feeds
# their x, y in pixels of the whole input image (LandmarksToTensorCalculator, attributes X and Y scaled by
# the image size); the network centres and scales the points itself.
BLENDSHAPE_LANDMARKS = [
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39,
    40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78, 80,
    81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133,
    136, 144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160,
    161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246,
    249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295,
    296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334,
    336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382,
    384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
]
# Output order of the blendshape model (same file, kBlendshapeNames). "_neutral" is MediaPipe's own
# extra coefficient (its documentation says to ignore it); the other 51 are ARKit's names, where "Left"
# and "Right" are the subject's own sides.
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)


class FaceLandmarker(MeshModel):
    """Same interface as ``FaceMesh``: ``predict(image, centre, size, angle)`` -> ``MeshResult`` whose
    landmarks are (478, 3): x, y in image pixels, z in pixels (smaller = nearer the camera); ``predict_batch``."""

    manifest_name = "face_landmarker"
    num_landmarks = NUM_LANDMARKS


class FaceBlendshapes(OnnxModel):
    """52 blendshape coefficients (0..1, ``BLENDSHAPE_NAMES`` order) from the 478 landmarks in image pixels."""

    manifest_name = "face_blendshapes"
    names = BLENDSHAPE_NAMES

    def predict(self, landmarks: np.ndarray) -> dict[str, float]:
        points = np.asarray(landmarks, dtype=np.float32)[BLENDSHAPE_LANDMARKS, :2][None]
        (scores,) = self.run(np.ascontiguousarray(points))
        return {name: float(v) for name, v in zip(BLENDSHAPE_NAMES, scores.reshape(-1))}

    def warm_up(self) -> None:
        self.run(np.random.default_rng(0).uniform(0, 256, (1, len(BLENDSHAPE_LANDMARKS), 2)).astype(np.float32))
