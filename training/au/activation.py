"""How well each AU's ``activation`` (app/activation.py: MediaPipe blendshape coefficients, no training of
ours) separates faces with the AU from faces without it, through the service's own code path.

    python -m training.au.activation                 # CK+ peak frames, FER+ Test neutral faces
    python -m training.au.activation --limit 200     # quicker
    python -m training.au.activation --gate          # + the experiment below

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
from collections.abc import Mapping

import numpy as np

from app.activation import BLENDSHAPES_OF_AU, CANDIDATES_LEFT_OUT, activations
from app.analyzer import Analyzer, FaceOptions
from app.model_zoo.au_detector import ActionUnit
from training.data import ckplus_rows, ferplus_rows, read_bgr, taiwanese_rows
from training.metrics import roc_auc

OPTIONS = FaceOptions(side_face_filter=False, occlusion_filter=False, face_crop=True)
PHOTO = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)
MAPPING = {**BLENDSHAPES_OF_AU, **CANDIDATES_LEFT_OUT}
Face = tuple[dict[str, float], list[ActionUnit]]  # the face's blendshapes and the AU head's units


def analyse(analyzer: Analyzer, path, options: FaceOptions = OPTIONS) -> Face | None:
    """The first face's blendshapes and AU units through the service's path, or None (no usable face)."""
    faces = analyzer.run(read_bgr(path), options, heads={"au", "blendshapes"}).faces
    if not faces or faces[0].filtered:
        return None
    blendshapes, units = faces[0].outputs["blendshapes"], faces[0].outputs["au"]
    assert {u.au: u.activation for u in units if u.activation is not None} == activations(blendshapes)
    return blendshapes, units


def candidates(blendshapes: Mapping[str, float]) -> dict[str, float]:
    """Every candidate AU's activation, served or not (unrounded means of its blendshapes)."""
    return {au: float(np.mean([blendshapes[n] for n in names])) for au, names in MAPPING.items()}


def served(face: Face) -> tuple[dict[str, float], list[str]]:
    """(the activations the AU head serves, the AUs the detector reports present)."""
    units = face[1]
    return {u.au: u.activation for u in units if u.activation is not None}, [u.au for u in units if u.present]


def ckplus(analyzer: Analyzer, limit: int) -> tuple[list[dict[str, float]], list[dict[str, bool]]]:
    rows = [r for r in ckplus_rows() if r.is_peak]
    acts, labels = [], []
    for row in rows[:limit] if limit else rows:
        face = analyse(analyzer, row.path)
        if face is not None:
            acts.append(candidates(face[0]))
            labels.append({au: row.aus.get(au, 0) == 1 for au in MAPPING})
    return acts, labels


def ferplus_neutral(analyzer: Analyzer, split: str, limit: int, min_votes: int = 8) -> list[Face]:
    """The FER+ faces of ``split`` that >= ``min_votes`` of 10 raters called neutral, analysed."""
    rows = [r for r in ferplus_rows(split) if r.votes[0] >= min_votes]
    found = [analyse(analyzer, r.path) for r in (rows[:limit] if limit else rows)]
    return [f for f in found if f is not None]


def taiwanese_faces(analyzer: Analyzer, limit: int) -> dict[str, list[Face]]:
    """taiwanese_dev (validation only) photos as the service sees them (filters off), neutral vs posed."""
    rows = taiwanese_rows()
    out: dict[str, list[Face]] = {"neutral": [], "posed": []}
    for row in rows[:limit] if limit else rows:
        face = analyse(analyzer, row.path, PHOTO)
        if face is not None:
            out["neutral" if row.neutral else "posed"].append(face)
    return out


def gate_experiment(analyzer: Analyzer, acts: list[dict[str, float]], labels: list[dict[str, bool]],
                    test_neutral: list[Face], limit: int) -> None:
    valid = [served(f) for f in ferplus_neutral(analyzer, "valid", limit)]
    thresholds = {au: float(np.percentile([a[au] for a, _ in valid], 95)) for au in BLENDSHAPES_OF_AU}

    def per_face(faces: list[Face]) -> tuple[float, float]:
        pairs = [served(f) for f in faces]
        plain = [len(present) for _, present in pairs]
        gated = [sum(au not in thresholds or a[au] >= thresholds[au] for au in present) for a, present in pairs]
        return float(np.mean(plain)), float(np.mean(gated))

    print(f"\n--gate: thresholds = 95th percentile on {len(valid)} FER+ Valid neutral faces")
    for au, t in thresholds.items():
        with_au = [a[au] for a, lab in zip(acts, labels) if lab.get(au)]
        kept = np.mean([v >= t for v in with_au]) if with_au else float("nan")
        print(f"  {au:<5} threshold {t:.3f}; CK+ frames with {au} that pass: {kept:.2f} ({len(with_au)})")
    sets = {"FER+ Test neutral": test_neutral, **{
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
    test_neutral = ferplus_neutral(analyzer, "test", args.limit)
    neutral = [candidates(shapes) for shapes, _ in test_neutral]
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
        gate_experiment(analyzer, acts, labels, test_neutral, args.limit)


if __name__ == "__main__":
    main()
