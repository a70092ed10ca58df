"""How the served models transfer to photos of people they never saw: taiwanese_dev through the service's
own code path (``app.analyzer.Analyzer``, exactly what /analyze runs), read-only.

    python -m training.evaluate_transfer                       # taiwanese_dev: filters, expression, AUs
    python -m training.evaluate_transfer --ferplus-neutral     # + AUs on FER+ Test faces with >= 8 neutral votes
    python -m training.evaluate_transfer --json runs/eval/transfer.json

taiwanese_dev is VALIDATION ONLY (../shared/data/README.md): this script reads its photos and labels to
report numbers and fits nothing: no threshold, prior, bias or mapping here is set from it. The class map
below is fixed by the two label sets' names (the database has no contempt; a face read as contempt is
simply wrong).

Each photo is analysed once with the side-face and occlusion filters off, so every face gets AU and
expression outputs; the filters' verdict with the service defaults is then computed from the same face
(``app.filters.filter_reasons``, the analyzer's own thresholds) and reported separately.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from app.analyzer import Analyzer, FaceAnalysis, FaceOptions
from app.filters import filter_reasons
from app.settings import Settings
from training.au.evaluate import prototype_aus
from training.data import MOUTH_OPEN, TW_TO_FERPLUS, data_root, ferplus_rows, mouth_open_ratio, read_bgr, taiwanese_rows
from training.metrics import ece_of, macro_f1

TW_CLASSES = list(TW_TO_FERPLUS.values())


def default_filter_reasons(analyzer: Analyzer, face: FaceAnalysis) -> list[str]:
    s = analyzer.settings
    return filter_reasons(face.pose, face.occlusion, face.landmark_confidence, side_face_filter=True,
                          occlusion_filter=True, max_yaw=s.side_face_max_yaw, max_pitch=s.side_face_max_pitch,
                          min_landmark_confidence=s.landmark_presence_threshold)


def analyse_taiwanese(analyzer: Analyzer, root: Path, limit: int = 0, prior: str = "balanced") -> dict[str, Any]:
    rows = taiwanese_rows(root)
    rows = rows[:limit] if limit else rows
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1, expression_prior=prior)
    records = []
    for row in rows:
        image = read_bgr(row.path)
        analysis = analyzer.run(image, options, heads={"au", "expression"})
        record: dict[str, Any] = {"file": row.path.name, "neutral": row.neutral,
                                  "intended": TW_TO_FERPLUS[row.intended], "top_vote": TW_TO_FERPLUS[row.top_vote]}
        if analysis.faces:
            face = analysis.faces[0]
            record["reasons"] = default_filter_reasons(analyzer, face)
            record["occluded_regions"] = [r for r, hit in face.occlusion.regions.items() if hit]
            record["mouth_open"] = float(mouth_open_ratio(face.landmarks[None, :, :2])[0])
            if not face.filtered:  # only an unusable mesh (low_landmark_confidence) stops the heads here
                expression = face.outputs["expression"]
                record.update(label=expression.label, confidence=expression.confidence,
                              uncertain=expression.uncertain, scores=expression.scores,
                              aus=[u.au for u in face.outputs["au"] if u.present],
                              au_classes=[u.au for u in face.outputs["au"]])
        records.append(record)
    return {"prior": prior, **summarise(records)}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    found = [r for r in records if "reasons" in r]
    scored = [r for r in found if "label" in r]
    report: dict[str, Any] = {"photos": n, "faces_found": len(found), "faces_scored": len(scored)}
    # Pre-filters with the service defaults.
    flagged = Counter(reason for r in found for reason in r["reasons"])
    occluded_by_class: dict[str, list[bool]] = defaultdict(list)
    for r in found:
        occluded_by_class[r["intended"]].append("occluded" in r["reasons"])
    report["filters"] = {
        "any_rate": sum(bool(r["reasons"]) for r in found) / max(len(found), 1),
        "by_reason_rate": {k: v / max(len(found), 1) for k, v in flagged.items()},
        "occluded_rate_by_intended": {c: float(np.mean(v)) for c, v in sorted(occluded_by_class.items())},
        "occluded_regions": dict(Counter(region for r in found if "occluded" in r["reasons"]
                                         for region in r["occluded_regions"])),
        # mouth flags by how open the mesh sees the mouth (inner-lip gap / mouth width): closed < 0.05 (pressed,
        # pouting lips), open >= MOUTH_OPEN (the training's wide-open hard negatives)
        "mouth_flags_by_opening": dict(Counter(
            "closed" if r["mouth_open"] < 0.05 else "open" if r["mouth_open"] >= MOUTH_OPEN else "ajar"
            for r in found if "mouth" in r["occluded_regions"] and "mouth_open" in r)),
    }
    # Expression, against observers' top vote and the intended expression.
    predicted = [r["label"] for r in scored]
    for target in ("top_vote", "intended"):
        truth = [r[target] for r in scored]
        report[f"expression_vs_{target}"] = {
            "accuracy": float(np.mean([t == p for t, p in zip(truth, predicted)])),
            "macro_f1": macro_f1(truth, predicted),
            "recall_by_class": {c: float(np.mean([p == c for t, p in zip(truth, predicted) if t == c]))
                                for c in TW_CLASSES if c in truth},
        }
    report["expression_predicted_share"] = {k: v / max(len(scored), 1) for k, v in Counter(predicted).items()}
    report["expression_confusion_top_vote"] = {  # observers' top vote -> what the service answered
        t: dict(Counter(p for tv, p in zip([r["top_vote"] for r in scored], predicted) if tv == t).most_common())
        for t in TW_CLASSES}
    confidence = np.array([r["confidence"] for r in scored])
    correct = np.array([r["label"] == r["top_vote"] for r in scored])
    uncertain = np.array([r["uncertain"] for r in scored])
    report["expression_ece_vs_top_vote"] = ece_of(confidence, correct, bins=10)
    report["uncertain_rate"] = float(uncertain.mean()) if len(uncertain) else 0.0
    report["accuracy_vs_top_vote_when_certain"] = float(correct[~uncertain].mean()) if (~uncertain).any() else 0.0
    # AUs per expression: the prototype AUs of a posed expression should light up (e.g. AU12 on happiness).
    by_class: dict[str, list[list[str]]] = defaultdict(list)
    for r in scored:
        by_class[r["intended"]].append(r["aus"])
    report["au_by_intended"] = {
        c: {"faces": len(v), "present_per_face": float(np.mean([len(a) for a in v])),
            "top": {au: round(n / len(v), 2) for au, n in Counter(x for a in v for x in a).most_common(4)}}
        for c, v in sorted(by_class.items())}
    # Recall stand-in (taiwanese_dev has no AU codes): the share of the intended expression's EMFACS prototype
    # AUs that are reported, over the posed faces.
    shares = []
    for r in scored:
        prototype = prototype_aus(r["intended"], r["au_classes"])
        if not r["neutral"] and prototype:
            shares.append(np.mean([au in r["aus"] for au in prototype]))
    report["au_prototype_share_posed"] = float(np.mean(shares)) if shares else 0.0
    # AUs on neutral faces: a face with nothing active should light nothing up.
    neutral = [r for r in scored if r["neutral"]]
    report["au_neutral"] = {
        "faces": len(neutral),
        "present_per_face": float(np.mean([len(r["aus"]) for r in neutral])) if neutral else 0.0,
        "rate_by_au": {au: c / max(len(neutral), 1)
                       for au, c in Counter(a for r in neutral for a in r["aus"]).most_common()},
    }
    return report


def ferplus_neutral_aus(analyzer: Analyzer, min_votes: int = 8, limit: int = 0) -> dict[str, Any]:
    """AUs reported on FER+ Test faces that >= ``min_votes`` of 10 raters called neutral (face_crop path)."""
    rows = [r for r in ferplus_rows("test") if r.votes[0] >= min_votes]
    rows = rows[:limit] if limit else rows
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)
    counts = []
    per_au: Counter[str] = Counter()
    for row in rows:
        image = read_bgr(row.path)
        analysis = analyzer.run(image, options, heads={"au"})
        face = analysis.faces[0]
        if face.filtered:
            continue
        present = [u.au for u in face.outputs["au"] if u.present]
        counts.append(len(present))
        per_au.update(present)
    return {"faces": len(counts), "min_neutral_votes": min_votes,
            "present_per_face": float(np.mean(counts)) if counts else 0.0,
            "rate_by_au": {au: c / max(len(counts), 1) for au, c in per_au.most_common()}}


def print_report(report: dict[str, Any]) -> None:
    tw = report["taiwanese_dev"]
    print(f"taiwanese_dev (expression prior {tw['prior']}): {tw['photos']} photos, {tw['faces_found']} faces found, "
          f"{tw['faces_scored']} scored")
    f = tw["filters"]
    print(f"  pre-filters (service defaults): any {f['any_rate']:.3f}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in f["by_reason_rate"].items()))
    by_class = ", ".join(f"{k} {v:.3f}" for k, v in f["occluded_rate_by_intended"].items())
    print(f"  occluded by intended class: {by_class}; regions {f['occluded_regions']}; mouth flags by mesh mouth "
          f"opening {f['mouth_flags_by_opening']}")
    for target in ("top_vote", "intended"):
        e = tw[f"expression_vs_{target}"]
        print(f"  expression vs {target}: accuracy {e['accuracy']:.3f}, macro-F1 {e['macro_f1']:.3f}; recall "
              + ", ".join(f"{k} {v:.2f}" for k, v in e["recall_by_class"].items()))
    shares = sorted(tw["expression_predicted_share"].items())
    print("  predicted share: " + ", ".join(f"{k} {v:.2f}" for k, v in shares))
    print("  top vote -> answered: " + "; ".join(
        f"{t} {sum(row.values())}: " + ", ".join(f"{p} {n}" for p, n in row.items())
        for t, row in tw["expression_confusion_top_vote"].items() if row))
    print(f"  ECE vs top vote {tw['expression_ece_vs_top_vote']:.3f}; uncertain {tw['uncertain_rate']:.3f}, "
          f"accuracy of the rest {tw['accuracy_vs_top_vote_when_certain']:.3f}")
    au = tw["au_neutral"]
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(au["rate_by_au"].items())[:5])
    print(f"  AUs present per neutral face: {au['present_per_face']:.2f} over {au['faces']} faces ({top})")
    print("  AUs by intended expression: " + "; ".join(
        f"{c} {v['present_per_face']:.1f}/face {v['top']}" for c, v in tw["au_by_intended"].items() if c != "neutral"))
    print(f"  posed faces: share of the intended expression's EMFACS prototype AUs reported "
          f"{tw['au_prototype_share_posed']:.2f}")
    if "ferplus_test_neutral" in report:
        fn = report["ferplus_test_neutral"]
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(fn["rate_by_au"].items())[:5])
        print(f"FER+ Test, >= {fn['min_neutral_votes']} neutral votes: {fn['present_per_face']:.2f} AUs per face "
              f"over {fn['faces']} faces ({top})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="default: <data>/taiwanese_dev")
    parser.add_argument("--ferplus-neutral", action="store_true", help="also count AUs on neutral FER+ Test faces")
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos (smoke runs)")
    parser.add_argument("--prior", choices=["balanced", "ferplus"], default="balanced",
                        help="the expression scores' class prior (app/model_zoo/expression.py)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    args.data = args.data or data_root() / "taiwanese_dev"
    if not (args.data / "labels.csv").is_file():
        print(f"evaluate_transfer: no {args.data / 'labels.csv'}: put the shared data beside the repo")
        return 2
    analyzer = Analyzer(Settings())
    report = {"taiwanese_dev": analyse_taiwanese(analyzer, args.data, args.limit, args.prior)}
    if args.ferplus_neutral:
        report["ferplus_test_neutral"] = ferplus_neutral_aus(analyzer, limit=args.limit)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
