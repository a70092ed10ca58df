"""Experiment: an expression read fitted on *posed* faces (CK+), from the network's scores, the AU detector and
the blendshapes.

    python -m training.au.train --cv ... --out runs/au_pnpl           # first: the served recipe's CV folds
    python -m experiments.fuse_expression_ckplus --au-cv runs/au_pnpl/cv  # then this (~6 min)

``experiments.fuse_expression`` fitted its fusion on FER+ Valid and gained nothing out of domain. Here the fusion
is fitted on CK+ instead: posed expressions of people in a lab, the kind of faces taiwanese_dev holds, which the
expression network never saw. CK+ has no neutral faces, so the read is two-stage:

1. neutral or not: the served network's own label under the served default prior (``balanced``);
2. which expression: a class-balanced multinomial logistic regression over CK+'s 7 classes (numpy,
   ``experiments.fuse_expression.fit_softmax``) on one of the feature sets below.

Features of each face, all from the service's own path (``Analyzer.run``; CK+ and FER+ as face crops,
taiwanese_dev photos with detection): the log of the network's 8 scores (FER+ prior), the AU detector's 17
logits, MediaPipe's 52 blendshapes. For CK+ the AU logits are **out-of-fold** (each face scored by the fold
model that never saw its subject, ``--au-cv``), elsewhere the served detector's. The regression is itself
cross-validated on the same subject folds for its CK+ number; the one fitted on all of CK+ is read on FER+
Test (majority vote) and taiwanese_dev (observers' top vote and the intended expression; validation only:
read, nothing fitted, no threshold or bias set from it). Prints numbers only; nothing served changes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.analyzer import Analyzer, FaceOptions
from experiments.fuse_expression import CLASSES, CROP, PHOTO, fit, standardise
from training.au.evaluate import out_of_fold_scores
from training.au.fuse import logit
from training.common import run_cli
from training.data import (
    CKPLUS_TO_FERPLUS,
    RUNS_DIR,
    TW_TO_FERPLUS,
    data_root,
    ferplus_rows,
    load_cache,
    read_bgr,
    taiwanese_rows,
)
from training.metrics import macro_f1

NEUTRAL = CLASSES.index("neutral")
FEATURE_SETS = {
    "scores": ("scores",),
    "scores + AUs": ("scores", "aus"),
    "scores + blendshapes": ("scores", "shapes"),
    "scores + AUs + blendshapes": ("scores", "aus", "shapes"),
    "AUs + blendshapes": ("aus", "shapes"),
}


def face_features(analyzer: Analyzer, path: Path, options: FaceOptions) -> dict[str, np.ndarray] | None:
    """Log FER+-prior scores (8), served label index under the balanced prior, AU logits (17), blendshapes (52)."""
    faces = analyzer.run(read_bgr(path), options,
                         heads={"expression", "blendshapes", "au"}).faces
    if not faces or faces[0].filtered:
        return None
    out = faces[0].outputs
    scores = np.array([out["expression"].scores[c] for c in CLASSES])
    served = analyzer.models.require(analyzer.models.expression, "expression network").reweight(
        scores[None], "balanced")[0].argmax()
    return {"scores": np.log(np.clip(scores, 1e-6, 1.0)), "served": np.array(served),
            "aus": logit(np.array([u.probability for u in out["au"]])),
            "shapes": np.array([out["blendshapes"][k] for k in sorted(out["blendshapes"])])}


def stack(found: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([f[k] for f in found]) for k in found[0]}


def design(faces: dict[str, np.ndarray], parts: tuple[str, ...]) -> np.ndarray:
    return np.hstack([faces[p] for p in parts])


def two_stage(w: np.ndarray, x: np.ndarray, served: np.ndarray) -> np.ndarray:
    """Neutral where the served network says so, else the regression's best non-neutral class."""
    z = np.hstack([x, np.ones((len(x), 1))]) @ w
    z[:, NEUTRAL] = -np.inf
    return np.where(served == NEUTRAL, NEUTRAL, z.argmax(1))


def accuracy_f1(y: np.ndarray, predicted: np.ndarray, classes: list[int]) -> tuple[float, float]:
    keep = np.isin(y, classes)
    return float((predicted[keep] == y[keep]).mean()), macro_f1(y[keep], predicted[keep])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--au-cv", type=Path, default=RUNS_DIR / "au" / "cv",
                        help="the AU fold models (train_au --cv) that give CK+ its out-of-fold AU logits")
    parser.add_argument("--limit", type=int, default=0, help="at most this many FER+ Test / taiwanese_dev faces")
    args = parser.parse_args(argv)
    analyzer = Analyzer()

    cache = load_cache("ckplus")
    oof, folds, _ = out_of_fold_scores(args.au_cv, cache["crops"])
    root = data_root() / "ckplus48"
    found, keep = [], []
    for i, rel in enumerate(cache["paths"]):
        f = face_features(analyzer, root / str(rel), CROP)
        if f is not None:
            f["aus"] = logit(oof[i])  # out-of-fold: the served detector has seen every CK+ subject
            found.append(f)
            keep.append(i)
    ck = stack(found)
    ck_y = np.array([CLASSES.index(CKPLUS_TO_FERPLUS[str(e)]) for e in cache["emotions"][keep]])
    ck_folds = folds[keep]
    ck_classes = sorted(set(ck_y.tolist()))
    print(f"CK+: {len(ck_y)} faces, {len(set(ck_folds.tolist()))} subject folds, classes "
          f"{[CLASSES[c] for c in ck_classes]}")

    tw_rows = taiwanese_rows()[: args.limit or None]
    tw_found = [(face_features(analyzer, r.path, PHOTO), r) for r in tw_rows]
    tw = stack([f for f, _ in tw_found if f is not None])
    tw_rows = [r for f, r in tw_found if f is not None]
    tw_top = np.array([CLASSES.index(TW_TO_FERPLUS[r.top_vote]) for r in tw_rows])
    tw_intended = np.array([CLASSES.index(TW_TO_FERPLUS[r.intended]) for r in tw_rows])
    tw_classes = [CLASSES.index(c) for c in TW_TO_FERPLUS.values()]

    fer_rows = [r for r in ferplus_rows("test") if r.majority is not None][: args.limit or None]
    fer_found = [(face_features(analyzer, r.path, CROP), r.majority) for r in fer_rows]
    fer = stack([f for f, _ in fer_found if f is not None])
    fer_y = np.array([y for f, y in fer_found if f is not None])

    print(f"taiwanese_dev {len(tw_top)} photos, FER+ Test {len(fer_y)} faces")
    print(f"{'features':28} {'CK+ CV acc (6 / 7 cl.)':>24} {'tw top acc / F1':>17} {'tw intended':>12} "
          f"{'FER+ Test':>10}")
    six = [c for c in ck_classes if CLASSES[c] != "contempt"]

    def row(name: str, ck_pred: np.ndarray, tw_pred: np.ndarray, fer_pred: np.ndarray) -> None:
        cells = (accuracy_f1(ck_y, ck_pred, six)[0], accuracy_f1(ck_y, ck_pred, ck_classes)[0],
                 *accuracy_f1(tw_top, tw_pred, tw_classes), accuracy_f1(tw_intended, tw_pred, tw_classes)[0],
                 accuracy_f1(fer_y, fer_pred, list(range(len(CLASSES))))[0])
        print(f"{name:28} {cells[0]:>11.3f} / {cells[1]:.3f} {cells[2]:>9.3f} / {cells[3]:.3f} {cells[4]:>12.3f} "
              f"{cells[5]:>10.3f}")

    row("served (prior=balanced)", ck["served"], tw["served"], fer["served"])
    for name, parts in FEATURE_SETS.items():
        x = design(ck, parts)
        cv_pred = np.zeros(len(ck_y), int)
        for k in np.unique(ck_folds):
            train = ck_folds != k
            xs = standardise(x[train], x[~train])
            w = fit(xs[0], ck_y[train])
            cv_pred[~train] = two_stage(w, xs[1], np.full((~train).sum(), -1))  # CK+ has no neutral faces
        xs = standardise(x, design(tw, parts), design(fer, parts))
        w = fit(xs[0], ck_y)
        row(name, cv_pred, two_stage(w, xs[1], tw["served"]), two_stage(w, xs[2], fer["served"]))
    print("CK+ CV: the regression's subject-wise folds (stage 2 alone: CK+ has no neutral faces; 'served' there is "
          "the network's own label). taiwanese_dev and FER+ Test: the regression fitted on all of CK+, two-stage.")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
