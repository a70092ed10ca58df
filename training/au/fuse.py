"""The AU fusion (``au_fusion.onnx``, served with ``MICROFACS_AU_MODEL=fused``): the AU detector's scores with
MediaPipe's 52 blendshapes, with neutral faces as negatives.

    python -m training.au.train --cv ...                                   # first: the detector's fold models
    python -m training.au.fuse --cv-dir runs/au_soup/cv                    # the tables (~3 min)
    python -m training.au.fuse --cv-dir runs/au_soup/cv --install          # + the served file and its entry

Per AU, a logistic regression on [the detector's logit for that AU, the 52 blendshapes] (standardised, L2
1e-2; ``training.fitting.fit_logistic``: L-BFGS, convergence checked), trained on CK+ (the detector's
*out-of-fold* scores, subject-wise folds of ``training.au.train --cv``) plus FER+ Valid faces that >= 8 of 10
raters called neutral, as all-AU-absent negatives (scored by the served detector, which never saw FER+).
Evaluated like ``training.au.evaluate``: the fusion itself is cross-validated on the same subject folds (neutral
faces split into 5 folds at random), per-AU thresholds maximising F1 on CK+ plus the neutral negatives, pooled and
nested; then, fitted on everything, AUs present per face on FER+ Test neutral faces and on taiwanese_dev neutral
and posed photos (validation only: read, nothing fitted), against the served detector with its manifest
thresholds. Blendshapes come from ``Analyzer.run`` (CK+ and FER+ as face crops). No torch.

Writes OUT/au_fusion.onnx (the fusion fitted on everything as MatMul + Add + Sigmoid, the standardisation folded
in, app/model_zoo/au_fusion.py) and OUT/manifest_entry.json with the pooled thresholds; ``--install`` puts them
into ``--models-dir`` (default models/).
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.model_zoo.face_landmarker import BLENDSHAPE_NAMES
from training.au.evaluate import REQUIRED, out_of_fold_scores, prototype_aus
from training.common import install, run_cli
from training.data import (
    CACHE_DIR,
    REPO_ROOT,
    RUNS_DIR,
    TW_TO_FERPLUS,
    data_root,
    ferplus_rows,
    load_cache,
    read_bgr,
    taiwanese_rows,
)
from training.fitting import apply_logistic, fit_logistic
from training.metrics import best_f1_threshold, prf

CROP = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)
PHOTO = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)
L2 = 1e-2
# the solver, (x, y, l2) -> weights: training.fitting.fit_logistic (experiments/fusion_solver.py passes others)
Fit = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


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


def neutral_ferplus(analyzer: Analyzer, split: str, classes: list[str], limit: int, min_votes: int = 8):
    rows = [r for r in ferplus_rows(split) if r.votes[0] >= min_votes]
    found = [face_features(analyzer, read_bgr(r.path), CROP, classes)
             for r in (rows[:limit] if limit else rows)]
    return [f for f in found if f is not None]


def taiwanese(analyzer: Analyzer, classes: list[str], limit: int) -> dict[str, list]:
    """Per photo (scores, present, blendshapes, intended expression), neutral vs posed."""
    rows = taiwanese_rows()
    out: dict[str, list] = {"neutral": [], "posed": []}
    for row in rows[:limit] if limit else rows:
        found = face_features(analyzer, read_bgr(row.path), PHOTO, classes)
        if found is not None:
            out["neutral" if row.neutral else "posed"].append((*found, row.intended))
    return out


# --------------------------------------------------------------------------------------------------- data
@dataclass
class FusionData:
    """What the regressions are fitted on: CK+ (out-of-fold detector scores, blendshapes, FACS codes, subject
    folds) and the FER+ Valid neutral negatives (served detector's scores, blendshapes, random folds)."""

    classes: list[str]
    oof: np.ndarray  # (N, C) CK+ out-of-fold detector scores
    truth: np.ndarray  # (N, C) CK+ FACS codes
    ck_shapes: np.ndarray  # (N, 52)
    fold_of: np.ndarray  # (N,) subject fold of each CK+ face
    nv_scores: np.ndarray  # (M, C) served detector's scores of the neutral faces
    nv_shapes: np.ndarray  # (M, 52)
    nv_fold: np.ndarray  # (M,)

    def __post_init__(self) -> None:
        shapes = np.vstack([self.ck_shapes, self.nv_shapes])
        self.mean, self.std = shapes.mean(0), shapes.std(0) + 1e-6

    @property
    def folds(self) -> int:
        return int(self.fold_of.max()) + 1

    def design(self, scores_c: np.ndarray, shapes: np.ndarray) -> np.ndarray:
        """[the detector's logit for one AU, the standardised blendshapes]."""
        return np.hstack([logit(scores_c)[:, None], (shapes - self.mean) / self.std])

    def problem(self, c: int, ck: np.ndarray, nv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and 0/1 targets of AU ``c`` for the CK+ faces ``ck`` and the neutral faces ``nv`` (masks)."""
        x = np.vstack([self.design(self.oof[ck, c], self.ck_shapes[ck]),
                       self.design(self.nv_scores[nv, c], self.nv_shapes[nv])])
        return x, np.concatenate([self.truth[ck, c], np.zeros(int(nv.sum()), bool)]).astype(float)


def collect(analyzer: Analyzer, cv_dir: Path, cache_dir: Path, limit: int) -> FusionData:
    cache = load_cache("ckplus", cache_dir)
    oof, fold_of, meta = out_of_fold_scores(cv_dir, cache["crops"])
    classes = meta["classes"]
    names = [str(a) for a in cache["au_names"]]
    root = data_root() / "ckplus48"
    ck_shapes = []
    for path in cache["paths"]:
        found = face_features(analyzer, read_bgr(root / str(path)), CROP, classes)
        ck_shapes.append(found[2] if found is not None else np.zeros(52))
    valid = neutral_ferplus(analyzer, "valid", classes, limit)
    return FusionData(classes, oof, cache["aus"][:, [names.index(a) for a in classes]].astype(bool),
                      np.array(ck_shapes), fold_of, np.array([f[0] for f in valid]), np.array([f[2] for f in valid]),
                      np.random.default_rng(0).integers(0, fold_of.max() + 1, len(valid)))


# ---------------------------------------------------------------------------------------------------- fit
def cross_validated(data: FusionData, fit: Fit = fit_logistic) -> tuple[np.ndarray, np.ndarray]:
    """Fused scores of every CK+ and neutral face by the regressions fitted without its fold."""
    fused_ck, fused_nv = np.zeros_like(data.oof), np.zeros((len(data.nv_scores), len(data.classes)))
    for c in range(len(data.classes)):
        for k in range(data.folds):
            tr_ck, tr_nv = data.fold_of != k, data.nv_fold != k
            w = fit(*data.problem(c, tr_ck, tr_nv), L2)
            fused_ck[~tr_ck, c] = apply_logistic(w, data.design(data.oof[~tr_ck, c], data.ck_shapes[~tr_ck]))
            fused_nv[~tr_nv, c] = apply_logistic(w, data.design(data.nv_scores[~tr_nv, c], data.nv_shapes[~tr_nv]))
    return fused_ck, fused_nv


def fit_all(data: FusionData, fit: Fit = fit_logistic) -> list[np.ndarray]:
    """One regression per AU, fitted on every CK+ and neutral face."""
    every_ck, every_nv = np.ones(len(data.oof), bool), np.ones(len(data.nv_scores), bool)
    return [fit(*data.problem(c, every_ck, every_nv), L2) for c in range(len(data.classes))]


def table(data: FusionData, scores_ck: np.ndarray, scores_nv: np.ndarray) -> tuple[dict, np.ndarray]:
    """Per AU (pooled F1, nested F1, share of neutral faces flagged) and the pooled thresholds; thresholds maximise
    F1 over CK+ plus the neutral negatives."""
    rows, thresholds = {}, np.zeros(len(data.classes))
    truth = data.truth
    for c, au in enumerate(data.classes):
        both = np.concatenate([scores_ck[:, c], scores_nv[:, c]])
        labels = np.concatenate([truth[:, c], np.zeros(len(scores_nv), bool)])
        thresholds[c] = best_f1_threshold(both, labels)
        nested = np.zeros(len(scores_ck), bool)
        for k in range(data.folds):
            sel_ck, sel_nv = data.fold_of != k, data.nv_fold != k
            tk = best_f1_threshold(np.concatenate([scores_ck[sel_ck, c], scores_nv[sel_nv, c]]),
                                   np.concatenate([truth[sel_ck, c], np.zeros(sel_nv.sum(), bool)]))
            nested[data.fold_of == k] = scores_ck[data.fold_of == k, c] >= tk
        rows[au] = (prf(scores_ck[:, c] >= thresholds[c], truth[:, c])[0], prf(nested, truth[:, c])[0],
                    float((scores_nv[:, c] >= thresholds[c]).mean()))
    return rows, thresholds


def fused_scores(data: FusionData, weights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every CK+ and neutral face by the regressions fitted on everything."""
    ck = np.stack([apply_logistic(w, data.design(data.oof[:, c], data.ck_shapes)) for c, w in enumerate(weights)], 1)
    nv = np.stack([apply_logistic(w, data.design(data.nv_scores[:, c], data.nv_shapes))
                   for c, w in enumerate(weights)], 1)
    return ck, nv


# ---------------------------------------------------------------------------------------------------- run
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-dir", type=Path, default=RUNS_DIR / "au" / "cv")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--limit", type=int, default=0, help="at most this many neutral / taiwanese faces")
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "au_fusion")
    parser.add_argument("--install", action="store_true", help="put au_fusion.onnx and its entry into --models-dir")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    args = parser.parse_args(argv)
    analyzer = Analyzer()
    data = collect(analyzer, args.cv_dir, args.cache, args.limit)
    classes = data.classes
    print(f"CK+ {len(data.oof)} faces ({data.folds} subject folds), FER+ Valid neutral negatives {len(data.nv_scores)}")

    base_rows, base_t = table(data, data.oof, data.nv_scores)
    fused_rows, _ = table(data, *cross_validated(data))
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
    weights = fit_all(data)
    _, fused_t = table(data, *fused_scores(data, weights))
    tw = taiwanese(analyzer, classes, args.limit)
    sets = {"FER+ Test neutral": neutral_ferplus(analyzer, "test", classes, args.limit),
            **{f"taiwanese_dev {k}": v for k, v in tw.items()}}

    def fused_present(face) -> np.ndarray:
        return np.array([apply_logistic(weights[c], data.design(face[0][c:c + 1], face[2][None]))[0] >= fused_t[c]
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
    metrics = {
        "ckplus_cv_f1_14_required_pooled": round(float(np.mean([fused_rows[a][0] for a in REQUIRED])), 3),
        "ckplus_cv_f1_14_required_nested": round(float(np.mean([fused_rows[a][1] for a in REQUIRED])), 3),
        "ferplus_test_neutral_aus_per_face": round(fused_per_face["FER+ Test neutral"], 3),
        "taiwanese_dev_neutral_aus_per_face": round(fused_per_face["taiwanese_dev neutral"], 3),
        "per_au_cv": {au: dict(zip(("f1", "f1_nested", "ferplus_valid_neutral_rate"),
                                   (round(float(v), 3) for v in fused_rows[au]))) for au in classes},
    }
    path, entry = export(args.out, data, sorted(BLENDSHAPE_NAMES), weights, fused_t, metrics)
    print(f"wrote {path} and {args.out / 'manifest_entry.json'}")
    if args.install:
        install(args.models_dir, "au_fusion", {"au_fusion.onnx": path}, entry)


def export(out: Path, data: FusionData, shape_names: list[str], weights: list[np.ndarray], thresholds: np.ndarray,
           metrics: dict) -> tuple[Path, dict]:
    """Fold the per-AU regressions into one (17 + 52) -> 17 affine map + sigmoid: OUT/au_fusion.onnx and its entry
    (also OUT/manifest_entry.json)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from app.manifest import sha256_of

    classes = data.classes
    assert len(shape_names) == 52  # the order face_features used: the blendshape names, sorted
    n, d = len(classes), 1 + len(shape_names)
    matrix = np.zeros((n + len(shape_names), n), np.float32)
    bias = np.zeros(n, np.float32)
    for c, w in enumerate(weights):  # w: [logit, 52 standardised blendshapes, bias]
        matrix[c, c] = w[0]
        matrix[n:, c] = w[1:d] / data.std
        bias[c] = w[d] - float(np.sum(w[1:d] * data.mean / data.std))
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
    out.mkdir(parents=True, exist_ok=True)
    path = out / "au_fusion.onnx"
    onnx.save(model, str(path))
    entry = {
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
        "training_data": f"CK+ ({len(data.oof)} faces, the detector's out-of-fold scores from training.au.train "
                         f"--cv) and {len(data.nv_scores)} FER+ Valid faces with >= 8 of 10 neutral votes as "
                         "all-AU-absent negatives; blendshapes from the service's FaceLandmarker v2 path; per-AU "
                         f"logistic regressions (L2 {L2}, L-BFGS to a gradient below 1e-6, training/fitting.py)",
        "model_card": "AU_DETECTOR.md",
        "licence": "research use only (CK+ terms; FER2013 pixels)",
    }
    (out / "manifest_entry.json").write_text(json.dumps(entry, indent=2) + "\n")
    return path, entry


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
