"""Experiment: fuse the AU detector with MediaPipe's blendshapes, with neutral faces as negatives.

    python -m training.train_au --cv --epochs 40      # first: the fold models (out-of-fold CK+ scores)
    python -m training.fuse_au                        # then this (~3 min)
    python -m training.fuse_au --export               # also write models/au_fusion.onnx + its manifest entry

Per AU, a logistic regression on [the detector's logit for that AU, the 52 blendshapes] (standardised, L2),
trained on CK+ (the detector's *out-of-fold* scores, subject-wise folds of ``train_au --cv``) plus FER+ Valid
faces that >= 8 of 10 raters called neutral, as all-AU-absent negatives (scored by the served detector,
which never saw FER+). Evaluated like ``training.evaluate_au``: the fusion itself is cross-validated on the
same subject folds (neutral faces split into 5 folds at random), per-AU thresholds maximising F1 on CK+
plus the neutral negatives, pooled and nested; then, fitted on everything, AUs present per face on FER+ Test
neutral faces and on taiwanese_dev neutral and posed photos (validation only: read, nothing fitted), against
the served detector with its manifest thresholds. Blendshapes come from ``Analyzer.run`` (CK+ and FER+ as
face crops). No torch. Without ``--export`` nothing served changes; with it, the fusion fitted on everything
is written as a small ONNX graph (MatMul + Add + Sigmoid, the standardisation folded in) that the service
runs when ``MICROFACS_AU_MODEL=fused`` (app/model_zoo/au_fusion.py), with the pooled thresholds.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.model_zoo.face_landmarker import BLENDSHAPE_NAMES
from training.data import REPO_ROOT, RUNS_DIR, TW_TO_FERPLUS, data_root, ferplus_rows, taiwanese_rows
from training.evaluate_au import REQUIRED, best_threshold, out_of_fold_scores, prf, prototype_aus

CROP = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)
PHOTO = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-5, 1 - 1e-5)
    return np.log(p / (1 - p))


def face_features(analyzer: Analyzer, image: np.ndarray, options: FaceOptions, classes: list[str]):
    """(served detector's AU scores (C,), present (C,), blendshapes (52,)) or None."""
    faces = analyzer.run(image, options, heads={"au", "blendshapes"}).faces
    if not faces or faces[0].filtered:
        return None
    units = {u.au: u for u in faces[0].outputs["au"]}
    shapes = faces[0].outputs["blendshapes"]
    return (np.array([units[a].probability for a in classes]), np.array([units[a].present for a in classes]),
            np.array([shapes[k] for k in sorted(shapes)]))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 1500, lr: float = 0.5) -> np.ndarray:
    x = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        w -= lr * (x.T @ (p - y) / len(y) + l2 * np.append(w[:-1], 0.0))
    return w


def apply_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(np.hstack([x, np.ones((len(x), 1))]) @ w, -30, 30)))


def neutral_ferplus(analyzer: Analyzer, split: str, classes: list[str], limit: int, min_votes: int = 8):
    rows = [r for r in ferplus_rows(split) if r.votes[0] >= min_votes]
    found = [face_features(analyzer, cv2.imread(str(r.path), cv2.IMREAD_COLOR), CROP, classes)
             for r in (rows[:limit] if limit else rows)]
    return [f for f in found if f is not None]


def taiwanese(analyzer: Analyzer, classes: list[str], limit: int) -> dict[str, list]:
    """Per photo (scores, present, blendshapes, intended expression), neutral vs posed."""
    rows = taiwanese_rows()
    out: dict[str, list] = {"neutral": [], "posed": []}
    for row in rows[:limit] if limit else rows:
        found = face_features(analyzer, cv2.imread(str(row.path), cv2.IMREAD_COLOR), PHOTO, classes)
        if found is not None:
            out["neutral" if row.neutral else "posed"].append((*found, row.intended))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-dir", default=str(RUNS_DIR / "au" / "cv"))
    parser.add_argument("--limit", type=int, default=0, help="at most this many neutral / taiwanese faces")
    parser.add_argument("--export", action="store_true", help="write models/au_fusion.onnx and its manifest entry")
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "models"))
    args = parser.parse_args(argv)
    analyzer = Analyzer()
    cache = np.load(RUNS_DIR / "cache" / "ckplus.npz")
    oof, fold_of, meta = out_of_fold_scores(Path(args.cv_dir), cache["crops"])
    classes = meta["classes"]
    names = [str(a) for a in cache["au_names"]]
    truth = cache["aus"][:, [names.index(a) for a in classes]].astype(bool)
    root = data_root() / "ckplus48"
    ck_shapes = []
    for path in cache["paths"]:
        found = face_features(analyzer, cv2.imread(str(root / str(path)), cv2.IMREAD_COLOR), CROP, classes)
        ck_shapes.append(found[2] if found is not None else np.zeros(52))
    ck_shapes = np.array(ck_shapes)
    valid = neutral_ferplus(analyzer, "valid", classes, args.limit)
    nv_scores, nv_shapes = np.array([f[0] for f in valid]), np.array([f[2] for f in valid])
    nv_fold = np.random.default_rng(0).integers(0, fold_of.max() + 1, len(valid))
    print(f"CK+ {len(oof)} faces ({fold_of.max() + 1} subject folds), FER+ Valid neutral negatives {len(valid)}")

    all_shapes = np.vstack([ck_shapes, nv_shapes])
    mean, std = all_shapes.mean(0), all_shapes.std(0) + 1e-6

    def design(scores_c: np.ndarray, shapes: np.ndarray) -> np.ndarray:
        return np.hstack([logit(scores_c)[:, None], (shapes - mean) / std])

    # Cross-validated fused scores, for CK+ faces and the neutral negatives alike.
    fused_ck, fused_nv = np.zeros_like(oof), np.zeros((len(valid), len(classes)))
    for c in range(len(classes)):
        for k in range(fold_of.max() + 1):
            tr_ck, tr_nv = fold_of != k, nv_fold != k
            x = np.vstack([design(oof[tr_ck, c], ck_shapes[tr_ck]), design(nv_scores[tr_nv, c], nv_shapes[tr_nv])])
            y = np.concatenate([truth[tr_ck, c], np.zeros(tr_nv.sum(), bool)]).astype(float)
            w = fit_logistic(x, y)
            fused_ck[~tr_ck, c] = apply_logistic(w, design(oof[~tr_ck, c], ck_shapes[~tr_ck]))
            fused_nv[~tr_nv, c] = apply_logistic(w, design(nv_scores[~tr_nv, c], nv_shapes[~tr_nv]))

    def table(scores_ck: np.ndarray, scores_nv: np.ndarray) -> tuple[dict, np.ndarray]:
        rows, thresholds = {}, np.zeros(len(classes))
        for c, au in enumerate(classes):
            both = np.concatenate([scores_ck[:, c], scores_nv[:, c]])
            labels = np.concatenate([truth[:, c], np.zeros(len(scores_nv), bool)])
            thresholds[c] = best_threshold(both, labels)
            nested = np.zeros(len(scores_ck), bool)
            for k in range(fold_of.max() + 1):
                sel_ck, sel_nv = fold_of != k, nv_fold != k
                tk = best_threshold(np.concatenate([scores_ck[sel_ck, c], scores_nv[sel_nv, c]]),
                                    np.concatenate([truth[sel_ck, c], np.zeros(sel_nv.sum(), bool)]))
                nested[fold_of == k] = scores_ck[fold_of == k, c] >= tk
            rows[au] = (prf(scores_ck[:, c] >= thresholds[c], truth[:, c])[0], prf(nested, truth[:, c])[0],
                        float((scores_nv[:, c] >= thresholds[c]).mean()))
        return rows, thresholds

    base_rows, base_t = table(oof, nv_scores)
    fused_rows, _ = table(fused_ck, fused_nv)
    print(f"{'AU':<6}{'detector F1 / nested':>22}{'fused F1 / nested':>20}{'neutral rate det / fused':>26}")
    for au in classes:
        b, f = base_rows[au], fused_rows[au]
        print(f"{au:<6}{b[0]:>13.3f} / {b[1]:.3f}{f[0]:>13.3f} / {f[1]:.3f}{b[2]:>17.3f} / {f[2]:.3f}")
    for label, aus in (("14 required AUs", REQUIRED), ("all 17", classes)):
        det = [np.mean([base_rows[a][i] for a in aus]) for i in (0, 1)]
        fus = [np.mean([fused_rows[a][i] for a in aus]) for i in (0, 1)]
        print(f"mean, {label}: detector {det[0]:.3f} / {det[1]:.3f} nested; fused {fus[0]:.3f} / {fus[1]:.3f} nested"
              " (thresholds chosen with the neutral negatives)")

    # Fitted on everything, then read on faces nothing here was fitted to.
    weights = []
    for c in range(len(classes)):
        x = np.vstack([design(oof[:, c], ck_shapes), design(nv_scores[:, c], nv_shapes)])
        y = np.concatenate([truth[:, c], np.zeros(len(valid), bool)]).astype(float)
        weights.append(fit_logistic(x, y))
    fused_all_ck = np.stack([apply_logistic(w, design(oof[:, c], ck_shapes)) for c, w in enumerate(weights)], 1)
    fused_all_nv = np.stack([apply_logistic(w, design(nv_scores[:, c], nv_shapes)) for c, w in enumerate(weights)], 1)
    _, fused_t = table(fused_all_ck, fused_all_nv)
    tw = taiwanese(analyzer, classes, args.limit)
    sets = {"FER+ Test neutral": neutral_ferplus(analyzer, "test", classes, args.limit),
            **{f"taiwanese_dev {k}": v for k, v in tw.items()}}

    def fused_present(face) -> np.ndarray:
        return np.array([apply_logistic(weights[c], design(face[0][c:c + 1], face[2][None]))[0] >= fused_t[c]
                         for c in range(len(classes))])

    print("AUs present per face: served detector (manifest thresholds); detector with the neutral-aware "
          "thresholds; fused")
    fused_per_face = {}
    for name, faces in sets.items():
        served = np.mean([f[1].sum() for f in faces])
        rethresholded = np.mean([(f[0] >= base_t).sum() for f in faces])
        fused_per_face[name] = float(np.mean([fused_present(f).sum() for f in faces]))
        print(f"  {name:<22} {len(faces):>4} faces   {served:.2f}; {rethresholded:.2f}; {fused_per_face[name]:.2f}")
    # No AU codes for taiwanese_dev: the EMFACS prototype AUs of the intended expression stand in for them.
    recall: dict[str, list[float]] = {"served": [], "rethresholded": [], "fused": []}
    for face in tw["posed"]:
        prototype = [classes.index(au) for au in prototype_aus(TW_TO_FERPLUS[face[3]], classes)]
        recall["served"].append(face[1][prototype].mean())
        recall["rethresholded"].append((face[0] >= base_t)[prototype].mean())
        recall["fused"].append(fused_present(face)[prototype].mean())
    print("  taiwanese_dev posed, share of the intended expression's EMFACS prototype AUs reported: "
          + "; ".join(f"{np.mean(v):.2f}" for v in recall.values()))
    if args.export:
        metrics = {
            "ckplus_cv_f1_14_required_pooled": round(float(np.mean([fused_rows[a][0] for a in REQUIRED])), 3),
            "ckplus_cv_f1_14_required_nested": round(float(np.mean([fused_rows[a][1] for a in REQUIRED])), 3),
            "ferplus_test_neutral_aus_per_face": round(fused_per_face["FER+ Test neutral"], 3),
            "taiwanese_dev_neutral_aus_per_face": round(fused_per_face["taiwanese_dev neutral"], 3),
            "per_au_cv": {au: dict(zip(("f1", "f1_nested", "ferplus_valid_neutral_rate"),
                                       (round(float(v), 3) for v in fused_rows[au]))) for au in classes},
        }
        export(Path(args.models_dir), classes, sorted(BLENDSHAPE_NAMES), weights, mean, std, fused_t, metrics)


def export(models_dir: Path, classes: list[str], shape_names: list[str], weights: list[np.ndarray],
           mean: np.ndarray, std: np.ndarray, thresholds: np.ndarray, metrics: dict) -> None:
    """Fold the per-AU regressions into one (17 + 52) -> 17 affine map + sigmoid, write it and its entry."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from app.manifest import replace_entry, sha256_of

    assert len(shape_names) == 52  # the order face_features used: the blendshape names, sorted
    n, d = len(classes), 1 + len(shape_names)
    matrix = np.zeros((n + len(shape_names), n), np.float32)
    bias = np.zeros(n, np.float32)
    for c, w in enumerate(weights):  # w: [logit, 52 standardised blendshapes, bias]
        matrix[c, c] = w[0]
        matrix[n:, c] = w[1:d] / std
        bias[c] = w[d] - float(np.sum(w[1:d] * mean / std))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weights"], ["z"]), helper.make_node("Add", ["z", "bias"], ["y"]),
         helper.make_node("Sigmoid", ["y"], ["probabilities"])],
        "au_fusion",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n + len(shape_names)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(matrix, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = models_dir / "au_fusion.onnx"
    onnx.save(model, str(path))
    replace_entry(models_dir, "au_fusion", {
        "version": time.strftime("%Y.%m.%d") + "-fusion",
        "file": path.name,
        "sha256": sha256_of(path),
        "task": "AU decisions fused from the AU detector's probabilities and MediaPipe's 52 blendshapes "
                "(served only with MICROFACS_AU_MODEL=fused; the detector's boxes are kept)",
        "input": {"name": "features", "shape": ["batch", n + len(shape_names)],
                  "layout": f"{n} detector logits (order = classes), then the blendshapes (order = blendshapes)"},
        "outputs": {"probabilities": f"[batch, {n}]: fused probability per AU, order = classes"},
        "classes": classes,
        "blendshapes": shape_names,
        "thresholds": {au: round(float(t), 4) for au, t in zip(classes, thresholds)},
        "threshold_rule": "per AU, max F1 over CK+ (out-of-fold fused scores) plus the FER+ Valid neutral faces as "
                          "negatives, pooled",
        "metrics": metrics,
        "training_data": "CK+ (759 faces of 94 subjects, the detector's out-of-fold scores from train_au --cv) and "
                         "691 FER+ Valid faces with >= 8 of 10 neutral votes as all-AU-absent negatives; "
                         "blendshapes from the service's FaceLandmarker v2 path",
        "model_card": "AU_DETECTOR.md",
        "licence": "research use only (CK+ terms; FER2013 pixels)",
    })
    print(f"wrote {path} and its manifest entry")


if __name__ == "__main__":
    main()
