"""Person-relative reading: a face read against the same person's neutral face, as a FACS coder reads it.

A ``Reference`` holds what the reading needs of one person's neutral face(s), model outputs and never
pixels: the expression network's log-probabilities (under FER+'s prior, the network's own) and each AU's
probability, averaged over the reference faces, and the versions of the models that produced them. It is
built by ``Analyzer.reference`` from one or more photos (``POST /persons`` stores one), or from a person's
most neutral-looking faces in a batch or a video track (``most_neutral``).

The rule (models/EXPRESSION.md, "Relative to the person's neutral face", says why, with the variants measured):

* Expression. ``d = log p(face) - log p(reference)``: the change from the person's resting face. The
  network's class prior cancels in ``d``, and so does whatever it reads into this person's resting face
  (a mouth that rests low reads "sad", a lopsided one "contempt").

  - ``q = balanced(softmax(d + m0))`` with ``m0`` the mean log-probabilities of FER+ Valid faces that most
    raters called neutral (``manifest: expression.relative.neutral_anchor``, ``python -m
    training.fit_reference``): the face as it would read if this person's resting face read like the average
    neutral face. ``P(neutral) = q(neutral)``: no change from the reference reads as neutral.
  - ``P(e) = (1 - q(neutral)) * softmax(d over the seven expressions)(e)``: the rest of the probability goes to
    the expressions by how much each one rose from the reference.

* AUs (noisy-OR). The detector fires on a face either because of the person's resting appearance (with the
  reference's probability ``r``) or because the AU is active (``p_rel``), independently:
  ``p = 1 - (1 - r)(1 - p_rel)``, so ``p_rel = max(0, (p - r) / (1 - r))``; presence is ``p_rel`` against the
  AU's usual threshold. The reference itself reads 0 on every AU.

* A reference the network reads as clearly not neutral (its own FER+-prior label is not neutral with
  probability >= ``NOT_NEUTRAL_CONFIDENCE``) is still used, with a ``reference_not_neutral`` warning: the
  reading is then relative to that expression, which is what a caller who chose it may want.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.model_zoo.au_detector import ActionUnit
from app.model_zoo.expression import ExpressionRecognizer, ExpressionResult

NOT_NEUTRAL_CONFIDENCE = 0.5  # the reference's own FER+-prior reading: a non-neutral label at least this sure
LOG_FLOOR = 1e-12  # probabilities are floored before the log (the ONNX softmax can underflow to 0)
NEUTRAL = "neutral"


@dataclass(frozen=True)
class FaceReading:
    """What a reference keeps of one face (``Analyzer.face_reading``)."""

    log_probs: np.ndarray  # (C,) the expression network's log-probabilities, FER+ prior
    au_probability: np.ndarray  # (A,) each AU's probability, as the AU head gives it

    @property
    def neutral_score(self) -> float:
        """The network's own probability that the face is neutral (FER+ prior; class 0 is neutral)."""
        return float(np.exp(self.log_probs[0]))


class ReferenceError(ValueError):
    """A reference that cannot be used with these models (other classes or model versions)."""


@dataclass(frozen=True)
class Reference:
    """One person's neutral face, as the relative reading needs it (no pixels)."""

    expression_log_probs: np.ndarray  # (C,) mean log-probabilities of the reference faces, FER+ prior
    au_probability: np.ndarray  # (A,) mean probability of each AU (the AU head's: detector or fused)
    faces: int  # how many faces it was made from
    models: dict[str, str] = field(default_factory=dict)  # model name -> version that produced it
    warnings: tuple[str, ...] = ()
    person_id: str | None = None  # set when it comes from the person store (app/persons.py)

    @classmethod
    def average(cls, log_probs: np.ndarray, au_probability: np.ndarray, models: Mapping[str, str],
                warnings: Sequence[str] = ()) -> Reference:
        """From (N, C) log-probabilities and (N, A) AU probabilities of N neutral faces of one person."""
        log_probs = np.atleast_2d(np.asarray(log_probs, np.float64))
        au_probability = np.atleast_2d(np.asarray(au_probability, np.float64))
        if len(log_probs) == 0 or len(log_probs) != len(au_probability):
            raise ReferenceError("a reference needs at least one face with both expression and AU outputs")
        return cls(log_probs.mean(0), au_probability.mean(0), len(log_probs), dict(models), tuple(warnings))

    def check(self, models: Mapping[str, str]) -> None:
        """Refuses a reference made by other model versions (a stored person after a model update)."""
        stale = sorted(name for name, version in self.models.items() if models.get(name) != version)
        if stale:
            raise ReferenceError(f"the reference was made with other versions of {', '.join(stale)}; enrol it again")

    def to_json(self) -> dict[str, Any]:
        return {"expression_log_probs": [round(float(v), 6) for v in self.expression_log_probs],
                "au_probability": [round(float(v), 6) for v in self.au_probability],
                "faces": self.faces, "models": self.models, "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        return cls(np.asarray(data["expression_log_probs"], np.float64), np.asarray(data["au_probability"], np.float64),
                   int(data["faces"]), dict(data.get("models", {})), tuple(data.get("warnings", ())))


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, np.float64), LOG_FLOOR))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def relative_probabilities(model: ExpressionRecognizer, face_log_probs: np.ndarray, reference: Reference,
                           prior: str) -> np.ndarray:
    """The rule above: (C,) probabilities of the face relative to the reference, summing to 1. ``prior`` is the
    call's class prior for the neutral-or-not part (q); the split between expressions has no prior (it cancels)."""
    if len(face_log_probs) != len(reference.expression_log_probs):
        raise ReferenceError("the reference has another number of expression classes")
    if model.neutral_anchor is None:
        raise ReferenceError("the expression model's manifest entry has no relative.neutral_anchor")
    change = face_log_probs - reference.expression_log_probs
    neutral = model.classes.index(NEUTRAL)
    q = model.reweight(softmax(change + model.neutral_anchor)[None], prior)[0]
    others = np.arange(len(change)) != neutral
    out = np.empty_like(change)
    out[neutral] = q[neutral]
    out[others] = (1.0 - q[neutral]) * softmax(change[others])
    return out


def relative_expression(model: ExpressionRecognizer, probs: np.ndarray, distance: float, reference: Reference,
                        prior: str) -> ExpressionResult:
    """The face's expression relative to ``reference``, with its absolute reading kept under ``absolute``.
    ``uncertain`` stays the face's own (how unlike the training faces it is)."""
    absolute = model.result(probs, distance, prior)
    relative = relative_probabilities(model, log_probs(probs), reference, prior)
    best = int(np.argmax(relative))
    return ExpressionResult(label=model.classes[best], confidence=float(relative[best]),
                            scores={c: float(p) for c, p in zip(model.classes, relative)},
                            uncertain=absolute.uncertain, reference=True, absolute=absolute)


def track_reference(probs: Sequence[np.ndarray | None], aus: Sequence[np.ndarray | None], fraction: float,
                    models: Mapping[str, str]) -> tuple[Reference, np.ndarray] | None:
    """A video track's automatic reference: its most neutral-looking ``fraction`` of the frames that have both
    readings (``most_neutral``); with the indices of those frames. None when no frame has both."""
    usable = [i for i, (p, a) in enumerate(zip(probs, aus)) if p is not None and a is not None]
    if not usable:
        return None
    chosen = [usable[i] for i in most_neutral([float(probs[i][0]) for i in usable], fraction)]  # type: ignore[index]
    reference = Reference.average(np.array([log_probs(probs[i]) for i in chosen]),
                                  np.array([aus[i] for i in chosen]), models,
                                  [f"automatic: the {len(chosen)} most neutral-looking of {len(usable)} frames"])
    return reference, np.array(chosen)


def relative_au_probability(probability: np.ndarray, reference: Reference) -> np.ndarray:
    """Noisy-OR: the probability that each AU is active beyond what the person's resting face shows."""
    r = np.clip(np.asarray(reference.au_probability, np.float64), 0.0, 1.0)
    if r.shape != np.shape(probability):
        raise ReferenceError("the reference has another number of AUs")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(r < 1.0, (np.asarray(probability, np.float64) - r) / (1.0 - r), 0.0)
    return np.clip(rel, 0.0, 1.0)


def relative_units(units: list[ActionUnit], relative: np.ndarray, thresholds: np.ndarray) -> list[ActionUnit]:
    """The AU head's units with their probability and presence relative to the reference; the absolute
    probability is kept. A box only for the AUs present relative to the reference."""
    out = []
    for u, p, t in zip(units, relative, thresholds):
        present = bool(p >= t)
        out.append(replace(u, probability=float(p), present=present, box=u.box if present else None,
                           absolute_probability=u.probability, absolute_present=u.present))
    return out


def reference_expression(model: ExpressionRecognizer, reference: Reference, prior: str) -> ExpressionResult:
    """The reference's own absolute reading (of its mean log-probabilities), under the call's prior."""
    probs = softmax(reference.expression_log_probs)
    return model.result(probs, 0.0, prior)


def not_neutral(model: ExpressionRecognizer, log_probs_of_faces: np.ndarray) -> bool:
    """Whether the network reads the reference as clearly not neutral (FER+ prior: its own reading)."""
    probs = softmax(np.asarray(log_probs_of_faces, np.float64).mean(0) if np.ndim(log_probs_of_faces) == 2
                    else np.asarray(log_probs_of_faces, np.float64))
    best = int(np.argmax(probs))
    return model.classes[best] != NEUTRAL and probs[best] >= NOT_NEUTRAL_CONFIDENCE


def automatic_references(readings: Sequence[FaceReading], groups: Sequence[Any], fraction: float,
                         models: Mapping[str, str]) -> dict[Any, Reference]:
    """Automatic baselines: per group (a person), a reference from its most neutral-looking ``fraction`` of faces."""
    out = {}
    for group in dict.fromkeys(groups):
        members = [r for r, g in zip(readings, groups) if g == group]
        chosen = most_neutral([r.neutral_score for r in members], fraction)
        out[group] = Reference.average(np.array([members[i].log_probs for i in chosen]),
                                       np.array([members[i].au_probability for i in chosen]), models,
                                       [f"automatic: the {len(chosen)} most neutral-looking of {len(members)} faces"])
    return out


def most_neutral(neutral_scores: Sequence[float], fraction: float, minimum: int = 1) -> np.ndarray:
    """Indices of the most neutral-looking ``fraction`` of a person's faces (at least ``minimum``), by the
    network's own (FER+-prior) neutral probability: the automatic baseline of batches and video tracks."""
    scores = np.asarray(neutral_scores, np.float64)
    valid = np.flatnonzero(~np.isnan(scores))
    if len(valid) == 0:
        return valid
    k = min(len(valid), max(minimum, int(np.ceil(fraction * len(valid)))))
    return valid[np.argsort(-scores[valid], kind="stable")[:k]]
