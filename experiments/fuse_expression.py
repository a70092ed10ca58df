"""Experiment: does fusing the expression network's scores with MediaPipe's 52 blendshapes (and / or the AU
detector's logits) transfer better?

    python -m experiments.fuse_expression                 # FER+ Valid (fit), FER+ Test, CK+, taiwanese_dev
    python -m experiments.fuse_expression --limit 500     # quicker

Every face goes through the service's own path (``Analyzer.run``, heads expression + blendshapes + AU; FER+ and
CK+ as face crops, taiwanese_dev photos with detection). Features: the log of the network's scores under its own
(FER+) prior, the blendshapes and the served AU detector's logits. A multinomial logistic regression (numpy, L2,
class-balanced weights: a uniform prior like the served default; ``training.fitting.fit_softmax``, L-BFGS with a
convergence check) is fitted on FER+ **Valid** only (the network was
trained on FER+ Train, so its Train scores are over-confident) and compared, on FER+ Test (majority vote), CK+ (its
7 labelled classes; never trained on) and taiwanese_dev (observers' top vote; read only, nothing fitted), with the
served default (``prior=balanced``), a blendshapes-only regression and the variants with AU logits. Prints numbers
only; nothing here changes the served model. No torch.
"""
from __future__ import annotations

import argparse

import numpy as np

from app.analyzer import Analyzer, FaceOptions
from training.common import run_cli
from training.data import (
    CKPLUS_TO_FERPLUS,
    FERPLUS_CLASSES,
    TW_TO_FERPLUS,
    ckplus_rows,
    ferplus_rows,
    read_bgr,
    taiwanese_rows,
)
from training.fitting import fit_softmax, predict_softmax
from training.metrics import accuracy, macro_f1

CLASSES = FERPLUS_CLASSES
N_SHAPES = 52
CROP = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True, expression_prior="ferplus")
PHOTO = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1, expression_prior="ferplus")


def features(analyzer: Analyzer, image: np.ndarray, options: FaceOptions) -> tuple[np.ndarray, np.ndarray] | None:
    """(log FER+-prior scores (8), blendshapes (52) and the AU detector's logits (one per AU) side by side) of the
    image's face, or None (no usable face)."""
    faces = analyzer.run(image, options, heads={"expression", "blendshapes", "au"}).faces
    if not faces or faces[0].filtered:
        return None
    face = faces[0]
    scores = np.array([face.outputs["expression"].scores[c] for c in CLASSES])
    shapes = face.outputs["blendshapes"]
    aus = np.clip([a.probability for a in face.outputs["au"]], 1e-4, 1 - 1e-4)
    return np.log(np.clip(scores, 1e-6, 1.0)), np.concatenate([[shapes[k] for k in sorted(shapes)],
                                                                np.log(aus / (1 - aus))])


def collect(analyzer: Analyzer, labelled: list, options: FaceOptions, limit: int):
    """(log-scores, blendshapes, label) of each (image path, class index or None) with a usable face; the first
    ``limit`` items (0: all) are read, those without a label skipped."""
    out = []
    for path, label in labelled[:limit] if limit else labelled:
        found = None if label is None else features(analyzer, read_bgr(path), options)
        if found is not None:
            out.append((*found, label))
    return out


def ferplus(analyzer: Analyzer, split: str, limit: int):
    """Majority vote; faces whose majority is unknown / not a face, or a tie, are left out."""
    return collect(analyzer, [(r.path, r.majority) for r in ferplus_rows(split)], CROP, limit)


def ckplus(analyzer: Analyzer, limit: int):
    rows = [(r.path, CLASSES.index(CKPLUS_TO_FERPLUS[r.emotion])) for r in ckplus_rows() if r.is_peak]
    return collect(analyzer, rows, CROP, limit)


def taiwanese(analyzer: Analyzer, limit: int):
    rows = [(r.path, CLASSES.index(TW_TO_FERPLUS[r.top_vote])) for r in taiwanese_rows()]
    return collect(analyzer, rows, PHOTO, limit)


def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class-balanced multinomial logistic regression (L2 1e-2) over the classes ``y`` holds; weights (d + 1, 8),
    a class without faces scoring -inf."""
    present = np.unique(y)
    w = fit_softmax(x, np.searchsorted(present, y), len(present), l2=1e-2, balanced=True)
    full = np.full((x.shape[1] + 1, len(CLASSES)), 0.0)
    full[-1] = -np.inf
    full[:, present] = w
    return full


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


def report(name: str, y: np.ndarray, predicted: np.ndarray, classes: list[int] | None = None) -> str:
    """Accuracy and macro-F1 (training/metrics.py) over the faces whose label is one of ``classes`` (all: None)."""
    keep = np.isin(y, classes) if classes else np.ones(len(y), bool)
    y, predicted = y[keep], predicted[keep]
    return f"{name}: accuracy {accuracy(y, predicted):.3f}, macro-F1 {macro_f1(y, predicted):.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args(argv)
    analyzer = Analyzer()
    sets = {"FER+ Valid": ferplus(analyzer, "valid", args.limit),
            "FER+ Test": ferplus(analyzer, "test", args.limit),
            "CK+ peaks": ckplus(analyzer, args.limit), "taiwanese_dev": taiwanese(analyzer, args.limit)}
    arrays = {k: (np.array([a for a, _, _ in v]), np.array([b for _, b, _ in v]), np.array([c for _, _, c in v]))
              for k, v in sets.items()}
    recognizer = analyzer.models.require(analyzer.models.expression, "expression network")
    fit_scores, fit_extra, fit_y = arrays["FER+ Valid"]
    variants = {  # name -> columns of (log-scores | blendshapes | AU logits)
        "fused (scores + blendshapes)": np.r_[0:8 + N_SHAPES],
        "blendshapes only": np.r_[8:8 + N_SHAPES],
        "scores + AU logits": np.r_[0:8, 8 + N_SHAPES:8 + fit_extra.shape[1]],
        "scores + blendshapes + AU logits": np.r_[0:8 + fit_extra.shape[1]],
    }
    fit_x = np.hstack([fit_scores, fit_extra])
    weights = {name: fit(standardise(fit_x[:, cols])[0], fit_y) for name, cols in variants.items()}
    print(f"fitted on FER+ Valid: {len(fit_y)} faces; features: 8 log-scores, 52 blendshapes, "
          f"{fit_extra.shape[1] - N_SHAPES} AU logits (the served AU detector)")
    for name, (scores, extra, y) in arrays.items():
        if name == "FER+ Valid":
            continue
        x = np.hstack([scores, extra])
        served = recognizer.reweight(np.exp(scores), "balanced").argmax(1)  # the served default's label
        classes = {"taiwanese_dev": [CLASSES.index(c) for c in TW_TO_FERPLUS.values()],
                   "CK+ peaks": [CLASSES.index(c) for c in CLASSES if c != "neutral"]}.get(name)
        print(f"{name} ({len(y)} faces)")
        print("  " + report("served, prior=balanced", y, served, classes))
        for variant, cols in variants.items():
            predicted = predict_softmax(weights[variant], standardise(fit_x[:, cols], x[:, cols])[1])
            print("  " + report(variant, y, predicted, classes))

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
