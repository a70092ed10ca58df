"""The two model profiles side by side (models/OPEN_PROFILE.md): the same faces through the service's own code path
(``app.analyzer.Analyzer``, what /analyze runs) with ``MICROFACS_PROFILE=research`` and ``=open``.

    python -m training.evaluate_profiles                        # all of FER+ Test, CK+ and taiwanese_dev
    python -m training.evaluate_profiles --ferplus-limit 1000   # quicker: the first 1000 FER+ Test faces
    python -m training.evaluate_profiles --write-card           # also the tables of models/OPEN_PROFILE.md
    python -m training.evaluate_profiles --json runs/eval/profiles.json

Read-only: nothing is fitted here, and nothing of the open profile was fitted to these sets (its AU map,
grades and expression rules are fixed by published definitions: app/blendshape_aus.py, app/prototypes.py).

* FER+ Test: expression against the majority vote (8 classes; faces whose majority is unknown / not a face, or
  tied, left out), as 48x48 face crops (``face_crop``); AUs present per face on the faces >= 8 of 10 raters
  called neutral.
* CK+ (759 faces of 94 subjects, the last 3 frames of each sequence; FACS codes of the peak frame): AU F1 per
  AU and expression accuracy (7 emotions). The open profile fits nothing, so every subject is held out for it.
  The research AU detector was trained on these subjects: its served F1 is shown for reference only, and its
  held-out number is its subject-wise 5-fold CV F1 (thresholds chosen on the other folds) from the manifest
  (``python -m training.evaluate_au``). The research expression network never saw CK+.
* taiwanese_dev (VALIDATION ONLY: read, never fitted to): expression against observers' top vote and against
  the intended expression (7 classes), AUs present per neutral photo; photos analysed with the filters off and
  the largest face, as ``training.evaluate_transfer`` does.

A face the service cannot read (no face found, or a mesh it rejects) counts as a wrong expression and as no
AU. The research expression uses the served default prior (balanced).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.manifest import Manifest
from app.settings import Settings
from training.data import (
    CKPLUS_TO_FERPLUS,
    FERPLUS_CLASSES,
    REPO_ROOT,
    TW_TO_FERPLUS,
    ckplus_rows,
    ferplus_rows,
    taiwanese_rows,
)

PROFILES = ("research", "open")
CROP = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)
PHOTO = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)
CK_CLASSES = ["happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
TW_CLASSES = list(TW_TO_FERPLUS.values())
CARD = REPO_ROOT / "models" / "OPEN_PROFILE.md"
START, END = "<!-- evaluate_profiles:start -->", "<!-- evaluate_profiles:end -->"


def read_face(analyzer: Analyzer, path: Path, options: FaceOptions) -> dict[str, Any] | None:
    """The first face's expression label, ``uncertain``, and per AU (probability, present); None if unread."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    faces = analyzer.run(image, options, heads={"au", "expression"}).faces
    if not faces or faces[0].filtered:
        return None
    expression = faces[0].outputs["expression"]
    return {"label": expression.label, "uncertain": bool(expression.uncertain),
            "aus": {u.au: (float(u.probability), bool(u.present)) for u in faces[0].outputs["au"]}}


def accuracy(truth: list[str], read: list[dict | None]) -> float:
    return float(np.mean([r is not None and r["label"] == t for t, r in zip(truth, read)])) if truth else float("nan")


def macro_f1(truth: list[str], read: list[dict | None], classes: list[str]) -> float:
    predicted = [None if r is None else r["label"] for r in read]
    f1 = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, predicted))
        fp = sum(t != c and p == c for t, p in zip(truth, predicted))
        fn = sum(t == c and p != c for t, p in zip(truth, predicted))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1))


def recall_by_class(truth: list[str], read: list[dict | None], classes: list[str]) -> dict[str, float]:
    out = {}
    for c in classes:
        mine = [r for t, r in zip(truth, read) if t == c]
        if mine:
            out[c] = float(np.mean([r is not None and r["label"] == c for r in mine]))
    return out


def aus_per_face(read: list[dict | None]) -> float:
    return float(np.mean([0 if r is None else sum(p for _, p in r["aus"].values()) for r in read])) if read else 0.0


def au_rates(read: list[dict | None], top: int = 4) -> dict[str, float]:
    """The AUs most often present on these faces: AU -> share of the faces."""
    counts = Counter(au for r in read if r is not None for au, (_, present) in r["aus"].items() if present)
    return {au: n / max(len(read), 1) for au, n in counts.most_common(top)}


def uncertain_rate(read: list[dict | None]) -> float:
    found = [r for r in read if r is not None]
    return float(np.mean([r["uncertain"] for r in found])) if found else float("nan")


def au_scores(labels: list[dict[str, int]], read: list[dict | None], au: str) -> dict[str, float] | None:
    """F1, precision, recall of one AU's presence (and ROC AUC of its probability) on CK+; None if not read."""
    if not any(r is not None and au in r["aus"] for r in read):
        return None
    truth = np.array([lab.get(au, 0) == 1 for lab in labels])
    present = np.array([r is not None and r["aus"].get(au, (0.0, False))[1] for r in read])
    score = np.array([0.0 if r is None else r["aus"].get(au, (0.0, False))[0] for r in read])
    tp, fp, fn = int((present & truth).sum()), int((present & ~truth).sum()), int((~present & truth).sum())
    from scipy.stats import mannwhitneyu  # here: scipy.stats probes for torch at import (the torch-free check)

    auc = (float(mannwhitneyu(score[truth], score[~truth]).statistic / (truth.sum() * (~truth).sum()))
           if 0 < truth.sum() < len(truth) else float("nan"))
    return {"positives": int(truth.sum()), "f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "auc": auc}


def evaluate(profile: str, ferplus_limit: int, limit: int = 0) -> dict[str, Any]:
    start = time.perf_counter()
    analyzer = Analyzer(Settings(profile=profile))
    report: dict[str, Any] = {"profile": profile, "models": sorted(analyzer.models.loaded())}
    # FER+ Test
    rows = [r for r in ferplus_rows("test") if r.majority is not None]
    rows = rows[:ferplus_limit or limit or None]
    truth = [FERPLUS_CLASSES[r.majority] for r in rows]  # type: ignore[index]
    read = [read_face(analyzer, r.path, CROP) for r in rows]
    neutral = [x for r, x in zip(rows, read) if r.votes[0] >= 8]
    report["ferplus_test"] = {
        "faces": len(rows), "read": sum(x is not None for x in read), "accuracy": accuracy(truth, read),
        "macro_f1": macro_f1(truth, read, FERPLUS_CLASSES), "uncertain_rate": uncertain_rate(read),
        "recall_by_class": recall_by_class(truth, read, FERPLUS_CLASSES),
        "neutral_faces": len(neutral), "neutral_aus_per_face": aus_per_face(neutral),
        "neutral_au_rates": au_rates(neutral)}
    # CK+
    ck = ckplus_rows()[:limit or None]
    ck_read = [read_face(analyzer, r.path, CROP) for r in ck]
    ck_truth = [CKPLUS_TO_FERPLUS[r.emotion] for r in ck]
    au_names = sorted({au for x in ck_read if x is not None for au in x["aus"]} & set(ck[0].aus),
                      key=lambda a: int(a[2:]))
    report["ckplus"] = {
        "faces": len(ck), "subjects": len({r.subject for r in ck}), "read": sum(x is not None for x in ck_read),
        "accuracy": accuracy(ck_truth, ck_read), "macro_f1": macro_f1(ck_truth, ck_read, CK_CLASSES),
        "recall_by_class": recall_by_class(ck_truth, ck_read, CK_CLASSES), "uncertain_rate": uncertain_rate(ck_read),
        "au": {au: au_scores([r.aus for r in ck], ck_read, au) for au in au_names}}
    # taiwanese_dev (validation only)
    tw = taiwanese_rows()[:limit or None]
    tw_read = [read_face(analyzer, r.path, PHOTO) for r in tw]
    neutral_tw = [x for r, x in zip(tw, tw_read) if r.neutral]
    report["taiwanese_dev"] = {"photos": len(tw), "read": sum(x is not None for x in tw_read),
                               "uncertain_rate": uncertain_rate(tw_read),
                               "neutral_photos": len(neutral_tw), "neutral_aus_per_face": aus_per_face(neutral_tw),
                               "neutral_au_rates": au_rates(neutral_tw),
                               "predicted_share": {k: v / len(tw) for k, v in Counter(
                                   "unread" if x is None else x["label"] for x in tw_read).most_common()}}
    for target in ("top_vote", "intended"):
        t = [TW_TO_FERPLUS[getattr(r, target)] for r in tw]
        report["taiwanese_dev"][f"vs_{target}"] = {"accuracy": accuracy(t, tw_read),
                                                   "macro_f1": macro_f1(t, tw_read, TW_CLASSES),
                                                   "recall_by_class": recall_by_class(t, tw_read, TW_CLASSES)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def research_cv(models_dir: Path) -> dict[str, Any]:
    """The AU detector's subject-wise CV numbers on CK+, as the manifest holds them (training.evaluate_au)."""
    metrics = Manifest.load(models_dir).entry("au_detector").extra.get("metrics", {})
    return {"per_au": {au: m.get("f1_nested") for au, m in metrics.get("per_au", {}).items()},
            "protocol": metrics.get("protocol", "")}


def fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def tables(reports: dict[str, dict[str, Any]], cv: dict[str, Any]) -> str:
    r, o = reports["research"], reports["open"]
    fr, fo, cr, co, tr, to = (r["ferplus_test"], o["ferplus_test"], r["ckplus"], o["ckplus"], r["taiwanese_dev"],
                              o["taiwanese_dev"])
    lines = ["| measure | research | open |", "|---|---|---|"]
    rows = [
        (f"FER+ Test: expression accuracy (majority vote, 8 classes, {fr['faces']} faces)",
         fr["accuracy"], fo["accuracy"]),
        ("FER+ Test: expression macro-F1", fr["macro_f1"], fo["macro_f1"]),
        ("FER+ Test: share flagged `uncertain`", fr["uncertain_rate"], fo["uncertain_rate"]),
        (f"FER+ Test neutral faces (>= 8/10 votes, {fr['neutral_faces']}): AUs present per face",
         fr["neutral_aus_per_face"], fo["neutral_aus_per_face"]),
        (f"CK+: expression accuracy (7 emotions, {cr['faces']} faces, {cr['subjects']} subjects, all held out)",
         cr["accuracy"], co["accuracy"]),
        ("CK+: expression macro-F1", cr["macro_f1"], co["macro_f1"]),
        ("CK+: share flagged `uncertain`", cr["uncertain_rate"], co["uncertain_rate"]),
        (f"taiwanese_dev: expression accuracy vs top vote ({tr['photos']} photos)",
         tr["vs_top_vote"]["accuracy"], to["vs_top_vote"]["accuracy"]),
        ("taiwanese_dev: expression macro-F1 vs top vote",
         tr["vs_top_vote"]["macro_f1"], to["vs_top_vote"]["macro_f1"]),
        ("taiwanese_dev: expression accuracy vs intended",
         tr["vs_intended"]["accuracy"], to["vs_intended"]["accuracy"]),
        ("taiwanese_dev: share flagged `uncertain`", tr["uncertain_rate"], to["uncertain_rate"]),
        (f"taiwanese_dev neutral photos ({tr['neutral_photos']}): AUs present per face",
         tr["neutral_aus_per_face"], to["neutral_aus_per_face"]),
    ]
    lines += [f"| {name} | {fmt(a)} | {fmt(b)} |" for name, a, b in rows]

    def rates(d: dict[str, float]) -> str:
        return ", ".join(f"{au} {v:.2f}" for au, v in d.items()) or "none"

    lines += ["", "AUs most often present on neutral faces (share of the faces), research / open: FER+ Test "
              f"{rates(fr['neutral_au_rates'])} / {rates(fo['neutral_au_rates'])}; taiwanese_dev "
              f"{rates(tr['neutral_au_rates'])} / {rates(to['neutral_au_rates'])}."]
    lines += ["", "Expression recall per class (research / open):", "",
              "| class | FER+ Test | CK+ | taiwanese_dev (top vote) |", "|---|---|---|---|"]
    for c in FERPLUS_CLASSES:
        cells = []
        for key, sub in (("ferplus_test", None), ("ckplus", None), ("taiwanese_dev", "vs_top_vote")):
            a = (r[key][sub] if sub else r[key])["recall_by_class"].get(c)
            b = (o[key][sub] if sub else o[key])["recall_by_class"].get(c)
            cells.append("–" if a is None else f"{fmt(a, 2)} / {fmt(b, 2)}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "AUs on CK+ (F1 of `present`; AUC of the probability / value, threshold-free):", "",
              "| AU | positives | research, held-out subjects (CV F1) | research served (saw these subjects) | "
              "open F1 | open precision | open recall | open AUC |", "|---|---|---|---|---|---|---|---|"]
    names = sorted(set(cr["au"]) | set(co["au"]), key=lambda a: int(a[2:]))
    for au in names:
        served, mine = cr["au"].get(au), co["au"].get(au)
        positives = (mine or served or {}).get("positives")
        lines.append(f"| {au} | {positives} | {fmt(cv['per_au'].get(au))} | {fmt(served and served['f1'])} | "
                     f"{fmt(mine and mine['f1'])} | {fmt(mine and mine['precision'])} | {fmt(mine and mine['recall'])} "
                     f"| {fmt(mine and mine['auc'])} |")
    both = [au for au in names if cv["per_au"].get(au) is not None and co["au"].get(au)]
    means = [np.mean([cv["per_au"][a] for a in both]), np.mean([cr["au"][a]["f1"] for a in both]),
             np.mean([co["au"][a]["f1"] for a in both]), np.nanmean([co["au"][a]["auc"] for a in both])]
    lines.append(f"| mean over the {len(both)} AUs both read | | {fmt(means[0])} | {fmt(means[1])} | {fmt(means[2])} "
                 f"| | | {fmt(means[3])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferplus-limit", type=int, default=0, help="the first N FER+ Test faces (0: all)")
    parser.add_argument("--limit", type=int, default=0, help="smoke runs: the first N faces of every set (0: all)")
    parser.add_argument("--json", type=Path, help="write the whole report here")
    parser.add_argument("--write-card", action="store_true", help=f"replace the tables in {CARD.name}")
    args = parser.parse_args(argv)
    reports = {}
    for profile in PROFILES:
        reports[profile] = evaluate(profile, args.ferplus_limit, args.limit)
        print(f"{profile}: {reports[profile]['seconds']} s; models {reports[profile]['models']}", flush=True)
    cv = research_cv(Settings().models_dir)
    text = tables(reports, cv)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"reports": reports, "research_cv": cv}, indent=2))
    if args.write_card and args.limit:
        parser.error("--write-card needs whole sets (no --limit)")
    if args.write_card:
        card = CARD.read_text(encoding="utf-8")
        head, rest = card.split(START, 1)
        _, tail = rest.split(END, 1)
        command = "python -m training.evaluate_profiles" + (
            f" --ferplus-limit {args.ferplus_limit}" if args.ferplus_limit else "") + " --write-card"
        CARD.write_text(f"{head}{START}\n<!-- written by `{command}` -->\n\n{text}\n\n{END}{tail}", encoding="utf-8")
        print(f"wrote the tables of {CARD.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
