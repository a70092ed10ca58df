"""The AU fusion's solver, before and after: the fixed-step gradient descent ``au_fusion.onnx`` was fitted with
(1500 steps of 0.5, no convergence check; ``training/fuse_au.py`` at commit b5155f8) against
``training.fitting.fit_logistic`` (L-BFGS to a gradient below 1e-6), on the same per-AU problems.

    python -m experiments.fusion_solver --cv-dir runs/au_soup/cv      # the served fusion's data (fold models)
    python -m experiments.fusion_solver --in-sample                   # without fold models: a stand-in (below)

The fusion's problem per AU: a logistic regression (L2 1e-2) on [the detector's logit, the 52 standardised
blendshapes], CK+ faces (positives from their FACS codes) plus the FER+ Valid faces with >= 8/10 neutral votes as
negatives (``training.au.fuse``). With ``--cv-dir`` the detector's scores of CK+ are out-of-fold, as for the served
file. ``--in-sample`` uses the served detector's own scores of CK+ instead (it was trained on every CK+ subject, so
they are over-confident): the same design matrix shape and features, for measuring the solvers when the fold models
are not at hand; its F1 numbers are not the detector's. Reported per solver: the objective and its largest gradient
component at the answer (fitted on everything), how far the two answers are apart, the cross-validated mean F1 of
the 14 required AUs (pooled / nested thresholds) and the share of neutral faces flagged, and how many decisions of
the fusion fitted on everything change. Prints numbers only; nothing served changes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from app.analyzer import Analyzer
from training.au.evaluate import REQUIRED
from training.au.fuse import (
    CROP,
    L2,
    Fit,
    FusionData,
    collect,
    cross_validated,
    face_features,
    fit_all,
    fused_scores,
    neutral_ferplus,
    table,
)
from training.common import run_cli
from training.data import CACHE_DIR, data_root, load_cache, read_bgr, subject_folds
from training.fitting import fit_logistic, logistic_objective


def gradient_descent(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 1500, lr: float = 0.5
                     ) -> np.ndarray:
    """The solver au_fusion.onnx was fitted with (training/fuse_au.py at commit b5155f8), kept here to compare."""
    x = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        w -= lr * (x.T @ (p - y) / len(y) + l2 * np.append(w[:-1], 0.0))
    return w


def in_sample(analyzer: Analyzer, cache_dir: Path, limit: int) -> FusionData:
    """The fusion's problem with the served detector's own CK+ scores in place of out-of-fold ones."""
    cache = load_cache("ckplus", cache_dir)
    classes = list(analyzer.models.require(analyzer.models.au, "AU detector").classes)
    names = [str(a) for a in cache["au_names"]]
    root = data_root() / "ckplus48"
    scores, shapes = [], []
    for path in cache["paths"]:
        found = face_features(analyzer, read_bgr(root / str(path)), CROP, classes)
        scores.append(found[0] if found is not None else np.full(len(classes), 0.5))
        shapes.append(found[2] if found is not None else np.zeros(52))
    valid = neutral_ferplus(analyzer, "valid", classes, limit)
    fold_of = subject_folds(cache["subjects"])
    return FusionData(classes, np.array(scores), cache["aus"][:, [names.index(a) for a in classes]].astype(bool),
                      np.array(shapes), fold_of, np.array([f[0] for f in valid]), np.array([f[2] for f in valid]),
                      np.random.default_rng(0).integers(0, fold_of.max() + 1, len(valid)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cv-dir", type=Path, help="the detector's fold models (training.au.train --cv)")
    source.add_argument("--in-sample", action="store_true", help="the served detector's own CK+ scores instead")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--limit", type=int, default=0, help="at most this many neutral faces")
    args = parser.parse_args(argv)
    analyzer = Analyzer()
    start = time.time()
    data = in_sample(analyzer, args.cache, args.limit) if args.in_sample else \
        collect(analyzer, args.cv_dir, args.cache, args.limit)
    print(f"{'in-sample stand-in' if args.in_sample else args.cv_dir}: CK+ {len(data.oof)} faces, "
          f"{len(data.nv_scores)} FER+ Valid neutral faces, {len(data.classes)} AUs ({time.time() - start:.0f} s)")
    solvers: dict[str, Fit] = {"gradient descent (before)": gradient_descent, "L-BFGS (after)": fit_logistic}
    every_ck, every_nv = np.ones(len(data.oof), bool), np.ones(len(data.nv_scores), bool)
    weights, objectives, decisions = {}, {}, {}
    for name, fit in solvers.items():
        t0 = time.time()
        weights[name] = fit_all(data, fit)
        fit_s = time.time() - t0
        values, gradients = [], []
        for c, w in enumerate(weights[name]):
            value, gradient = logistic_objective(w, *data.problem(c, every_ck, every_nv), L2)
            values.append(value)
            gradients.append(float(np.abs(gradient).max()))
        objectives[name] = np.array(values)
        rows, _ = table(data, *cross_validated(data, fit))
        ck, nv = fused_scores(data, weights[name])
        _, thresholds = table(data, ck, nv)
        decisions[name] = np.vstack([ck, nv]) >= thresholds
        print(f"{name}: fit on everything {fit_s:.2f} s for {len(data.classes)} AUs; objective mean "
              f"{np.mean(values):.6f}; largest gradient component {max(gradients):.1e} "
              f"(median over AUs {np.median(gradients):.1e}); CV mean F1 of the 14 required AUs "
              f"{np.mean([rows[a][0] for a in REQUIRED]):.3f} pooled / {np.mean([rows[a][1] for a in REQUIRED]):.3f}"
              f" nested; neutral faces flagged per AU {np.mean([rows[a][2] for a in data.classes]):.3f}")
    before, after = solvers
    gap = objectives[before] - objectives[after]
    distance = [float(np.abs(a - b).max()) for a, b in zip(weights[before], weights[after])]
    flipped = (decisions[before] != decisions[after]).mean(0)
    print(f"objective of gradient descent above the optimum: max {gap.max():.2e}, median {np.median(gap):.2e} "
          f"(worst AU {data.classes[int(gap.argmax())]}); largest weight difference {max(distance):.3f} "
          f"(AU {data.classes[int(np.argmax(distance))]})")
    print("decisions of the fusion fitted on everything that change (each at its own pooled thresholds): "
          + ", ".join(f"{au} {f:.3%}" for au, f in zip(data.classes, flipped) if f > 0) + f"; all {flipped.mean():.3%}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
