"""Run the service's own face stage (``app.analyzer.Analyzer``, as face crops: mesh -> pose -> align) over FER+
and CK+ once and cache the results.

Every trainer reads these caches, so training crops are made by exactly the code that serves. The face stage
uses the 468-point mesh (landmarks v1), the one all our networks were trained on, whatever
MICROFACS_LANDMARK_MODEL says.

    python -m training.prepare_faces            # all of FER+ and CK+ (~15 min on 2 cores)
    python -m training.prepare_faces --limit 64 # smoke run

Writes runs/cache/{ferplus_train,ferplus_valid,ferplus_test,ckplus}.npz with
``crops`` (N, 112, 112) uint8 grey aligned faces, ``landmarks`` (N, 468, 2) float16 in crop pixels,
``presence`` (N,), ``pose`` (N, 3) yaw/pitch/roll degrees, and the labels of each set.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.align import DEFAULT_SIZE, landmarks_in_crop
from app.analyzer import Analyzer, FaceOptions
from app.settings import get_settings
from training.data import CACHE_DIR, ckplus_rows, ferplus_rows, read_bgr

FACE_CROP = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)


def face_stage() -> Analyzer:
    """The service's Analyzer with the settings from the environment, but landmarks v1 (the 468-point mesh)."""
    return Analyzer(get_settings().model_copy(update={"landmark_model": "v1"}))


def process(analyzer: Analyzer, paths: list[Path]) -> dict[str, Any]:
    n = len(paths)
    crops = np.zeros((n, DEFAULT_SIZE, DEFAULT_SIZE), np.uint8)
    marks = np.zeros((n, 468, 2), np.float16)
    presence = np.zeros(n, np.float32)
    pose = np.zeros((n, 3), np.float32)
    start = time.time()
    for i, path in enumerate(paths):
        face = analyzer.run(read_bgr(path), FACE_CROP).faces[0]
        crops[i] = cv2.cvtColor(face.aligned.image, cv2.COLOR_BGR2GRAY)
        marks[i] = landmarks_in_crop(face.aligned, face.landmarks)
        presence[i] = face.landmark_confidence
        pose[i] = (face.pose.yaw, face.pose.pitch, face.pose.roll)
        if (i + 1) % 2000 == 0:
            print(f"  {i + 1}/{n} ({time.time() - start:.0f}s)", flush=True)
    return {"crops": crops, "landmarks": marks, "presence": presence, "pose": pose}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of each set")
    parser.add_argument("--out", type=Path, default=CACHE_DIR)
    parser.add_argument("--only", choices=["ferplus", "ckplus"], default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    analyzer = face_stage()
    cut = (lambda rows: rows[: args.limit]) if args.limit else (lambda rows: rows)

    if args.only in (None, "ckplus"):
        rows = cut(ckplus_rows())
        au_names = sorted(rows[0].aus, key=lambda k: int(k[2:]))
        arrays = process(analyzer, [r.path for r in rows])
        arrays.update(
            paths=np.array([str(r.path.relative_to(r.path.parents[2])) for r in rows]),
            subjects=np.array([r.subject for r in rows]), sequences=np.array([r.sequence for r in rows]),
            emotions=np.array([r.emotion for r in rows]), is_peak=np.array([r.is_peak for r in rows]),
            au_names=np.array(au_names), aus=np.array([[r.aus[a] for a in au_names] for r in rows], np.uint8),
        )
        np.savez_compressed(args.out / "ckplus.npz", **arrays)
        print(f"ckplus: {len(rows)} faces -> {args.out / 'ckplus.npz'}", flush=True)

    if args.only in (None, "ferplus"):
        for split in ("train", "valid", "test"):
            rows = cut(ferplus_rows(split))
            arrays = process(analyzer, [r.path for r in rows])
            arrays.update(names=np.array([r.path.name for r in rows]),
                          votes=np.array([r.votes for r in rows], np.uint8))
            np.savez_compressed(args.out / f"ferplus_{split}.npz", **arrays)
            print(f"ferplus {split}: {len(rows)} faces -> {args.out / f'ferplus_{split}.npz'}", flush=True)


if __name__ == "__main__":
    main()
