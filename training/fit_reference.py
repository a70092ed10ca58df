"""Fit the relative reading's one statistic (no torch): the population's neutral face, into the manifest.

    python -m training.fit_reference                    # print
    python -m training.fit_reference --write-manifest   # store expression.relative.neutral_anchor

``neutral_anchor`` is the mean log-probability vector (FER+ prior, the network's own output) of the FER+
*Valid* faces that most of their 10 raters called neutral, each read through the service's own path
(``Analyzer.run`` with ``face_crop``: mesh, alignment, expression network). ``app/reference.py`` adds it to a
face's change from its reference, so that "no change from the person's neutral face" reads as the average
neutral face does. Nothing here reads taiwanese_dev.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.manifest import update_entry
from app.reference import log_probs
from app.settings import Settings
from training.common import run_cli
from training.data import FERPLUS_CLASSES, REPO_ROOT, ferplus_rows, read_bgr

MODELS = REPO_ROOT / "models"


def neutral_anchor(analyzer: Analyzer, split: str = "valid", limit: int = 0) -> tuple[np.ndarray, int]:
    """Mean log-probabilities of the ``split`` faces whose majority label is neutral, and how many there were."""
    rows = [r for r in ferplus_rows(split) if r.majority == FERPLUS_CLASSES.index("neutral")]
    rows = rows[:limit] if limit else rows
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)
    model = analyzer.models.require(analyzer.models.expression, "expression network")
    logs = []
    for row in rows:
        face = analyzer.run(read_bgr(row.path), options).faces[0]
        if face.landmark_confidence < analyzer.settings.landmark_presence_threshold:
            continue  # an unusable mesh: the service would not read this face either
        probs, _ = model.read(face.aligned)
        logs.append(log_probs(probs))
    return np.mean(logs, axis=0), len(logs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--limit", type=int, default=0, help="at most this many faces (smoke runs)")
    parser.add_argument("--write-manifest", action="store_true")
    args = parser.parse_args(argv)
    analyzer = Analyzer(Settings(models_dir=args.models_dir))
    anchor, n = neutral_anchor(analyzer, limit=args.limit)
    classes = analyzer.models.require(analyzer.models.expression, "expression network").classes
    print(f"neutral anchor from {n} FER+ Valid faces with a neutral majority: "
          + ", ".join(f"{c} {v:.3f}" for c, v in zip(classes, anchor)))
    if args.write_manifest:
        update_entry(args.models_dir, "expression", {"relative": {
            "neutral_anchor": {c: round(float(v), 4) for c, v in zip(classes, anchor)},
            "faces": n,
            "data": "FER+ Valid faces with a neutral majority vote, through Analyzer.run(face_crop=True)",
            "rule": "app/reference.py; models/EXPRESSION.md, 'Relative to the person's neutral face'",
        }})


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
