"""Does a change to the detection stage lose faces? Dump one checkout's detections, then compare two dumps.

    python -m tools.compare_detection --dump /tmp/before.json       # in the old checkout (or before the edit)
    python -m tools.compare_detection --dump /tmp/after.json        # with the change
    python -m tools.compare_detection --compare /tmp/before.json /tmp/after.json
    python -m tools.compare_detection --hint-study   # where app/detect.py's CLOSE_UP_HINT comes from

The images (all built from ../shared/data, or MICROFACS_DATA): the sample photos; every taiwanese_dev
photo (used here only to count faces, nothing is fitted); zoomed crops of a third of those photos in which
the face's side is 0.3 to 1.1 of the image side (close-ups are where the two BlazeFace models differ);
"selfie" composites (a close-up face, 0.42-0.68 of the image side, and a small face elsewhere in a
640x480 frame); 2x2 and 3x3 mosaics; the sample photos enlarged to 4000 px (phone-camera sizes);
every 15th frame of the sample videos. A face counts as found again when a box of the other dump overlaps
it with IoU >= 0.5. Prints counts, mismatches and the detect stage's median time per image set.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from app.boxes import box_iou
from training.data import read_bgr

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICROFACS_DATA", REPO.parent / "shared" / "data"))


def zoom(image: np.ndarray, box: np.ndarray, fraction: float, size: int = 256) -> np.ndarray:
    """A size x size crop around ``box`` in which the box's longer side is ``fraction`` of the crop."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) / fraction
    scale = size / side
    matrix = np.array([[scale, 0, -(cx - side / 2) * scale], [0, scale, -(cy - side / 2) * scale]])
    return cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)


def images() -> Iterator[tuple[str, str, np.ndarray]]:
    """(set, key, BGR image) for every test image, in a fixed order."""
    samples = sorted((DATA / "samples").glob("*.jpg")) + sorted((DATA / "samples").glob("*.png"))
    for path in samples:
        yield "samples", path.name, read_bgr(path)
    photos = sorted((DATA / "taiwanese_dev" / "images").glob("*.jpg"))
    for path in photos:
        yield "taiwanese_dev", path.name, read_bgr(path)
    rng = np.random.default_rng(0)
    # Crops are made around the face the *reference* configuration (both models) finds, so that both dumps
    # see the same pixels: the crop boxes come from a fixed rule on the photo, not from the detector under test.
    for path in photos[::3]:
        photo = read_bgr(path)
        h, w = photo.shape[:2]
        box = np.array([w * 0.22, h * 0.18, w * 0.78, h * 0.86])  # these studio photos are centred portraits
        for fraction in (0.3, 0.45, 0.6, 0.75, 0.9, 1.1):
            yield "zoomed", f"{path.name}@{fraction}", zoom(photo, box, fraction)
    for i in range(0, len(photos) - 1, 7):
        close, far = (read_bgr(p) for p in photos[i : i + 2])
        h, w = close.shape[:2]
        face = np.array([w * 0.22, h * 0.18, w * 0.78, h * 0.86])
        frame = np.full((480, 640, 3), rng.integers(40, 200), np.uint8)
        size = int(rng.integers(300, 481))  # the close-up's face is 0.9 of this square: 0.42-0.68 of 640 px
        big = zoom(close, face, 0.9, size)
        x = int(rng.integers(0, 640 - size + 1))
        frame[480 - size :, x : x + size] = big
        sx = 20 if x > 640 - size - x else 640 - 110
        frame[20:110, sx : sx + 90] = cv2.resize(far, (90, 90))
        yield "selfie", f"{photos[i].name}+{photos[i + 1].name}", frame
    for n in (2, 3):
        for i in range(0, len(photos) - n * n, 40):
            tiles = [cv2.resize(read_bgr(p), (200, 200)) for p in photos[i : i + n * n]]
            rows = [np.hstack(tiles[r * n : (r + 1) * n]) for r in range(n)]
            yield "mosaic", f"{n}x{n}@{i}", np.vstack(rows)
    for path in samples:  # phone-camera sizes: the sample photos enlarged to 4000 px on their longer side
        photo = read_bgr(path)
        scale = 4000 / max(photo.shape[:2])
        yield "large", path.name, cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    for video in sorted((DATA / "samples").glob("*.mp4")) + sorted((DATA / "samples").glob("*.mov")):
        capture = cv2.VideoCapture(str(video))
        index = 0
        while True:
            ok, still = capture.read()
            if not ok or still is None:
                break
            if index % 15 == 0:
                yield "video_frames", f"{video.name}#{index}", np.asarray(still)
            index += 1


def dump(path: Path) -> None:
    from app.analyzer import Analyzer
    from app.settings import Settings

    analyzer = Analyzer(Settings())
    detector, threshold = analyzer.detector, analyzer.settings.detection_threshold
    out: dict[str, dict] = {}
    for image_set, key, image in images():
        detector.detect(image, threshold, 0, 100)  # warm caches for this size
        times = []
        for _ in range(3):
            start = time.perf_counter()
            faces = detector.detect(image, threshold, 0, 100)
            times.append((time.perf_counter() - start) * 1000)
        out[f"{image_set}/{key}"] = {
            "set": image_set, "ms": float(np.median(times)), "boxes": [f.box.tolist() for f in faces],
        }
    path.write_text(json.dumps(out))
    print(f"{len(out)} images -> {path}")


def compare(before_path: Path, after_path: Path) -> None:
    before, after = json.loads(before_path.read_text()), json.loads(after_path.read_text())
    rows: dict[str, dict] = {}
    for key, b in before.items():
        a = after[key]
        row = rows.setdefault(b["set"], {"images": 0, "faces": 0, "missed": 0, "extra": 0, "ious": [],
                                         "ms_before": [], "ms_after": [], "examples": []})
        row["images"] += 1
        row["faces"] += len(b["boxes"])
        row["ms_before"].append(b["ms"])
        row["ms_after"].append(a["ms"])
        boxes_a = np.array(a["boxes"]).reshape(-1, 4)
        matched = set()
        for box in map(np.array, b["boxes"]):
            scores = box_iou(box, boxes_a)
            best = int(np.argmax(scores)) if len(scores) else -1
            if best >= 0 and scores[best] >= 0.5 and best not in matched:
                matched.add(best)
                row["ious"].append(scores[best])
            else:
                row["missed"] += 1
                row["examples"].append(f"missed in {key}")
        extra = len(boxes_a) - len(matched)
        row["extra"] += extra
        if extra:
            row["examples"].append(f"extra in {key}")
    print(f"{'set':<14}{'images':>7}{'faces':>7}{'missed':>8}{'extra':>7}{'mean IoU':>10}"
          f"{'detect ms before':>18}{'after':>8}")
    for name, row in rows.items():
        mean_iou = float(np.mean(row["ious"])) if row["ious"] else float("nan")
        print(f"{name:<14}{row['images']:>7}{row['faces']:>7}{row['missed']:>8}{row['extra']:>7}{mean_iou:>10.4f}"
              f"{np.median(row['ms_before']):>18.2f}{np.median(row['ms_after']):>8.2f}")
    for row in rows.values():
        for example in row["examples"][:10]:
            print("  ", example)


def hint_study() -> None:
    """CK+ faces (every 5th image; CK+ dev subjects, allowed for fitting) padded out until the face fills 0.6
    to 1.0 of the image: where the full-range model finds nothing and the short-range model finds the face,
    how high does the full-range model's best anchor still score? And on the photo without a face?"""
    from app.analyzer import Analyzer
    from app.settings import Settings

    analyzer = Analyzer(Settings())
    full, short = analyzer.detector.full_range, analyzer.detector.short_range

    def best_anchor(image: np.ndarray) -> float:
        _, scores, _ = full.candidates(image, 0.0)
        return float(scores.max()) if len(scores) else 0.0

    missed = []
    for path in sorted((DATA / "ckplus48" / "images").glob("*/*.png"))[::5]:
        face = cv2.resize(read_bgr(path), (192, 192), interpolation=cv2.INTER_CUBIC)
        for fraction in np.linspace(0.6, 1.0, 5):
            side = int(round(192 / fraction))
            pad = (side - 192) // 2
            image = cv2.copyMakeBorder(face, pad, side - 192 - pad, pad, side - 192 - pad, cv2.BORDER_REPLICATE)
            if not full.detect(image, 0.5) and short.detect(image, 0.5):
                missed.append(best_anchor(image))
    no_face = best_anchor(read_bgr(DATA / "samples" / "free-mountain-vector-01.jpg"))
    print(f"close-ups the full-range model missed and the short-range one found: {len(missed)}; the full-range "
          f"model's best anchor on them: min {min(missed):.3f}, 5th percentile {np.percentile(missed, 5):.3f}")
    print(f"best anchor on the photo without a face (free-mountain-vector-01.jpg): {no_face:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dump", type=Path, help="write this checkout's detections here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--hint-study", action="store_true", help="measure the close-up hint (see hint_study)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"no data at {DATA}: set MICROFACS_DATA")
    if args.dump:
        dump(args.dump)
    if args.compare:
        compare(*args.compare)
    if args.hint_study:
        hint_study()


if __name__ == "__main__":
    main()
