from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.analyzer import limits_of
from app.decode import SUPPORTED_FORMATS, max_pixels_by_layout
from app.schemas import Defaults, ExecutionInfo, Health, JobLimits, Limits, ModelInfo, Readiness, VersionResponse
from app.settings import Settings
from app.video.decode import VIDEO_FORMATS

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (it may still be loading models)."""
    return Health(status="ok")


class HealthzMiddleware:
    """Answers ``GET /healthz`` itself, with the route's bytes (the route stays for OpenAPI): a probe, or a flood
    of them, costs no routing, no validation and no serialisation. The middlewares outside it add the request
    id, the security headers and the metrics, as for the route's answer (``route`` label ``/healthz``)."""

    BODY = Health(status="ok").model_dump_json().encode()
    HEADERS = [(b"content-length", str(len(BODY)).encode()), (b"content-type", b"application/json")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(r for r in router.routes if getattr(r, "path", None) == "/healthz")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/healthz" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        await send({"type": "http.response.start", "status": 200, "headers": list(self.HEADERS)})
        await send({"type": "http.response.body", "body": self.BODY})


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request):
    """Every model is loaded, checked against its sha256 and warmed up."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None or not getattr(request.app.state, "ready", False):
        return JSONResponse({"status": "loading", "models": {}}, status_code=503)
    return Readiness(status="ready", models={name: m.version for name, m in registry.loaded().items()})


@router.get("/version", response_model=VersionResponse)
async def version(request: Request) -> VersionResponse:
    """Service and model versions, and the published upload limits. ``models``: only those of the server's profile
    (``profile``; app/profiles.py), each with its licence."""
    settings = request.app.state.settings
    manifest = request.app.state.manifest
    registry = getattr(request.app.state, "registry", None)  # None while the models load
    providers = registry.providers() if registry is not None else {}
    return VersionResponse(
        service="microfacs",
        version=__version__,
        models={
            name: ModelInfo(version=e["version"], sha256=e["sha256"], licence=e.get("licence", ""),
                            provider=providers.get(name))
            for name, e in manifest["models"].items()
        },
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_image_side=settings.max_image_side,
            min_image_side=settings.min_image_side,
            formats=list(SUPPORTED_FORMATS),
            max_faces=settings.max_faces_limit,
            decode_memory_mb=settings.decode_memory_mb,
            max_image_pixels_by_layout=max_pixels_by_layout(limits_of(settings)),
            max_in_flight=settings.max_in_flight,
            max_queue=settings.queue_limit,
            request_timeout_s=settings.request_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            upload_timeout_s=settings.upload_timeout_s,
            min_upload_rate=settings.min_upload_rate,
            upload_rate_grace_s=settings.upload_rate_grace_s,
            max_uploads=settings.upload_limit,
            max_video_upload_bytes=settings.max_video_upload_bytes,
            max_video_duration_s=settings.max_video_duration_s,
            max_video_frames=settings.max_video_frames,
            max_video_side=settings.max_video_side,
            max_video_pixels=settings.max_video_pixels,
            video_formats=list(VIDEO_FORMATS),
            max_video_analysed_fps=settings.max_video_analysed_fps,
            max_video_analysed_frames=settings.max_video_analysed_frames,
            max_video_decoded_megapixels=settings.max_video_decoded_megapixels,
            video_timeout_s=settings.video_timeout_s,
            max_reference_photos=settings.max_reference_photos,
            persons_ttl_s=settings.persons_ttl_s,
        ),
        defaults=Defaults(max_faces=settings.default_max_faces, min_face_size=settings.default_min_face_size,
                          prior=settings.expression_prior,
                          au_model="blendshapes" if settings.profile == "open" else settings.au_model,
                          detector=settings.detector),
        profile=settings.profile,
        filters={"side_face": True, "occlusion": settings.profile == "research"},
        jobs=JobLimits(mode="distributed" if settings.jobs_url else "embedded",
                       max_upload_bytes=settings.jobs_max_upload_bytes,
                       max_video_duration_s=settings.jobs_max_duration_s, max_video_frames=settings.jobs_max_frames,
                       max_images=settings.jobs_max_images, result_ttl_s=settings.jobs_result_ttl_s,
                       max_queued=settings.jobs_max_queued, max_uploads=settings.jobs_max_uploads),
        execution=execution_info(registry, settings),
    )


def execution_info(registry, settings: Settings) -> ExecutionInfo | None:
    if registry is None:
        return None
    import onnxruntime as ort

    runtime = registry.runtime
    return ExecutionInfo(requested=list(runtime.requested), used=runtime.names,
                         available=list(ort.get_available_providers()), analysis_threads=settings.analysis_threads,
                         onnx_threads=settings.onnx_threads)
