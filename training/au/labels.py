"""Write the automatic AU rectangles of every CK+ face to runs/au/labels.jsonl and draw some on a grid.

    python -m training.au.labels                 # labels.jsonl + runs/au/labels_grid.png (24 faces)
    python -m training.au.labels --n 48 --scale 3

One JSON line per image: path, subject, emotion, face box and ``boxes`` [[au, x0, y0, x1, y1], ...] in
crop pixels (the 112x112 aligned crop of runs/cache/ckplus.npz).
"""
from __future__ import annotations

import argparse
import colorsys
import json
from pathlib import Path

import cv2
import numpy as np

from training.au.regions import AU_REGIONS, au_boxes, face_box
from training.data import RUNS_DIR

CACHE = RUNS_DIR / "cache" / "ckplus.npz"


def colour(au: str) -> tuple[int, int, int]:
    keys = list(AU_REGIONS)
    r, g, b = colorsys.hsv_to_rgb(keys.index(au) / len(keys), 0.9, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(crop: np.ndarray, boxes: list, scale: int = 3, title: str = "") -> np.ndarray:
    """A BGR picture of one grey crop with its AU boxes, ``scale`` times enlarged."""
    image = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    for i, (au, (x0, y0, x1, y1)) in enumerate(boxes):
        c = colour(au)
        cv2.rectangle(image, (round(x0 * scale), round(y0 * scale)), (round(x1 * scale), round(y1 * scale)), c, 1)
        cv2.putText(image, au, (round(x0 * scale) + 2, round(y0 * scale) + 10 + 10 * (i % 3)),
                    cv2.FONT_HERSHEY_PLAIN, 0.8, c, 1)
    if title:
        cv2.putText(image, title, (3, image.shape[0] - 5), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 255, 255), 1)
    return image


def grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        canvas[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = tile
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "au")
    parser.add_argument("--n", type=int, default=24, help="faces on the grid")
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--au", default=None, help="only faces with this AU, drawing only its boxes")
    args = parser.parse_args()
    data = np.load(args.cache)
    names = [str(a) for a in data["au_names"]]
    args.out.mkdir(parents=True, exist_ok=True)
    size = data["crops"].shape[1]
    labels = []
    with (args.out / "labels.jsonl").open("w") as handle:
        for i in range(len(data["crops"])):
            marks = data["landmarks"][i].astype(np.float64)
            active = [a for a, v in zip(names, data["aus"][i]) if v]
            boxes = au_boxes(marks, active, clip=size)
            labels.append(boxes)
            handle.write(json.dumps({
                "path": str(data["paths"][i]), "subject": str(data["subjects"][i]), "emotion": str(data["emotions"][i]),
                "face": [round(v, 2) for v in face_box(marks)],
                "boxes": [[au, *(round(v, 2) for v in box)] for au, box in boxes],
            }) + "\n")
    print(f"{len(labels)} label lines -> {args.out / 'labels.jsonl'}")
    peak = np.flatnonzero(data["is_peak"])
    if args.au:
        peak = np.array([i for i in peak if any(au == args.au for au, _ in labels[i])], int)
    chosen = np.random.default_rng(0).permutation(peak)[: args.n]
    tiles = []
    for i in chosen:
        boxes = [(au, box) for au, box in labels[i] if args.au in (None, au)]
        tiles.append(draw(data["crops"][i], boxes, args.scale, str(data["emotions"][i])))
    path = args.out / (f"labels_grid_{args.au}.png" if args.au else "labels_grid.png")
    cv2.imwrite(str(path), grid(tiles, columns=6))
    print(f"grid of {len(tiles)} faces -> {path}")


if __name__ == "__main__":
    main()
