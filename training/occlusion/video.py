"""Occlusion on real hands, frame by frame: ``WolfgangLanger_Pexels.mp4`` (shared samples) through the service path.

The clip (472 frames, one woman, sharp studio light) holds real occlusions and real hard negatives: she cries with
her hand pressed over her mouth, then palm and fingers over nose and mouth, holds her fingertips over one side of
her mouth, then laughs with bared teeth. ``SEGMENTS`` below labels frame ranges **by eye** (from contact
sheets of the frames; the transitions between poses are left out): per region 1 = covered (at least about 30 % of
the region, the training label rule), 0 = visible, absent = not judged. It is a validation set, like taiwanese_dev:
variants are compared on it, nothing is fitted to it (no training on its frames, no threshold from it). Its frames
are strongly correlated (one person, one hand, one light), so read it as a few real situations, not 472 samples.

Each frame goes through ``app.analyzer.Analyzer.run`` (decode by ``app.video.decode.VideoReader`` -> detect -> mesh
-> align, filters off); the largest face's aligned crop is then scored by each variant's serving class
(``OcclusionClassifier`` with its manifest thresholds), so every variant sees the same crops.

    python -m training.occlusion.video                         # the installed model (models/)
    python -m training.occlusion.video --models-dir A B C      # variants side by side, same crops
    python -m training.occlusion.video --write-manifest        # metrics.real_video of the installed model
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from app.manifest import update_entry
from app.model_zoo.occlusion import OcclusionClassifier
from training.common import TrainingError, run_cli
from training.data import REPO_ROOT, data_root
from training.occlusion.evaluate import largest_face
from training.occlusion.occluders import REGIONS

VIDEO = "WolfgangLanger_Pexels.mp4"
# (first frame, last frame, {region: 1 covered / 0 visible}); regions not named are not judged in that range
SEGMENTS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 56, {"eyes": 0, "nose": 0, "mouth": 0, "brows": 0}),  # crying, eyes shut, lips pressed: nothing covers
    (72, 90, {"mouth": 1, "eyes": 0, "brows": 0}),  # hand pressed over the mouth
    (100, 134, {"mouth": 1, "nose": 1}),  # palm and fingers over nose and mouth, fingertips at one eye's corner
    (176, 210, {"mouth": 1, "eyes": 0, "brows": 0}),  # fingertips over a third of the mouth (frame 200 included)
    (232, 471, {"eyes": 0, "nose": 0, "mouth": 0, "brows": 0}),  # talking, laughing with bared teeth: nothing covers
)


def frame_labels(n_frames: int) -> np.ndarray:
    """(n_frames, 4) float: 1 covered, 0 visible, NaN not judged, in ``REGIONS`` order."""
    labels = np.full((n_frames, len(REGIONS)), np.nan, np.float32)
    for first, last, regions in SEGMENTS:
        for region, value in regions.items():
            labels[first:min(last, n_frames - 1) + 1, REGIONS.index(region)] = value
    return labels


def video_crops(path: Path, analyzer=None) -> tuple[list, np.ndarray]:
    """The largest face's ``AlignedFace`` per frame (None where no face) through the service's own path
    (``analyzer``: an ``app.analyzer.Analyzer``; default: one with the settings from the environment)."""
    from app.analyzer import Analyzer, FaceOptions
    from app.video.decode import VideoLimits, VideoReader

    analyzer = analyzer or Analyzer()
    settings = analyzer.settings
    options = FaceOptions(side_face_filter=False, occlusion_filter=False)
    crops: list = []
    with VideoReader(path, VideoLimits.of(settings)) as video:
        for frame in video.frames():
            faces = analyzer.run(frame.bgr(), options).faces
            if not faces:
                crops.append(None)
                continue
            crops.append(largest_face(faces).aligned)
    return crops, frame_labels(len(crops))


def score_variant(model: OcclusionClassifier, crops: list, labels: np.ndarray) -> dict:
    """Per region: recall on covered frames, false flags on visible ones; any-region false flags on all-clean
    frames; scores of frame 200 (the issue's check)."""
    thresholds = np.array([model.thresholds[r] for r in REGIONS])
    scores = np.full((len(crops), len(REGIONS)), np.nan, np.float32)
    for i, aligned in enumerate(crops):
        if aligned is not None:
            probs = model.predict(aligned)
            scores[i] = [probs[r] for r in REGIONS]
    found = ~np.isnan(scores[:, 0])
    flags = scores >= thresholds
    out: dict = {"frames": len(crops), "faces_found": int(found.sum()), "regions": {}}
    for j, region in enumerate(REGIONS):
        covered = found & (labels[:, j] == 1)
        visible = found & (labels[:, j] == 0)
        out["regions"][region] = {
            "covered_frames": int(covered.sum()),
            "recall": round(float(flags[covered, j].mean()), 3) if covered.any() else None,
            "visible_frames": int(visible.sum()),
            "false_flags": round(float(flags[visible, j].mean()), 3) if visible.any() else None,
        }
    out["segments"] = {}
    for first, last, regions in SEGMENTS:
        rows = found[first:last + 1]
        for region, value in regions.items():
            if value == 1 and rows.any():
                hits = flags[first:last + 1, REGIONS.index(region)][rows]
                out["segments"][f"{first}-{last} {region}"] = round(float(hits.mean()), 3)
    clean = found & np.all(labels == 0, axis=1)
    out["clean_frames"] = int(clean.sum())
    out["clean_any_flagged"] = round(float(flags[clean].any(axis=1).mean()), 3) if clean.any() else None
    out["frame_200"] = {r: round(float(scores[200, j]), 3) for j, r in enumerate(REGIONS)} if len(crops) > 200 else None
    return out


def print_variant(name: str, r: dict) -> None:
    parts = []
    for region, m in r["regions"].items():
        recall = "" if m["recall"] is None else f"recall {m['recall']:.3f} ({m['covered_frames']})"
        false = "" if m["false_flags"] is None else f"false {m['false_flags']:.3f} ({m['visible_frames']})"
        parts.append(f"{region}: " + ", ".join(p for p in (recall, false) if p))
    segments = ", ".join(f"{k} {v:.2f}" for k, v in r["segments"].items())
    print(f"{name}: clean frames flagged {r['clean_any_flagged']:.3f} of {r['clean_frames']}; " + "; ".join(parts)
          + f"; by segment: {segments}; frame 200 mouth {r['frame_200']['mouth']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, nargs="+", default=[REPO_ROOT / "models"],
                        help="one or more models folders (each with occlusion.onnx and its manifest entry)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--entry", default="occlusion", help="manifest entry: occlusion or occlusion_ensemble")
    parser.add_argument("--write-manifest", action="store_true",
                        help="store the numbers as metrics.real_video in the (single) models folder's manifest")
    args = parser.parse_args(argv)
    if args.write_manifest and len(args.models_dir) != 1:
        raise TrainingError("--write-manifest takes exactly one --models-dir")
    path = data_root() / "samples" / VIDEO
    if not path.is_file():
        raise TrainingError(f"{path} is absent: put the shared data beside the repo (MICROFACS_DATA)")
    crops, labels = video_crops(path)
    results = {}
    for models_dir in args.models_dir:
        results[str(models_dir)] = score_variant(OcclusionClassifier(models_dir, name=args.entry), crops, labels)
        print_variant(str(models_dir), results[str(models_dir)])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.write_manifest:
        update_entry(args.models_dir[0], args.entry, metrics={"real_video": results[str(args.models_dir[0])]})
        print(f"metrics.real_video stored in {args.models_dir[0] / 'manifest.json'}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
