"""The person-relative reading on taiwanese_dev (read only): expression and AUs with and without a reference.

    python -m training.evaluate_reference                     # the table of models/EXPRESSION.md
    python -m training.evaluate_reference --json runs/eval/reference.json
    python -m training.evaluate_reference --identity          # + automatic baselines from identity clusters

Each photo is read once through the service's own path (``Analyzer.run``, filters off so that every face gets
an answer, one face per photo). Then, in numpy on those outputs:

* **no reference**: the served absolute reading (the default balanced prior);
* **one neutral reference**: each photo against each *other* neutral photo of its performer in turn (the
  mean over the choices, and their range), the served rule (``app.reference``);
* **all neutral references**: against the mean of the performer's other neutral photos;
* **automatic baseline**: against the most neutral-looking share of the performer's photos, chosen by the
  network's own neutral score (``app.reference.most_neutral``; the served share is the setting
  ``baseline_fraction``, 0.3, equal to the video path's ``event_rest_fraction``; 0.1 and 0.2 are reported too),
  with the performer taken from the labels or, with ``--identity``, from identity clustering;
* **design variants** declared before they were compared here (models/EXPRESSION.md lists them): R1 the
  anchored change alone, R2 score-space prototypes (Euclidean, Mahalanobis), R3 embedding-space prototypes,
  R4 the anchored gate with the largest change, R5 the served rule times an AU -> expression map learnt from CK+'s
  FACS codes, S the served rule. Their parameters come from FER+ Valid (R5: CK+) only.

taiwanese_dev is VALIDATION ONLY: nothing here is fitted to it; it is read to report numbers.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.manifest import update_entry
from app.reference import Reference, log_probs, most_neutral, not_neutral, relative_au_probability
from app.reference import relative_probabilities as served_rule
from app.settings import Settings
from training.common import run_cli
from training.data import FERPLUS_CLASSES, TW_TO_FERPLUS, ferplus_rows, taiwanese_rows
from training.evaluate_au import prototype_aus
from training.evaluate_transfer import TW_CLASSES, macro_f1

NEUTRAL = FERPLUS_CLASSES.index("neutral")


@dataclass
class Outputs:
    """What the service's models say of each photo (one face each), and the photos' labels."""

    performer: np.ndarray
    neutral: np.ndarray  # the performer's neutral photos (performance type 0)
    top_vote: list[str]
    intended: list[str]
    log_probs: np.ndarray  # (N, 8) FER+ prior
    distance: np.ndarray  # (N,) to the nearest prototype
    embedding: np.ndarray  # (N, 64) unit
    au: np.ndarray  # (N, 17)
    rows: list[Any]  # the taiwanese_dev rows read (every photo with a face)


def read_faces(analyzer: Analyzer, rows: list[Any], options: FaceOptions) -> tuple[list[int], dict[str, list]]:
    model, au = analyzer.models.expression, analyzer.heads["au"]
    kept: list[int] = []
    out: dict[str, list] = {"log_probs": [], "distance": [], "embedding": [], "au": []}
    for i, row in enumerate(rows):
        analysis = analyzer.run(cv2.imread(str(row.path), cv2.IMREAD_COLOR), options)
        if not analysis.faces or analysis.faces[0].filtered:  # filters are off: only an unusable mesh
            continue
        face = analysis.faces[0]
        probs, embedding = model.predict_batch(np.asarray(face.aligned.image)[None])
        _, distance = model.nearest_prototype(embedding)
        analyzer._run_irises(analysis.image, [face], ("au",), analysis.timings)
        kept.append(i)
        out["log_probs"].append(log_probs(probs[0]))
        out["distance"].append(float(distance[0]))
        out["embedding"].append(embedding[0])
        out["au"].append(au.probability(face)[0])  # type: ignore[attr-defined]
    return kept, out


def read_taiwanese(analyzer: Analyzer) -> Outputs:
    rows = taiwanese_rows()
    kept, out = read_faces(analyzer, rows, FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1))
    rows = [rows[i] for i in kept]
    return Outputs(np.array([r.performer for r in rows]), np.array([r.neutral for r in rows]),
                   [TW_TO_FERPLUS[r.top_vote] for r in rows], [TW_TO_FERPLUS[r.intended] for r in rows],
                   np.array(out["log_probs"]), np.array(out["distance"]), np.array(out["embedding"]),
                   np.array(out["au"]), rows)


def ckplus_au_classifier(au_classes: list[str]) -> tuple[list[str], np.ndarray]:
    """R5's AU -> expression map: multinomial logistic regression from the CK+ peak frames' FACS codes (of the
    detector's AUs) to their 7 expression labels (L2 1/N, scipy L-BFGS, convergence checked). FACS codes are
    relative to the subject's neutral face by definition, so the map reads relative AU probabilities."""
    from scipy.optimize import minimize

    from training.data import CKPLUS_TO_FERPLUS, ckplus_rows

    peaks = [r for r in ckplus_rows() if r.is_peak]
    classes = [c for c in FERPLUS_CLASSES if c != "neutral"]
    x = np.array([[float(r.aus.get(a, 0)) for a in au_classes] + [1.0] for r in peaks])
    y = np.array([classes.index(CKPLUS_TO_FERPLUS[r.emotion]) for r in peaks])

    def loss(w: np.ndarray) -> float:
        weights = w.reshape(len(classes), -1)
        z = x @ weights.T
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean() + (weights[:, :-1] ** 2).sum() / len(y))

    fit = minimize(loss, np.zeros(len(classes) * x.shape[1]), method="L-BFGS-B")
    if not fit.success:
        raise RuntimeError(f"the CK+ AU -> expression fit did not converge: {fit.message}")
    return classes, fit.x.reshape(len(classes), -1)


def ferplus_valid_statistics(analyzer: Analyzer, limit: int = 0) -> dict[str, np.ndarray]:
    """The variants' FER+ Valid statistics: class means and pooled covariance of log-probabilities and of
    embeddings, over the faces with a majority label (service path, face_crop)."""
    rows = [r for r in ferplus_rows("valid") if r.majority is not None]
    rows = rows[:limit] if limit else rows
    kept, out = read_faces(analyzer, rows, FaceOptions(side_face_filter=False, occlusion_filter=False,
                                                       face_crop=True))
    y = np.array([rows[i].majority for i in kept])
    stats: dict[str, np.ndarray] = {}
    for name, x in (("log_probs", np.array(out["log_probs"])), ("embedding", np.array(out["embedding"]))):
        x = x - x.mean(1, keepdims=True) if name == "log_probs" else x
        means = np.stack([x[y == c].mean(0) for c in range(len(FERPLUS_CLASSES))])
        within = np.concatenate([x[y == c] - means[c] for c in range(len(FERPLUS_CLASSES))])
        stats[f"{name}_means"] = means
        stats[f"{name}_precision"] = np.linalg.pinv(np.cov(within.T) + 1e-4 * np.eye(x.shape[1]))
    return stats


# -- the relative rules compared: (face index, reference indices) -> (8,) scores ---------------------------------

Rule = Callable[[int, np.ndarray], np.ndarray]


def rules(analyzer: Analyzer, out: Outputs, stats: dict[str, np.ndarray], prior: str) -> dict[str, Rule]:
    model = analyzer.models.expression
    assert model.neutral_anchor is not None

    def reference(refs: np.ndarray) -> Reference:
        return Reference.average(out.log_probs[refs], out.au[refs], {})

    def change(i: int, refs: np.ndarray) -> np.ndarray:
        return out.log_probs[i] - out.log_probs[refs].mean(0)

    def anchored(i: int, refs: np.ndarray) -> np.ndarray:  # R1
        return model.reweight(np.exp(change(i, refs) + model.neutral_anchor)[None], prior)[0]

    def prototypes(space: str, metric: bool) -> Rule:  # R2, R3: the nearest displaced FER+ Valid class mean
        means, precision = stats[f"{space}_means"], stats[f"{space}_precision"]
        x = out.log_probs - out.log_probs.mean(1, keepdims=True) if space == "log_probs" else out.embedding
        steps = means - means[NEUTRAL]

        def rule(i: int, refs: np.ndarray) -> np.ndarray:
            diff = (x[i] - x[refs].mean(0))[None] - steps
            d2 = np.einsum("ci,ij,cj->c", diff, precision, diff) if metric else (diff ** 2).sum(1)
            return np.exp(-0.5 * (d2 - d2.min()))
        return rule

    def gated(i: int, refs: np.ndarray) -> np.ndarray:  # R4: neutral if R1 says so, else the largest change
        if anchored(i, refs).argmax() == NEUTRAL:
            return np.eye(len(model.classes))[NEUTRAL]
        d = change(i, refs)
        d[NEUTRAL] = -np.inf
        return np.eye(len(model.classes))[int(np.argmax(d))]

    au_expressions, au_weights = ckplus_au_classifier(list(analyzer.models.au.classes))

    def with_aus(i: int, refs: np.ndarray) -> np.ndarray:  # R5: the served rule's split x the CK+ AU map
        scores = served_rule(model, out.log_probs[i], reference(refs), prior)
        rel = relative_au_probability(out.au[i], reference(refs))
        z = au_weights @ np.append(rel, 1.0)
        p_au = np.exp(z - z.max())
        split = scores.copy()
        others = [model.classes.index(c) for c in au_expressions]
        split[others] *= p_au / p_au.sum()
        split[others] *= (1.0 - scores[NEUTRAL]) / split[others].sum()
        return split

    return {
        "R1 anchored change": anchored,
        "R2 score prototypes (Euclidean)": prototypes("log_probs", False),
        "R2m score prototypes (Mahalanobis)": prototypes("log_probs", True),
        "R3 embedding prototypes (Euclidean)": prototypes("embedding", False),
        "R3m embedding prototypes (Mahalanobis)": prototypes("embedding", True),
        "R4 anchored gate + largest change": gated,
        "R5 served x CK+ AU->expression map": with_aus,
        "S served (anchored neutral + change split)": lambda i, refs: served_rule(
            model, out.log_probs[i], reference(refs), prior),
    }


# -- scoring ---------------------------------------------------------------------------------------------------


def scores(out: Outputs, predicted: list[str]) -> dict[str, float]:
    return {"top_vote_accuracy": float(np.mean([p == t for p, t in zip(predicted, out.top_vote)])),
            "intended_accuracy": float(np.mean([p == t for p, t in zip(predicted, out.intended)])),
            "top_vote_macro_f1": macro_f1(out.top_vote, predicted, TW_CLASSES),
            "intended_macro_f1": macro_f1(out.intended, predicted, TW_CLASSES),
            "neutral_share": float(np.mean([p == "neutral" for p in predicted]))}


def labels(rule: Rule, references: list[np.ndarray], classes: list[str]) -> list[str]:
    return [classes[int(np.argmax(rule(i, refs)))] for i, refs in enumerate(references)]


def other_neutral(out: Outputs) -> list[np.ndarray]:
    idx = np.arange(len(out.performer))
    return [idx[(out.performer == out.performer[i]) & out.neutral & (idx != i)] for i in idx]


def one_each(out: Outputs, choice: int) -> list[np.ndarray]:
    """Each photo's ``choice``-th other neutral photo (cycling when the performer has fewer)."""
    return [refs[choice % len(refs): choice % len(refs) + 1] for refs in other_neutral(out)]


def automatic(out: Outputs, groups: np.ndarray, fraction: float) -> list[np.ndarray]:
    """Each photo's reference: the most neutral-looking ``fraction`` of its group (itself possibly among them)."""
    neutral_score = np.exp(out.log_probs[:, NEUTRAL])
    refs = {}
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        refs[g] = members[most_neutral(neutral_score[members], fraction)]
    return [refs[g] for g in groups]


def evaluate(analyzer: Analyzer, out: Outputs, stats: dict[str, np.ndarray], prior: str,
             identity_groups: np.ndarray | None) -> dict[str, Any]:
    model = analyzer.models.expression
    classes = model.classes
    absolute = [model.result(np.exp(lp), d, prior).label for lp, d in zip(out.log_probs, out.distance)]
    report: dict[str, Any] = {"photos": len(out.performer), "performers": len(set(out.performer)), "prior": prior,
                              "no_reference": scores(out, absolute)}
    n_choices = max(len(r) for r in other_neutral(out))
    table = {}
    for name, rule in rules(analyzer, out, stats, prior).items():
        per_choice = [scores(out, labels(rule, one_each(out, c), classes)) for c in range(n_choices)]
        table[name] = {
            "one_reference": {k: float(np.mean([s[k] for s in per_choice])) for k in per_choice[0]},
            "one_reference_range": {k: [min(s[k] for s in per_choice), max(s[k] for s in per_choice)]
                                    for k in ("top_vote_accuracy", "intended_accuracy", "top_vote_macro_f1")},
            "all_neutral_references": scores(out, labels(rule, other_neutral(out), classes)),
        }
    report["variants"] = table
    served = rules(analyzer, out, stats, prior)["S served (anchored neutral + change split)"]
    report["automatic"] = {f"performer, fraction {f}": scores(out, labels(served, automatic(out, out.performer, f),
                                                                          classes)) for f in (0.1, 0.2, 0.3)}
    if identity_groups is not None:
        report["automatic"]["identity clusters, fraction 0.3"] = scores(
            out, labels(served, automatic(out, identity_groups, 0.3), classes))
    report["aus"] = au_report(analyzer, out)
    report["reference_not_neutral_warnings"] = {
        "neutral_photos": int(out.neutral.sum()),
        "warned": int(sum(not_neutral(model, out.log_probs[i]) for i in np.flatnonzero(out.neutral)))}
    report["confusion_served_one_reference"] = dict(Counter(
        f"{t}->{p}" for t, p in zip(out.top_vote, labels(served, one_each(out, 0), classes)) if t != p).most_common(8))
    return report


def au_report(analyzer: Analyzer, out: Outputs) -> dict[str, Any]:
    """AUs present per neutral face and the posed faces' prototype-AU share, without and with a reference."""
    au = analyzer.heads["au"]
    thresholds = au.model.thresholds if getattr(au, "fusion", None) is None else au.fusion.thresholds  # type: ignore
    classes = list(au.model.classes)  # type: ignore[attr-defined]
    refs = one_each(out, 0)
    relative = np.stack([relative_au_probability(out.au[i], Reference.average(out.log_probs[r], out.au[r], {}))
                         for i, r in enumerate(refs)])

    def summary(p: np.ndarray) -> dict[str, float]:
        present = p >= thresholds
        share = [np.mean([present[i, classes.index(a)] for a in prototype_aus(out.intended[i], classes)])
                 for i in np.flatnonzero(~out.neutral) if prototype_aus(out.intended[i], classes)]
        return {"present_per_neutral_face": float(present[out.neutral].sum(1).mean()),
                "present_per_posed_face": float(present[~out.neutral].sum(1).mean()),
                "prototype_share_posed": float(np.mean(share))}
    return {"no_reference": summary(out.au), "one_neutral_reference": summary(relative)}


def identity_clusters(analyzer: Analyzer, rows: list[Any]) -> np.ndarray:
    """Each photo's identity cluster (app/identity.py: the face_identity descriptor, the authors' threshold),
    for automatic baselines without the performer labels."""
    from app.identity import same_person_groups

    model = analyzer.models.identity()
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)
    embeddings = []
    for row in rows:
        image = cv2.imread(str(row.path), cv2.IMREAD_COLOR)
        embeddings.append(model.embed(image, analyzer.run(image, options).faces[0].landmarks))
    return np.array(same_person_groups(np.array(embeddings)))


def print_report(report: dict[str, Any]) -> None:
    def row(name: str, s: dict[str, float]) -> str:
        return (f"  {name:46s} top vote {s['top_vote_accuracy']:.3f}  intended {s['intended_accuracy']:.3f}  "
                f"macro-F1 {s['top_vote_macro_f1']:.3f} / {s['intended_macro_f1']:.3f}  "
                f"neutral {s['neutral_share']:.2f}")
    print(f"taiwanese_dev: {report['photos']} photos of {report['performers']} performers; prior {report['prior']}; "
          "accuracy vs top vote and intended, macro-F1 (7 classes) vs top vote / intended, share answered neutral")
    print(row("no reference (served absolute reading)", report["no_reference"]))
    print("one other neutral photo of the same performer as the reference (mean over the choices):")
    for name, r in report["variants"].items():
        rng = r["one_reference_range"]["top_vote_accuracy"]
        print(row(name, r["one_reference"]) + f"  [top vote {rng[0]:.3f}-{rng[1]:.3f}]")
    print("the mean of the performer's other neutral photos as the reference:")
    for name, r in report["variants"].items():
        print(row(name, r["all_neutral_references"]))
    print("automatic baselines (served rule): the most neutral-looking share of each person's photos:")
    for name, s in report["automatic"].items():
        print(row(name, s))
    a = report["aus"]
    for name, s in a.items():
        print(f"  AUs {name}: present per neutral face {s['present_per_neutral_face']:.3f}, per posed face "
              f"{s['present_per_posed_face']:.2f}, prototype share on posed faces {s['prototype_share_posed']:.3f}")
    w = report["reference_not_neutral_warnings"]
    print(f"  reference_not_neutral warnings on the {w['neutral_photos']} neutral photos: {w['warned']}")
    print(f"  most frequent errors, served rule (top vote -> answer): {report['confusion_served_one_reference']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--prior", default="balanced", choices=("balanced", "ferplus"))
    parser.add_argument("--identity", action="store_true", help="also group photos by identity clustering")
    parser.add_argument("--ferplus-limit", type=int, default=0, help="FER+ Valid faces for the variants' statistics")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write-manifest", action="store_true",
                        help="store the served rule's taiwanese_dev numbers in the expression entry's metrics")
    args = parser.parse_args(argv)
    analyzer = Analyzer(Settings(models_dir=args.models_dir) if args.models_dir else Settings())
    out = read_taiwanese(analyzer)
    stats = ferplus_valid_statistics(analyzer, args.ferplus_limit)
    groups = identity_clusters(analyzer, out.rows) if args.identity else None
    report = evaluate(analyzer, out, stats, args.prior, groups)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.write_manifest:
        served = report["variants"]["S served (anchored neutral + change split)"]["one_reference"]
        auto = report["automatic"]["performer, fraction 0.3"]
        rnd = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
        update_entry(analyzer.settings.models_dir, "expression", metrics={
            "taiwanese_dev_no_reference": rnd(report["no_reference"]),
            "taiwanese_dev_one_neutral_reference": rnd(served),
            "taiwanese_dev_automatic_baseline_0.3": rnd(auto),
            "taiwanese_dev_au_present_per_neutral_face_with_reference":
                round(report["aus"]["one_neutral_reference"]["present_per_neutral_face"], 4)})


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
