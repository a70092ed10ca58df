"""Evaluate the exported occlusion model through the serving class (app/model_zoo/occlusion.py).

* false-occlusion rate (FOR) on clean real faces: CK+ (the held-out subjects, every 5th sorted id, never trained
  on since v2; all of CK+ too) and FER+ Test as is, overall and per expression class (majority vote / CK+ label);
* per-region recall / precision on held-out synthetic occlusions on FER+ Test crops:
  - ``synthetic``: the training occluder families, a seed the trainer never uses, FER+ Test crops as
    the "other face" patch pool;
  - ``heldout``: a family never seen in training: irregular polygons cut from scikit-image photos that
    no training sample uses (training.occlusion.occluders.HELDOUT_IMAGES).

    python -m training.occlusion.evaluate                 # prints the table, writes runs/occlusion/eval.json
    python -m training.occlusion.evaluate --write-manifest # also stores the numbers in models/manifest.json
    python -m training.occlusion.evaluate --real            # only the real-occlusion checks (shared samples)
    python -m training.occlusion.evaluate --bench-against D # per-face cost of models/ and D's model, interleaved
    python -m training.occlusion.evaluate --entry occlusion_ensemble   # the optional seed ensemble (2.1.0)
    python -m training.occlusion.evaluate --models-dir D --derive-thresholds --screen-models-dir V1
        # first re-derive D's manifest thresholds through the serving class (e.g. for a new ``preprocess``)

``--derive-thresholds`` applies the trainer's rule (training/occlusion/thresholds.py) to the scores of
the serving class: FER+ Valid less the faces the previous model (``--screen-models-dir``: for 2.0.0 the 1.0.0
folder, ``git show c990efc:models/occlusion.onnx`` and its manifest) scores >= 0.9, its expressive classes and
the CK+ held-out subjects. taiwanese_dev plays no part in it.

Real occlusions through the service path (``app.analyzer.Analyzer``), from ../shared/data/samples (skipped
when absent): the hand across the forehead and brows in ``Image_with_alpha.png`` must flag ``brows``; the hand
over the mouth in frame 200 of ``WolfgangLanger_Pexels.mp4`` must flag ``mouth``.
The per-class false-occlusion rate on taiwanese_dev (validation only) is ``python -m training.evaluate_transfer``.
Every frame of that clip against hand-labelled frame ranges (real hands over mouth and nose, clean crying and
laughing frames): ``python -m training.occlusion.video``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.filters import OcclusionVerdict
from app.manifest import sha256_of, update_entry
from app.model_zoo.occlusion import OcclusionClassifier
from training.common import TrainingError, run_cli
from training.data import CACHE_DIR, REPO_ROOT, RUNS_DIR, ckplus_heldout, data_root, load_cache
from training.occlusion.data import FERPLUS_CLASSES, aligned_from_grey, majority_class, score
from training.occlusion.occluders import (
    HELDOUT_IMAGES,
    NEGATIVE_FRACTION,
    REGIONS,
    TRAIN_FAMILIES,
    TRAIN_IMAGES,
    TRAIN_WEIGHTS,
    load_images,
    occlude,
)
from training.occlusion.thresholds import screen_natural_occlusions, thresholds_for

EVAL_SEED = 777_001
# (sample file, frame or None, region that must be flagged)
REAL_CHECKS = (("Image_with_alpha.png", None, "brows"), ("WolfgangLanger_Pexels.mp4", 200, "mouth"))
MANIFEST_KEYS = ("ckplus_heldout_clean", "ckplus_clean", "ferplus_test_clean", "ferplus_test_clean_by_majority",
                 "ferplus_test_synthetic", "ferplus_test_heldout", "real_occlusion")


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


def derive_thresholds(model: OcclusionClassifier, screen_models_dir: Path, cache_dir: Path = CACHE_DIR
                      ) -> dict[str, float]:
    """The trainer's threshold rule (training/occlusion/thresholds.py) on ``model``'s scores (serving path, its
    own ``preprocess``)."""
    valid, ckplus = load_cache("ferplus_valid", cache_dir), load_cache("ckplus", cache_dir)
    keep = ~screen_natural_occlusions(valid["crops"], screen_models_dir)
    held = ckplus_heldout(ckplus["subjects"])
    print(f"thresholds from {int(keep.sum())} screened FER+ Valid faces and {int(held.sum())} CK+ held-out faces")
    return thresholds_for(score(model, valid["crops"]), score(model, ckplus["crops"][held]), keep,
                          majority_class(valid["votes"]))


# ------------------------------------------------------------------------------------------ real occlusions
def largest_face(faces):
    """The face with the largest box of an analysis (the real-occlusion samples have one person in front)."""
    return max(faces, key=lambda f: float(np.prod(f.box[2:] - f.box[:2])))


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
                    raise TrainingError(f"cannot read frame {frame} of {path}")
                analysis = analyzer.run(image, options)
            face = largest_face(analysis.faces)
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


# ---------------------------------------------------------------------------------------------- scoring
def for_by_class(flags: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Any-region false-occlusion rate per class label (clean faces)."""
    return {str(c): round(float(flags[classes == c].mean()), 4) for c in sorted(set(classes.tolist()))}


def clean_rates(probs: np.ndarray, thresholds: dict[str, float], classes: np.ndarray | None = None
                ) -> tuple[dict, list[float], float]:
    """False-occlusion rate per region and for any region on clean faces' scores ``probs``; with ``classes``,
    also the any-region rate per class."""
    flags = np.stack([probs[:, k] >= thresholds[r] for k, r in enumerate(REGIONS)], 1)
    result: dict[str, Any] = {"n": len(probs), "any_region": round(float(flags.any(1).mean()), 4),
              **{r: round(float(flags[:, k].mean()), 4) for k, r in enumerate(REGIONS)}}
    if classes is not None:
        result["any_region_by_class"] = for_by_class(np.asarray(flags.any(1)), classes)
    return result, [float(flags[:, k].mean()) for k in range(len(REGIONS))], float(flags.any(1).mean())


def family_rates(p: np.ndarray, labels: np.ndarray, fractions: np.ndarray, families: list,
                 family_names: tuple[str, ...], thresholds: dict[str, float]) -> dict[str, dict]:
    """Per family, over faces with that single occluder: recall (all regions pooled and per region), positives,
    and false flags on the regions it left (nearly) uncovered (< 15 %)."""
    per_family = {}
    for fam in family_names:
        idx = [i for i, f in enumerate(families) if f == (fam,)]
        y = labels[idx] > 0.5
        pred = np.stack([p[idx, k] >= thresholds[r] for k, r in enumerate(REGIONS)], 1)
        clear = fractions[idx] < NEGATIVE_FRACTION  # regions the occluder left (nearly) uncovered
        per_family[fam] = {"all": round(float((pred & y).sum() / max(y.sum(), 1)), 4),
                           "positives": int(y.sum()),
                           "false_flag_uncovered": round(float((pred & clear).sum() / max(clear.sum(), 1)), 4),
                           **{r: round(float((pred[:, k] & y[:, k]).sum() / max(y[:, k].sum(), 1)), 4)
                              for k, r in enumerate(REGIONS)}}
    return per_family


def occluded_rates(model: OcclusionClassifier, images: np.ndarray, labels: np.ndarray, fractions: np.ndarray,
                   families: list, family_names: tuple[str, ...]) -> tuple[dict, dict[str, list[float]]]:
    """Recall, precision (and precision not counting 15-30 % covered regions) per region on occluded faces;
    with several families, per-family numbers over faces with a single occluder (``family_rates``)."""
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
    if len(family_names) > 1:
        entry["recall_by_family_single_occluder"] = family_rates(p, labels, fractions, families, family_names, thr)
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
          + ", ".join(f"{k} {v['all']:.3f}" for k, v in fam.items()))
    print("false flags on uncovered (< 15%) regions by family: "
          + ", ".join(f"{k} {v['false_flag_uncovered']:.3f}" for k, v in fam.items()))
    for name in ("ckplus_heldout_clean", "ferplus_test_clean_by_majority"):
        print(f"any-region FOR by class, {name}: "
              + ", ".join(f"{k} {v:.1%}" for k, v in results[name]["any_region_by_class"].items()))


def clean_sets(model: OcclusionClassifier, limit: int = 0) -> tuple[dict[str, tuple], np.ndarray, np.ndarray]:
    """The clean sets, each (scores, class labels or None): CK+ held-out subjects, all of CK+, FER+ Test, FER+
    Test faces whose majority is an expression (not unknown / not-a-face) by majority class; and the FER+
    Test crops and landmarks (cut to ``limit``) for the occluded sets."""
    cut = (lambda a: a[:limit]) if limit else (lambda a: a)
    ckplus, test = load_cache("ckplus"), load_cache("ferplus_test")
    ck_crops, ck_emotions, ck_held = ckplus["crops"], ckplus["emotions"], ckplus_heldout(ckplus["subjects"])
    te_crops, te_marks, te_votes = test["crops"], test["landmarks"], test["votes"]
    te_major = np.array(FERPLUS_CLASSES)[majority_class(te_votes)]
    te_valid = te_votes[:, :8].max(1) > te_votes[:, 8:].max(1)  # majority is an emotion, not unknown / not-a-face
    ck_crops, ck_emotions, ck_held = cut(ck_crops), cut(ck_emotions), cut(ck_held)
    te_crops, te_marks, te_major, te_valid = cut(te_crops), cut(te_marks), cut(te_major), cut(te_valid)
    ck_p, te_p = score(model, ck_crops), score(model, te_crops)
    sets = {"ckplus_heldout_clean": (ck_p[ck_held], ck_emotions[ck_held]),
            "ckplus_clean": (ck_p, ck_emotions),
            "ferplus_test_clean": (te_p, None),
            "ferplus_test_clean_by_majority": (te_p[te_valid], te_major[te_valid])}
    return sets, te_crops, te_marks


def evaluate(model: OcclusionClassifier, limit: int = 0) -> tuple[dict, list]:
    """Every set's numbers (the manifest's ``metrics``) and the rows of the printed table; the real-occlusion
    checks only on full runs (no ``limit``)."""
    results: dict = {"thresholds": model.thresholds, "model_sha256": sha256_of(model.path)}
    rows: list[tuple[str, int, str, list[float], float | None]] = []
    sets, te_crops, te_marks = clean_sets(model, limit)
    for name, (probs, classes) in sets.items():
        results[name], rates, any_rate = clean_rates(probs, model.thresholds, classes)
        if name != "ferplus_test_clean_by_majority":
            rows.append((name, len(probs), "FOR", rates, any_rate))

    pool = te_crops
    ctx = {"images": load_images(TRAIN_IMAGES), "heldout_images": load_images(HELDOUT_IMAGES),
           "other_crop": lambda r: pool[r.integers(len(pool))]}
    for name, fams, w, seed in (("ferplus_test_synthetic", TRAIN_FAMILIES, TRAIN_WEIGHTS, EVAL_SEED),
                                ("ferplus_test_heldout", ("heldout_patch",), None, EVAL_SEED + 1)):
        images, labels, fractions, families = occluded_set(te_crops, te_marks, fams, w, ctx, seed)
        results[name], columns = occluded_rates(model, images, labels, fractions, families, fams)
        rows.extend((name, len(images), metric, values, None) for metric, values in columns.items())
    if not limit:
        results["real_occlusion"] = real_occlusion_checks(model=model)
    return results, rows


def bench(models_dirs: list[Path], runs: int = 400) -> dict[str, dict[str, float]]:
    """Per-face cost of ``OcclusionClassifier.predict`` (preprocessing + ONNX, one thread) for each models folder,
    the folders interleaved run by run on one FER+ Test crop; milliseconds, median and 10th percentile."""
    import time

    aligned = aligned_from_grey(load_cache("ferplus_test")["crops"][0])
    models = [OcclusionClassifier(d) for d in models_dirs]
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for model, bucket in zip(models, times):
            start = time.perf_counter()
            model.predict(aligned)
            bucket.append(1e3 * (time.perf_counter() - start))
    return {str(d): {"p50_ms": round(float(np.median(t)), 3), "p10_ms": round(float(np.percentile(t, 10)), 3)}
            for d, t in zip(models_dirs, times)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each set")
    parser.add_argument("--write-manifest", action="store_true")
    parser.add_argument("--real", action="store_true", help="only the real-occlusion checks on the shared samples")
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "occlusion" / "eval.json")
    parser.add_argument("--derive-thresholds", action="store_true",
                        help="first store the trainer's thresholds for this model (and preprocess) in the manifest")
    parser.add_argument("--screen-models-dir", type=Path, help="with --derive-thresholds: the previous model's folder")
    parser.add_argument("--entry", default="occlusion",
                        help="the manifest entry to evaluate: occlusion or occlusion_ensemble")
    parser.add_argument("--bench-against", type=Path, nargs="*",
                        help="only time predict() per face of the `occlusion` entry of --models-dir and of these "
                             "folders, interleaved")
    args = parser.parse_args(argv)
    if args.bench_against is not None:
        for folder, t in bench([args.models_dir, *args.bench_against]).items():
            print(f"{folder}: {t['p50_ms']:.3f} ms per face (p50), p10 {t['p10_ms']:.3f} (400 runs, one thread)")
        return

    model = OcclusionClassifier(args.models_dir, name=args.entry)
    if args.derive_thresholds:
        if args.screen_models_dir is None:
            raise TrainingError("--derive-thresholds needs --screen-models-dir (the previous occlusion model)")
        thresholds = derive_thresholds(model, args.screen_models_dir)
        update_entry(args.models_dir, args.entry, {"thresholds": thresholds})
        print(f"thresholds {thresholds} stored in {args.models_dir / 'manifest.json'}")
        model = OcclusionClassifier(args.models_dir, name=args.entry)
    if args.real:
        print_real_checks(real_occlusion_checks(model=model))
        return
    results, rows = evaluate(model, args.limit)
    print_table(rows, results, model.thresholds)
    if "real_occlusion" in results:
        print_real_checks(results["real_occlusion"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.write_manifest and not args.limit:
        update_entry(args.models_dir, args.entry, metrics={k: results[k] for k in MANIFEST_KEYS})
        print(f"metrics stored in {args.models_dir / 'manifest.json'}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
