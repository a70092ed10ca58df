"""Service settings, read from the environment (prefix ``MICROFACS_``)."""
from __future__ import annotations

import math
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALLED_MODELS = Path(sys.prefix) / "share" / "microfacs" / "models"


def default_models_dir() -> Path:
    """Where the models are when ``MICROFACS_MODELS_DIR`` is not set: ``models/`` beside the ``app``
    package in a checkout (or an editable install, or the Docker image's working directory), else the copy
    that ``pip install .`` puts in ``<prefix>/share/microfacs/models`` (pyproject's data-files)."""
    checkout = REPO_ROOT / "models"
    if (checkout / "manifest.json").is_file() or not (INSTALLED_MODELS / "manifest.json").is_file():
        return checkout
    return INSTALLED_MODELS


CGROUP = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP) -> float | None:
    """The container's CPU limit in CPUs (a Kubernetes ``limits.cpu``, ``docker run --cpus``): cgroup v2's
    ``cpu.max`` or v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None without one."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        return None if quota_us <= 0 else quota_us / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may use: those it may run on (a container's cpuset), and no more than its CPU limit
    (rounded up), not the host's count."""
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    quota = cpu_quota()
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MICROFACS_", env_file=None)

    models_dir: Path = Field(default_factory=default_models_dir, description="the ONNX files and manifest.json")
    # --- Model profile (app/profiles.py) ---
    profile: Literal["research", "open"] = Field(
        "research", description="research: every model (AU detector, expression and occlusion networks: research use "
        "only); open: only models whose weights and training data allow commercial use (MediaPipe, Apache-2.0), AUs "
        "and expression from the blendshapes by published rules, no occlusion filter (models/OPEN_PROFILE.md)"
    )
    onnx_threads: int = Field(1, ge=1, description="intra-op threads per ONNX session")
    analysis_threads: int | None = Field(
        None, ge=1, le=8, description="threads one analysis may run its per-face networks on side by side (the AU "
        "detector beside the expression network: app/analyzer.py); default: 2 where the worker has two usable CPUs "
        "or more, else 1. The results are the same bit for bit; it cuts one image's latency, not its CPU time"
    )
    # --- Execution providers (app/providers.py) ---
    providers: str = Field(
        "cpu", description="onnxruntime execution providers, in order of preference, comma-separated: cpu, cuda "
        "(onnxruntime-gpu), tensorrt, openvino, ... (cuda:1 picks a device); one this onnxruntime build lacks falls "
        "back to the next, and finally the CPU, with one log line. GET /version and /metrics say where each model runs"
    )

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        from app.providers import parse_providers

        parse_providers(value)  # ValueError (a settings error at start-up) for a name onnxruntime does not know
        return value
    # --- end of execution providers ---

    # Upload limits, all checked before the image is decoded.
    max_upload_bytes: int = Field(15 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64)
    max_image_side: int = Field(12_000, ge=8)
    min_image_side: int = Field(16, ge=1)
    # --- Decode memory budget (app/decode.py) ---
    decode_memory_mb: int = Field(
        256, ge=16, description="the most memory the image decodes of one worker hold at once (MiB): an image "
        "that alone needs more is refused before decoding (413; a decode's peak is 6 bytes a pixel without "
        "alpha, 8 with 8-bit alpha, 16 with 16-bit alpha, measured); concurrent decodes wait for room"
    )

    # Face stage.
    detection_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    detector: Literal["full", "short"] = Field(
        "full", description="full: BlazeFace's full-range model finds every face down to min_face_size (group "
        "photos), the short-range one adds close-ups it misses; short: the short-range model alone, as MediaPipe's "
        "FaceLandmarker: only faces that fill a good part of the photo (portraits, selfies, webcams) are found, "
        "~3 ms faster a 640x480 photo on the development machine, and small faces in group photos are missed "
        "(BENCHMARKS.md)"
    )
    landmark_presence_threshold: float = Field(0.5, ge=0.0, le=1.0)
    default_max_faces: int = Field(20, ge=1)
    max_faces_limit: int = Field(100, ge=1)
    default_min_face_size: int = Field(20, ge=0, description="pixels, shorter side of the face box")
    landmark_model: Literal["v1", "v2"] = Field(
        "v1", description="face stage landmarks: v1 = the 468-point mesh our AU, expression and occlusion networks "
        "were trained on (their crops are aligned from it), v2 = FaceLandmarker 478 points (irises); with v1, "
        "blendshapes and gaze run v2 as well, on the mesh's region"
    )

    # Pre-filters.
    side_face_max_yaw: float = Field(30.0, gt=0.0, le=90.0, description="degrees")
    side_face_max_pitch: float = Field(25.0, gt=0.0, le=90.0, description="degrees")
    occlusion_model: Literal["single", "ensemble"] = Field(
        "single", description="the occlusion pre-filter's network: single (default), or the mean of four seeds "
        "(about half the false flags on sharp studio photos, ~0.4 ms more a face): models/OCCLUSION.md"
    )
    occlusion_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="overrides the per-region thresholds in the manifest"
    )

    # Heads.
    au_model: Literal["detector", "fused"] = Field(
        "detector", description="AU decisions: the detector alone (the default: best CK+ F1, and since v2 it leaves "
        "neutral faces alone itself), or fused with the blendshapes (no better with v2, +1.5-3 ms a face): "
        "models/AU_DETECTOR.md"
    )
    expression_prior: Literal["balanced", "ferplus"] = Field(
        "balanced", description="default class prior of the expression scores (query parameter `prior`); "
        "models/EXPRESSION.md says why balanced is the default"
    )

    # The server.
    cors_origins: list[str] = []
    # --- Security (app/security.py) ---
    api_key: str | None = Field(
        None, description="when set, analysis requests must send it: X-API-Key: <key> or Authorization: Bearer <key>"
    )
    api_keys: list[str] = Field(
        [], description='more accepted keys, e.g. while rotating (JSON: MICROFACS_API_KEYS=\'["k1", "k2"]\')'
    )
    public_docs: bool = Field(
        True, description="with a key set: /docs, /redoc, /openapi.json, /demo and /version stay public (true) or "
        "need the key too (false); /healthz, /readyz and /metrics are always public"
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, description="a request body that stalls this long between two reads is cut off (408)"
    )

    # --- Person-relative reading (app/reference.py) and enrolled persons (app/persons.py) ---------------------
    persons_dir: Path | None = Field(
        None, description="where enrolled persons are kept (one JSON file each: model outputs, no photos); unset: "
        "in the worker's memory (lost on restart, not shared between workers)"
    )
    persons_ttl_s: float = Field(
        30 * 24 * 3600.0, gt=0.0, description="an enrolled person is deleted this long after enrolment (seconds)"
    )
    max_persons: int = Field(10_000, ge=1, description="enrolled persons kept at most (all API keys together)")
    max_reference_photos: int = Field(5, ge=1, le=50, description="neutral photos one POST /persons may send")
    baseline_fraction: float = Field(
        0.3, gt=0.0, le=1.0, description="automatic baselines (CLI --baseline auto, video tracks): a person's "
        "reference is this most neutral-looking share of their faces"
    )
    # --- end of person-relative settings ----------------------------------------------------------------------

    # --- Video analysis (POST /analyze-video, app/video/) -----------------------------------------------
    # Limits, published in GET /version and checked from the container's header before decoding (and
    # again while decoding, since headers can lie).
    max_video_upload_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    max_video_duration_s: float = Field(120.0, gt=0.0)
    max_video_frames: int = Field(7200, ge=1, description="decoded frames (120 s at 60 fps)")
    max_video_side: int = Field(1920, ge=16)
    max_video_pixels: int = Field(1920 * 1080, ge=256)
    # Work budget of one /analyze-video request (app/video/analyze.py), published in GET /version, checked
    # from the header (frames, frame rate, frame size) before any frame is decoded, counted again while
    # decoding; beyond it: 413 video_over_budget / video_timeout, the message naming the setting.
    max_video_analysed_fps: float = Field(
        60.0, gt=0.0, description="analysed frames per second of video: without `every` the stride is chosen to "
        "stay under it (and under max_video_analysed_frames); an explicit `every` over it is refused"
    )
    max_video_analysed_frames: int = Field(1800, ge=1, description="analysed frames per request")
    max_video_decoded_megapixels: float = Field(
        4000.0, gt=0.0, description="frames x width x height decoded per request (every frame is decoded, "
        "analysed or not): 4000 is ~64 s of 1080p30 or ~145 s of 720p30"
    )
    video_timeout_s: float = Field(
        60.0, gt=0.0, description="wall-clock budget of one analysis (decode to events); past it the analysis "
        "stops and the request gets 413 video_timeout (no partial result)"
    )
    video_decode_threads: int = Field(2, ge=1, le=16, description="FFmpeg decoder threads per clip")
    video_batch_frames: int | None = Field(
        None, ge=1, le=256, description="frames whose faces the AU and expression heads read in one call (unset: 16 "
        "when MICROFACS_PROVIDERS puts the models on an accelerator, else 1); same results either way"
    )
    # Tracking (app/video/tracking.py).
    video_redetect_every: int = Field(10, ge=1, description="analysed frames between full detections while tracked")
    video_confirm_hits: int = Field(3, ge=1, description="consecutive detector hits before a track is confirmed")
    video_max_lost_s: float = Field(1.0, ge=0.0, description="a track unseen this long ends")
    # Event spotting (app/video/events.py). Tuned on synthetic clips built from taiwanese_dev
    # (scripts/evaluate_spotting.py): allowed for this spotting task only; the AU and expression models and
    # their own thresholds are never fitted to taiwanese_dev. micro_max_s is the MEGC convention, not tuned.
    event_baseline_window_s: float = Field(10.0, gt=0.0, description="rolling window of the person's baseline")
    event_baseline_percentile: float = Field(50.0, ge=0.0, le=100.0, description="50: the rolling median")
    event_rest_fraction: float = Field(
        0.3, gt=0.0, le=1.0, description="the baseline is measured on this most-neutral share of the frames"
    )
    event_au_on: float = Field(0.25, gt=0.0, le=1.0, description="AU probability above baseline that starts an event")
    event_au_off: float = Field(0.12, gt=0.0, le=1.0, description="... and below which it ends (hysteresis)")
    event_expression_on: float = Field(0.25, gt=0.0, le=1.0)
    event_expression_off: float = Field(0.12, gt=0.0, le=1.0)
    event_min_s: float = Field(0.1, ge=0.0, description="shorter departures are noise")
    event_merge_gap_s: float = Field(0.15, ge=0.0, description="events this close merge into one")
    micro_max_s: float = Field(0.5, gt=0.0, description="an event lasting at most this long is micro (MEGC)")
    # --- end of video analysis settings ---------------------------------------------------------------------

    # --- Load shedding, metrics, logs (app/admission.py, app/metrics.py, app/logs.py) -------------------------
    # Per worker. Beyond max_in_flight running + max_queue waiting, analysis requests get 503 "overloaded" with
    # Retry-After at once; a request still waiting request_timeout_s after it arrived gets it too.
    max_in_flight: int = Field(
        default_factory=usable_cpus, ge=1, description="analyses running at once (default: usable CPUs / workers)"
    )
    max_queue: int | None = Field(None, ge=0, description="requests waiting for a slot (default: max_in_flight)")
    request_timeout_s: float = Field(
        30.0, gt=0.0, description="deadline for a request to start its analysis, from the end of its upload"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON line per request (access log) and per log record"
    )

    @property
    def queue_limit(self) -> int:
        return self.max_in_flight if self.max_queue is None else self.max_queue
    # --- end of load shedding, metrics, logs ------------------------------------------------------------------

    # --- Uploads and shutdown (app/middleware.py, app/admission.py, app/lifecycle.py) -------------------------
    # The body is read before the request takes an analysis place: an upload holds an upload place only, and
    # is cut off (408) when it stalls (body_timeout_s), runs past upload_timeout_s, or falls below the rate.
    upload_timeout_s: float = Field(
        120.0, gt=0.0, description="the whole request body must arrive within this many seconds of its first read"
    )
    min_upload_rate: int = Field(
        16 * 1024, ge=0, description="bytes/s: once upload_rate_grace_s have passed, a body arriving slower than "
        "this on average is cut off (408); 0: no minimum"
    )
    upload_rate_grace_s: float = Field(5.0, ge=0.0, description="seconds before the minimum rate applies")
    max_uploads: int | None = Field(
        None, ge=1, description="request bodies being received at once, per worker; beyond, 503 before reading "
        "(default: 4 x (max_in_flight + max_queue))"
    )

    @property
    def upload_limit(self) -> int:
        return 4 * (self.max_in_flight + self.queue_limit) if self.max_uploads is None else self.max_uploads
    # --- end of uploads and shutdown -------------------------------------------------------------------------

    # --- Floods (BENCHMARKS.md "Floods"): worker processes, refused keys -----------------------------------------
    workers: int = Field(
        1, ge=1, description="uvicorn worker processes (the image passes it to `uvicorn --workers`): each has its own "
        "event loop, so more workers use more cores for the request path and floods; each loads the models (memory "
        "x N) and has its own admission limits, so the default max_in_flight is the usable CPUs divided by it"
    )

    auth_failure_delay_s: float = Field(
        0.1, ge=0.0, le=10.0, description="a wrong or missing API key gets its 401 this much later (0: at once); "
        "a client that floods wrong keys over a few connections then sends a few per second per connection, "
        "while other requests go on being served"
    )

    @model_validator(mode="after")
    def _split_cpus_between_workers(self) -> Settings:
        share = max(1, usable_cpus() // self.workers)
        if "max_in_flight" not in self.model_fields_set:
            self.max_in_flight = share
        if self.analysis_threads is None:
            self.analysis_threads = min(2, share)
        return self
    # --- end of floods ------------------------------------------------------------------------------------------

    # --- Jobs (POST /jobs, app/jobs/): long videos and image archives on a task queue (huey) -------------------
    jobs_url: str | None = Field(
        None, description="unset: embedded jobs (a SQLite queue in jobs_dir, worker threads in the API process); "
        "redis://host:6379/0: distributed, any number of `microfacs-worker` processes take the jobs"
    )
    jobs_dir: Path = Field(
        Path(tempfile.gettempdir()) / "microfacs-jobs", description="uploads, job states and results (a volume "
        "shared by the API and the workers in distributed mode); survives a restart"
    )
    jobs_workers: int = Field(
        1, ge=0, le=64, description="job worker threads in this process (the API's in embedded mode, each "
        "microfacs-worker's); 0: this API process runs no job (distributed mode with separate workers)"
    )
    jobs_max_upload_bytes: int = Field(4 * 1024**3, ge=1024, description="a job's upload (video or archive)")
    jobs_max_duration_s: float = Field(4 * 3600.0, gt=0.0, description="a job video's duration")
    jobs_max_frames: int = Field(4 * 3600 * 60, ge=1, description="a job video's decoded frames")
    jobs_max_images: int = Field(100_000, ge=1, description="images in one archive job")
    jobs_result_ttl_s: float = Field(7 * 24 * 3600.0, gt=0.0, description="a finished job is deleted this long "
                                     "after it ended (upload, state and result)")
    jobs_lease_s: float = Field(
        30.0, gt=0.5, description="a running job's worker renews its claim every third of this; a claim not "
        "renewed this long (worker killed) is taken over by another worker, which runs the job again"
    )
    jobs_max_attempts: int = Field(3, ge=1, description="runs of one job before it fails (worker_lost)")
    jobs_max_queued: int = Field(1000, ge=1, description="jobs queued or running at once (beyond: 503)")
    jobs_max_uploads: int = Field(
        2, ge=1, description="POST /jobs bodies received at once per API worker (each up to jobs_max_upload_bytes, "
        "spooled to the temp folder): beyond, 503 with Retry-After before reading"
    )
    # synchronous /analyze-video: its own admission, apart from the images' (a video never takes an image slot)
    video_max_in_flight: int = Field(1, ge=1, description="synchronous /analyze-video analyses at once per worker")
    video_max_queue: int = Field(2, ge=0, description="synchronous /analyze-video requests waiting for a slot")
    # --- end of jobs ------------------------------------------------------------------------------------------


@lru_cache
def get_settings() -> Settings:
    return Settings()
