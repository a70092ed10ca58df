"""Evaluate the exported occlusion model through the serving class (app/model_zoo/occlusion.py).

* false-occlusion rate (FOR) on clean real faces: all of CK+ (never trained on) and FER+ Test as is;
* per-region recall / precision on held-out synthetic occlusions on FER+ Test crops:
  - ``synthetic``: the training occluder families, a seed the trainer never uses, FER+ Test crops as
    the "other face" patch pool;
  - ``heldout``: a family never seen in training: irregular polygons cut from scikit-image photos that
    no training sample uses (training.occluders.HELDOUT_IMAGES).

    python -m training.evaluate_occlusion                 # prints the table, writes runs/occlusion/eval.json
    python -m training.evaluate_occlusion --write-manifest # also stores the numbers in models/manifest.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from app.align import AlignedFace
from app.manifest import sha256_of, update_entry
from app.model_zoo.occlusion import OcclusionClassifier
from training.common import require_file, run_cli
from training.data import REPO_ROOT, RUNS_DIR
from training.occluders import (
    HELDOUT_IMAGES,
    NEGATIVE_FRACTION,
    REGIONS,
    TRAIN_FAMILIES,
    TRAIN_IMAGES,
    TRAIN_WEIGHTS,
    load_images,
    occlude,
)

EVAL_SEED = 777_001


def load(name: str, cache_dir: Path = RUNS_DIR / "cache") -> tuple[np.ndarray, np.ndarray]:
    path = require_file(cache_dir / f"{name}.npz", "python -m training.prepare_faces")
    data = np.load(path)
    return data["crops"], data["landmarks"].astype(np.float32)


def score(model: OcclusionClassifier, crops: np.ndarray) -> np.ndarray:
    out = np.zeros((len(crops), len(REGIONS)), np.float32)
    for i, crop in enumerate(crops):
        aligned = AlignedFace(image=cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR), matrix=np.eye(2, 3))
        probs = model.predict(aligned)
        out[i] = [probs[r] for r in REGIONS]
    return out


def occluded_set(crops, landmarks, families, weights, ctx, seed):
    images, labels, fractions, fams = [], [], [], []
    for i in range(len(crops)):
        rng = np.random.default_rng([seed, i])
        occ = occlude(crops[i], landmarks[i], rng, ctx, families=families, weights=weights)
        images.append(occ.image)
        labels.append(occ.labels)
        fractions.append(occ.fractions)
        fams.append(occ.families)
    return np.stack(images), np.stack(labels), np.stack(fractions), fams


# ---------------------------------------------------------------------------------------------- scoring
def clean_rates(model: OcclusionClassifier, crops: np.ndarray) -> tuple[dict, list[float], float]:
    """False-occlusion rate per region and for any region on clean faces."""
    thr = model.thresholds
    p = score(model, crops)
    flags = np.stack([p[:, k] >= thr[r] for k, r in enumerate(REGIONS)], 1)
    result = {"n": len(crops), "any_region": round(float(flags.any(1).mean()), 4),
              **{r: round(float(flags[:, k].mean()), 4) for k, r in enumerate(REGIONS)}}
    return result, [float(flags[:, k].mean()) for k in range(len(REGIONS))], float(flags.any(1).mean())


def occluded_rates(model: OcclusionClassifier, images: np.ndarray, labels: np.ndarray, fractions: np.ndarray,
                   families: list, family_names: tuple[str, ...]) -> tuple[dict, dict[str, list[float]]]:
    """Recall, precision (and precision not counting 15-30 % covered regions) per region on occluded faces;
    with several families, recall per family over faces with a single occluder."""
    thr = model.thresholds
    p = score(model, images)
    entry: dict = {"n": len(images)}
    columns: dict[str, list[float]] = {"recall": [], "precision": [], "prec_excl": []}
    for k, r in enumerate(REGIONS):
        pred, y = p[:, k] >= thr[r], labels[:, k] > 0.5
        tp = int((pred & y).sum())
        recall, precision = tp / max(int(y.sum()), 1), tp / max(int(pred.sum()), 1)
        # precision when flags on 15-30 % covered regions (ambiguous, ignored in training) are not errors
        clear = y | (fractions[:, k] < NEGATIVE_FRACTION)
        precision_clear = tp / max(int((pred & clear).sum()), 1)
        for column, value in zip(columns, (recall, precision, precision_clear)):
            columns[column].append(value)
        entry[r] = {"recall": round(recall, 4), "precision": round(precision, 4),
                    "precision_excl_ambiguous": round(precision_clear, 4), "positives": int(y.sum())}
    if len(family_names) > 1:  # recall per family, faces with a single occluder only
        per_family = {}
        for fam in family_names:
            idx = [i for i, f in enumerate(families) if f == (fam,)]
            y = labels[idx] > 0.5
            pred = np.stack([p[idx, k] >= thr[r] for k, r in enumerate(REGIONS)], 1)
            per_family[fam] = round(float((pred & y).sum() / max(y.sum(), 1)), 4)
        entry["recall_by_family_single_occluder"] = per_family
    return entry, columns


def print_table(rows: list, results: dict, thresholds: dict[str, float]) -> None:
    print("FOR: false-occlusion rate on clean faces; recall/precision: region occluded = >= 30% of its mask covered;"
          " prec_excl: precision not counting flags on 15-30% covered regions")
    header = f"{'set':24s} {'n':>5s} {'metric':9s} " + " ".join(f"{r:>6s}" for r in REGIONS) + f" {'any':>6s}"
    print(f"thresholds: {thresholds}")
    print(header)
    print("-" * len(header))
    for name, n, metric, vals, anyv in rows:
        fmt = (lambda v: f"{v:6.1%}") if metric == "FOR" else (lambda v: f"{v:6.3f}")
        print(f"{name:24s} {n:5d} {metric:9s} " + " ".join(fmt(v) for v in vals)
              + (f" {anyv:6.1%}" if anyv is not None else ""))
    fam = results["ferplus_test_synthetic"].get("recall_by_family_single_occluder", {})
    print("recall by family (FER+ Test, single occluder, all regions pooled): "
          + ", ".join(f"{k} {v:.3f}" for k, v in fam.items()))


def evaluate(model: OcclusionClassifier, limit: int = 0) -> tuple[dict, list]:
    """Every set's numbers (the manifest's ``metrics``) and the rows of the printed table."""
    cut = (lambda a: a[:limit]) if limit else (lambda a: a)
    ck_crops, _ = load("ckplus")
    te_crops, te_marks = load("ferplus_test")
    ck_crops, te_crops, te_marks = cut(ck_crops), cut(te_crops), cut(te_marks)
    results: dict = {"thresholds": model.thresholds, "model_sha256": sha256_of(model.path)}
    rows = []
    for name, crops in (("ckplus_clean", ck_crops), ("ferplus_test_clean", te_crops)):
        results[name], rates, any_rate = clean_rates(model, crops)
        rows.append((name, len(crops), "FOR", rates, any_rate))

    pool = te_crops
    ctx = {"images": load_images(TRAIN_IMAGES), "heldout_images": load_images(HELDOUT_IMAGES),
           "other_crop": lambda r: pool[r.integers(len(pool))]}
    for name, fams, w, seed in (("ferplus_test_synthetic", TRAIN_FAMILIES, TRAIN_WEIGHTS, EVAL_SEED),
                                ("ferplus_test_heldout", ("heldout_patch",), None, EVAL_SEED + 1)):
        images, labels, fractions, families = occluded_set(te_crops, te_marks, fams, w, ctx, seed)
        results[name], columns = occluded_rates(model, images, labels, fractions, families, fams)
        rows.extend((name, len(images), metric, values, None) for metric, values in columns.items())
    return results, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each set")
    parser.add_argument("--write-manifest", action="store_true")
    args = parser.parse_args(argv)

    model = OcclusionClassifier(args.models_dir)
    results, rows = evaluate(model, args.limit)
    print_table(rows, results, model.thresholds)
    out = RUNS_DIR / "occlusion" / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    if args.write_manifest and not args.limit:
        keys = ("ckplus_clean", "ferplus_test_clean", "ferplus_test_synthetic", "ferplus_test_heldout")
        update_entry(args.models_dir, "occlusion", metrics={k: results[k] for k in keys})
        print(f"metrics stored in {args.models_dir / 'manifest.json'}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
