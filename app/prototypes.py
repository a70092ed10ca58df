"""The open profile's expression: read from its Action Units (app/blendshape_aus.py) by the published EMFACS
prototypes, with nothing learnt or fitted by us (``MICROFACS_PROFILE=open``; models/OPEN_PROFILE.md).

The rules. EMFACS-7 (Friesen & Ekman 1983) lists, per emotion, the AU combinations ("prototypes" and "major
variants") that FACS coders take as that emotion's expression; they are tabulated in the FACS Investigator's
Guide (Ekman, Friesen & Hager 2002). Below is that table restricted to the AUs the blendshapes give: a
combination that needs an AU we cannot read (AU11, AU23) is left out, AU27 is read as AU26 (``jawOpen`` is
both), and a combination that contains another one of the same emotion adds nothing (a face that fits the
larger one fits the smaller one), so only the smallest are listed:

=========  =======================================================================================
happiness  6+12; 12 at C or more ("12C/D")
surprise   1+2+5B; 1+2+26; 5B+26 (5B: AU5 at grade B, not stronger)
fear       1+2+4+5; 1+2+5 with AU5 stronger than B; 5+20
sadness    1+4+15; 6+15
anger      4+5+7+24 and its variants without one of 4, 5, 7 (4+5+7+23 and the other prototypes need
           AU23 or build on these): 5+7+24; 4+7+24; 4+5+24
disgust    9; 10
contempt   14 on one side only; 12A+14A on one side only ("R12A+R14A")
neutral    no AU present other than AU25/AU26 (lips apart, jaw dropped: speech and rest show them alone)
=========  =======================================================================================

Intensities are the grades of app/blendshape_aus.py (A 0.2, B 0.4, C 0.6); an AU with no grade needs B, the
presence level. "On one side only": that side's coefficient reaches the grade and the other side's is at
least one grade (0.2) lower. Surprise's 5B against fear's stronger AU5 follows the CK+ authors' reading of
the same table (Lucey et al. 2010: in surprise "the intensity of AU5 must not be stronger than B").

Reading a face. A combination's *margin* is by how much, in FACS grades (0.2), its weakest AU exceeds the
grade it needs (and stays below a ceiling: "not stronger than B"; for a one-sided AU, also by how much the
other side stays a grade lower); it *fits* when the margin is >= 0. An emotion's margin is its best
combination's; neutral's is by how much the largest value of the AUs it excludes stays below the presence
level (it fits when that is > 0). The label is the class with the largest margin; ``uncertain`` when nothing
fits (AUs are present but form no prototype, e.g. a lone AU17). So when two emotions fit (a broad smile also
lifts the upper lip: AU12 and AU10), the one whose AUs exceed their grades by more wins. The scores are
``clip(1 + margin, 0, 1)`` (1 when the class fits, 0 from one grade short), normalised to sum to 1: they rank
the classes, they are not calibrated probabilities. Relative to a person's neutral face (a reference), the same
rules read the AU values relative to it (app/reference.py's noisy-OR); the one-side tests then read the face's
own left/right coefficients.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.blendshape_aus import GRADE, INTENSITY, OPEN_AUS, PRESENCE_LEVEL
from app.model_zoo.expression import ExpressionResult

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")  # FER+'s order
NEUTRAL = "neutral"
NOT_EXPRESSIVE = ("AU25", "AU26")  # present on a neutral face when it speaks or rests with the jaw dropped
A, B, C = INTENSITY["A"], INTENSITY["B"], INTENSITY["C"]


@dataclass(frozen=True)
class Term:
    """One AU at a grade (``level``), optionally below another (``below``: 5B = at B, below C)."""

    au: str
    level: float = B
    below: float | None = None

    def margin(self, values: Mapping[str, float], sides: Mapping[str, tuple[float, float]]) -> float:
        v = float(values.get(self.au, 0.0))
        margin = v - self.level
        if self.below is not None:
            margin = min(margin, self.below - v)
        return margin / GRADE


@dataclass(frozen=True)
class OneSide:
    """AUs on one side of the face only: on the same side each reaches ``level`` and exceeds the other side by at
    least one grade."""

    aus: tuple[str, ...]
    level: float = B

    def margin(self, values: Mapping[str, float], sides: Mapping[str, tuple[float, float]]) -> float:
        best = -np.inf
        for side in (0, 1):
            margins = []
            for au in self.aus:
                pair = sides.get(au, (0.0, 0.0))
                mine, other = float(pair[side]), float(pair[1 - side])
                margins.append(min(mine - self.level, mine - other - GRADE))
            best = max(best, min(margins))
        return float(best) / GRADE


def aus(*codes: int, level: float = B) -> tuple[Term, ...]:
    return tuple(Term(f"AU{c}", level) for c in codes)


AU5_B = Term("AU5", B, below=C)
PROTOTYPES: dict[str, tuple[tuple[Term | OneSide, ...], ...]] = {
    "happiness": (aus(6, 12), aus(12, level=C)),
    "surprise": ((*aus(1, 2), AU5_B), aus(1, 2, 26), (AU5_B, *aus(26))),
    "fear": (aus(1, 2, 4, 5), (*aus(1, 2), Term("AU5", C)), aus(5, 20)),
    "sadness": (aus(1, 4, 15), aus(6, 15)),
    "anger": (aus(5, 7, 24), aus(4, 7, 24), aus(4, 5, 24)),
    "disgust": (aus(9), aus(10)),
    "contempt": ((OneSide(("AU14",)),), (OneSide(("AU12", "AU14"), A),)),
}


def rule_aus() -> set[str]:
    """Every AU the prototypes read (each is one of ``OPEN_AUS``: tests/test_open_profile.py checks)."""
    terms = [t for prototypes in PROTOTYPES.values() for proto in prototypes for t in proto]
    return {t.au for t in terms if isinstance(t, Term)} | {au for t in terms if isinstance(t, OneSide) for au in t.aus}


def margins(values: Mapping[str, float], sides: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Class -> its best prototype's margin in FACS grades (an emotion fits at >= 0, neutral at > 0), CLASSES order."""
    out = {}
    expressive = [float(v) for au, v in values.items() if au not in NOT_EXPRESSIVE]
    out[NEUTRAL] = (PRESENCE_LEVEL - max(expressive, default=0.0)) / GRADE
    for emotion, prototypes in PROTOTYPES.items():
        out[emotion] = max(min(term.margin(values, sides) for term in proto) for proto in prototypes)
    return {c: out[c] for c in CLASSES}


def fitting(margin: Mapping[str, float]) -> list[str]:
    """The classes whose prototype fits."""
    return [c for c, m in margin.items() if (m > 0 if c == NEUTRAL else m >= 0)]


def read(values: Mapping[str, float], sides: Mapping[str, tuple[float, float]] | None = None) -> ExpressionResult:
    """The expression the AU values (``app.blendshape_aus.au_values``) show, by the rules above."""
    margin = margins(values, sides or {})
    raw = np.clip(1.0 + np.array(list(margin.values()), np.float64), 0.0, 1.0)
    scores = raw / raw.sum() if raw.sum() > 0 else np.full(len(CLASSES), 1.0 / len(CLASSES))
    best = max(margin, key=lambda c: margin[c])
    return ExpressionResult(label=best, confidence=float(scores[CLASSES.index(best)]),
                            scores={c: float(s) for c, s in zip(CLASSES, scores)}, uncertain=not fitting(margin),
                            probs=scores)


def read_vector(vector: Sequence[float] | np.ndarray, sides: Mapping[str, tuple[float, float]] | None = None
                ) -> ExpressionResult:
    """``read`` of AU values given as a vector in ``OPEN_AUS`` order (a reference's, a video frame's)."""
    return read(dict(zip(OPEN_AUS, (float(v) for v in vector))), sides)


def is_neutral(vector: Sequence[float] | np.ndarray) -> bool:
    """Whether AU values (``OPEN_AUS`` order) fit the neutral prototype: no AU present other than AU25/AU26."""
    return NEUTRAL in fitting(margins(dict(zip(OPEN_AUS, (float(v) for v in vector))), {}))
