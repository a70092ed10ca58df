"""Score the exported fold ONNX models through the service's own decoding, against the EMFACS baseline.

    python -m training.au.evaluate                   # table of per-AU F1/precision/recall over 5 CV folds
    python -m training.au.evaluate --write-manifest  # also store per-AU thresholds + CV metrics in the manifest
    python -m training.au.evaluate --bench           # ms per face, single thread, of models/au_detector.onnx
    python -m training.au.evaluate --cv-dir runs/a/cv runs/b/cv   # output ensemble of CV runs (mean of scores)

Each face is scored by the ONNX model of the fold that held its subject out (runs/au/cv/fold{k}.onnx),
preprocessed and decoded by app/model_zoo/au_detector.py (each AU's best box).
Thresholds: per AU, the one maximising F1 over all out-of-fold scores ("pooled"; these go to the manifest
and give the optimistic F1 column). The honest column "F1 nested" picks each fold's thresholds on the
OTHER folds' out-of-fold scores only.

Baseline: EMFACS emotion prototypes; the AUs are predicted from the TRUE CK+ emotion label of the face,
so the baseline cheats: it is given the emotion the network has to infer.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from app.manifest import update_entry
from app.model_zoo.au_detector import face_decisions, preprocess
from app.model_zoo.base import OnnxFile
from training.common import MissingDataError, require_file, run_cli
from training.data import CKPLUS_TO_FERPLUS, PREPARE, REPO_ROOT, RUNS_DIR
from training.metrics import best_f1_threshold, prf

CACHE = RUNS_DIR / "cache" / "ckplus.npz"
REQUIRED = ["AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU12", "AU15", "AU17", "AU23", "AU24", "AU25", "AU27"]
# EMFACS prototypes (Friesen & Ekman 1983), intensity/side marks dropped. Surprise lists 26 or 27 (25): both
# are predicted. AU16 of disgust is not among the detector's AUs.
EMFACS = {
    "happy": [6, 12], "surprise": [1, 2, 5, 25, 26, 27], "sadness": [1, 4, 15],
    "fear": [1, 2, 4, 5, 7, 20, 26], "anger": [4, 5, 7, 23], "disgust": [9, 15, 16], "contempt": [12, 14],
}


def prototype_aus(expression: str, classes: list[str]) -> list[str]:
    """The EMFACS prototype AUs of an expression (a CK+ or FER+ class name) among ``classes``; [] for neutral."""
    by_class = {CKPLUS_TO_FERPLUS[e]: aus for e, aus in EMFACS.items()}
    return [f"AU{n}" for n in by_class.get(CKPLUS_TO_FERPLUS.get(expression, expression), []) if f"AU{n}" in classes]


def out_of_fold_scores(cv_dir: Path | list[Path], crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scores (N, C) by each face's held-out fold model, fold number of each face, and the fold meta. Several
    folders (the same subject folds, checked): the mean of their scores, an output ensemble."""
    if isinstance(cv_dir, list):
        runs = [out_of_fold_scores(d, crops) for d in cv_dir]
        if any(not np.array_equal(r[1], runs[0][1]) for r in runs[1:]):
            raise MissingDataError(f"{cv_dir}: the fold models do not hold out the same subjects")
        return np.mean([r[0] for r in runs], axis=0), runs[0][1], runs[0][2]
    metas = sorted(cv_dir.glob("fold*.json"))
    if not metas:
        raise MissingDataError(f"no fold models in {cv_dir}: run `python -m training.au.train --cv` first")
    meta0 = json.loads(metas[0].read_text())
    scores = np.full((len(crops), len(meta0["classes"])), np.nan, np.float32)
    fold_of = np.full(len(crops), -1)
    worst = 0.0
    for path in metas:
        meta = json.loads(path.read_text())
        fold_model = OnnxFile(path.with_suffix(".onnx"))
        anchors = np.asarray(meta["anchors"], np.float32)
        for i in meta["test_index"]:
            (raw,) = fold_model.run(preprocess(crops[i], meta["input_size"]))
            scores[i] = face_decisions(raw[0], anchors)[0]
            fold_of[i] = meta["fold"]
        if "torch_scores" in meta:  # a weight soup (training/au/soup.py) has no torch model to compare with
            worst = max(worst, float(np.abs(scores[meta["test_index"]] - np.asarray(meta["torch_scores"])).max()))
    if "soup_of" in meta0:
        print(f"{len(metas)} fold soups (no torch twin to compare with; each member was checked at export)")
    else:
        print(f"{len(metas)} folds; max |onnx+numpy decode - torch| over out-of-fold AU scores: {worst:.1e}")
    return scores, fold_of, meta0


def neutral_scores(cv_dir: Path | list[Path], cache_dir: Path, min_votes: int = 8) -> np.ndarray:
    """(M, C) AU scores of the FER+ Valid faces >= ``min_votes`` of 10 raters called neutral (no AU should be
    active), each the mean over the fold models (no fold model trained on FER+ Valid); several folders: over all."""
    if isinstance(cv_dir, list):
        return np.mean([neutral_scores(d, cache_dir, min_votes) for d in cv_dir], axis=0)
    with np.load(cache_dir / "ferplus_valid.npz") as z:
        crops = z["crops"][z["votes"][:, 0] >= min_votes]
    total = np.zeros((len(crops), 0))
    metas = sorted(cv_dir.glob("fold*.json"))
    for path in metas:
        meta = json.loads(path.read_text())
        fold_model = OnnxFile(path.with_suffix(".onnx"))
        anchors = np.asarray(meta["anchors"], np.float32)
        scores = np.stack([face_decisions(fold_model.run(preprocess(c, meta["input_size"]))[0][0], anchors)[0]
                           for c in crops])
        total = scores if not total.size else total + scores
    return total / len(metas)


def evaluate(cv_dir: Path | list[Path], cache: Path, neutral: np.ndarray | None = None) -> dict:
    """Per-AU thresholds maximise F1 over CK+'s out-of-fold scores; with ``neutral`` (scores of faces with no
    AU active) those faces join the choice as negatives, so a threshold also has to leave neutral faces
    alone. F1/P/R are always reported on CK+ alone."""
    data = np.load(require_file(cache, PREPARE + " --only ckplus"))
    names = [str(a) for a in data["au_names"]]
    scores, fold_of, meta = out_of_fold_scores(cv_dir, data["crops"])
    classes = meta["classes"]
    done = fold_of >= 0
    if not done.all():
        print(f"only {done.sum()} of {len(done)} faces have a fold model; scoring those")
    truth_all = data["aus"][:, [names.index(a) for a in classes]].astype(bool)
    scores, truth, folds, emotions = scores[done], truth_all[done], fold_of[done], data["emotions"][done]
    baseline = np.array([[int(a[2:]) in EMFACS[str(e)] for a in classes] for e in emotions])
    rows = {}
    extra = np.zeros((0, len(classes)), np.float32) if neutral is None else neutral

    def choose(sel: np.ndarray, c: int) -> float:
        return best_f1_threshold(np.concatenate([scores[sel, c], extra[:, c]]),
                              np.concatenate([truth[sel, c], np.zeros(len(extra), bool)]))

    everyone = np.ones(len(scores), bool)
    for c, au in enumerate(classes):
        t = choose(everyone, c)
        f1, p, r = prf(scores[:, c] >= t, truth[:, c])
        nested = np.zeros(len(scores), bool)
        for k in np.unique(folds):
            others = folds != k
            tk = choose(others, c) if others.any() else t
            nested[folds == k] = scores[folds == k, c] >= tk
        f1n, pn, rn = prf(nested, truth[:, c])
        fb = prf(baseline[:, c], truth[:, c])[0]
        rows[au] = {"positives": int(truth[:, c].sum()), "threshold": round(t, 4), "f1": round(f1, 3),
                    "neutral_rate": round(float((extra[:, c] >= t).mean()), 3) if len(extra) else None,
                    "precision": round(p, 3), "recall": round(r, 3), "f1_nested": round(f1n, 3),
                    "precision_nested": round(pn, 3), "recall_nested": round(rn, 3), "baseline_f1": round(fb, 3)}
    result = {"classes": classes, "rows": rows, "faces": int(done.sum()), "folds": len(np.unique(folds))}
    if len(extra):
        thresholds = np.array([rows[a]["threshold"] for a in classes])
        result["neutral_valid"] = {"faces": int(len(extra)),
                                   "present_per_face": round(float((extra >= thresholds).sum(1).mean()), 3)}
    return result


def mean(rows: dict, key: str, aus: list[str]) -> float:
    return float(np.mean([rows[a][key] for a in aus if a in rows]))


def print_table(result: dict) -> None:
    from training.au.regions import FACS_NAMES

    rows = result["rows"]
    print(f"\nCK+ subject-wise {result['folds']}-fold CV, {result['faces']} faces (exported ONNX + service decode)")
    print(f"{'AU':5} {'name':21} {'pos':>4} {'thr':>6} {'F1':>6} {'P':>6} {'R':>6} {'F1nest':>7} {'EMFACS':>7}")
    for au, r in rows.items():
        print(f"{au:5} {FACS_NAMES[au]:21} {r['positives']:4d} {r['threshold']:6.3f} {r['f1']:6.3f} "
              f"{r['precision']:6.3f} {r['recall']:6.3f} {r['f1_nested']:7.3f} {r['baseline_f1']:7.3f}")
    for label, aus in (("mean, 14 required AUs", REQUIRED), (f"mean, all {len(rows)} AUs", list(rows))):
        means = [mean(rows, key, aus) for key in ("f1", "precision", "recall", "f1_nested", "baseline_f1")]
        print(f"{label:32} {'':11} " + " ".join(f"{m:6.3f}" for m in means[:3]) + f" {means[3]:7.3f} {means[4]:7.3f}")
    print("F1/P/R: pooled out-of-fold thresholds (stored in the manifest; optimistic). F1nest: thresholds chosen "
          "on the other folds (honest). EMFACS: prototype AUs of the TRUE emotion label (a cheating baseline).")
    if "neutral_valid" in result:
        n = result["neutral_valid"]
        print(f"thresholds also chosen to leave {n['faces']} neutral FER+ Valid faces alone: "
              f"{n['present_per_face']:.2f} AUs present per neutral face at the pooled thresholds")


def write_manifest(result: dict, models_dir: Path) -> None:
    """The per-AU thresholds and the CV metrics into the au_detector entry (both replaced)."""
    rows = result["rows"]
    thresholds = {a: rows[a]["threshold"] for a in result["classes"]}
    metrics = {
        "protocol": f"CK+ (759 faces, 94 subjects), subject-wise {result['folds']}-fold CV, exported ONNX fold models "
                    "decoded by app/model_zoo/au_detector.py; thresholds: the best +-0.05 band of pooled out-of-fold "
                    "F1" + (f" with {result['neutral_valid']['faces']} FER+ Valid neutral faces as negatives"
                            if "neutral_valid" in result else ""),
        "mean_f1_required14": round(mean(rows, "f1", REQUIRED), 3),
        "mean_f1_all": round(mean(rows, "f1", list(rows)), 3),
        "mean_f1_nested_thresholds_required14": round(mean(rows, "f1_nested", REQUIRED), 3),
        "mean_f1_nested_thresholds_all": round(mean(rows, "f1_nested", list(rows)), 3),
        "emfacs_baseline_mean_f1_required14": round(mean(rows, "baseline_f1", REQUIRED), 3),
        "emfacs_baseline_mean_f1_all": round(mean(rows, "baseline_f1", list(rows)), 3),
        "per_au": {a: {k: rows[a][k] for k in ("positives", "f1", "precision", "recall", "f1_nested", "baseline_f1")}
                   for a in result["classes"]},
    }
    if "neutral_valid" in result:
        metrics["ferplus_valid_neutral_aus_per_face"] = result["neutral_valid"]["present_per_face"]
    update_entry(models_dir, "au_detector", {"thresholds": thresholds, "metrics": metrics})
    print(f"thresholds and metrics -> {models_dir / 'manifest.json'}")


def bench(models_dir: Path, repeats: int = 300) -> float:
    """ms per face, one thread: preprocess + ONNX + numpy decode/NMS (AuDetector.predict)."""
    import cv2

    from app.align import AlignedFace
    from app.model_zoo.au_detector import AuDetector

    detector = AuDetector(models_dir, threads=1)
    detector.warm_up()
    image = np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8)
    aligned = AlignedFace(image=cv2.GaussianBlur(image, (5, 5), 2), matrix=np.eye(2, 3))
    for _ in range(20):
        detector.predict(aligned)
    start = time.perf_counter()
    for _ in range(repeats):
        detector.predict(aligned)
    total = (time.perf_counter() - start) / repeats * 1000
    tensor = preprocess(aligned.image, detector.size)
    start = time.perf_counter()
    for _ in range(repeats):
        detector.run(tensor)
    net = (time.perf_counter() - start) / repeats * 1000
    print(f"AU detector, 1 thread: {total:.2f} ms per face (network alone {net:.2f} ms, "
          f"preprocess + decode {total - net:.2f} ms)")
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-dir", type=Path, nargs="+", default=[RUNS_DIR / "au" / "cv"],
                        help="fold models; several folders (same folds): their output ensemble, the mean of scores")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--write-manifest", action="store_true")
    parser.add_argument("--neutral-valid", action="store_true",
                        help="thresholds also leave FER+ Valid faces with >= 8/10 neutral votes alone (as negatives)")
    parser.add_argument("--bench", action="store_true", help="only time the served model")
    args = parser.parse_args(argv)
    if args.bench:
        bench(args.models_dir)
        return
    if len(args.cv_dir) > 1 and args.write_manifest:
        raise SystemExit("an output ensemble of several CV runs is not one servable model: no --write-manifest")
    cv_dir = args.cv_dir[0] if len(args.cv_dir) == 1 else args.cv_dir
    neutral = neutral_scores(cv_dir, args.cache.parent) if args.neutral_valid else None
    result = evaluate(cv_dir, args.cache, neutral)
    print_table(result)
    if len(args.cv_dir) == 1:
        (args.cv_dir[0].parent / "eval.json").write_text(json.dumps(result, indent=2))
    if args.write_manifest:
        write_manifest(result, args.models_dir)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
