"""Per-face cost of the face stage: landmarks v1 (468-point mesh) against v2 (FaceLandmarker) + blendshapes,
through the service's own Analyzer, one ONNX thread, both variants interleaved run by run.

    python -m scripts.benchmark_face_stage --runs 200

Image: scikit-image's astronaut (one face). Per face = landmarks + pose + align + occlusion (+ the
blendshapes/gaze heads when asked); detection and decoding are the same for both and left out. Prints
numbers only; nothing here asserts a speed.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.settings import Settings

FACE_STAGES = ("landmarks", "landmarks_v2", "pose", "align", "occlusion", "blendshapes", "gaze")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    from skimage import data

    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    v1 = Analyzer(Settings(landmark_model="v1", onnx_threads=1))
    v2 = Analyzer(Settings(landmark_model="v2", onnx_threads=1), models=v1.models)
    variants = {
        "v1 mesh (today)": (v1, ()),
        "v2 landmarker": (v2, ()),
        "v2 landmarker + blendshapes": (v2, ("blendshapes",)),
        "v2 landmarker + blendshapes + gaze": (v2, ("blendshapes", "gaze")),
        "v1 mesh + blendshapes (v2 run as well)": (v1, ("blendshapes",)),
    }
    times: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    for run in range(args.runs + 5):
        for name, (analyzer, heads) in variants.items():
            analysis = analyzer.run(image, FaceOptions(), heads)
            if run < 5:
                continue
            per_face = {s: analysis.timings.ms.get(s, 0.0) for s in FACE_STAGES}
            per_face["face stage total"] = sum(per_face.values())
            for stage, ms in per_face.items():
                times[name].setdefault(stage, []).append(ms)
    base = np.median(times["v1 mesh (today)"]["face stage total"])
    print(f"{args.runs} runs, 1 face, 1 ONNX thread; medians (p10) in ms")
    for name, stages in times.items():
        parts = ", ".join(f"{s} {np.median(v):.2f}" for s, v in stages.items()
                          if np.median(v) > 0 and s != "face stage total")
        total = stages["face stage total"]
        print(f"{name:<40} total {np.median(total):6.2f} (p10 {np.percentile(total, 10):5.2f}), "
              f"{np.median(total) - base:+5.2f} vs v1 | {parts}")


if __name__ == "__main__":
    main()
