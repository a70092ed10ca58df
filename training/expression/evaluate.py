"""Evaluate the INSTALLED expression model (models/expression.onnx) through the service's code path.

    python -m training.expression.evaluate                 # FER+ Test + CK+ (cached aligned crops)
    python -m training.expression.evaluate --pngs 500      # + the first 500 FER+ Test PNGs via the face_crop path
    python -m training.expression.evaluate --bench         # + ms per face, one thread

Every face goes through ``ExpressionRecognizer.predict(AlignedFace)``. FER+ Test uses the majority vote
(faces whose majority is unknown/NF or tied are left out). CK+ (never seen in training) is scored against
its 7 labels mapped with CKPLUS_TO_FERPLUS; the model may still answer "neutral", which counts as wrong
(``acc_8way``); ``acc_7way`` takes the argmax over the 7 CK+ classes only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from app.align import AlignedFace
from app.manifest import update_entry
from app.model_zoo.expression import ExpressionRecognizer
from training.common import require_file, run_cli
from training.data import CACHE_DIR, CKPLUS_TO_FERPLUS, FERPLUS_CLASSES, PREPARE, REPO_ROOT, RUNS_DIR, ferplus_rows
from training.expression.data import majority_labels
from training.metrics import confusion, macro_f1

MODELS = REPO_ROOT / "models"
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def aligned_from_grey(crop: np.ndarray) -> AlignedFace:
    return AlignedFace(image=cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR), matrix=IDENTITY)


def predict_all(rec: ExpressionRecognizer, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    results = [rec.predict(aligned_from_grey(c)) for c in crops]
    idx = {c: i for i, c in enumerate(rec.classes)}
    probs = np.array([[r.scores[c] for c in rec.classes] for r in results])
    return probs, np.array([idx[r.label] for r in results]), np.array([r.uncertain for r in results])


def print_cm(cm: np.ndarray, names: list[str]) -> None:
    short = [n[:5] for n in names]
    print("true\\pred " + " ".join(f"{s:>6}" for s in short))
    for name, row in zip(short, cm):
        print(f"{name:>9} " + " ".join(f"{v:>6}" for v in row))


def write_manifest_metrics(report: dict, models_dir: Path = MODELS) -> None:
    """Add the service-path numbers to the expression entry's ``metrics`` in models/manifest.json."""
    test, ck = report["ferplus_test"], report["ckplus"]
    metrics = {
        "ferplus_test_acc_service_path": round(test["accuracy"], 4),
        "ferplus_test_macro_f1": round(test["macro_f1"], 4),
        "ckplus_acc_8way": round(ck["acc_8way"], 4), "ckplus_acc_7way": round(ck["acc_7way"], 4),
    }
    if "bench_ms_per_face_1thread" in report:
        metrics["ms_per_face_1thread"] = round(report["bench_ms_per_face_1thread"], 3)
    update_entry(models_dir, "expression", metrics=metrics)


# ------------------------------------------------------------------------------------------- the sets
def score_ferplus_test(rec: ExpressionRecognizer, crops: np.ndarray, votes: np.ndarray) -> dict:
    """FER+ Test faces with a majority label, through ExpressionRecognizer.predict."""
    names = list(FERPLUS_CLASSES)
    y = majority_labels(votes)
    ok = y >= 0
    _, pred, unc = predict_all(rec, crops[ok])
    yt = y[ok]
    cm = confusion(yt, pred, len(names))
    acc = float((pred == yt).mean())
    result = {
        "n": int(ok.sum()), "accuracy": acc, "macro_f1": macro_f1(yt, pred), "confusion": cm.tolist(),
        "uncertain_rate": float(unc.mean()),
        "accuracy_certain": float((pred == yt)[~unc].mean()), "accuracy_uncertain": float((pred == yt)[unc].mean())
        if unc.any() else None,
    }
    print(f"FER+ Test (majority, n={ok.sum()}): accuracy {acc:.4f}, macro-F1 {result['macro_f1']:.4f}; "
          f"uncertain {unc.mean():.1%} (acc certain {result['accuracy_certain']:.4f})")
    print_cm(cm, names)
    return result


def score_ferplus_pngs(rec: ExpressionRecognizer, models_dir: Path, crops: np.ndarray, count: int) -> dict:
    """The first ``count`` FER+ Test PNGs through the service's own path (``Analyzer.run`` with ``face_crop``:
    mesh, alignment, expression head; pre-filters off, FER+'s prior as for the cached numbers), and how often
    the label matches the one of the cached crop."""
    from app.analyzer import Analyzer, FaceOptions
    from app.settings import Settings

    names = list(FERPLUS_CLASSES)
    analyzer = Analyzer(Settings(models_dir=models_dir))
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True, expression_prior="ferplus")
    rows = ferplus_rows("test")[:count]
    hits = agree = n = 0
    for i, row in enumerate(rows):
        if row.majority is None:
            continue
        face = analyzer.run(row.path.read_bytes(), options, heads={"expression"}).faces[0]
        if face.filtered:  # only an unusable mesh stops the head here: count it as a miss
            n += 1
            continue
        label = names.index(face.outputs["expression"].label)
        hits += label == row.majority
        agree += label == names.index(rec.predict(aligned_from_grey(crops[i])).label)
        n += 1
    print(f"FER+ Test PNGs via the Analyzer's face_crop path (first {len(rows)}, n={n}): accuracy {hits / n:.4f}, "
          f"same label as the cached crop {agree / n:.1%}")
    return {"n": n, "accuracy": hits / n, "agreement_with_cache": agree / n}


def score_ckplus(rec: ExpressionRecognizer, cache: Path) -> dict:
    """All of CK+ (never trained on), its 7 labels mapped to FER+ classes."""
    names = list(FERPLUS_CLASSES)
    with np.load(require_file(cache / "ckplus.npz", PREPARE)) as z:
        ck_crops, emotions, is_peak = z["crops"], z["emotions"], z["is_peak"]
    ck_y = np.array([names.index(CKPLUS_TO_FERPLUS[e]) for e in emotions])
    ck_probs, ck_pred, _ = predict_all(rec, ck_crops)
    seven = sorted(set(ck_y.tolist()))
    pred7 = np.array(seven)[ck_probs[:, seven].argmax(1)]
    ck_cm = confusion(ck_y, ck_pred, len(names))
    result = {
        "n": len(ck_y), "acc_8way": float((ck_pred == ck_y).mean()), "acc_7way": float((pred7 == ck_y).mean()),
        "acc_8way_peak": float((ck_pred == ck_y)[is_peak].mean()), "macro_f1_8way": macro_f1(ck_y, ck_pred),
        "confusion": ck_cm.tolist(),
    }
    print(f"CK+ (unseen, n={len(ck_y)}): accuracy {result['acc_8way']:.4f} (8-way), "
          f"{result['acc_7way']:.4f} (argmax over its 7 classes), peak frames {result['acc_8way_peak']:.4f}")
    print_cm(ck_cm, names)
    return result


def bench(rec: ExpressionRecognizer, crops: np.ndarray, n_runs: int = 500) -> float:
    """ms per face, one thread: preprocess + ONNX + prototypes."""
    face = aligned_from_grey(crops[0])
    for _ in range(20):
        rec.predict(face)
    start = time.perf_counter()
    for i in range(n_runs):
        rec.predict(aligned_from_grey(crops[i % len(crops)]))
    ms = (time.perf_counter() - start) * 1000 / n_runs
    print(f"bench: {ms:.3f} ms per face (preprocess + ONNX + prototypes), 1 thread")
    return ms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=MODELS)
    p.add_argument("--cache", type=Path, default=CACHE_DIR)
    p.add_argument("--pngs", type=int, default=0, help="also run the first N FER+ Test PNGs through face_crop")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--out", type=Path, default=RUNS_DIR / "expression" / "eval.json")
    p.add_argument("--write-manifest", action="store_true", help="store the numbers in the manifest's metrics")
    args = p.parse_args(argv)
    rec = ExpressionRecognizer(args.models, threads=1)
    with np.load(require_file(args.cache / "ferplus_test.npz", PREPARE)) as z:
        crops, votes = z["crops"], z["votes"]
    report: dict = {"model_version": rec.version, "ferplus_test": score_ferplus_test(rec, crops, votes)}
    if args.pngs:
        report["ferplus_test_png_face_crop"] = score_ferplus_pngs(rec, args.models, crops, args.pngs)
    report["ckplus"] = score_ckplus(rec, args.cache)
    if args.bench:
        report["bench_ms_per_face_1thread"] = bench(rec, crops)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    if args.write_manifest:
        write_manifest_metrics(report, args.models)
    print(f"-> {args.out}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
