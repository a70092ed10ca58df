"""The whole analysis of one image, in one object: the service's routes, the CLI, the benchmark, the
evaluators and anyone who wants MicroFACS without a server call it.

    decode -> detect -> landmarks -> pose -> align -> occlusion -> filters -> heads (AU, expression, ...)

``Analyzer.analyze`` is the in-process Python API: a path, bytes or a numpy image in, the same typed
result the HTTP API answers out (``app.schemas``; ``.model_dump()`` is the JSON, ``.to_dataframe()`` the
OpenFace-style table). ``Analyzer.run`` is the step below it: numpy results (aligned crops, landmarks,
head outputs in image pixels) for callers that need more than the JSON. Every stage is timed here.

    from app.analyzer import Analyzer
    analyzer = Analyzer()                                   # loads and checks the models once
    result = analyzer.analyze("photo.jpg", heads={"au", "expression"}, max_faces=5)
    for face in result.faces:
        print(face.box, face.filtered, face.expression and face.expression.label)

    # relative to the same person's neutral face (app/reference.py): a photo, several, or a stored Reference
    result = analyzer.analyze("smile.jpg", reference="neutral.jpg")
"""
from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app import prototypes, respond
from app.align import AlignedFace, align_face
from app.analysis import FaceAnalysis, FaceOptions, ImageAnalysis, ImageSource, Timings
from app.blendshape_aus import MAP_VERSION
from app.decode import DecodeMemory, ImageLimits, decode_image
from app.detect import FaceDetector
from app.errors import ApiError
from app.filters import OcclusionVerdict, filter_reasons
from app.heads import SPECS, AuHead, Head, OpenAuHead, build_heads, get_all
from app.landmarks import LandmarkStage, roi_from_detection, roi_from_landmarks
from app.model_zoo.blazeface import Detection
from app.model_zoo.expression import PRIORS, ExpressionResult
from app.model_zoo.face_mesh import MeshResult, Roi
from app.pose import PITCH_OFFSET_DEG, PITCH_OFFSET_DEG_V2, HeadPose, head_pose
from app.reference import (
    FaceReading,
    Reference,
    ReferenceError,
    log_probs,
    not_neutral,
    reference_expression,
    relative_au_probability,
    relative_expression,
)
from app.registry import ModelRegistry
from app.schemas import AnalysisResponse
from app.settings import Settings


def limits_of(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        min_side=settings.min_image_side,
        max_decode_bytes=settings.decode_memory_mb << 20,
    )


def mesh_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """x0, y0, x1, y1 of a mesh's points, clipped to the image."""
    h, w = shape[:2]
    lo, hi = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    return np.clip(np.array([lo[0], lo[1], hi[0], hi[1]]), 0, [w, h, w, h]).astype(np.float64)


def as_bgr(image: np.ndarray, channel_order: str = "bgr") -> np.ndarray:
    """A caller's uint8 array (H, W), (H, W, 3) or (H, W, 4) -> contiguous BGR; anything else is a 422."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ApiError(422, "invalid_image", "a numpy image must be a uint8 array")
    if channel_order not in ("bgr", "rgb"):
        raise ApiError(422, "invalid_request", "channel_order: 'bgr' or 'rgb'")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ApiError(422, "invalid_image", f"a numpy image must be (H, W), (H, W, 3) or (H, W, 4), not {image.shape}")
    rgb = channel_order == "rgb"
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb else np.ascontiguousarray(image)


class Analyzer:
    """Owns every model and runs the whole analysis. Thread-safe for concurrent calls (onnxruntime
    sessions are); build one per process and reuse it."""

    def __init__(self, settings: Settings | None = None, models: ModelRegistry | None = None) -> None:
        self.settings = settings or Settings()
        if models is None:
            models = ModelRegistry(self.settings)
            models.warm_up()
        self.models = models
        self.decode_memory = DecodeMemory(self.settings.decode_memory_mb << 20)
        self.detector = FaceDetector(models.full_range, models.short_range, self.settings.detector)
        # Landmarks v2 (478 points with irises) unless the settings ask for the 468-point mesh; heads that need
        # the irises (blendshapes, gaze) then run v2 per face as well (timed as landmarks_v2).
        self.landmarks_v2 = LandmarkStage(models.landmarker)
        self.landmarks = self.landmarks_v2 if self.settings.landmark_model == "v2" else LandmarkStage(models.mesh)
        self.pitch_offset = PITCH_OFFSET_DEG_V2 if self.settings.landmark_model == "v2" else PITCH_OFFSET_DEG
        self.heads: dict[str, Head] = build_heads(models, self.settings)
        # Heads marked ``parallel`` (the AU detector, the expression network) run side by side on these threads
        # and the caller's (MICROFACS_ANALYSIS_THREADS); onnxruntime releases the GIL while a network runs.
        threads = self.settings.analysis_threads or 1
        self.head_pool = ThreadPoolExecutor(threads - 1, "microfacs-head") if threads > 1 else None
        if self.head_pool is not None:  # started now: a thread keeps the priority of the thread that made it
            self.head_pool.submit(int).result()
        # The open profile has no occlusion network: no region is scored, so the filter never marks a face
        # (GET /version says so: filters.occlusion = false).
        thresholds = models.occlusion.thresholds if models.occlusion is not None else {}
        if self.settings.occlusion_threshold is not None:  # one setting overrides every region's threshold
            thresholds = {region: self.settings.occlusion_threshold for region in thresholds}
        self.occlusion_thresholds = thresholds

    @property
    def profile(self) -> str:
        """The model profile this analyzer serves (``MICROFACS_PROFILE``: app/profiles.py)."""
        return self.models.profile

    # -- the in-process API -------------------------------------------------------------------------------

    def analyze(
        self,
        source: ImageSource,
        *,
        heads: Collection[str] = ("au", "expression"),
        side_face_filter: bool = True,
        occlusion_filter: bool = True,
        max_faces: int | None = None,
        min_face_size: int | None = None,
        face_crop: bool = False,
        landmarks: bool = False,
        channel_order: str = "bgr",
        prior: str | None = None,
        reference: ImageSource | Sequence[ImageSource] | Reference | None = None,
    ) -> AnalysisResponse[Any]:
        """Analyse one image with the options of the HTTP endpoints; returns the endpoint's typed response
        (``heads`` decides which: none = /detect-faces, {"au"} = /detect-au, {"expression"} =
        /recognize-expression, both = /analyze; add "blendshapes" and/or "gaze" to any of them for those
        fields, as ``?blendshapes=true`` / ``?gaze=true`` do). A path or bytes are decoded under the same limits as an
        upload; a numpy array is taken as uint8 BGR (``channel_order="rgb"`` otherwise), grey or 4-channel.
        ``prior``: the expression scores' class prior, "balanced" or "ferplus" (default: the setting).
        ``reference``: a neutral photo of the same person (or several, or a ``Reference`` from ``reference()``):
        the AU and expression readings are then relative to it (app/reference.py), the absolute ones kept.
        Bad input raises ``app.errors.ApiError`` (``.status``, ``.code``, ``.message``), as the API would."""
        options = self.options(side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, prior)
        if reference is not None and not isinstance(reference, Reference):
            single = isinstance(reference, (str, Path, bytes, np.ndarray))
            photos: list[ImageSource] = [reference] if single else list(reference)  # type: ignore[list-item, arg-type]
            reference = self.reference(photos, side_face_filter=side_face_filter, occlusion_filter=occlusion_filter,
                                       channel_order=channel_order)
        if reference is not None:
            options = self.with_reference(options, reference)
        analysis = self.run(self._source(source, channel_order), options, heads)
        response = respond.analysis_response(uuid.uuid4().hex, analysis, include_landmarks=landmarks)
        response.profile = self.profile
        return response

    def reference(
        self,
        sources: Sequence[ImageSource],
        *,
        side_face_filter: bool = True,
        occlusion_filter: bool = True,
        channel_order: str = "bgr",
    ) -> Reference:
        """A person's neutral face from one or more photos of them (``app.reference``): in each photo its
        largest face, read by the expression network and the AU head; model outputs only, no pixels. A photo
        with no usable face is a 422 (``reference_no_face``, ``reference_filtered``); more than one face, or a
        face the network reads as clearly not neutral, adds a warning."""
        if not sources:
            raise ApiError(422, "missing_reference", "a reference needs at least one photo")
        options = FaceOptions(side_face_filter, occlusion_filter, max_faces=self.settings.max_faces_limit,
                              min_face_size=self.settings.default_min_face_size)
        logs, aus, warnings = [], [], []
        for n, source in enumerate(sources, 1):
            name = "the reference photo" if len(sources) == 1 else f"reference photo {n} of {len(sources)}"
            analysis = self.run(self._source(source, channel_order), options)
            if not analysis.faces:
                raise ApiError(422, "reference_no_face", f"no face found in {name}")
            face = analysis.faces[0]  # the largest
            if face.filtered:
                raise ApiError(422, "reference_filtered", f"the largest face in {name} cannot be read "
                               f"({', '.join(face.filter_reasons)}): use a frontal, unoccluded neutral photo")
            if len(analysis.faces) > 1:
                warnings.append(f"reference_faces: {len(analysis.faces)} faces in {name}; the largest was used")
            reading = self.face_reading(analysis.image, face)
            logs.append(reading.log_probs)
            aus.append(reading.au_probability)
        if self._not_neutral(np.array(logs), np.array(aus)):
            warnings.append("reference_not_neutral: the reference does not read as neutral; the readings are "
                            "relative to the expression it shows")
        return Reference.average(np.array(logs), np.array(aus), self.reference_models(), warnings)

    def face_reading(self, image: np.ndarray, face: FaceAnalysis) -> FaceReading:
        """What a reference keeps of one face (its expression log-probabilities under FER+'s prior, each AU's
        probability as the AU head gives it): for ``reference`` and automatic baselines (``app.reference``).
        Open profile: the prototype scores of its AUs, and its AU values (app/blendshape_aus.py)."""
        self._run_irises(image, [face], ("au",), Timings())
        if self.profile == "open":
            open_au: OpenAuHead = self.heads["au"]  # type: ignore[assignment]
            reading = open_au.reading(face)
            scores = prototypes.read(reading.values, reading.sides).scores
            return FaceReading(log_probs(np.array(list(scores.values()))), reading.vector)
        probs, _ = self.models.require(self.models.expression, "expression network").read(face.aligned)
        au: AuHead = self.heads["au"]  # type: ignore[assignment]
        return FaceReading(log_probs(probs), au.probability(face)[0])

    def reference_models(self) -> dict[str, str]:
        """The versions a reference depends on: the expression network and whatever gives the AU probabilities
        (open profile: the blendshape model and the version of the AU map and rules)."""
        if self.profile == "open":
            return {"face_blendshapes": self.models.blendshapes.version, "blendshape_aus": MAP_VERSION}
        models = {"expression": self.models.require(self.models.expression, "expression network").version,
                  "au_detector": self.models.require(self.models.au, "AU detector").version}
        if self.settings.au_model == "fused" and self.models.au_fusion is not None:
            models["au_fusion"] = self.models.au_fusion.version
        return models

    # -- the reference's readings, per profile (the research profile's rule is app/reference.py's) ------------------

    def _not_neutral(self, logs: np.ndarray, aus: np.ndarray) -> bool:
        """Whether the reference faces read as clearly not neutral (then a warning)."""
        if self.profile == "open":  # the neutral prototype does not fit their mean AU values
            return not prototypes.is_neutral(np.mean(aus, axis=0))
        return not_neutral(self.models.require(self.models.expression, "expression network"), logs)

    def reference_reading(self, reference: Reference, prior: str) -> ExpressionResult:
        """The reference's own absolute reading (research: of its mean log-probabilities, under ``prior``; open:
        the prototypes on its mean AU values)."""
        if self.profile == "open":
            return prototypes.read_vector(reference.au_probability)
        return reference_expression(self.models.require(self.models.expression, "expression network"), reference,
                                    prior)

    def relative_reading(self, expression_probs: np.ndarray | None, au_probability: np.ndarray | None,
                         reference: Reference, prior: str) -> ExpressionResult | None:
        """A face's expression relative to ``reference`` from what a video frame keeps of it (the expression
        network's probabilities, FER+ prior; the AU head's probabilities, its order); None when that is missing.
        Open profile: the prototypes on the AU values relative to the reference's (the face's sides unknown)."""
        if self.profile == "open":
            if au_probability is None:
                return None
            return prototypes.read_vector(relative_au_probability(au_probability, reference))
        if expression_probs is None:
            return None
        model = self.models.require(self.models.expression, "expression network")
        return relative_expression(model, expression_probs, 0.0, reference, prior)

    def with_reference(self, options: FaceOptions, reference: Reference) -> FaceOptions:
        """``options`` that read every face relative to ``reference``; a reference these models cannot use
        (made by other model versions) is a 409."""
        try:
            reference.check(self.reference_models())
        except ReferenceError as exc:
            raise ApiError(409, "reference_stale", str(exc)) from exc
        return replace(options, reference=reference)

    def _source(self, source: ImageSource, channel_order: str = "bgr") -> bytes | np.ndarray:
        """A path or bytes -> bytes (decoded by ``run`` under the upload limits); an array -> BGR uint8."""
        if isinstance(source, (str, Path)):
            try:
                return Path(source).read_bytes()
            except OSError as exc:
                raise ApiError(400, "invalid_image", f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
        if isinstance(source, np.ndarray):
            return as_bgr(source, channel_order)
        return source

    def options(
        self,
        side_face_filter: bool = True,
        occlusion_filter: bool = True,
        max_faces: int | None = None,
        min_face_size: int | None = None,
        face_crop: bool = False,
        prior: str | None = None,
    ) -> FaceOptions:
        """Per-call options, with this analyzer's settings for the defaults and bounds."""
        s = self.settings
        prior = s.expression_prior if prior is None else prior
        if prior not in PRIORS:
            raise ApiError(422, "invalid_request", f"prior: one of {', '.join(PRIORS)}")
        max_faces = s.default_max_faces if max_faces is None else max_faces
        min_face_size = s.default_min_face_size if min_face_size is None else min_face_size
        if not 1 <= max_faces <= s.max_faces_limit:
            raise ApiError(422, "invalid_request", f"max_faces: between 1 and {s.max_faces_limit}")
        if not 0 <= min_face_size <= 10_000:
            raise ApiError(422, "invalid_request", "min_face_size: between 0 and 10000 pixels")
        return FaceOptions(side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, prior)

    # -- the pipeline ---------------------------------------------------------------------------------------

    def run(
        self, image: bytes | np.ndarray, options: FaceOptions = FaceOptions(), heads: Collection[str] = (),
        face_references: Sequence[Reference | None] | None = None,
    ) -> ImageAnalysis:
        """decode (bytes) -> detect -> landmarks -> pose -> align -> occlusion -> filters -> heads.
        ``image``: encoded bytes (decoded under the settings' limits) or a BGR uint8 array.
        ``face_references``: one reference (or None) per face, in the order the faces are found (largest first),
        for batches whose faces belong to different people (automatic baselines); else ``options.reference``."""
        self.chosen_heads(heads)  # unknown heads fail before any decoding
        timings = Timings()
        if isinstance(image, (bytes, bytearray, memoryview)):
            with timings.stage("decode"):
                image = decode_image(bytes(image), limits_of(self.settings), self.decode_memory)
        if options.face_crop:
            detections: list[Detection | None] = [None]
        else:
            with timings.stage("detect"):
                detections = list(self.detect(image, options))
        return self.run_from_detections(image, detections, options, heads, timings, face_references)

    def detect(self, image: np.ndarray, options: FaceOptions = FaceOptions()) -> list[Detection]:
        """The faces of a BGR image, largest first, at most ``options.max_faces`` of at least ``options.min_face_size``
        pixels (the detection threshold is the settings')."""
        return list(self.detector.detect(image, self.settings.detection_threshold, options.min_face_size,
                                         options.max_faces))

    def needs_irises(self, heads: Collection[str]) -> bool:
        """Whether one of ``heads`` reads the irises (landmarks v2 per face)."""
        return any(getattr(self.heads[name], "needs_irises", False) for name in heads)

    def run_from_landmarks(
        self,
        image: np.ndarray,
        previous_landmarks: list[np.ndarray],
        options: FaceOptions = FaceOptions(),
        heads: Collection[str] = (),
        timings: Timings | None = None,
    ) -> ImageAnalysis:
        """The face stage and heads without detection, as MediaPipe's video mode: each face's mesh runs on
        the region its previous landmarks ((468, 3) image pixels, e.g. the last video frame's) give. The
        face's box is its mesh's extent and its confidence the mesh presence (the caller decides whether
        the face is still there). ``image``: a BGR uint8 array. One face per entry, in order."""
        chosen = self.chosen_heads(heads)
        timings = timings if timings is not None else Timings()
        faces = self._face_stages(image, [None] * len(previous_landmarks), options, timings, previous_landmarks)
        self._run_heads(image, faces, chosen, options, timings)
        return self._analysis(image, faces, chosen, timings, options)

    def run_from_detections(
        self,
        image: np.ndarray,
        detections: Sequence[Detection | None],
        options: FaceOptions = FaceOptions(),
        heads: Collection[str] = (),
        timings: Timings | None = None,
        face_references: Sequence[Reference | None] | None = None,
    ) -> ImageAnalysis:
        """``run`` for detections the caller already has (``self.detect``; ``None`` = the whole
        image is one face), e.g. a video tracker that keeps only the detections no track explains."""
        chosen = self.chosen_heads(heads)
        timings = timings if timings is not None else Timings()
        faces = self._face_stages(image, detections, options, timings)
        self._run_heads(image, faces, chosen, options, timings, detections, face_references)
        return self._analysis(image, faces, chosen, timings, options)

    def _analysis(self, image: np.ndarray, faces: list[FaceAnalysis], chosen: tuple[str, ...], timings: Timings,
                  options: FaceOptions) -> ImageAnalysis:
        reading = None
        if options.reference is not None:
            reading = self.reference_reading(options.reference, options.expression_prior)
        return ImageAnalysis(image=image, faces=faces, heads=chosen, timings=timings, reference=options.reference,
                             reference_reading=reading)

    def chosen_heads(self, heads: Collection[str]) -> tuple[str, ...]:
        """``heads`` in the registry's order (app/heads.py ``SPECS``: stable output); an unknown one is a 422."""
        unknown = sorted(set(heads) - set(self.heads))
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown heads {unknown}; known: {sorted(self.heads)}")
        return tuple(name for name in self.heads if name in heads)  # registry order: stable output

    def _run_heads(
        self, image: np.ndarray, faces: list[FaceAnalysis], chosen: tuple[str, ...], options: FaceOptions,
        timings: Timings, detections: Sequence[Detection | None] | None = None,
        face_references: Sequence[Reference | None] | None = None,
    ) -> None:
        """The chosen heads on the unfiltered faces (each with its own reference when ``face_references``). Heads
        that read the irises get landmarks v2 when the face stage ran the 468-point mesh: on the face's detection
        region (as the v2 face stage would), or on the mesh's own region for faces tracked without a detection."""
        analysed = [face for face in faces if not face.filtered]
        self._run_irises(image, faces, chosen, timings, detections)
        per_face = {id(face): options for face in faces}
        if face_references is not None:
            for face, reference in zip(faces, face_references):
                per_face[id(face)] = options if reference is None else self.with_reference(options, reference)
        self.run_heads_on(analysed, chosen, [per_face[id(face)] for face in analysed], timings)

    def run_heads_on(self, faces: list[FaceAnalysis], chosen: Sequence[str], options: Sequence[FaceOptions],
                     timings: Timings, pool: Executor | None = None) -> None:
        """The ``chosen`` heads on ``faces`` (unfiltered; one options each), which may come from several images
        (a video's frames): every face in one call per head where the head batches (``app.heads.get_all``).
        Heads that read the irises need ``face.landmarks_v2`` already (``_run_irises``, on the face's image).
        ``pool``: where heads marked ``parallel`` run beside each other (default: the analyzer's own pool, none with
        MICROFACS_ANALYSIS_THREADS=1)."""
        for group in self.head_groups(chosen) if faces else ():
            # The group's first head here, the others on the pool; one the pool has not started yet (it is busy
            # with another analysis's heads) is taken back and run here too. Results are kept in the group's order.
            side = (pool or self.head_pool) if len(group) > 1 else None
            futures = [side.submit(self._head, name, faces, options, timings) for name in group[1:]] if side else []
            results = [self._head(group[0], faces, options, timings)]
            results += [self._head(name, faces, options, timings) if future.cancel() else future.result()
                        for name, future in zip(group[1:], futures)]
            if not side:
                results += [self._head(name, faces, options, timings) for name in group[1:]]
            for name, outputs in zip(group, results):
                for face, result in zip(faces, outputs):
                    face.outputs[name] = result

    def head_groups(self, chosen: Sequence[str]) -> list[list[str]]:
        """``chosen`` in groups that run one after the other: heads marked ``parallel`` next to each other in the
        registry's order share a group (they may run side by side), every other head is a group of its own."""
        groups: list[list[str]] = []
        for name in chosen:
            parallel = getattr(self.heads[name], "parallel", False)
            if parallel and groups and getattr(self.heads[groups[-1][-1]], "parallel", False):
                groups[-1].append(name)
            else:
                groups.append([name])
        return groups

    def _head(self, name: str, faces: list[FaceAnalysis], options: Sequence[FaceOptions],
              timings: Timings) -> list[Any]:
        with timings.stage(SPECS[name].field):
            return get_all(self.heads[name], faces, list(options))

    def _run_irises(
        self, image: np.ndarray, faces: list[FaceAnalysis], chosen: Sequence[str], timings: Timings,
        detections: Sequence[Detection | None] | None = None,
    ) -> None:
        """Landmarks v2 for the unfiltered faces when one of the ``chosen`` heads reads the irises."""
        if self.needs_irises(chosen):
            regions = detections if detections is not None else [None] * len(faces)
            todo: list[tuple[FaceAnalysis, Roi]] = []
            for face, detection in zip(faces, regions):
                if face.filtered or face.landmarks_v2 is not None:
                    continue
                if detection is not None:
                    todo.append((face, roi_from_detection(detection.box, detection.keypoints)))
                elif detections is not None:  # face_crop: the whole image is the face (two passes)
                    with timings.stage("landmarks_v2"):
                        face.landmarks_v2 = self.landmarks_v2.from_face_crop(image).landmarks
                else:
                    todo.append((face, roi_from_landmarks(face.landmarks)))
            if todo:
                with timings.stage("landmarks_v2"):  # every face in one call
                    meshes = self.landmarks_v2.from_regions(image, [roi for _, roi in todo])
                for (face, _), mesh in zip(todo, meshes):
                    face.landmarks_v2 = mesh.landmarks

    def _face_stages(
        self,
        image: np.ndarray,
        detections: Sequence[Detection | None],
        options: FaceOptions,
        timings: Timings,
        previous_landmarks: Sequence[np.ndarray] | None = None,
    ) -> list[FaceAnalysis]:
        """The face stage of every face of one image, in order: one landmark call and one occlusion call for them
        all (a face per ``detections`` entry: None = the whole image is the face; or one per previous mesh)."""
        with timings.stage("landmarks"):
            if previous_landmarks is not None:
                meshes = self.landmarks.from_regions(image, [roi_from_landmarks(p) for p in previous_landmarks])
            else:
                found = iter(self.landmarks.from_regions(
                    image, [roi_from_detection(d.box, d.keypoints) for d in detections if d is not None]))
                meshes = [self.landmarks.from_face_crop(image) if d is None else next(found) for d in detections]
        poses, crops = [], []
        for mesh in meshes:
            with timings.stage("pose"):
                poses.append(head_pose(mesh.landmarks[:468], self.pitch_offset))
            with timings.stage("align"):
                crops.append(align_face(image, mesh.landmarks[:468]))
        network = self.models.occlusion
        if network is None:  # open profile: no occlusion network, nothing scored
            scores: list[dict[str, float]] = [{} for _ in crops]
        else:
            with timings.stage("occlusion"):
                scores = network.predict_batch(crops)
        previous = previous_landmarks if previous_landmarks is not None else [None] * len(meshes)
        return [self._face(image, detection, options, mesh, pose, aligned, region_scores, before)
                for detection, mesh, pose, aligned, region_scores, before
                in zip(detections, meshes, poses, crops, scores, previous)]

    def _face(
        self,
        image: np.ndarray,
        detection: Detection | None,
        options: FaceOptions,
        mesh: MeshResult,
        pose: HeadPose,
        aligned: AlignedFace,
        scores: dict[str, float],
        previous_landmarks: np.ndarray | None,
    ) -> FaceAnalysis:
        landmarks, landmarks_v2 = mesh.landmarks[:468], (mesh.landmarks if len(mesh.landmarks) > 468 else None)
        thresholds = {} if self.models.occlusion is None else self.occlusion_thresholds
        occlusion = OcclusionVerdict(scores=scores, thresholds=thresholds)
        reasons = filter_reasons(
            pose,
            occlusion,
            mesh.presence,
            side_face_filter=options.side_face_filter,
            occlusion_filter=options.occlusion_filter,
            max_yaw=self.settings.side_face_max_yaw,
            max_pitch=self.settings.side_face_max_pitch,
            min_landmark_confidence=self.settings.landmark_presence_threshold,
        )
        if previous_landmarks is not None:
            box, confidence = mesh_box(mesh.landmarks, image.shape), mesh.presence
        elif detection is None:
            h, w = image.shape[:2]
            box, confidence = np.array([0.0, 0.0, w, h]), mesh.presence
        else:
            box, confidence = detection.box, detection.score
        return FaceAnalysis(
            box=box,
            confidence=float(confidence),
            landmarks=landmarks,
            landmark_confidence=mesh.presence,
            pose=pose,
            aligned=aligned,
            occlusion=occlusion,
            filter_reasons=reasons,
            landmarks_v2=landmarks_v2,
        )
