"""What every analysis endpoint takes: the upload, the face-stage options, the analyzer. Bounds and defaults
come from the app's settings at request time (``create_app(settings)``), never from import-time state.

The dependencies are ``async def`` because none of them blocks: FastAPI runs a plain ``def`` dependency in a
worker thread, one thread hop per dependency per request (about 3 ms of a 13 ms request before this)."""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, Query, Request, Response
from starlette.datastructures import UploadFile

from app.analyzer import Analyzer, FaceOptions
from app.errors import ApiError, request_id_of
from app.render_http import render_option
from app.respond import analysis_response
from app.security import require_api_key
from app.settings import Settings

__all__ = ["AnalysisRequest", "analysis_request", "analyzer_of", "require_api_key", "settings_of"]


async def settings_of(request: Request) -> Settings:
    return request.app.state.settings


async def analyzer_of(request: Request) -> Analyzer:
    analyzer = getattr(request.app.state, "analyzer", None)
    if analyzer is None:
        raise ApiError(503, "not_ready", "models are still loading; retry shortly")
    return analyzer


def multipart_body(description: str) -> dict[str, Any]:
    """The OpenAPI declaration (``openapi_extra``) of the multipart ``file`` field that ``read_upload`` reads:
    routes read it themselves, after their query parameters and the API key are checked."""
    file = {"type": "string", "contentMediaType": "application/octet-stream", "description": description}
    schema = {"type": "object", "properties": {"file": file}, "required": ["file"]}
    overloaded = {"description": "overloaded: retry after the Retry-After header's seconds",
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}},
            "responses": {"503": overloaded}}


IMAGE_BODY = multipart_body("the image: JPEG, PNG, WebP or BMP")


async def read_upload(request: Request) -> UploadFile:
    """The multipart field ``file`` (spooled by Starlette: memory up to 1 MiB, then a temporary file); the
    caller closes the form (``request.close()``). The body-size middleware bounds what is read."""
    form = await request.form(max_files=1, max_fields=32)
    file = form.get("file")
    if not isinstance(file, UploadFile):
        await form.close()
        raise ApiError(422, "missing_file", "upload the image as multipart form field 'file'")
    return file


async def face_options(
    side_face_filter: bool = Query(True, description="mark faces whose |yaw| or |pitch| exceed the thresholds"),
    occlusion_filter: bool = Query(True, description="mark faces with an occluded region"),
    max_faces: int | None = Query(
        None, ge=1, description="at most this many faces, largest first (default and upper bound: GET /version)"
    ),
    min_face_size: int | None = Query(
        None, ge=0, le=10_000, description="pixels, shorter side of the face box (default 20)"
    ),
    face_crop: bool = Query(False, description="the upload is one cropped face: skip detection"),
    prior: Literal["balanced", "ferplus"] | None = Query(
        None, description="class prior of the expression scores: balanced (uniform over the 8 classes) or ferplus "
        "(FER+'s own label frequencies, 36 % neutral); default: the server's setting (GET /version), see "
        "models/EXPRESSION.md"
    ),
    analyzer: Analyzer = Depends(analyzer_of),
) -> FaceOptions:
    return analyzer.options(side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, prior)


@dataclass
class AnalysisRequest:
    """One analysis request, ready to run: routes only choose the heads."""

    request: Request
    analyzer: Analyzer
    data: bytes
    options: FaceOptions
    include_landmarks: bool
    extra_heads: tuple[str, ...] = ()  # opt-in heads any endpoint adds: blendshapes, gaze

    async def run(self, heads: Collection[str] = ()) -> Response:
        """The analysis in the app's pool (``app.admission``: a slot, or 503 past the deadline), serialised
        there too: the event loop only moves bytes. The route's ``response_model`` documents the shape."""
        return await self.request.app.state.admission.run(self.request, self._run, heads)

    def _run(self, heads: Collection[str]) -> Response:
        analysis = self.analyzer.run(self.data, self.options, {*heads, *self.extra_heads})
        self.request.state.image = analysis.image  # for ?render=true (app/render_http.py)
        self.request.state.faces = len(analysis.faces)  # for the access log
        self.request.app.state.metrics.observe_analysis(analysis.timings.ms, len(analysis.faces))
        response = analysis_response(request_id_of(self.request), analysis, self.include_landmarks)
        return Response(response.model_dump_json(by_alias=True), media_type="application/json")


async def analysis_request(
    request: Request,
    options: FaceOptions = Depends(face_options),
    landmarks: bool = Query(False, description="include the 468 mesh points of each face"),
    blendshapes: bool = Query(False, description="add MediaPipe's 52 blendshape coefficients to each analysed face"),
    gaze: bool = Query(False, description="add the eye gaze (per eye and combined) to each analysed face"),
    _render: bool = Depends(render_option),
    analyzer: Analyzer = Depends(analyzer_of),
    settings: Settings = Depends(settings_of),
) -> AnalysisRequest:
    """FastAPI calls this only when every query parameter above is valid (and after the router's API-key
    check), so a bad request is refused before its body is read: the upload is read here, last."""
    file = await read_upload(request)
    try:
        data = await file.read(settings.max_upload_bytes + 1)
    finally:
        await request.close()
    extra = tuple(name for name, asked in (("blendshapes", blendshapes), ("gaze", gaze)) if asked)
    return AnalysisRequest(request, analyzer, data, options, landmarks, extra)
