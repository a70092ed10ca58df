"""Per-face heads: the networks that run on each face the pre-filters let through, after the face stage.

A head follows one small protocol (like insightface's ``model.get(img, face)``): ``get(face, options)`` reads
the face stage's result (the aligned crop, the landmarks, ...) and the call's options, and returns a typed
result in *image* space. A head whose network can read several faces at once also has
``get_batch(faces, options)`` (one options per face): the analyzer calls it once per image (``get_all``).
Every head is declared once, in ``SPECS`` (the one place): the name callers choose it by
(``Analyzer.run(..., heads={"au", "expression"})``), its response field (also the timing it is reported under),
the formatter of its result (app/formats.py), whether it is opt-in (any endpoint adds it with its query flag,
``?gaze=true``, and the CLI with ``--gaze``) or chosen by the endpoint (app/respond.py ``ENDPOINTS``), and how each
profile builds it. The response stage, the query flags (app/routes/deps.py), the table (app/table.py) and the CLI
derive from it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from app import prototypes
from app.activation import activations
from app.analysis import FaceAnalysis, FaceOptions
from app.blendshape_aus import OPEN_AUS, BlendshapeReading
from app.blendshape_aus import action_units as blendshape_units
from app.formats import action_units_out, blendshapes_out, expression_out, gaze_out
from app.gaze import Gaze, gaze
from app.model_zoo.au_detector import ActionUnit, AuDetector
from app.model_zoo.au_fusion import AuFusion
from app.model_zoo.base import ModelError
from app.model_zoo.expression import ExpressionRecognizer, ExpressionResult
from app.model_zoo.face_landmarker import FaceBlendshapes
from app.reference import relative_au_probability, relative_expression, relative_units
from app.registry import ModelRegistry
from app.settings import Settings


class Head(Protocol):
    def get(self, face: FaceAnalysis, options: FaceOptions) -> Any: ...


@dataclass(frozen=True)
class AuHead:
    """FACS Action Units (CN109344744): per AU a probability, a decision and, when present, its box,
    mapped from the aligned crop back to image pixels. With ``fusion`` (``MICROFACS_AU_MODEL=fused``) the
    probability and decision are the fusion's (the detector's scores + the face's blendshapes, trained with
    neutral faces as negatives: models/AU_DETECTOR.md) and the box is still the detector's."""

    model: AuDetector
    fusion: AuFusion | None = None
    # It runs a network of its own and reads only heads registered before it: the analyzer may run it beside the
    # other ``parallel`` heads registered next to it (MICROFACS_ANALYSIS_THREADS).
    parallel: ClassVar[bool] = True
    blendshapes: FaceBlendshapes | None = None  # the fusion's input, when the call did not ask for them
    # With the blendshapes (registered before this head, so computed first when asked for), each AU gets
    # a continuous ``activation`` from its matching coefficients: not a FACS intensity (app/activation.py).

    @property
    def needs_irises(self) -> bool:  # the fusion reads the blendshapes, which read landmarks v2
        return self.fusion is not None

    def probability(self, face: FaceAnalysis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per AU the probability (the detector's, or the fusion's), its best box (aligned-crop pixels) and the
        threshold it is decided against."""
        return self.probabilities([face])[0]

    def probabilities(self, faces: list[FaceAnalysis]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``probability`` of several faces: the detector reads them all in one call."""
        out = []
        for face, (probability, boxes) in zip(faces, self.model.scores_batch([face.aligned for face in faces])):
            if self.fusion is None or self.blendshapes is None:
                out.append((probability, boxes, self.model.thresholds))
                continue
            shapes = face.outputs.get("blendshapes") or self.blendshapes.predict(irises_required(face))
            out.append((self.fusion.fuse(probability, shapes), boxes, self.fusion.thresholds))
        return out

    def get(self, face: FaceAnalysis, options: FaceOptions) -> list[ActionUnit]:
        return self.get_batch([face], [options])[0]

    def get_batch(self, faces: list[FaceAnalysis], options: list[FaceOptions]) -> list[list[ActionUnit]]:
        """``get`` for several faces (each with its own options: its own reference), the detector in one call."""
        return [self._units(face, face_options, *read)
                for face, face_options, read in zip(faces, options, self.probabilities(faces))]

    def _units(self, face: FaceAnalysis, options: FaceOptions, probability: np.ndarray, boxes: np.ndarray,
               thresholds: np.ndarray) -> list[ActionUnit]:
        units = self.model.units(probability, boxes, thresholds)
        if options.reference is not None:  # relative to the person's neutral face (app/reference.py)
            units = relative_units(units, relative_au_probability(probability, options.reference), thresholds)
        units = [u if u.box is None else replace(u, box=face.aligned.box_to_image(u.box)) for u in units]
        if "blendshapes" in face.outputs:  # the call asked for blendshapes too: each AU's activation from them
            activation = activations(face.outputs["blendshapes"])
            units = [replace(u, activation=activation.get(u.au)) for u in units]
        return units


@dataclass(frozen=True)
class ExpressionHead:
    """The expression a face appears to show (CN110532880): calibrated scores under the call's class prior,
    label, ``uncertain``; with a reference, relative to the person's neutral face (app/reference.py)."""

    model: ExpressionRecognizer
    parallel: ClassVar[bool] = True  # as AuHead's

    def get(self, face: FaceAnalysis, options: FaceOptions) -> ExpressionResult:
        return self.get_batch([face], [options])[0]

    def get_batch(self, faces: list[FaceAnalysis], options: list[FaceOptions]) -> list[ExpressionResult]:
        """``get`` for several faces (each with its own options: prior, reference), the network in one call."""
        out = []
        for face_options, (probs, distance) in zip(options, self.model.read_batch([f.aligned for f in faces])):
            if face_options.reference is not None:
                out.append(relative_expression(self.model, probs, distance, face_options.reference,
                                               face_options.expression_prior))
            else:
                out.append(self.model.result(probs, distance, face_options.expression_prior))
        return out


def irises_required(face: FaceAnalysis) -> np.ndarray:
    """The face's 478 landmarks v2; the analyzer runs v2 before any head with ``needs_irises``."""
    if face.landmarks_v2 is None:
        raise RuntimeError("a head that reads the irises ran before landmarks v2")
    return face.landmarks_v2


@dataclass(frozen=True)
class BlendshapeHead:
    """MediaPipe's 52 blendshape coefficients (0..1, ARKit names) from the 478 FaceLandmarker v2 points
    (``needs_irises``: the analyzer provides ``face.landmarks_v2`` whichever landmark model the face stage uses).
    The AU head derives each AU's ``activation`` from them when both run."""

    model: FaceBlendshapes
    needs_irises: bool = True

    def get(self, face: FaceAnalysis, options: FaceOptions) -> dict[str, float]:
        return self.model.predict(irises_required(face))


@dataclass(frozen=True)
class GazeHead:
    """Eye gaze (degrees, per eye and combined) from the iris landmarks (``app/gaze.py``); no network."""

    needs_irises: bool = True

    def get(self, face: FaceAnalysis, options: FaceOptions) -> Gaze:
        return gaze(irises_required(face))


def get_all(head: Head, faces: list[FaceAnalysis], options: list[FaceOptions]) -> list[Any]:
    """``head.get`` for each face with its options: one ``get_batch`` call where the head has one (its network
    reads every face in one call), else one ``get`` per face."""
    batch = getattr(head, "get_batch", None)
    if batch is not None:
        return batch(faces, options)
    return [head.get(face, face_options) for face, face_options in zip(faces, options)]


def au_head(models: ModelRegistry, settings: Settings) -> AuHead:
    detector = models.require(models.au, "AU detector")
    if settings.au_model != "fused":
        return AuHead(detector)
    if models.au_fusion is None:  # a registry built for other settings
        raise ModelError("MICROFACS_AU_MODEL=fused, but the models were loaded without the AU fusion")
    return AuHead(detector, models.au_fusion, models.blendshapes)




# --- The open profile's heads (MICROFACS_PROFILE=open: app/profiles.py, models/OPEN_PROFILE.md) --------------------
# No network of ours: the AUs are read from the blendshapes by a fixed map (app/blendshape_aus.py), the expression
# from those AUs by the EMFACS prototypes (app/prototypes.py). Same names, fields and result types as research's.

OWN_BLENDSHAPES = "_blendshapes"  # face.outputs key: the face's blendshapes, computed once for both open heads


def face_blendshapes(face: FaceAnalysis, model: FaceBlendshapes) -> dict[str, float]:
    """The face's blendshapes: the blendshape head's (when the call asked for them), else computed once and kept."""
    shapes = face.outputs.get("blendshapes") or face.outputs.get(OWN_BLENDSHAPES)
    if shapes is None:
        shapes = face.outputs[OWN_BLENDSHAPES] = model.predict(irises_required(face))
    return shapes


@dataclass(frozen=True)
class OpenAuHead:
    """Action Units from the blendshapes: value = probability = activation, present from FACS grade B, the region
    map's box when present; with a reference, relative to it by the same noisy-OR as research's AU head."""

    model: FaceBlendshapes
    needs_irises: bool = True

    def reading(self, face: FaceAnalysis) -> BlendshapeReading:
        """The face's AU values (``OPEN_AUS`` order: ``.vector`` is what a reference keeps) and left/right sides."""
        return BlendshapeReading.of(face_blendshapes(face, self.model))

    def get(self, face: FaceAnalysis, options: FaceOptions) -> list[ActionUnit]:
        reading = self.reading(face)
        if options.reference is None:
            return blendshape_units(reading.values, face.landmarks, reading.sides)
        relative = relative_au_probability(reading.vector, options.reference)
        return blendshape_units(dict(zip(OPEN_AUS, relative)), face.landmarks, reading.sides, reading.values)


@dataclass(frozen=True)
class OpenExpressionHead:
    """The expression by the EMFACS prototypes on the face's AUs (relative to the reference's, with one)."""

    model: FaceBlendshapes
    needs_irises: bool = True

    def get(self, face: FaceAnalysis, options: FaceOptions) -> ExpressionResult:
        reading = BlendshapeReading.of(face_blendshapes(face, self.model))
        absolute = prototypes.read(reading.values, reading.sides)
        if options.reference is None:
            return absolute
        relative = relative_au_probability(reading.vector, options.reference)
        return replace(prototypes.read_vector(relative, reading.sides), reference=True, absolute=absolute)


# --- end of the open profile's heads ------------------------------------------------------------------------------


Factory = Callable[[ModelRegistry, Settings], Head]


@dataclass(frozen=True)
class HeadSpec:
    """One head, declared once."""

    name: str  # what callers choose it by: Analyzer.run(heads=...), ?<name>=true, --<name>
    field: str  # its response field (app/schemas.py), also the timing it is reported under
    format: Callable[[Any], Any]  # its result -> the response field's value (app/formats.py)
    research: Factory  # how the research profile builds it
    open: Factory  # how the open profile builds it (app/profiles.py)
    opt_in: bool = False  # True: any endpoint adds it with the query flag; False: endpoints choose it
    help: str = ""  # the query flag's description (opt-in heads), the CLI flag's too


# In this order: the analyzer runs them so (the AU head reads the blendshapes when the call asked for them), each
# after the ones before it, except that heads marked ``parallel`` next to each other run side by side.
SPECS: dict[str, HeadSpec] = {spec.name: spec for spec in (
    HeadSpec("blendshapes", "blendshapes", blendshapes_out,
             research=lambda models, settings: BlendshapeHead(models.blendshapes),
             open=lambda models, settings: BlendshapeHead(models.blendshapes),
             opt_in=True, help="add MediaPipe's 52 blendshape coefficients to each analysed face"),
    HeadSpec("gaze", "gaze", gaze_out,
             research=lambda models, settings: GazeHead(), open=lambda models, settings: GazeHead(),
             opt_in=True, help="add the eye gaze (per eye and combined) to each analysed face"),
    HeadSpec("au", "action_units", action_units_out, research=au_head,
             open=lambda models, settings: OpenAuHead(models.blendshapes)),
    HeadSpec("expression", "expression", expression_out,
             research=lambda models, settings: ExpressionHead(models.require(models.expression, "expression network")),
             open=lambda models, settings: OpenExpressionHead(models.blendshapes)),
)}
OPT_IN: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.opt_in)  # ?blendshapes=, ?gaze=
TYPED: frozenset[str] = frozenset(name for name, spec in SPECS.items() if not spec.opt_in)  # endpoints choose them
HEADS: dict[str, Factory] = {name: spec.research for name, spec in SPECS.items()}
OPEN_HEADS: dict[str, Factory] = {name: spec.open for name, spec in SPECS.items()}  # the same names and order


def build_heads(models: ModelRegistry, settings: Settings) -> dict[str, Head]:
    heads = OPEN_HEADS if models.profile == "open" else HEADS
    return {name: make(models, settings) for name, make in heads.items()}
