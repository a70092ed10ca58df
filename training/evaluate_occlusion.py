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
from app.model_zoo.base import sha256_of
from app.model_zoo.occlusion import OcclusionClassifier
from training.data import REPO_ROOT, RUNS_DIR
from training.occluders import (
    HELDOUT_IMAGES, NEGATIVE_FRACTION, REGIONS, TRAIN_FAMILIES, TRAIN_IMAGES, TRAIN_WEIGHTS, load_images, occlude,
)

EVAL_SEED = 777_001


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = RUNS_DIR / "cache" / f"{name}.npz"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python -m training.prepare_faces` first")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each set")
    parser.add_argument("--write-manifest", action="store_true")
    args = parser.parse_args(argv)

    model = OcclusionClassifier(args.models_dir)
    thr = model.thresholds
    cut = (lambda a: a[: args.limit]) if args.limit else (lambda a: a)
    ck_crops, _ = load("ckplus")
    te_crops, te_marks = load("ferplus_test")
    ck_crops, te_crops, te_marks = cut(ck_crops), cut(te_crops), cut(te_marks)

    results: dict = {"thresholds": thr, "model_sha256": sha256_of(args.models_dir / model.entry.file)}
    rows = []
    for name, crops in (("ckplus_clean", ck_crops), ("ferplus_test_clean", te_crops)):
        p = score(model, crops)
        flags = np.stack([p[:, k] >= thr[r] for k, r in enumerate(REGIONS)], 1)
        results[name] = {"n": len(crops), "any_region": round(float(flags.any(1).mean()), 4),
                         **{r: round(float(flags[:, k].mean()), 4) for k, r in enumerate(REGIONS)}}
        rows.append((name, len(crops), "FOR", [flags[:, k].mean() for k in range(len(REGIONS))], flags.any(1).mean()))

    pool = te_crops
    ctx = {"images": load_images(TRAIN_IMAGES), "heldout_images": load_images(HELDOUT_IMAGES),
           "other_crop": lambda r: pool[r.integers(len(pool))]}
    for name, fams, w, seed in (("ferplus_test_synthetic", TRAIN_FAMILIES, TRAIN_WEIGHTS, EVAL_SEED),
                                ("ferplus_test_heldout", ("heldout_patch",), None, EVAL_SEED + 1)):
        images, labels, fractions, families = occluded_set(te_crops, te_marks, fams, w, ctx, seed)
        p = score(model, images)
        entry: dict = {"n": len(images)}
        recalls, precisions, strict = [], [], []
        for k, r in enumerate(REGIONS):
            pred, y = p[:, k] >= thr[r], labels[:, k] > 0.5
            tp = int((pred & y).sum())
            recall, precision = tp / max(int(y.sum()), 1), tp / max(int(pred.sum()), 1)
            # precision when flags on 15-30 % covered regions (ambiguous, ignored in training) are not errors
            clear = y | (fractions[:, k] < NEGATIVE_FRACTION)
            precision_clear = tp / max(int((pred & clear).sum()), 1)
            recalls.append(recall)
            precisions.append(precision)
            strict.append(precision_clear)
            entry[r] = {"recall": round(recall, 4), "precision": round(precision, 4),
                        "precision_excl_ambiguous": round(precision_clear, 4), "positives": int(y.sum())}
        if len(fams) > 1:  # recall per family, faces with a single occluder only
            per_family = {}
            for fam in fams:
                idx = [i for i, f in enumerate(families) if f == (fam,)]
                y = labels[idx] > 0.5
                pred = np.stack([p[idx, k] >= thr[r] for k, r in enumerate(REGIONS)], 1)
                per_family[fam] = round(float((pred & y).sum() / max(y.sum(), 1)), 4)
            entry["recall_by_family_single_occluder"] = per_family
        results[name] = entry
        rows.append((name, len(images), "recall", recalls, None))
        rows.append((name, len(images), "precision", precisions, None))
        rows.append((name, len(images), "prec_excl", strict, None))

    print("FOR: false-occlusion rate on clean faces; recall/precision: region occluded = >= 30% of its mask covered;"
          " prec_excl: precision not counting flags on 15-30% covered regions")
    header = f"{'set':24s} {'n':>5s} {'metric':9s} " + " ".join(f"{r:>6s}" for r in REGIONS) + f" {'any':>6s}"
    print(f"thresholds: {thr}")
    print(header)
    print("-" * len(header))
    for name, n, metric, vals, anyv in rows:
        fmt = (lambda v: f"{v:6.1%}") if metric == "FOR" else (lambda v: f"{v:6.3f}")
        print(f"{name:24s} {n:5d} {metric:9s} " + " ".join(fmt(v) for v in vals)
              + (f" {anyv:6.1%}" if anyv is not None else ""))
    fam = results["ferplus_test_synthetic"].get("recall_by_family_single_occluder", {})
    print("recall by family (FER+ Test, single occluder, all regions pooled): "
          + ", ".join(f"{k} {v:.3f}" for k, v in fam.items()))

    out = RUNS_DIR / "occlusion" / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    if args.write_manifest and not args.limit:
        path = args.models_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        metrics = manifest["models"]["occlusion"].setdefault("metrics", {})
        for key in ("ckplus_clean", "ferplus_test_clean", "ferplus_test_synthetic", "ferplus_test_heldout"):
            metrics[key] = results[key]
        metrics["command"] = "python -m training.evaluate_occlusion --write-manifest"
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"metrics stored in {path}")


if __name__ == "__main__":
    main()
