"""How well the face identity descriptor (models/face_identity.onnx) tells performers apart on taiwanese_dev.

    python -m training.evaluate_identity                     # prints the numbers
    python -m training.evaluate_identity --write-manifest    # and stores them in the face_identity entry

taiwanese_dev is VALIDATION ONLY: this reads it and reports; nothing is fitted to it. The match threshold
is the descriptor authors' (app/identity.py, MATCH_DISTANCE), fixed before this was run.

Every photo goes through the service's own face stage (``Analyzer.run``, filters off, one face), then
``FaceIdentity.embed`` with the face's 468 mesh landmarks (the served crop) and, for comparison, with its
detection box. Reported, per crop:

* pairs: ROC AUC of the cosine similarity for same- vs different-performer pairs (all pairs of photos), and
  at MATCH_DISTANCE the share of same-performer pairs within it (true match rate) and of different-performer
  pairs within it (false match rate);
* grouping: ``same_person_groups`` at MATCH_DISTANCE against the performer labels: adjusted Rand index,
  purity (each group counted as its most frequent performer), inverse purity (each performer counted in
  the group holding most of their photos) and the number of groups (14 performers).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.special import comb

from app.analyzer import Analyzer, FaceOptions
from app.identity import MATCH_DISTANCE, same_person_groups
from app.manifest import update_entry
from app.model_zoo.face_identity import FaceIdentity
from app.settings import Settings
from training.data import RUNS_DIR, data_root, read_bgr, taiwanese_rows
from training.metrics import roc_auc

OPTIONS = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)
CROPS = ("landmarks", "box")


def adjusted_rand_index(truth: list, groups: list) -> float:
    """Hubert & Arabie's adjusted Rand index of two labelings of the same items (1: identical partitions,
    ~0: chance agreement)."""
    pairs = Counter(zip(truth, groups))
    sum_cells = sum(comb(n, 2) for n in pairs.values())
    sum_truth = sum(comb(n, 2) for n in Counter(truth).values())
    sum_groups = sum(comb(n, 2) for n in Counter(groups).values())
    expected = sum_truth * sum_groups / comb(len(truth), 2)
    best = (sum_truth + sum_groups) / 2
    return float((sum_cells - expected) / (best - expected)) if best != expected else 1.0


def purity(truth: list, groups: list) -> float:
    """Share of items whose group's most frequent label is their own label."""
    by_group: dict = {}
    for t, g in zip(truth, groups):
        by_group.setdefault(g, []).append(t)
    return sum(Counter(labels).most_common(1)[0][1] for labels in by_group.values()) / len(truth)


def pair_metrics(embeddings: np.ndarray, performers: np.ndarray) -> dict[str, float]:
    i, j = np.triu_indices(len(embeddings), k=1)
    similarity = np.einsum("nd,nd->n", embeddings[i], embeddings[j])
    same = performers[i] == performers[j]
    within = (1.0 - similarity) <= MATCH_DISTANCE
    return {"pairs_same": int(same.sum()), "pairs_different": int((~same).sum()),
            "auc_same_vs_different": roc_auc(similarity, same),
            "true_match_rate": float(within[same].mean()), "false_match_rate": float(within[~same].mean()),
            "cosine_distance_same_median": float(np.median(1.0 - similarity[same])),
            "cosine_distance_different_median": float(np.median(1.0 - similarity[~same]))}


def group_metrics(embeddings: np.ndarray, performers: np.ndarray) -> dict[str, float]:
    groups = same_person_groups(embeddings)
    truth = performers.tolist()
    return {"adjusted_rand_index": adjusted_rand_index(truth, groups), "purity": purity(truth, groups),
            "inverse_purity": purity(groups, truth), "groups": len(set(groups)), "performers": len(set(truth))}


def embed_all(root: Path | None, models_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, int, float]:
    """Descriptors of every taiwanese_dev photo with a face, per crop; performer labels; photos without a
    face; mean ms per descriptor (the landmark crop, one thread)."""
    analyzer = Analyzer(Settings(models_dir=models_dir))
    model = FaceIdentity(models_dir)
    out: dict[str, list[np.ndarray]] = {c: [] for c in CROPS}
    performers, missing, seconds = [], 0, 0.0
    for row in taiwanese_rows(root):
        image = read_bgr(row.path)
        faces = analyzer.run(image, OPTIONS).faces if image is not None else []
        if not faces:
            missing += 1
            continue
        start = time.perf_counter()
        out["landmarks"].append(model.embed(image, faces[0].landmarks))
        seconds += time.perf_counter() - start
        out["box"].append(model.embed(image, faces[0].box))
        performers.append(row.performer)
    count = max(1, len(performers))
    return {c: np.stack(v) for c, v in out.items()}, np.array(performers), missing, 1000 * seconds / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="the taiwanese_dev folder (default: data root)")
    parser.add_argument("--models", type=Path, default=Settings().models_dir)
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "identity" / "eval.json")
    parser.add_argument("--write-manifest", action="store_true", help="store the numbers in the manifest's metrics")
    args = parser.parse_args()

    root = args.data or data_root() / "taiwanese_dev"
    embeddings, performers, missing, ms = embed_all(root, args.models)
    print(f"taiwanese_dev: {len(performers)} photos with a face ({missing} without), {len(set(performers))} "
          f"performers; match threshold: cosine distance {MATCH_DISTANCE:.4f} (the authors' 0.82 Euclidean)")
    results: dict[str, dict[str, float]] = {}
    for crop in CROPS:
        results[crop] = {**pair_metrics(embeddings[crop], performers), **group_metrics(embeddings[crop], performers)}
        r = results[crop]
        print(f"crop from {crop:<9}  AUC {r['auc_same_vs_different']:.4f}  at threshold: true match "
              f"{r['true_match_rate']:.3f}, false match {r['false_match_rate']:.4f}  |  grouping: ARI "
              f"{r['adjusted_rand_index']:.3f}, purity {r['purity']:.3f}, inverse purity {r['inverse_purity']:.3f}, "
              f"{r['groups']} groups  |  median cosine distance same {r['cosine_distance_same_median']:.3f}, "
              f"different {r['cosine_distance_different_median']:.3f}")
    groups = same_person_groups(embeddings["landmarks"])
    members = [Counter(performers[np.array(groups) == g].tolist()) for g in range(max(groups) + 1)]
    print("groups (landmark crop), photos per performer: "
          + "; ".join(", ".join(f"{p}:{n}" for p, n in sorted(m.items(), key=lambda kv: int(kv[0]))) for m in members))
    print(f"descriptor: {ms:.1f} ms a face (crop + network, one thread, this machine)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"photos": len(performers), "without_face": missing, **results}, indent=2))
    if args.write_manifest:
        served = results["landmarks"]
        update_entry(args.models, "face_identity", metrics={"taiwanese_dev": {
            "data": f"taiwanese_dev (validation only), {len(performers)} photos of {len(set(performers))} "
                    f"performers with a face ({missing} without), face stage filters off",
            "crop": "468 mesh landmarks (served)",
            "threshold_cosine_distance": round(MATCH_DISTANCE, 4),
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in served.items()},
            "auc_box_crop": round(results["box"]["auc_same_vs_different"], 4),
            "adjusted_rand_index_box_crop": round(results["box"]["adjusted_rand_index"], 4),
        }})
        print(f"metrics written to the face_identity entry of {args.models / 'manifest.json'}")


if __name__ == "__main__":
    main()
