"""Run the service's own landmark and alignment stages over FER+ and CK+ once and cache the results.

Every trainer reads these caches, so training crops are made by exactly the code that serves.

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

import cv2
import numpy as np

from app.align import DEFAULT_SIZE, align_face, landmarks_in_crop
from app.landmarks import LandmarkStage
from app.model_zoo.face_mesh import FaceMesh
from app.pose import head_pose
from app.settings import get_settings
from training.data import RUNS_DIR, ckplus_rows, ferplus_rows


def process(stage: LandmarkStage, paths: list[Path]) -> dict[str, np.ndarray]:
    n = len(paths)
    crops = np.zeros((n, DEFAULT_SIZE, DEFAULT_SIZE), np.uint8)
    marks = np.zeros((n, 468, 2), np.float16)
    presence = np.zeros(n, np.float32)
    pose = np.zeros((n, 3), np.float32)
    start = time.time()
    for i, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        mesh = stage.from_face_crop(image)
        aligned = align_face(image, mesh.landmarks)
        crops[i] = cv2.cvtColor(aligned.image, cv2.COLOR_BGR2GRAY)
        marks[i] = landmarks_in_crop(aligned, mesh.landmarks)
        presence[i] = mesh.presence
        p = head_pose(mesh.landmarks)
        pose[i] = (p.yaw, p.pitch, p.roll)
        if (i + 1) % 2000 == 0:
            print(f"  {i + 1}/{n} ({time.time() - start:.0f}s)", flush=True)
    return {"crops": crops, "landmarks": marks, "presence": presence, "pose": pose}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of each set")
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "cache")
    parser.add_argument("--only", choices=["ferplus", "ckplus"], default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stage = LandmarkStage(FaceMesh(get_settings().models_dir))
    cut = (lambda rows: rows[: args.limit]) if args.limit else (lambda rows: rows)

    if args.only in (None, "ckplus"):
        rows = cut(ckplus_rows())
        au_names = sorted(rows[0].aus, key=lambda k: int(k[2:]))
        arrays = process(stage, [r.path for r in rows])
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
            arrays = process(stage, [r.path for r in rows])
            arrays.update(names=np.array([r.path.name for r in rows]),
                          votes=np.array([r.votes for r in rows], np.uint8))
            np.savez_compressed(args.out / f"ferplus_{split}.npz", **arrays)
            print(f"ferplus {split}: {len(rows)} faces -> {args.out / f'ferplus_{split}.npz'}", flush=True)


if __name__ == "__main__":
    main()
