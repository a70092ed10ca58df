"""The FastAPI application: ``uvicorn app.main:create_app --factory`` serves it. Importing this module builds no
app (tests and embedders call ``create_app(settings)``); ``uvicorn app.main:app`` still works: the module attribute
``app`` is built from the environment's settings the first time it is read (``__getattr__`` below)."""
from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from app import __version__
from app.admission import Admission, AdmissionMiddleware
from app.analyzer import Analyzer
from app.errors import install_error_handlers
from app.jobs.queue import JobQueue
from app.jobs.runner import JobRunner
from app.lifecycle import CancelledRequestMiddleware, WorkDir
from app.logs import configure_logging
from app.metrics import AccessMiddleware, Metrics
from app.middleware import BodyLimitMiddleware, RequestIdMiddleware
from app.model_zoo.base import load_manifest
from app.persons import PersonStore
from app.profiles import ProfileHeaderMiddleware, profile_manifest
from app.registry import ModelRegistry
from app.render_http import RENDER_RESPONSES, RenderMiddleware, render_option
from app.routes import faces, health, jobs, metrics, persons, video
from app.routes.demo import install_demo
from app.routes.health import HealthzMiddleware
from app.schemas import ErrorResponse
from app.security import ApiKeyMiddleware, SecurityHeadersMiddleware, configured_keys, require_api_key
from app.settings import Settings, get_settings

ANALYSIS_ROUTERS = [faces.router]
SHUTDOWN_DRAIN_S = 5.0  # at shutdown, how long cancelled analyses get to notice (a video frame takes ~10-50 ms)

DESCRIPTION = """
Face detection, FACS Action Unit detection and facial expression recognition on the CPU, with
side-face and occlusion pre-filters. Upload an image as multipart field `file`.

Limits (settings, env prefix `MICROFACS_`), checked before the image is decoded: upload at most
{max_upload_bytes} bytes, at most {max_image_pixels} pixels and {max_image_side} px per side,
at least {min_image_side} px per side; JPEG, PNG, WebP, BMP. `GET /version` publishes them too.

Every error is `{{"error": {{"code", "message"}}, "request_id"}}` with a 4xx status for the client's fault.
Model profile: **{profile}** (`MICROFACS_PROFILE`; every response's `X-MicroFACS-Profile` header says it): `research`
serves research-use-only networks, `open` only models licensed for commercial use (models/OPEN_PROFILE.md).
Expression outputs say what a face *appears to show*; they are not a reading of anyone's feelings.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.work_dir = WorkDir.start()  # after removing what killed workers left in the temporary directory
        try:
            registry = ModelRegistry(settings)
            registry.warm_up()
            app.state.registry = registry
            app.state.metrics.watch_models(registry)  # microfacs_model_provider: where each model runs
            app.state.analyzer = Analyzer(settings, registry)
            app.state.jobs = start_jobs(settings, app.state.analyzer)
            app.state.ready = True
            yield
        finally:
            if getattr(app.state, "jobs", None) is not None:  # running jobs stop and are re-queued
                await anyio.to_thread.run_sync(app.state.jobs.stop)
            # uvicorn has waited --timeout-graceful-shutdown for the requests in flight and cancelled the rest:
            # stop the analyses still computing in threads (video checks between frames), then tidy up.
            app.state.ready = False
            app.state.stopping.set()
            await app.state.admission.drain(SHUTDOWN_DRAIN_S)
            if app.state.work_dir is not None:
                app.state.work_dir.close()

    app = FastAPIOffline(  # /docs and /redoc from local assets: the service runs offline
        title="MicroFACS",
        version=__version__,
        description=DESCRIPTION.format(**settings.model_dump()),
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
    )
    app.state.settings = settings
    app.state.manifest = profile_manifest(load_manifest(settings.models_dir), settings.profile)  # its models only
    app.state.ready = False
    app.state.stopping = threading.Event()  # set at shutdown: long analyses stop (app/lifecycle.py)
    admission = Admission(settings.max_in_flight, settings.queue_limit, settings.request_timeout_s,
                          settings.upload_limit)
    app.state.admission = admission
    # synchronous videos have their own places: a video never holds one of the images' (job workers run apart)
    video_admission = Admission(settings.video_max_in_flight, settings.video_max_queue, settings.request_timeout_s)
    app.state.video_admission = video_admission
    app.state.jobs = None
    app.state.persons = PersonStore(settings.persons_dir, settings.persons_ttl_s, settings.max_persons)
    app.state.metrics = Metrics(admission, app.state.manifest, video_admission)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in ANALYSIS_ROUTERS:
        app.include_router(
            router, dependencies=[Depends(require_api_key), Depends(render_option)], responses=RENDER_RESPONSES
        )
    app.include_router(video.router, dependencies=[Depends(require_api_key)])  # no ?render for videos
    app.include_router(persons.router, dependencies=[Depends(require_api_key)])
    app.include_router(jobs.router, dependencies=[Depends(require_api_key)])
    install_demo(app)
    app.add_middleware(RenderMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_upload_bytes=settings.max_upload_bytes,
        # an image endpoint's body may carry a `reference` photo beside the image; /persons several photos
        path_limits={"/analyze-video": settings.max_video_upload_bytes, "/jobs": settings.jobs_max_upload_bytes,
                     "/persons": settings.max_reference_photos * settings.max_upload_bytes,
                     **{getattr(r, 'path', ''): 2 * settings.max_upload_bytes for r in faces.router.routes}},
        body_timeout_s=settings.body_timeout_s,
        upload_timeout_s=settings.upload_timeout_s,
        min_upload_rate=settings.min_upload_rate,
        upload_rate_grace_s=settings.upload_rate_grace_s,
    )
    shed_paths = {getattr(route, "path", "") for r in ANALYSIS_ROUTERS for route in r.routes}
    shed_paths.add("/persons")  # POST: enrolment reads photos
    # bounds the uploads before their body is read; the analysis place is taken after it (Admission.run)
    app.add_middleware(AdmissionMiddleware, admission=admission, paths=shed_paths)
    video_paths = {getattr(route, "path", "") for route in video.router.routes}
    app.add_middleware(AdmissionMiddleware, admission=video_admission, paths=video_paths)
    # job uploads (up to jobs_max_upload_bytes each, spooled to the temp folder) have their own, small bound
    jobs_uploads = Admission(1, 0, settings.request_timeout_s, settings.jobs_max_uploads)
    app.add_middleware(AdmissionMiddleware, admission=jobs_uploads, paths={"/jobs"})
    # Cheap answers before the admission and FastAPI layers (floods: BENCHMARKS.md "Floods"): GET /healthz,
    # and the 401 of a wrong or missing key.
    app.add_middleware(HealthzMiddleware)
    if configured_keys(settings):
        guarded = {route.path: route for r in [*ANALYSIS_ROUTERS, video.router, persons.router, jobs.router]
                   for route in r.routes
                   if isinstance(route, APIRoute) and "POST" in (route.methods or ())}
        app.add_middleware(ApiKeyMiddleware, keys=configured_keys(settings), routes=guarded,
                           prefixes=() if settings.public_docs else ApiKeyMiddleware.PROTECTED_PREFIXES,
                           failure_delay_s=settings.auth_failure_delay_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(CancelledRequestMiddleware)  # 503 shutting_down when uvicorn cancels a request
    app.add_middleware(SecurityHeadersMiddleware)  # on every answer, the other middlewares' included
    app.add_middleware(AccessMiddleware, metrics=app.state.metrics)  # metrics and the access log: every answer
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(ProfileHeaderMiddleware, profile=settings.profile)  # X-MicroFACS-Profile on every answer
    return app


def start_jobs(settings: Settings, analyzer: Analyzer) -> JobQueue:
    """The job queue (app/jobs/): this process enqueues, and runs ``jobs_workers`` job threads (the embedded
    mode's workers; in distributed mode, usually 0 here and the microfacs-worker processes run them)."""
    queue = JobQueue(settings)
    queue.start(JobRunner(analyzer), settings.jobs_workers)
    return queue


_app: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    """``app.main.app``: one app from the environment's settings, built when first read (not at import)."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app()
    return _app
