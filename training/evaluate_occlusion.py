"""Evaluate the exported occlusion model through the serving class (app/model_zoo/occlusion.py).

* false-occlusion rate (FOR) on clean real faces: CK+ (the held-out subjects, every 5th sorted id, never trained
  on since v2; all of CK+ too) and FER+ Test as is, overall and per expression class (majority vote / CK+ label);
* per-region recall / precision on held-out synthetic occlusions on FER+ Test crops:
  - ``synthetic``: the training occluder families, a seed the trainer never uses, FER+ Test crops as
    the "other face" patch pool;
  - ``heldout``: a family never seen in training: irregular polygons cut from scikit-image photos that
    no training sample uses (training.occluders.HELDOUT_IMAGES).

    python -m training.evaluate_occlusion                 # prints the table, writes runs/occlusion/eval.json
    python -m training.evaluate_occlusion --write-manifest # also stores the numbers in models/manifest.json
    python -m training.evaluate_occlusion --real            # only the real-occlusion checks (shared samples)

Real occlusions through the service path (``app.analyzer.Analyzer``), from ../shared/data/samples (skipped
when absent): the hand across the forehead and brows in ``Image_with_alpha.png`` must flag ``brows``; the hand
over the mouth in frame 200 of ``WolfgangLanger_Pexels.mp4`` must flag ``mouth``.
The per-class false-occlusion rate on taiwanese_dev (validation only) is ``python -m training.evaluate_transfer``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from app.align import AlignedFace
from app.filters import OcclusionVerdict
from app.model_zoo.base import sha256_of
from app.model_zoo.occlusion import OcclusionClassifier
from training.data import REPO_ROOT, RUNS_DIR, data_root
from training.occluders import (
    HELDOUT_IMAGES, NEGATIVE_FRACTION, REGIONS, TRAIN_FAMILIES, TRAIN_IMAGES, TRAIN_WEIGHTS, load_images, occlude,
)

EVAL_SEED = 777_001
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
# (sample file, frame or None, region that must be flagged)
REAL_CHECKS = (("Image_with_alpha.png", None, "brows"), ("WolfgangLanger_Pexels.mp4", 200, "mouth"))


def real_occlusion_checks(analyzer=None, samples: Path | None = None,
                          model: OcclusionClassifier | None = None) -> list[dict]:
    """Real occlusions through the service's own path (decode -> detect -> mesh -> align -> occlusion). One
    record per check: the largest face's scores, flagged regions and whether the expected region is flagged;
    ``None`` scores when the sample is absent. ``model``: score the service's aligned crop with this classifier
    and its thresholds instead of the analyzer's own (to compare trained variants)."""
    from app.analyzer import Analyzer, FaceOptions
    from app.settings import Settings

    samples = samples or data_root() / "samples"
    analyzer = analyzer or Analyzer(Settings())
    options = FaceOptions(side_face_filter=False, occlusion_filter=False)
    out = []
    for name, frame, region in REAL_CHECKS:
        record: dict = {"sample": name, "frame": frame, "expected": region, "scores": None}
        path = samples / name
        if path.is_file():
            if frame is None:
                analysis = analyzer.run(path.read_bytes(), options)
            else:
                capture = cv2.VideoCapture(str(path))
                capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
                ok, image = capture.read()
                capture.release()
                if not ok:
                    raise SystemExit(f"cannot read frame {frame} of {path}")
                analysis = analyzer.run(image, options)
            face = max(analysis.faces, key=lambda f: float(np.prod(f.box[2:] - f.box[:2])))
            verdict = face.occlusion
            if model is not None:
                verdict = OcclusionVerdict(scores=model.predict(face.aligned), thresholds=model.thresholds)
            flagged = [r for r, hit in verdict.regions.items() if hit]
            record.update(scores={r: round(v, 4) for r, v in verdict.scores.items()}, flagged=flagged,
                          passed=region in flagged)
        out.append(record)
    return out


def print_real_checks(records: list[dict]) -> None:
    for r in records:
        where = r["sample"] + (f" frame {r['frame']}" if r["frame"] is not None else "")
        if r["scores"] is None:
            print(f"real occlusion: {where}: absent (put the shared data beside the repo)")
        else:
            print(f"real occlusion: {where}: expect {r['expected']}: {'PASS' if r['passed'] else 'FAIL'}; flagged "
                  f"{r['flagged']}; scores {r['scores']}")


def for_by_class(flags: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Any-region false-occlusion rate per class label (clean faces)."""
    return {str(c): round(float(flags[classes == c].mean()), 4) for c in sorted(set(classes.tolist()))}


def load(name: str, extra: str | None = None):
    path = RUNS_DIR / "cache" / f"{name}.npz"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python -m training.prepare_faces` first")
    data = np.load(path)
    if extra is not None:
        return data["crops"], data["landmarks"].astype(np.float32), data[extra]
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
    parser.add_argument("--real", action="store_true", help="only the real-occlusion checks on the shared samples")
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "occlusion" / "eval.json")
    args = parser.parse_args(argv)
    if args.real:
        records = real_occlusion_checks(model=OcclusionClassifier(args.models_dir))
        print_real_checks(records)
        return

    model = OcclusionClassifier(args.models_dir)
    thr = model.thresholds
    cut = (lambda a: a[: args.limit]) if args.limit else (lambda a: a)
    from training.train_occlusion import ckplus_heldout

    ck_crops, _, ck_emotions = load("ckplus", "emotions")
    ck_held = ckplus_heldout(np.load(RUNS_DIR / "cache" / "ckplus.npz")["subjects"])
    te_crops, te_marks, te_votes = load("ferplus_test", "votes")
    te_major = np.array(FERPLUS_CLASSES)[te_votes[:, :8].argmax(1)]
    te_valid = te_votes[:, :8].max(1) > te_votes[:, 8:].max(1)  # majority is an emotion, not unknown / not-a-face
    ck_crops, ck_emotions, ck_held = cut(ck_crops), cut(ck_emotions), cut(ck_held)
    te_crops, te_marks, te_major, te_valid = cut(te_crops), cut(te_marks), cut(te_major), cut(te_valid)

    results: dict = {"thresholds": thr, "model_sha256": sha256_of(args.models_dir / model.entry.file)}
    rows = []
    ck_p = score(model, ck_crops)
    te_p = score(model, te_crops)
    for name, p, classes in (("ckplus_heldout_clean", ck_p[ck_held], ck_emotions[ck_held]),
                             ("ckplus_clean", ck_p, ck_emotions),
                             ("ferplus_test_clean", te_p, None),
                             ("ferplus_test_clean_by_majority", te_p[te_valid], te_major[te_valid])):
        flags = np.stack([p[:, k] >= thr[r] for k, r in enumerate(REGIONS)], 1)
        results[name] = {"n": len(p), "any_region": round(float(flags.any(1).mean()), 4),
                         **{r: round(float(flags[:, k].mean()), 4) for k, r in enumerate(REGIONS)}}
        if classes is not None:
            results[name]["any_region_by_class"] = for_by_class(flags.any(1), classes)
        if name != "ferplus_test_clean_by_majority":
            rows.append((name, len(p), "FOR", [flags[:, k].mean() for k in range(len(REGIONS))], flags.any(1).mean()))

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
                clear = fractions[idx] < NEGATIVE_FRACTION  # regions the occluder left (nearly) uncovered
                per_family[fam] = {"all": round(float((pred & y).sum() / max(y.sum(), 1)), 4),
                                   "positives": int(y.sum()),
                                   "false_flag_uncovered": round(float((pred & clear).sum() / max(clear.sum(), 1)), 4),
                                   **{r: round(float((pred[:, k] & y[:, k]).sum() / max(y[:, k].sum(), 1)), 4)
                                      for k, r in enumerate(REGIONS)}}
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
          + ", ".join(f"{k} {v['all']:.3f}" for k, v in fam.items()))
    print("false flags on uncovered (< 15%) regions by family: "
          + ", ".join(f"{k} {v['false_flag_uncovered']:.3f}" for k, v in fam.items()))
    for name in ("ckplus_heldout_clean", "ferplus_test_clean_by_majority"):
        print(f"any-region FOR by class, {name}: "
              + ", ".join(f"{k} {v:.1%}" for k, v in results[name]["any_region_by_class"].items()))
    if not args.limit:
        results["real_occlusion"] = real_occlusion_checks(model=model)
        print_real_checks(results["real_occlusion"])

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    if args.write_manifest and not args.limit:
        path = args.models_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        metrics = manifest["models"]["occlusion"].setdefault("metrics", {})
        for key in ("ckplus_heldout_clean", "ckplus_clean", "ferplus_test_clean", "ferplus_test_clean_by_majority",
                    "ferplus_test_synthetic", "ferplus_test_heldout", "real_occlusion"):
            metrics[key] = results[key]
        metrics["command"] = "python -m training.evaluate_occlusion --write-manifest"
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"metrics stored in {path}")


if __name__ == "__main__":
    main()
