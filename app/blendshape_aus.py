"""The open profile's Action Units: read from MediaPipe's 52 blendshape coefficients (Apache-2.0) by a fixed map,
with nothing learnt or fitted by us (``MICROFACS_PROFILE=open``; models/OPEN_PROFILE.md).

The map. ARKit's blendshapes, which MediaPipe's blendshape model reproduces, were designed after FACS: Apple's
definition of each one (``ARFaceAnchor.BlendShapeLocation``) describes one facial movement, and the FACS
Manual (Ekman, Friesen & Hager 2002) describes each AU by the movement it makes. Each AU below is paired with
the blendshape(s) whose definition is that movement; nothing about the pairing was chosen by looking at
labelled faces. A bilateral AU is the mean of its left and right coefficients (Left/Right = the subject's sides).
Two AUs are combinations the definitions fix: AU25 (lips part) is ``jawOpen - mouthClose`` (ARKit's
``mouthClose`` is the lips' closure *independent of the jaw*: lips closed over an open jaw have ``mouthClose``
= ``jawOpen``), and AU28 (lip suck, either lip) the larger of ``mouthRollLower`` and ``mouthRollUpper``. AU26
(jaw drop) is ``jawOpen``, which cannot tell it from the wider AU27, so AU27 is not read. AU11 and AU23 have no
blendshape and are not read.

The value of an AU (0..1) is read on the FACS intensity scale: a coefficient is the fraction of the movement's
full extent (ARKit: 0 = neutral, 1 = the maximum), and FACS grades an AU from A (trace) to E (maximum); taking
the coefficient x 5 as the 0-5 intensity of DISFA and BP4D (0 = absent, 1 = A ... 5 = E), grade A starts at 0.2,
B at 0.4, C at 0.6, D at 0.8. An AU is **present** from grade B (``PRESENCE_LEVEL`` = 0.4): the usual occurrence
criterion on DISFA (intensity >= 2). These values are fixed a priori; no threshold here was set from FER+, CK+,
taiwanese_dev or any other labelled faces.

The API's ``probability`` of such an AU is this value (not a calibrated probability: the card says how it
behaves), ``activation`` the same value, and a present AU gets the box of its region (app/au_regions.py): for a
bilateral AU with one region per side, the side that moves more.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from app.au_regions import AU_REGIONS, FACS_NAMES, MARGIN, inter_ocular, region_box
from app.model_zoo.au_detector import ActionUnit

# FACS intensity grades as blendshape coefficients (coefficient x 5 = the 0-5 intensity).
GRADE = 0.2
INTENSITY = {"A": 0.2, "B": 0.4, "C": 0.6, "D": 0.8}
PRESENCE_LEVEL = INTENSITY["B"]
MAP_VERSION = "blendshape-aus-1"  # changes whenever the map, the grades or the rules below change

# AU -> its blendshape(s): (left, right) for a bilateral movement, one name for a midline one. Apple's definition
# of each blendshape is quoted after it; the FACS name of the AU is in app/au_regions.py.
BILATERAL: dict[str, tuple[str, str]] = {
    "AU2": ("browOuterUpLeft", "browOuterUpRight"),  # "upward movement of the outer portion of the eyebrow"
    "AU4": ("browDownLeft", "browDownRight"),  # "downward movement of the outer portion of the eyebrow"
    "AU5": ("eyeWideLeft", "eyeWideRight"),  # "widening of the eyelids around the eye"
    "AU6": ("cheekSquintLeft", "cheekSquintRight"),  # "upward movement of the cheek around and below the eye"
    "AU7": ("eyeSquintLeft", "eyeSquintRight"),  # "contraction of the face around the eye"
    "AU9": ("noseSneerLeft", "noseSneerRight"),  # "raising of the side of the nose around the nostril"
    "AU10": ("mouthUpperUpLeft", "mouthUpperUpRight"),  # "upward movement of the upper lip on the side"
    "AU12": ("mouthSmileLeft", "mouthSmileRight"),  # "upward movement of the corner of the mouth"
    "AU14": ("mouthDimpleLeft", "mouthDimpleRight"),  # "backward movement of the corner of the mouth"
    "AU15": ("mouthFrownLeft", "mouthFrownRight"),  # "downward movement of the corner of the mouth"
    "AU16": ("mouthLowerDownLeft", "mouthLowerDownRight"),  # "downward movement of the lower lip on the side"
    "AU20": ("mouthStretchLeft", "mouthStretchRight"),  # "leftward/rightward movement of the corner of the mouth"
    "AU24": ("mouthPressLeft", "mouthPressRight"),  # "upward compression of the lower lip on the side"
}
MIDLINE: dict[str, str] = {
    "AU1": "browInnerUp",  # "upward movement of the inner portion of both eyebrows"
    "AU17": "mouthShrugLower",  # "outward movement of the lower lip" (the chin boss pushes it up and out)
    "AU18": "mouthPucker",  # "contraction and compression of both closed lips"
    "AU22": "mouthFunnel",  # "contraction of both lips into an open shape"
    "AU26": "jawOpen",  # "opening of the jaw"
}
# The two combinations the definitions fix (see the module docstring).
LIPS_PART = ("jawOpen", "mouthClose")  # AU25 = jawOpen - mouthClose
LIP_SUCK = ("mouthRollLower", "mouthRollUpper")  # AU28 = the larger
OPEN_AUS: tuple[str, ...] = tuple(sorted([*BILATERAL, *MIDLINE, "AU25", "AU28"], key=lambda au: int(au[2:])))


def au_values(blendshapes: Mapping[str, float]) -> dict[str, float]:
    """AU code -> value (0..1) for every AU of ``OPEN_AUS``, in that order."""
    def b(name: str) -> float:
        return float(np.clip(blendshapes.get(name, 0.0), 0.0, 1.0))

    values = {au: (b(left) + b(right)) / 2 for au, (left, right) in BILATERAL.items()}
    values.update({au: b(name) for au, name in MIDLINE.items()})
    values["AU25"] = max(0.0, b(LIPS_PART[0]) - b(LIPS_PART[1]))
    values["AU28"] = max(b(LIP_SUCK[0]), b(LIP_SUCK[1]))
    return {au: values[au] for au in OPEN_AUS}


def au_sides(blendshapes: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Bilateral AU -> (subject's left, subject's right) coefficients."""
    return {au: (float(blendshapes.get(left, 0.0)), float(blendshapes.get(right, 0.0)))
            for au, (left, right) in BILATERAL.items()}


def au_box(au: str, landmarks: np.ndarray, sides: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """x0, y0, x1, y1 of the AU's region, in the pixels of ``landmarks`` ((468+, 3) mesh points): the region map's
    box; for a bilateral AU with a region per side (listed subject's right first), the side that moves more."""
    regions = AU_REGIONS[au]
    margin = MARGIN * inter_ocular(landmarks)
    if len(regions) == 2 and au in sides:
        left, right = sides[au]
        regions = [regions[1] if left >= right else regions[0]]
    boxes = np.array([region_box(landmarks[:468], indices, margin) for indices in regions], np.float64)
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])


def action_units(values: Mapping[str, float], landmarks: np.ndarray, sides: Mapping[str, tuple[float, float]],
                 absolute: Mapping[str, float] | None = None) -> list[ActionUnit]:
    """One ``ActionUnit`` per AU of ``OPEN_AUS``: probability = value, present from grade B, a box when present,
    activation = the face's own (absolute) value. ``absolute``: with a reference, ``values`` are relative to it
    (app/reference.py) and these are the face's own values, kept as ``absolute_probability``."""
    own = values if absolute is None else absolute
    units = []
    for au in OPEN_AUS:
        value = float(values[au])
        present = value >= PRESENCE_LEVEL
        unit = ActionUnit(au=au, name=FACS_NAMES[au], probability=value, present=present,
                          box=au_box(au, landmarks, sides) if present else None, activation=float(own[au]))
        if absolute is not None:
            unit = replace(unit, absolute_probability=float(absolute[au]),
                           absolute_present=bool(absolute[au] >= PRESENCE_LEVEL))
        units.append(unit)
    return units


@dataclass(frozen=True)
class BlendshapeReading:
    """What the open heads read from one face's blendshapes."""

    values: dict[str, float]  # AU -> value, OPEN_AUS order
    sides: dict[str, tuple[float, float]]  # bilateral AU -> (left, right)

    @classmethod
    def of(cls, blendshapes: Mapping[str, float]) -> BlendshapeReading:
        return cls(au_values(blendshapes), au_sides(blendshapes))

    @property
    def vector(self) -> np.ndarray:
        return np.array([self.values[au] for au in OPEN_AUS], np.float64)
