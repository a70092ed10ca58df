"""How well each AU's ``activation`` (app/activation.py: MediaPipe blendshape coefficients, no training of
ours) separates faces with the AU from faces without it, through the service's own code path.

    python -m training.evaluate_activation                 # CK+ peak frames, FER+ Test neutral faces
    python -m training.evaluate_activation --limit 200     # quicker
    python -m training.evaluate_activation --gate          # + the experiment below

Per AU: ROC AUC of the activation against CK+'s FACS codes on the peak frames of every sequence (the AU
present vs absent on the other peak frames; as face crops, `face_crop=True`), the mean activation with and
without the AU, and the mean activation on FER+ Test faces that >= 8 of 10 raters called neutral. The AU
detector's own probabilities are not compared here: the detector was trained on these CK+ frames. No
torch. Nothing is fitted: the AU -> blendshape map is fixed by the blendshapes' definitions.

``--gate`` (an experiment, not served): would the activation stop the detector from reporting AUs on
neutral faces? An AU the detector reports counts only if its activation also reaches a threshold: the 95th
percentile of that activation on FER+ *Valid* faces with >= 8 neutral votes (so 5 % of such faces pass by
construction; AUs without an activation are not gated). Reported: AUs present per face on FER+ Test
neutral faces and on taiwanese_dev neutral and posed photos (validation only: read, nothing fitted), with
and without the gate, and the share of CK+ frames with each AU the gate lets through.
"""
from __future__ import annotations

import argparse
import csv

import cv2
import numpy as np

from app.activation import BLENDSHAPES_OF_AU, CANDIDATES_LEFT_OUT, activations
from app.analyzer import Analyzer, FaceOptions
from training.data import data_root

OPTIONS = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half (Mann-Whitney U)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


MAPPING = {**BLENDSHAPES_OF_AU, **CANDIDATES_LEFT_OUT}


def activations_of(analyzer: Analyzer, image: np.ndarray) -> dict[str, float] | None:
    """Every candidate AU's activation (the served ones are exactly what the AU head reports)."""
    face = analyzer.run(image, OPTIONS, heads={"au", "blendshapes"}).faces[0]
    if face.filtered:
        return None
    served = {u.au: u.activation for u in face.outputs["au"] if u.activation is not None}
    assert served == activations(face.outputs["blendshapes"])
    blendshapes = face.outputs["blendshapes"]
    return {au: float(np.mean([blendshapes[n] for n in names])) for au, names in MAPPING.items()}


def ckplus(analyzer: Analyzer, limit: int) -> tuple[list[dict[str, float]], list[dict[str, bool]]]:
    root = data_root() / "ckplus48"
    with (root / "au_labels.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["is_peak_frame"] == "1"]
    rows = rows[:limit] if limit else rows
    acts, labels = [], []
    for row in rows:
        found = activations_of(analyzer, cv2.imread(str(root / row["path"]), cv2.IMREAD_COLOR))
        if found is not None:
            acts.append(found)
            labels.append({au: row.get(au, "0") == "1" for au in MAPPING})
    return acts, labels


def ferplus_neutral(analyzer: Analyzer, limit: int, min_votes: int = 8) -> list[dict[str, float]]:
    root = data_root() / "ferplus" / "FER2013Test"
    with (root / "label.csv").open(newline="") as handle:
        rows = [r for r in csv.reader(handle) if int(r[2]) >= min_votes]
    rows = rows[:limit] if limit else rows
    out = []
    for row in rows:
        found = activations_of(analyzer, cv2.imread(str(root / row[0]), cv2.IMREAD_COLOR))
        if found is not None:
            out.append(found)
    return out


def ferplus_faces(analyzer: Analyzer, split: str, limit: int, min_votes: int = 8) -> list[tuple[dict, list[str]]]:
    """(served activations, AUs the detector reports) per neutral FER+ face of ``split``."""
    root = data_root() / "ferplus" / split
    with (root / "label.csv").open(newline="") as handle:
        rows = [r for r in csv.reader(handle) if int(r[2]) >= min_votes]
    out = []
    for row in rows[:limit] if limit else rows:
        face = analyzer.run(cv2.imread(str(root / row[0]), cv2.IMREAD_COLOR), OPTIONS, {"au", "blendshapes"}).faces[0]
        if not face.filtered:
            out.append(({u.au: u.activation for u in face.outputs["au"] if u.activation is not None},
                        [u.au for u in face.outputs["au"] if u.present]))
    return out


def taiwanese_faces(analyzer: Analyzer, limit: int) -> dict[str, list[tuple[dict, list[str]]]]:
    """taiwanese_dev (validation only) photos as the service sees them (filters off), neutral vs posed."""
    root = data_root() / "taiwanese_dev"
    with (root / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)
    out: dict[str, list[tuple[dict, list[str]]]] = {"neutral": [], "posed": []}
    for row in rows[:limit] if limit else rows:
        faces = analyzer.run(cv2.imread(str(root / "images" / row["file"]), cv2.IMREAD_COLOR), options,
                             {"au", "blendshapes"}).faces
        if faces and not faces[0].filtered:
            units = faces[0].outputs["au"]
            out["neutral" if row["performance_type"] == "0" else "posed"].append(
                ({u.au: u.activation for u in units if u.activation is not None}, [u.au for u in units if u.present]))
    return out


def gate_experiment(analyzer: Analyzer, acts: list[dict[str, float]], labels: list[dict[str, bool]],
                    limit: int) -> None:
    valid = ferplus_faces(analyzer, "FER2013Valid", limit)
    thresholds = {au: float(np.percentile([a[au] for a, _ in valid], 95)) for au in BLENDSHAPES_OF_AU}

    def per_face(faces: list[tuple[dict, list[str]]]) -> tuple[float, float]:
        plain = [len(present) for _, present in faces]
        gated = [sum(au not in thresholds or a[au] >= thresholds[au] for au in present) for a, present in faces]
        return float(np.mean(plain)), float(np.mean(gated))

    print(f"\n--gate: thresholds = 95th percentile on {len(valid)} FER+ Valid neutral faces")
    for au, t in thresholds.items():
        with_au = [a[au] for a, lab in zip(acts, labels) if lab.get(au)]
        kept = np.mean([v >= t for v in with_au]) if with_au else float("nan")
        print(f"  {au:<5} threshold {t:.3f}; CK+ frames with {au} that pass: {kept:.2f} ({len(with_au)})")
    sets = {"FER+ Test neutral": ferplus_faces(analyzer, "FER2013Test", limit), **{
        f"taiwanese_dev {k}": v for k, v in taiwanese_faces(analyzer, limit).items()}}
    print("AUs present per face: detector alone -> detector and gate")
    for name, faces in sets.items():
        plain, gated = per_face(faces)
        print(f"  {name:<22} {len(faces):>4} faces   {plain:.2f} -> {gated:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="at most this many faces per dataset (0: all)")
    parser.add_argument("--gate", action="store_true", help="also the gating experiment (see above)")
    args = parser.parse_args(argv)
    analyzer = Analyzer()
    acts, labels = ckplus(analyzer, args.limit)
    neutral = ferplus_neutral(analyzer, args.limit)
    print(f"CK+ peak frames analysed: {len(acts)}; FER+ Test neutral faces (>= 8 votes): {len(neutral)}")
    print(f"{'AU':<6}{'blendshapes':<40}{'CK+ with':>9}{'AUC':>7}{'mean with':>11}{'without':>9}{'FER+ neutral':>14}")
    for au, names in sorted(MAPPING.items(), key=lambda item: int(item[0][2:])):
        scores = np.array([a[au] for a in acts])
        positive = np.array([lab[au] for lab in labels])
        neutral_mean = float(np.mean([n[au] for n in neutral])) if neutral else float("nan")
        with_mean = float(scores[positive].mean()) if positive.any() else float("nan")
        name = au if au in BLENDSHAPES_OF_AU else au + "*"
        print(f"{name:<6}{'+'.join(names):<40}{int(positive.sum()):>9}{roc_auc(scores, positive):>7.3f}"
              f"{with_mean:>11.3f}{scores[~positive].mean():>9.3f}{neutral_mean:>14.3f}")
    print("* measured, not served (app/activation.py says why)")
    if args.gate:
        gate_experiment(analyzer, acts, labels, args.limit)


if __name__ == "__main__":
    main()
