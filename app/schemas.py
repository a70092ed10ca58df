"""Every JSON shape the API returns, in one place."""
from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, Field, model_serializer


class Box(BaseModel):
    x: float = Field(description="left edge, pixels of the original (EXIF-rotated) image")
    y: float = Field(description="top edge, pixels")
    width: float
    height: float


class Pose(BaseModel):
    yaw: float = Field(description="degrees; > 0 when the face turns towards the image's right (subject's left)")
    pitch: float = Field(description="degrees; > 0 when the face tilts up")
    roll: float = Field(description="degrees; > 0 when the head leans clockwise in the image")


class GazeAngles(BaseModel):
    yaw: float = Field(description="degrees; > 0 when the eye looks towards the image's right (subject's left)")
    pitch: float = Field(description="degrees; > 0 when the eye looks up")


class GazeOut(BaseModel):
    right: GazeAngles = Field(description="the subject's right eye (on the image's left for a frontal face)")
    left: GazeAngles = Field(description="the subject's left eye")
    combined: GazeAngles = Field(description="the mean direction of both eyes")


PROFILE_FIELD = "the model profile that served it (MICROFACS_PROFILE): research or open (models/OPEN_PROFILE.md)"


class OptIn(BaseModel):
    """A model whose ``opt_in`` fields are in its JSON only when they were set: the per-face fields a call
    asks for (null when the face is filtered), so that responses without ?blendshapes=true / ?gaze=true keep
    their shape byte for byte."""

    opt_in: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_fields_not_asked_for(self, handler):
        data = handler(self)
        for key in self.opt_in:
            if key not in self.model_fields_set:
                data.pop(key, None)
        return data


class Occlusion(BaseModel):
    occluded: bool
    regions: dict[str, bool] = Field(description="per region (eyes, nose, mouth, brows): occluded or not")
    scores: dict[str, float] = Field(description="per region: the classifier's probability of occlusion")
    thresholds: dict[str, float] = Field(description="per region: the probability above which it counts as occluded")


class Face(OptIn):
    opt_in = ("blendshapes", "gaze")

    face_id: int = Field(description="index in this response, largest face first")
    box: Box
    confidence: float = Field(ge=0.0, le=1.0, description="face detector score (face_crop: face-mesh presence)")
    landmark_confidence: float = Field(ge=0.0, le=1.0, description="face-mesh presence score")
    pose: Pose
    occlusion: Occlusion
    filtered: bool = Field(description="true when a pre-filter (or an unusable mesh) excludes the face from analysis")
    filter_reasons: list[str] = Field(description="side_face, occluded, low_landmark_confidence")
    landmarks: list[list[float]] | None = Field(
        None, description="468 x (x, y, z) mesh points in image pixels, with ?landmarks=true"
    )
    blendshapes: dict[str, float] | None = Field(
        None, description="with ?blendshapes=true only: MediaPipe's 52 blendshape coefficients (0..1; ARKit names, "
        "Left/Right = the subject's sides; '_neutral' is MediaPipe's own); null when the face is filtered"
    )
    gaze: GazeOut | None = Field(
        None, description="with ?gaze=true only: eye gaze from the iris landmarks, degrees, axes and signs as pose; "
        "null when the face is filtered"
    )


class ImageInfo(BaseModel):
    width: int
    height: int


class ReferenceOut(BaseModel):
    """The neutral face a call's readings are relative to (app/reference.py)."""

    source: str = Field(description="upload (the multipart `reference` photo) or person (?person=<id>)")
    person_id: str | None = Field(None, description="the enrolled person, with ?person=")
    faces: int = Field(description="how many faces (photos) the reference was made from")
    expression: ExpressionOut = Field(
        description="the reference's own (absolute) reading: a neutral reference should read as neutral"
    )
    warnings: list[str] = Field(
        description="reference_faces (several faces in a reference photo: the largest was used), "
        "reference_not_neutral (the reference reads clearly as another expression: readings are relative to it)"
    )


FaceT = TypeVar("FaceT", bound=Face)


class AnalysisResponse(OptIn, Generic[FaceT]):
    """What every analysis endpoint returns; the face type says which per-face results it carries."""

    opt_in = ("reference", "profile")

    request_id: str
    image: ImageInfo
    faces: list[FaceT]
    timings_ms: dict[str, float] = Field(description="milliseconds per stage, summed over the faces")
    reference: ReferenceOut | None = Field(
        None, description="only when the call gave a reference (multipart `reference` or ?person=): the "
        "person's neutral face every face was read against"
    )
    profile: str | None = Field(None, description=PROFILE_FIELD)

    def to_dataframe(self, frame: int = 0, timestamp: float = 0.0, source: str = "") -> Any:
        """One row per face (a frame without a face: one ``success=0`` row) with the OpenFace-style
        columns of the CLI's CSV (``app/table.py``). Needs pandas: ``pip install "microfacs[dataframe]"``."""
        import pandas as pd

        from app.table import table_rows

        meta = {"frame": frame, "timestamp": timestamp, "source": source}
        cols, rows = table_rows([(meta, self.model_dump())])
        return pd.DataFrame([{k: None if v == "" else v for k, v in row.items()} for row in rows], columns=cols)


class DetectFacesResponse(AnalysisResponse[Face]):
    pass


class ActionUnitOut(OptIn):
    opt_in = ("activation", "absolute_probability", "absolute_present")

    au: str = Field(description="FACS code, e.g. AU12")
    name: str = Field(description="FACS name, e.g. Lip Corner Puller")
    probability: float = Field(ge=0.0, le=1.0, description="the AU detector's score for this AU on this face; with a "
                               "reference, the probability that the AU is active beyond the person's neutral face. "
                               "Open profile: the AU's value from the blendshapes (0..1, not calibrated)")
    present: bool = Field(description="probability >= the AU's threshold (chosen on subject-wise cross-validation; "
                          "open profile: 0.4, FACS grade B, for every AU)")
    box: Box | None = Field(None, description="the AU's region in original image pixels; null when absent")
    activation: float | None = Field(
        None, ge=0.0, le=1.0, description="with ?blendshapes=true only, for AUs with a matching blendshape: the "
        "mean of those MediaPipe coefficients (0..1), a continuous measure of the AU's movement; NOT a FACS "
        "intensity (app/activation.py)"
    )
    absolute_probability: float | None = Field(
        None, ge=0.0, le=1.0, description="with a reference only: the detector's own score, without the reference"
    )
    absolute_present: bool | None = Field(None, description="with a reference only: presence without the reference")


class FaceWithActionUnits(Face):
    action_units: list[ActionUnitOut] | None = Field(
        None, description="one entry per AU the detector knows; null when the face is filtered"
    )


class DetectActionUnitsResponse(AnalysisResponse[FaceWithActionUnits]):
    pass


class ExpressionOut(OptIn):
    opt_in = ("reference", "absolute")

    label: str = Field(description="the expression the face appears to show (FER+ class with the highest score)")
    confidence: float = Field(ge=0.0, le=1.0, description="the label's calibrated probability")
    scores: dict[str, float] = Field(
        description="calibrated probability of each of the 8 FER+ expressions: neutral, happiness, surprise, "
        "sadness, anger, disgust, fear, contempt (sums to 1)"
    )
    uncertain: bool = Field(
        description="the face is unlike the faces the model learnt from (its embedding is far from every "
        "expression prototype); treat the label with caution"
    )
    reference: bool | None = Field(
        None, description="with a reference only (true): label, scores and confidence are relative to the person's "
        "neutral face: what changed from it (models/EXPRESSION.md)"
    )
    absolute: ExpressionOut | None = Field(None, description="with a reference only: the reading without it")


class FaceWithExpression(Face):
    expression: ExpressionOut | None = Field(None, description="null when the face is filtered")


class RecognizeExpressionResponse(AnalysisResponse[FaceWithExpression]):
    pass


class FaceWithAll(FaceWithActionUnits, FaceWithExpression):
    pass


class AnalyzeResponse(AnalysisResponse[FaceWithAll]):
    pass


class PersonOut(BaseModel):
    """An enrolled person (POST /persons): only model outputs of their neutral photos are kept, never the photos."""

    person_id: str = Field(description="use as ?person= on the image endpoints; unguessable, scoped to the API key")
    faces: int = Field(description="how many photos the reference was made from")
    created_at: str = Field(description="ISO 8601, UTC")
    expires_at: str = Field(description="ISO 8601, UTC: the person is deleted then (MICROFACS_PERSONS_TTL_S)")
    models: dict[str, str] = Field(description="the model versions the reference was made with")
    expression: ExpressionOut = Field(description="how the reference itself reads (absolute)")
    warnings: list[str] = Field(description="as in an analysis response's `reference.warnings`")
    profile: str | None = Field(None, description=PROFILE_FIELD)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: dict[str, str]


class ModelInfo(BaseModel):
    version: str
    sha256: str
    licence: str
    provider: str | None = Field(
        None, description="the onnxruntime execution provider this model's session runs on (MICROFACS_PROVIDERS); "
        "null while the models load, and for a model not loaded (face_identity loads on first use)"
    )


class Limits(BaseModel):
    max_upload_bytes: int
    max_image_pixels: int
    max_image_side: int
    min_image_side: int
    formats: list[str]
    max_faces: int
    decode_memory_mb: int | None = Field(None, description="the decode memory budget of one worker (MiB)")
    max_image_pixels_by_layout: dict[str, int] | None = Field(
        None, description="the pixel limit each layout gets from the decode budget: no_alpha (RGB, grey, "
        "CMYK, at any bit depth), alpha_8bit, alpha_16bit"
    )
    # load shedding, per worker (README "Load shedding, metrics and logs")
    max_in_flight: int | None = None
    max_queue: int | None = None
    request_timeout_s: float | None = None
    body_timeout_s: float | None = None
    # uploads: read before the analysis place is taken (README "Load shedding, metrics and logs")
    upload_timeout_s: float | None = Field(None, description="the whole body must arrive within this (408)")
    min_upload_rate: int | None = Field(
        None, description="bytes/s a body must average once upload_rate_grace_s have passed (408); 0: none"
    )
    upload_rate_grace_s: float | None = None
    max_uploads: int | None = Field(None, description="bodies received at once per worker; beyond, 503")
    # POST /analyze-video
    max_video_upload_bytes: int | None = None
    max_video_duration_s: float | None = None
    max_video_frames: int | None = None
    max_video_side: int | None = None
    max_video_pixels: int | None = None
    video_formats: list[str] | None = None
    # the work budget of one /analyze-video request (README "Video")
    max_video_analysed_fps: float | None = None
    max_video_analysed_frames: int | None = None
    max_video_decoded_megapixels: float | None = None
    video_timeout_s: float | None = None
    # person-relative reading (POST /persons, multipart `reference`)
    max_reference_photos: int | None = None
    persons_ttl_s: float | None = Field(None, description="an enrolled person is deleted this long after enrolment")


class Defaults(BaseModel):
    """What the analysis endpoints use when a query parameter is left out."""

    max_faces: int
    min_face_size: int
    prior: str = Field(description="the expression scores' class prior: balanced or ferplus")
    au_model: str = Field("detector", description="AU decisions: detector, or fused (with the blendshapes); "
                          "blendshapes in the open profile")
    detector: str = Field("full", description="face detection (MICROFACS_DETECTOR): full (every face down to "
                          "min_face_size) or short (close-ups only, as MediaPipe's FaceLandmarker)")


class ExecutionInfo(BaseModel):
    """Where the models run (app/providers.py)."""

    requested: list[str] = Field(description="MICROFACS_PROVIDERS, as onnxruntime names, in order of preference")
    used: list[str] = Field(description="those this onnxruntime build has, in order, then the CPU (the fallback)")
    available: list[str] = Field(description="every provider this onnxruntime build has")
    analysis_threads: int | None = Field(None, description="cores one analysis may use at once "
                                         "(MICROFACS_ANALYSIS_THREADS: the AU and expression networks side by side)")
    onnx_threads: int | None = Field(None, description="intra-op threads per ONNX session (MICROFACS_ONNX_THREADS)")


class VersionResponse(BaseModel):
    service: str
    version: str
    models: dict[str, ModelInfo]
    limits: Limits
    defaults: Defaults
    profile: str = Field("research", description="the model profile (MICROFACS_PROFILE): research (every model; "
                         "the AU, expression and occlusion networks are research use only) or open (only models "
                         "licensed for commercial use, listed in `models`): models/OPEN_PROFILE.md")
    filters: dict[str, bool] | None = Field(
        None, description="which pre-filters this profile has (side_face, occlusion): the open profile has no "
        "occlusion network, so its `occlusion_filter` never marks a face"
    )
    jobs: JobLimits | None = Field(None, description="POST /jobs: its limits (the synchronous endpoints keep theirs)")
    execution: ExecutionInfo | None = Field(None, description="where the models run; null while they load")


# --- Video analysis (POST /analyze-video) ---------------------------------------------------------------


class VideoInfo(BaseModel):
    frames: int = Field(description="frames decoded from the video")
    analysed_frames: int = Field(description="frames analysed (every n-th)")
    fps: float = Field(description="the video's average frame rate")
    width: int
    height: int
    duration_s: float = Field(description="seconds, from the container (else the last frame's timestamp)")


class FrameExpression(BaseModel):
    label: str = Field(description="the expression the face appears to show in this frame")
    confidence: float = Field(ge=0.0, le=1.0)
    scores: dict[str, float] | None = Field(None, description="calibrated probability of each FER+ expression")


class TrackFrame(BaseModel):
    frame: int = Field(description="0-based index into the video's frames")
    t: float = Field(description="seconds from the first frame (the frame's timestamp)")
    box: Box = Field(description="the face mesh's extent, smoothed over time (One-Euro)")
    confidence: float = Field(ge=0.0, le=1.0, description="face-mesh presence in this frame")
    pose: Pose = Field(description="head pose, smoothed over time (One-Euro)")
    filtered: bool
    filter_reasons: list[str]
    action_units: dict[str, float] | None = Field(None, description="AU code -> probability; null when filtered")
    expression: FrameExpression | None = Field(None, description="null when filtered")


class VideoEvent(BaseModel):
    kind: str = Field(description="au or expression")
    name: str = Field(description="the AU code (AU12) or the expression (happiness); never neutral")
    onset_frame: int
    apex_frame: int
    offset_frame: int
    onset_s: float
    apex_s: float
    offset_s: float
    duration_s: float = Field(description="offset_s - onset_s")
    peak: float = Field(description="the signal (AU probability or expression score) at the apex")
    micro: bool = Field(description="the event lasts at most 0.5 s (MEGC convention)")


class TrackBaseline(BaseModel):
    """With ?baseline=auto: the frames a track's readings are relative to."""

    frames: int = Field(description="how many of the track's frames make its reference (its most neutral-looking)")
    first_frame: int
    last_frame: int
    expression: ExpressionOut = Field(description="how the reference itself reads (absolute)")


class VideoTrack(OptIn):
    opt_in = ("baseline",)

    track_id: int = Field(description="stable id of one person through the clip, 0-based, in order of confirmation")
    first_frame: int
    last_frame: int
    frames: list[TrackFrame] = Field(
        description="one entry per analysed frame the face was seen in (empty with series=false)"
    )
    events: list[VideoEvent]
    baseline: TrackBaseline | None = Field(
        None, description="only with ?baseline=auto: the track's frames and AUs are relative to these frames"
    )
    summary: TrackSummary | None = Field(
        None, description="what to read first: the share of time of each expression, the dominant one, each AU's "
        "base rate and mean probability, events by kind (app/video/summary.py)"
    )


class VideoAnalysisResponse(BaseModel):
    request_id: str
    video: VideoInfo
    tracks: list[VideoTrack]
    timings_ms: dict[str, float] = Field(description="milliseconds per stage, summed over the clip")
    profile: str | None = Field(None, description=PROFILE_FIELD)


# --- Track summaries (app/video/summary.py) and jobs (POST /jobs, app/jobs/) ------------------------------


class AuSummary(BaseModel):
    base_rate: float = Field(ge=0.0, le=1.0, description="share of the track's analysed frames where the AU is "
                             "present (probability >= threshold)")
    mean_probability: float = Field(ge=0.0, le=1.0, description="mean AU probability over those frames")
    threshold: float = Field(description="the probability from which the AU counts as present")


class TrackSummary(BaseModel):
    frames: int = Field(description="analysed frames the face was seen in")
    analysed_frames: int = Field(description="of those, frames not filtered (the shares and rates are over these)")
    seen_s: float = Field(description="seconds from the track's first to its last analysed frame")
    dominant_expression: str | None = Field(
        None, description="the expression that was the frame's label most often (null: none read)"
    )
    dominant_share: float | None = Field(None, description="its share of the analysed frames")
    expression_share: dict[str, float] = Field(
        description="per expression label: the share of analysed frames it was the frame's label (sums to 1)"
    )
    expression_mean_scores: dict[str, float] = Field(description="per expression: its mean score")
    action_units: dict[str, AuSummary] = Field(description="per AU: base rate and mean probability")
    events: dict[str, int] = Field(description="events by kind: au, expression, micro (either kind), total")
    event_names: dict[str, int] = Field(description="events by name (AU code or expression)")


class JobProgress(BaseModel):
    done: int = Field(description="frames (video) or images (archive) analysed so far")
    total: int | None = Field(None, description="how many there are (null until known)")
    eta_s: float | None = Field(None, description="seconds left at the current pace")


class JobOut(BaseModel):
    id: str = Field(description="unguessable; only the API key that created the job can read it")
    status: str = Field(description="queued, running, done, failed or cancelled")
    kind: str = Field(description="video, zip or tar")
    filename: str
    progress: JobProgress
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: ErrorDetail | None = Field(None, description="why it failed (code and message)")
    attempts: int = Field(0, description="runs so far (a worker that died mid-job is replaced by another run)")
    links: dict[str, str] = Field(description="self, result, cancel")


class JobLimits(BaseModel):
    mode: str = Field(description="embedded (SQLite queue, workers in the API) or distributed (Redis)")
    max_upload_bytes: int
    max_video_duration_s: float
    max_video_frames: int
    max_images: int
    result_ttl_s: float
    max_queued: int
    max_uploads: int | None = Field(None, description="POST /jobs bodies received at once per API worker")
