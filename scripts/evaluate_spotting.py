"""Micro/macro-expression spotting on synthetic clips built at run time from posed-expression photos.

Each clip is one performer: a neutral photo, still (with a slight head drift and sensor noise), then a
movement to one of their posed photos and back (the posed photo registered onto the neutral one by a
similarity transform on rigid face points, then cross-faded), then still again; 30 fps, H.264 in MP4.
Micro clips last <= 0.45 s from onset to offset, macro clips >= 1 s; no-change clips hold the neutral
face throughout. Clips go through the service's own path (``VideoAnalyzer.analyze``: decode, tracking,
heads, baseline, events) and are deleted afterwards: nothing built here is kept or committed.

Scoring (MEGC style): a spotted interval is a group of the clip's events (any AU, any expression) whose
[onset, offset] overlap, taken as their union; it is a hit when its IoU with the true interval (first to
last frame that departs from neutral) is >= 0.5, each true interval matching at most one; F1 over all
clips. For a hit, micro/macro is the ``micro`` flag of the group's highest-peak event. Any event on a
no-change clip is a false event.

    python -m scripts.evaluate_spotting                            # taiwanese_dev, all performers
    python -m scripts.evaluate_spotting --performers 1 3 5 --per-performer 4
    python -m scripts.evaluate_spotting --data /path/to/held_out    # same layout (labels.csv + images/)

Event settings can be varied without re-analysing (``--grid``): the clips are analysed once and their
per-frame series re-spotted with ``app.video.events.track_events`` (the same code the service runs).
The AU and expression models are never changed by this script.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from app.analyzer import Analyzer
from app.schemas import VideoEvent
from app.settings import Settings
from app.video.analyze import VideoAnalyzer
from app.video.events import series_signals, track_events

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "taiwanese_dev"
FPS = 30
SIZE = (640, 480)
# Rigid mesh points (eye corners, nose bridge, forehead, temples): they do not move with an expression.
RIGID = [33, 133, 362, 263, 168, 6, 10, 234, 454, 127, 356]
EXPRESSIONS = ("happy", "sad", "angry", "disgust", "fear", "surprise")


@dataclass
class Clip:
    name: str
    performer: int
    expression: str | None  # None: a no-change clip
    onset: int  # true interval, frames (inclusive); -1 for no-change clips
    offset: int
    micro: bool
    frames: list[np.ndarray]


def load_labels(data: Path) -> list[dict[str, str]]:
    with open(data / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def read_photo(data: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(data / "images" / name))
    if image is None:
        raise SystemExit(f"cannot read {data / 'images' / name}")
    return image


def canvas(photo: np.ndarray) -> np.ndarray:
    """A 256x256 photo -> a 640x480 frame (the photo scaled to 480x480, centred, edges replicated)."""
    face = cv2.resize(photo, (SIZE[1], SIZE[1]), interpolation=cv2.INTER_CUBIC)
    pad = (SIZE[0] - SIZE[1]) // 2
    return cv2.copyMakeBorder(face, 0, 0, pad, SIZE[0] - SIZE[1] - pad, cv2.BORDER_REPLICATE)


def register(analyzer: Analyzer, neutral: np.ndarray, posed: np.ndarray) -> np.ndarray | None:
    """The posed frame warped onto the neutral one (similarity on rigid mesh points); None without a face."""
    faces = [analyzer.run(image, analyzer.options(max_faces=1)).faces for image in (neutral, posed)]
    if not faces[0] or not faces[1]:
        return None
    src, dst = faces[1][0].landmarks[RIGID, :2], faces[0][0].landmarks[RIGID, :2]
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32))
    if matrix is None:
        return None
    return cv2.warpAffine(posed, matrix, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def drift(image: np.ndarray, i: int, rng_phase: float, noise: np.random.Generator) -> np.ndarray:
    """A slow head drift (+-2 px, +-1%) and sensor noise, so that a still clip is not pixel-identical."""
    angle = 2 * np.pi * (i / (FPS * 4.0)) + rng_phase
    matrix = cv2.getRotationMatrix2D((SIZE[0] / 2, SIZE[1] / 2), 0.5 * np.sin(angle), 1.0 + 0.01 * np.sin(angle / 2))
    matrix[:, 2] += [2.0 * np.cos(angle), 2.0 * np.sin(angle)]
    moved = cv2.warpAffine(image, matrix, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(moved.astype(np.float32) + noise.normal(0, 2.0, moved.shape), 0, 255).astype(np.uint8)


def profile(rng: np.random.Generator, micro: bool) -> tuple[int, int, int]:
    """(rise, hold, fall) in frames: micro <= 0.45 s from onset to offset, macro >= 1 s."""
    if micro:
        rise, hold, fall = rng.integers(2, 6), rng.integers(0, 3), rng.integers(3, 6)  # 5..13 frames
    else:
        rise, hold, fall = rng.integers(8, 16), rng.integers(15, 46), rng.integers(9, 19)  # 32..80 frames
    return int(rise), int(hold), int(fall)


def build_clip(
    analyzer: Analyzer, neutral: np.ndarray, posed: np.ndarray | None, rng: np.random.Generator, micro: bool, name: str,
    performer: int, expression: str | None,
) -> Clip | None:
    base = canvas(neutral)
    lead, tail = int(rng.integers(60, 76)), int(rng.integers(60, 76))  # 2-2.5 s still before and after
    phase, noise = float(rng.uniform(0, 2 * np.pi)), np.random.default_rng(int(rng.integers(1 << 31)))
    if posed is None:
        frames = [drift(base, i, phase, noise) for i in range(lead + tail + 30)]
        return Clip(name, performer, None, -1, -1, False, frames)
    target = register(analyzer, base, canvas(posed))
    if target is None:
        return None
    rise, hold, fall = profile(rng, micro)
    apex = float(rng.uniform(0.7, 1.0))
    alphas = np.r_[np.zeros(lead), np.arange(1, rise + 1) / rise, np.ones(hold),
                   np.arange(fall - 1, -1, -1) / fall, np.zeros(tail)] * apex
    # frames with alpha > 0: from lead to the last fall frame before alpha returns to 0
    moving = np.flatnonzero(alphas > 0)
    base_f, target_f = base.astype(np.float32), target.astype(np.float32)
    frames = [drift((base_f * (1 - a) + target_f * a).round().astype(np.uint8), i, phase, noise)
              for i, a in enumerate(alphas)]
    return Clip(name, performer, expression, int(moving[0]), int(moving[-1]), micro, frames)


def write_mp4(clip: Clip, path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for frame in clip.frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode(None))


def make_clips(analyzer: Analyzer, data: Path, performers: list[int] | None, per_performer: int, still: int,
               seed: int) -> Iterator[Clip]:
    """Per performer: ``per_performer`` movement clips (expressions in turn, micro and macro alternating)
    and ``still`` no-change clips, one at a time (a clip's frames are ~100 MB)."""
    rows = load_labels(data)
    rng = np.random.default_rng(seed)
    found = sorted({int(r["performer"]) for r in rows})
    for performer in performers or found:
        mine = [r for r in rows if int(r["performer"]) == performer]
        neutrals = [r["file"] for r in mine if r["performance_type"] == "0"]
        if not neutrals:
            continue
        for k in range(per_performer):
            expression = EXPRESSIONS[(k + performer) % len(EXPRESSIONS)]
            posed = [r["file"] for r in mine if r["performance_type"] != "0" and r["intended"] == expression]
            if not posed:
                continue
            neutral = read_photo(data, neutrals[int(rng.integers(len(neutrals)))])
            photo = read_photo(data, posed[int(rng.integers(len(posed)))])
            micro = (k + performer) % 2 == 0
            clip = build_clip(analyzer, neutral, photo, rng, micro, f"p{performer:02d}_{expression}_{k}", performer,
                              expression)
            if clip is not None:
                yield clip
        for k in range(still):
            neutral = read_photo(data, neutrals[k % len(neutrals)])
            clip = build_clip(analyzer, neutral, None, rng, False, f"p{performer:02d}_still_{k}", performer, None)
            if clip is not None:
                yield clip


# -- scoring ------------------------------------------------------------------------------------------------


def spotted_intervals(events: list[VideoEvent]) -> list[tuple[int, int, bool]]:
    """Groups of overlapping events -> (onset, offset, micro of the highest-peak event)."""
    groups: list[list[VideoEvent]] = []
    for event in sorted(events, key=lambda e: e.onset_frame):
        if groups and event.onset_frame <= max(e.offset_frame for e in groups[-1]):
            groups[-1].append(event)
        else:
            groups.append([event])
    out = []
    for group in groups:
        strongest = max(group, key=lambda e: e.peak)
        out.append((min(e.onset_frame for e in group), max(e.offset_frame for e in group), strongest.micro))
    return out


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    union = max(a[1], b[1]) - min(a[0], b[0]) + 1
    return max(inter, 0) / union


def score(results: list[tuple[Clip, list[VideoEvent]]]) -> dict[str, float]:
    tp = fp = fn = right = 0
    still_events = still_clips = 0
    by_kind = {"micro": [0, 0], "macro": [0, 0]}  # [hits, true intervals]
    for clip, events in results:
        spotted = spotted_intervals(events)
        if clip.expression is None:
            still_clips += 1
            still_events += len(events)
            fp += len(spotted)
            continue
        kind = "micro" if clip.micro else "macro"
        by_kind[kind][1] += 1
        hits = [s for s in spotted if iou((s[0], s[1]), (clip.onset, clip.offset)) >= 0.5]
        if hits:
            best = max(hits, key=lambda s: iou((s[0], s[1]), (clip.onset, clip.offset)))
            tp += 1
            by_kind[kind][0] += 1
            right += best[2] == clip.micro
            fp += len(spotted) - 1
        else:
            fn += 1
            fp += len(spotted)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {
        "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn,
        "micro_macro_accuracy": round(right / tp, 4) if tp else 0.0,
        "micro_recall": round(by_kind["micro"][0] / max(by_kind["micro"][1], 1), 4),
        "macro_recall": round(by_kind["macro"][0] / max(by_kind["macro"][1], 1), 4),
        "still_clips": still_clips, "events_on_still_clips": still_events,
    }


def respot(series: list[tuple[Clip, list[list[dict]]]], settings: Settings) -> list[tuple[Clip, list[VideoEvent]]]:
    """Events again from the stored per-frame series of each clip's tracks, under other event settings."""
    out = []
    for clip, tracks in series:
        events: list[VideoEvent] = []
        for frames in tracks:
            if frames:
                events += track_events([f["frame"] for f in frames], [f["t"] for f in frames],
                                       series_signals(frames), settings)
        out.append((clip, events))
    return out


GRID = {
    "event_rest_fraction": [0.3, 1.0],
    "event_au_on": [0.25, 0.35, 0.5],
    "event_au_off": [0.1, 0.2],
    "event_expression_on": [0.25, 0.35, 0.5],
    "event_min_s": [0.1, 0.15],
    "event_merge_gap_s": [0.1, 0.3],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labels.csv + images/ (taiwanese_dev layout)")
    parser.add_argument("--performers", type=int, nargs="*", help="default: every performer in the data")
    parser.add_argument("--per-performer", type=int, default=6, help="movement clips per performer")
    parser.add_argument("--still", type=int, default=2, help="no-change clips per performer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", action="store_true", help="also score a grid of event settings (re-spotting)")
    parser.add_argument("--tune-performers", type=int, nargs="*",
                        help="with --grid: choose the settings on these performers' clips, report the rest")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--verbose", action="store_true", help="print each clip's true and spotted intervals")
    args = parser.parse_args(argv)
    if not (args.data / "labels.csv").exists():
        print(f"evaluate_spotting: {args.data}/labels.csv is absent", file=sys.stderr)
        return 2
    settings = Settings()
    analyzer = Analyzer(settings)
    video = VideoAnalyzer(analyzer)
    start = time.perf_counter()
    clips: list[Clip] = []
    results: list[tuple[Clip, list[VideoEvent]]] = []
    series: list[tuple[Clip, list[list[dict]]]] = []
    tracks_per_clip = []
    with tempfile.TemporaryDirectory(prefix="microfacs-spotting-") as tmp:
        for clip in make_clips(analyzer, args.data, args.performers, args.per_performer, args.still, args.seed):
            clips.append(clip)
            path = Path(tmp) / f"{clip.name}.mp4"
            write_mp4(clip, path)
            clip.frames = []  # free the pixels: only the numbers are kept
            result = video.analyze(path, video.options())
            path.unlink()
            tracks_per_clip.append(len(result.tracks))
            results.append((clip, [e for t in result.tracks for e in t.events]))
            if args.verbose:
                spotted = spotted_intervals(results[-1][1])
                print(clip.name, "micro" if clip.micro else "macro", (clip.onset, clip.offset), "->", spotted,
                      [(e.name, e.onset_frame, e.offset_frame, e.peak) for e in results[-1][1]], file=sys.stderr)
            series.append((clip, [[f.model_dump() for f in t.frames] for t in result.tracks]))
    summary = {
        "data": str(args.data), "clips": len(clips),
        "movement_clips": sum(c.expression is not None for c in clips),
        "micro_clips": sum(c.micro for c in clips if c.expression is not None),
        "clips_with_one_track": sum(n == 1 for n in tracks_per_clip),
        **score(results), "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.grid:
        tune = set(args.tune_performers or [])
        tuning = [x for x in series if not tune or x[0].performer in tune]
        held = [x for x in series if tune and x[0].performer not in tune]
        rows = []
        keys = list(GRID)
        for values in itertools.product(*(GRID[k] for k in keys)):
            overrides = dict(zip(keys, values, strict=True))
            overrides["event_expression_off"] = overrides["event_au_off"]
            trial = settings.model_copy(update=overrides)
            rows.append((score(respot(tuning, trial)), overrides))
        rows.sort(key=lambda r: (r[0]["events_on_still_clips"] == 0, r[0]["f1"], r[0]["micro_macro_accuracy"]),
                  reverse=True)
        print("best on the tuning clips" + (f" (performers {sorted(tune)})" if tune else "") + ":")
        for s_, o in rows[:5]:
            print(json.dumps({**o, **s_}))
        if held:
            best = settings.model_copy(update=rows[0][1])
            summary["held_out"] = score(respot(held, best))
            summary["chosen"] = rows[0][1]
            print("the best setting on the other performers' clips:", json.dumps(summary["held_out"]))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
