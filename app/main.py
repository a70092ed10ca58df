"""The FastAPI application: ``uvicorn app.main:app`` serves it."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from app import __version__
from app.admission import Admission, AdmissionMiddleware
from app.analyzer import Analyzer
from app.errors import install_error_handlers
from app.logs import configure_logging
from app.metrics import AccessMiddleware, Metrics
from app.middleware import BodyLimitMiddleware, RequestIdMiddleware
from app.model_zoo.base import load_manifest
from app.registry import ModelRegistry
from app.render_http import RENDER_RESPONSES, RenderMiddleware, render_option
from app.routes import faces, health, metrics, video
from app.routes.demo import install_demo
from app.routes.health import HealthzMiddleware
from app.schemas import ErrorResponse
from app.security import ApiKeyMiddleware, SecurityHeadersMiddleware, configured_keys, require_api_key
from app.settings import Settings, get_settings

ANALYSIS_ROUTERS = [faces.router]

DESCRIPTION = """
Face detection, FACS Action Unit detection and facial expression recognition on the CPU, with
side-face and occlusion pre-filters. Upload an image as multipart field `file`.

Limits (settings, env prefix `MICROFACS_`), checked before the image is decoded: upload at most
{max_upload_bytes} bytes, at most {max_image_pixels} pixels and {max_image_side} px per side,
at least {min_image_side} px per side; JPEG, PNG, WebP, BMP. `GET /version` publishes them too.

Every error is `{{"error": {{"code", "message"}}, "request_id"}}` with a 4xx status for the client's fault.
Expression outputs say what a face *appears to show*; they are not a reading of anyone's feelings.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings)
        registry.warm_up()
        app.state.registry = registry
        app.state.analyzer = Analyzer(settings, registry)
        app.state.ready = True
        yield
        app.state.ready = False

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
    app.state.manifest = load_manifest(settings.models_dir)
    app.state.ready = False
    admission = Admission(settings.max_in_flight, settings.queue_limit, settings.request_timeout_s)
    app.state.admission = admission
    app.state.metrics = Metrics(admission, app.state.manifest)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in ANALYSIS_ROUTERS:
        app.include_router(
            router, dependencies=[Depends(require_api_key), Depends(render_option)], responses=RENDER_RESPONSES
        )
    app.include_router(video.router, dependencies=[Depends(require_api_key)])  # no ?render for videos
    install_demo(app)
    app.add_middleware(RenderMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_upload_bytes=settings.max_upload_bytes,
        path_limits={"/analyze-video": settings.max_video_upload_bytes},
        body_timeout_s=settings.body_timeout_s,
    )
    shed_paths = {getattr(route, "path", "") for r in [*ANALYSIS_ROUTERS, video.router] for route in r.routes}
    app.add_middleware(AdmissionMiddleware, admission=admission, paths=shed_paths)  # before the body is read
    # Cheap answers before the admission and FastAPI layers (floods: BENCHMARKS.md "Floods"): GET /healthz,
    # and the 401 of a wrong or missing key.
    app.add_middleware(HealthzMiddleware)
    if configured_keys(settings):
        guarded = {route.path: route for r in [*ANALYSIS_ROUTERS, video.router] for route in r.routes
                   if isinstance(route, APIRoute) and "POST" in (route.methods or ())}
        app.add_middleware(ApiKeyMiddleware, keys=configured_keys(settings), routes=guarded,
                           prefixes=() if settings.public_docs else ApiKeyMiddleware.PROTECTED_PREFIXES,
                           failure_delay_s=settings.auth_failure_delay_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(SecurityHeadersMiddleware)  # on every answer, the other middlewares' included
    app.add_middleware(AccessMiddleware, metrics=app.state.metrics)  # metrics and the access log: every answer
    app.add_middleware(RequestIdMiddleware)
    return app


app = create_app()
