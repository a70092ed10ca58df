"""Typed response models mirroring the service's JSON (``app/schemas.py`` in the service repo).

They are tolerant: every field a newer server might add is kept (``extra="allow"``), and the per-endpoint
parts (``action_units``, ``expression``, ``landmarks``) are optional, so one ``AnalysisResult`` model reads
the answer of ``/detect-faces``, ``/detect-au``, ``/recognize-expression`` and ``/analyze`` alike.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

EXPRESSION_LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Box(_Model):
    """Pixels of the original (EXIF-rotated) image."""

    x: float
    y: float
    width: float
    height: float


class Pose(_Model):
    """Degrees; yaw > 0 when the face turns towards the image's right, pitch > 0 up, roll > 0 clockwise."""

    yaw: float
    pitch: float
    roll: float


class Occlusion(_Model):
    occluded: bool
    regions: dict[str, bool] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)


class ActionUnit(_Model):
    au: str
    name: str = ""
    probability: float
    present: bool
    box: Optional[Box] = None
    # with a reference (``reference=`` / ``person=``): ``probability``/``present`` are relative to the person's
    # neutral face, and these are the detector's own reading
    absolute_probability: Optional[float] = None
    absolute_present: Optional[bool] = None


class Expression(_Model):
    """What the face *appears to show* (not a reading of anyone's feelings). With a reference, ``reference`` is
    true, the label and scores say what changed from the person's neutral face, and ``absolute`` is the reading
    without it."""

    label: str
    confidence: float
    scores: dict[str, float] = Field(default_factory=dict)
    uncertain: bool = False
    reference: Optional[bool] = None
    absolute: Optional[Expression] = None


class Face(_Model):
    face_id: int
    box: Box
    confidence: float
    landmark_confidence: Optional[float] = None
    pose: Optional[Pose] = None
    occlusion: Optional[Occlusion] = None
    filtered: bool = False
    filter_reasons: list[str] = Field(default_factory=list)
    landmarks: Optional[list[list[float]]] = None
    action_units: Optional[list[ActionUnit]] = None
    expression: Optional[Expression] = None

    def present_action_units(self) -> list[ActionUnit]:
        return [au for au in self.action_units or [] if au.present]


class ImageInfo(_Model):
    width: int
    height: int


class ReferenceInfo(_Model):
    """The neutral face a call's readings are relative to."""

    source: str  # "upload" or "person"
    person_id: Optional[str] = None
    faces: int
    expression: Expression  # how the reference itself reads
    warnings: list[str] = Field(default_factory=list)


class AnalysisResult(_Model):
    request_id: str = ""
    image: ImageInfo
    faces: list[Face] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    reference: Optional[ReferenceInfo] = None


class Person(_Model):
    """An enrolled person (``Client.create_person``): only model outputs of their neutral photos are kept."""

    person_id: str
    faces: int
    created_at: str
    expires_at: str
    models: dict[str, str] = Field(default_factory=dict)
    expression: Expression
    warnings: list[str] = Field(default_factory=list)


# One shape serves every analysis endpoint; these names read better at call sites.
DetectFacesResult = AnalysisResult
DetectActionUnitsResult = AnalysisResult
RecognizeExpressionResult = AnalysisResult


class Readiness(_Model):
    status: str
    models: dict[str, str] = Field(default_factory=dict)


class Version(_Model):
    service: str
    version: str
    models: dict[str, dict] = Field(default_factory=dict)
    limits: dict = Field(default_factory=dict)


# --- POST /analyze-video ------------------------------------------------------------------------------------


class VideoInfo(_Model):
    frames: int
    analysed_frames: int
    fps: float
    width: int
    height: int
    duration_s: float


class FrameExpression(_Model):
    label: str
    confidence: float
    scores: Optional[dict[str, float]] = None


class TrackFrame(_Model):
    """One analysed frame of a track (``frame`` 0-based, ``t`` seconds from the first frame)."""

    frame: int
    t: float
    box: Box
    confidence: float
    pose: Pose
    filtered: bool
    filter_reasons: list[str] = Field(default_factory=list)
    action_units: Optional[dict[str, float]] = None
    expression: Optional[FrameExpression] = None


class VideoEvent(_Model):
    """A departure of an AU or a (non-neutral) expression from the person's baseline; ``micro``: <= 0.5 s."""

    kind: str
    name: str
    onset_frame: int
    apex_frame: int
    offset_frame: int
    onset_s: float
    apex_s: float
    offset_s: float
    duration_s: float
    peak: float
    micro: bool


class TrackBaseline(_Model):
    """With ``baseline="auto"``: the frames a track's readings are relative to."""

    frames: int
    first_frame: int
    last_frame: int
    expression: Expression


class AuSummary(_Model):
    base_rate: float  # share of the track's analysed frames where the AU is present
    mean_probability: float
    threshold: float = 0.5


class TrackSummary(_Model):
    """What to read first about a track: the share of time of each expression label, the dominant one, each
    AU's base rate and mean probability, events by kind (au, expression, micro, total)."""

    frames: int = 0
    analysed_frames: int = 0
    seen_s: float = 0.0
    dominant_expression: Optional[str] = None
    dominant_share: Optional[float] = None
    expression_share: dict[str, float] = Field(default_factory=dict)
    expression_mean_scores: dict[str, float] = Field(default_factory=dict)
    action_units: dict[str, AuSummary] = Field(default_factory=dict)
    events: dict[str, int] = Field(default_factory=dict)
    event_names: dict[str, int] = Field(default_factory=dict)


class VideoTrack(_Model):
    track_id: int
    first_frame: int
    last_frame: int
    frames: list[TrackFrame] = Field(default_factory=list)
    events: list[VideoEvent] = Field(default_factory=list)
    baseline: Optional[TrackBaseline] = None
    summary: Optional[TrackSummary] = None  # servers before track summaries send none


class VideoResult(_Model):
    request_id: str = ""
    video: VideoInfo
    tracks: list[VideoTrack] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)


# --- POST /jobs: long videos and image archives as background jobs ------------------------------------------

JOB_TERMINAL_STATES = ("done", "failed", "cancelled")


class JobProgress(_Model):
    """Frames (video) or images (archive) analysed so far, of ``total`` (None until known), and the seconds left
    at the current pace."""

    done: int = 0
    total: Optional[int] = None
    eta_s: Optional[float] = None

    @property
    def fraction(self) -> Optional[float]:
        return min(self.done / self.total, 1.0) if self.total else None


class JobError(_Model):
    code: str
    message: str = ""


class JobStatus(_Model):
    """``GET /jobs/{id}``: ``status`` is queued, running, done, failed or cancelled; ``error`` when it failed."""

    id: str
    status: str
    kind: str = ""  # video, zip or tar
    filename: str = ""
    progress: JobProgress = Field(default_factory=JobProgress)
    created_at: str = ""
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    error: Optional[JobError] = None
    attempts: int = 0
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """True once the job will not change any more (done, failed or cancelled)."""
        return self.status in JOB_TERMINAL_STATES


class ArchiveImage(_Model):
    """One image of an archive job: its ``name`` in the archive, and its ``result`` or its ``error``."""

    name: str
    result: Optional[AnalysisResult] = None
    error: Optional[JobError] = None


class ArchiveResult(_Model):
    """An archive job's result: every image in name order, and counts (images, faces, errors)."""

    request_id: str = ""
    images: list[ArchiveImage] = Field(default_factory=list)
    summary: dict[str, int] = Field(default_factory=dict)
