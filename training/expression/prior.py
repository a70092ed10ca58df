"""Fit the expression scores' class priors (no torch): FER+'s own and a balanced one, into the manifest.

    python -m training.expression.prior              # print
    python -m training.expression.prior --write-manifest

* ``ferplus``: the frequency of each class among FER+ Train majority labels (what the network learnt).
* ``balanced_exponent`` k: balanced scores are p_bal(c) ∝ p(c)^k / π(c) (app/model_zoo/expression.py).
  k is a temperature ratio fitted on FER+ Valid, each face weighted by 1/π(its class), so the fit sees
  every class equally often, as a balanced prior assumes.

Reads FER+ Train labels (../shared/data) and the FER+ Valid/Test crops of runs/cache
(``python -m training.prepare_faces``); scores them with the installed models/expression.onnx. Nothing here
reads taiwanese_dev.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from app.manifest import update_entry
from app.model_zoo.base import OnnxModel
from app.model_zoo.expression import preprocess
from training.common import require_file, run_cli
from training.data import FERPLUS_CLASSES, PREPARE, REPO_ROOT, RUNS_DIR, ferplus_rows
from training.expression.data import majority_labels
from training.fitting import NotConverged
from training.metrics import ece

MODELS = REPO_ROOT / "models"


class RawExpression(OnnxModel):
    """The expression ONNX file as it is, before any prior (its manifest entry may not have one yet)."""

    manifest_name = "expression"


def ferplus_prior() -> np.ndarray:
    y = majority_labels(np.array([r.votes for r in ferplus_rows("train")]))
    y = y[y >= 0]
    return np.bincount(y, minlength=len(FERPLUS_CLASSES)) / len(y)


def scores(model: RawExpression, cache: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(require_file(cache / f"ferplus_{split}.npz", PREPARE)) as z:
        crops, votes = z["crops"], z["votes"].astype(np.int64)
    y = majority_labels(votes)
    keep = y >= 0
    probs = []
    for i in range(0, int(keep.sum()), 256):
        batch = crops[keep][i:i + 256]
        probs.append(model.run(np.stack([preprocess(c) for c in batch])[:, None].astype(np.float32))[0])
    return np.concatenate(probs).astype(np.float64), y[keep]


def reweight(probs: np.ndarray, prior: np.ndarray, k: float) -> np.ndarray:
    q = np.power(np.maximum(probs, 1e-12), k) / prior
    return q / q.sum(1, keepdims=True)


def weighted_nll(probs: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    return float(-(weights * np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12))).sum() / weights.sum())


def fit(models_dir: Path, cache: Path) -> dict:
    prior = ferplus_prior()
    model = RawExpression(models_dir)
    valid_p, valid_y = scores(model, cache, "valid")
    weights = 1.0 / prior[valid_y]
    result = minimize_scalar(lambda k: weighted_nll(reweight(valid_p, prior, k), valid_y, weights),
                             bounds=(0.2, 3.0), method="bounded")
    if not result.success:
        raise NotConverged(f"balanced exponent: {result.message}")
    k = float(result.x)
    test_p, test_y = scores(model, cache, "test")
    test_w = 1.0 / prior[test_y]
    report = {"ferplus": dict(zip(FERPLUS_CLASSES, np.round(prior, 6).tolist())), "balanced_exponent": round(k, 4)}
    for name, p in (("ferplus", test_p), ("balanced", reweight(test_p, prior, k))):
        hit = p.argmax(1) == test_y
        recall = [float(hit[test_y == c].mean()) for c in range(len(FERPLUS_CLASSES)) if (test_y == c).any()]
        report[f"test_{name}"] = {"accuracy": round(float(hit.mean()), 4),
                                  "mean_class_recall": round(float(np.mean(recall)), 4),
                                  "ece": round(ece(p, test_y), 4),
                                  "ece_class_balanced": round(ece(p, test_y, test_w), 4)}
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--cache", type=Path, default=RUNS_DIR / "cache")
    parser.add_argument("--write-manifest", action="store_true")
    args = parser.parse_args(argv)
    report = fit(args.models_dir, args.cache)
    print(f"FER+ Train prior: {report['ferplus']}")
    print(f"balanced exponent k = {report['balanced_exponent']} (class-balanced NLL on FER+ Valid)")
    for name in ("ferplus", "balanced"):
        t = report[f"test_{name}"]
        print(f"FER+ Test, prior={name}: accuracy {t['accuracy']}, mean class recall {t['mean_class_recall']}, "
              f"ECE {t['ece']} (class-balanced ECE {t['ece_class_balanced']})")
    if args.write_manifest:
        update_entry(args.models_dir, "expression", {
            "priors": {k: report[k] for k in ("ferplus", "balanced_exponent")},
            "prior_metrics": {k: report[k] for k in ("test_ferplus", "test_balanced")}})


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
