"""A continuous ``activation`` (0..1) per Action Unit, from MediaPipe's blendshape coefficients where one of
them describes the AU's movement (the ARKit blendshapes were designed after FACS: ``mouthSmileLeft`` is
the left lip corner pulled up and out, AU12). The value is the mean of the matching coefficients (left and
right sides averaged).

It is **not** a FACS intensity (A-E, or OpenFace's 0-5 ``AUxx_r``): a blendshape coefficient is a
regression of how far a mesh deformation goes, learnt by MediaPipe on its own data, never on FACS-coded
intensities. Use it to follow an AU's movement over time or to rank faces, not as a coded intensity.
AUs without a matching blendshape that works get none (below). How well each one separates faces with
and without the AU, on CK+ (which neither network here was trained on for this): ``python -m
training.evaluate_activation`` (numbers in models/AU_DETECTOR.md).
"""
from __future__ import annotations

from collections.abc import Mapping

# Kept where the activation separates CK+ peak frames with the AU from those without it (ROC AUC >= 0.7,
# `python -m training.evaluate_activation`, 253 frames of 94 subjects; models/AU_DETECTOR.md). Left out:
# AU6 and AU9 (MediaPipe's cheekSquint and noseSneer coefficients stay below 0.001 on every face), AU14
# (mouthDimple, AUC 0.59), AU26 (jawOpen cannot tell a jaw drop from the wider AU27, AUC 0.66), AU23 (no
# matching blendshape).
BLENDSHAPES_OF_AU: dict[str, tuple[str, ...]] = {
    "AU1": ("browInnerUp",),  # inner brow raiser
    "AU2": ("browOuterUpLeft", "browOuterUpRight"),  # outer brow raiser
    "AU4": ("browDownLeft", "browDownRight"),  # brow lowerer
    "AU5": ("eyeWideLeft", "eyeWideRight"),  # upper lid raiser
    "AU7": ("eyeSquintLeft", "eyeSquintRight"),  # lid tightener
    "AU12": ("mouthSmileLeft", "mouthSmileRight"),  # lip corner puller
    "AU15": ("mouthFrownLeft", "mouthFrownRight"),  # lip corner depressor
    "AU17": ("mouthShrugLower",),  # chin raiser
    "AU20": ("mouthStretchLeft", "mouthStretchRight"),  # lip stretcher
    "AU24": ("mouthPressLeft", "mouthPressRight"),  # lip pressor
    "AU25": ("jawOpen",),  # lips part: the jaw's opening is what the blendshapes measure of it
    "AU27": ("jawOpen",),  # mouth stretch (the jaw pulled wide open)
}
# Measured but not served (see above), so that the evaluation can show why.
CANDIDATES_LEFT_OUT: dict[str, tuple[str, ...]] = {
    "AU6": ("cheekSquintLeft", "cheekSquintRight"),
    "AU9": ("noseSneerLeft", "noseSneerRight"),
    "AU14": ("mouthDimpleLeft", "mouthDimpleRight"),
    "AU26": ("jawOpen",),
}


def activations(blendshapes: Mapping[str, float]) -> dict[str, float]:
    """AU code -> activation (0..1) for every AU with matching blendshapes."""
    return {
        au: round(float(sum(blendshapes[name] for name in names) / len(names)), 4)
        for au, names in BLENDSHAPES_OF_AU.items()
        if all(name in blendshapes for name in names)
    }
