"""What every analysis endpoint takes: the upload, the face-stage options, the analyzer. Bounds and defaults
come from the app's settings at request time (``create_app(settings)``), never from import-time state.

The dependencies are ``async def`` because none of them blocks: FastAPI runs a plain ``def`` dependency in a
worker thread, one thread hop per dependency per request (about 3 ms of a 13 ms request before this)."""
from __future__ import annotations

import inspect
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.analyzer import Analyzer, FaceOptions
from app.errors import ApiError, request_id_of
from app.heads import OPT_IN, SPECS
from app.persons import PersonStore, key_scope
from app.reference import Reference
from app.render_http import render_option
from app.respond import analysis_response
from app.security import presented_key, require_api_key
from app.settings import Settings

__all__ = ["AnalysisRequest", "analysis_request", "analyzer_of", "require_api_key", "settings_of"]


async def settings_of(request: Request) -> Settings:
    return request.app.state.settings


async def analyzer_of(request: Request) -> Analyzer:
    analyzer = getattr(request.app.state, "analyzer", None)
    if analyzer is None:
        raise ApiError(503, "not_ready", "models are still loading; retry shortly")
    return analyzer


def multipart_body(description: str, reference: bool = False, many: bool = False) -> dict[str, Any]:
    """The OpenAPI declaration (``openapi_extra``) of the multipart ``file`` field (and the optional ``reference``)
    that ``read_upload`` reads: routes read them themselves, after their query parameters and the API key are
    checked. ``many``: ``file`` may repeat."""
    file: dict[str, Any] = {"type": "string", "contentMediaType": "application/octet-stream",
                            "description": description}
    if many:
        file = {"type": "array", "items": file, "description": description}
    properties: dict[str, Any] = {"file": file}
    if reference:
        properties["reference"] = {
            "type": "string", "contentMediaType": "application/octet-stream",
            "description": "optional: a neutral photo of the same person (its largest face is used); each face is "
            "then read relative to it (models/EXPRESSION.md). Not with ?person=",
        }
    schema = {"type": "object", "properties": properties, "required": ["file"]}
    overloaded = {"description": "overloaded: retry after the Retry-After header's seconds",
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}},
            "responses": {"503": overloaded}}


IMAGE_BODY = multipart_body("the image: JPEG, PNG, WebP or BMP", reference=True)


async def read_upload(request: Request) -> UploadFile:
    """The multipart field ``file`` (spooled by Starlette: memory up to 1 MiB, then a temporary file); the
    caller closes the form (``request.close()``). The body-size middleware bounds what is read."""
    files = await read_files(request, {"file": 1})
    return files["file"][0]


async def read_files(request: Request, fields: dict[str, int], required: str = "file") -> dict[str, list[UploadFile]]:
    """The multipart file fields named in ``fields`` (name -> how many at most), ``required`` present; any other
    file field, or more than allowed, is a 422. The caller closes the form (``request.close()``)."""
    allowed = sum(fields.values())
    try:
        form = await request.form(max_files=allowed, max_fields=32)
    except StarletteHTTPException as exc:  # Starlette's multipart limits: too many files or fields
        if "files" not in str(exc.detail):
            raise
        limits = ", ".join(f"{n} in {name!r}" for name, n in fields.items())
        raise ApiError(422, "invalid_request", f"too many files: at most {limits}") from None
    out: dict[str, list[UploadFile]] = {name: [] for name in fields}
    problem = None
    for name, value in form.multi_items():
        if not isinstance(value, UploadFile):
            continue
        if name not in fields:
            problem = f"unexpected file field {name!r}; expected {', '.join(repr(f) for f in fields)}"
        elif len(out[name]) >= fields[name]:
            problem = f"at most {fields[name]} file(s) in field {name!r}"
        else:
            out[name].append(value)
    if problem is None and not out[required]:
        problem = f"upload the image as multipart form field {required!r}"
        code = "missing_file"
    else:
        code = "invalid_request"
    if problem is not None:
        await form.close()
        raise ApiError(422, code, problem)
    return out


async def person_store(request: Request) -> PersonStore:
    return request.app.state.persons


def scope_of(request: Request) -> str:
    """The tenant of this request's persons: its API key's hash when the server has keys, else public."""
    return key_scope(presented_key(request))


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


async def opt_in_heads(**flags: bool) -> tuple[str, ...]:
    """The opt-in heads the request asks for: one boolean query flag per opt-in head of ``app.heads.SPECS``
    (``?blendshapes=true``, ``?gaze=true``), declared from the registry (its signature below)."""
    return tuple(name for name in OPT_IN if flags.get(name))


opt_in_heads.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=Query(False, description=SPECS[name].help))
    for name in OPT_IN
], return_annotation=tuple[str, ...])


@dataclass
class AnalysisRequest:
    """One analysis request, ready to run: routes only choose the heads."""

    request: Request
    analyzer: Analyzer
    data: bytes
    options: FaceOptions
    include_landmarks: bool
    extra_heads: tuple[str, ...] = ()  # opt-in heads any endpoint adds: blendshapes, gaze
    reference_data: bytes | None = None  # the multipart `reference` photo, read in the pool like the image
    reference: Reference | None = None  # an enrolled person's (?person=)

    async def run(self, heads: Collection[str] = ()) -> Response:
        """The analysis in the app's pool (``app.admission``: a slot, or 503 past the deadline), serialised
        there too: the event loop only moves bytes. The route's ``response_model`` documents the shape."""
        return await self.request.app.state.admission.run(self.request, self._run, heads)

    def _run(self, heads: Collection[str]) -> Response:
        options = self.options
        reference = self.reference
        if self.reference_data is not None:
            reference = self.analyzer.reference([self.reference_data], side_face_filter=options.side_face_filter,
                                                occlusion_filter=options.occlusion_filter)
        if reference is not None:
            options = self.analyzer.with_reference(options, reference)
        analysis = self.analyzer.run(self.data, options, {*heads, *self.extra_heads})
        self.request.state.image = analysis.image  # for ?render=true (app/render_http.py), with the result below
        self.request.state.faces = len(analysis.faces)  # for the access log
        self.request.app.state.metrics.observe_analysis(analysis.timings.ms, len(analysis.faces))
        response = analysis_response(request_id_of(self.request), analysis, self.include_landmarks)
        response.profile = self.analyzer.profile  # which models served it (app/profiles.py)
        self.request.state.result = response
        return Response(response.model_dump_json(by_alias=True), media_type="application/json")


async def analysis_request(
    request: Request,
    options: FaceOptions = Depends(face_options),
    landmarks: bool = Query(False, description="include the 468 mesh points of each face"),
    extra: tuple[str, ...] = Depends(opt_in_heads),
    person: str | None = Query(
        None, max_length=64, description="an enrolled person's id (POST /persons): read each face relative to "
        "their neutral face, as with a multipart `reference` photo (not both)"
    ),
    _render: bool = Depends(render_option),
    analyzer: Analyzer = Depends(analyzer_of),
    settings: Settings = Depends(settings_of),
    persons: PersonStore = Depends(person_store),
) -> AnalysisRequest:
    """FastAPI calls this only when every query parameter above is valid (and after the router's API-key
    check), so a bad request is refused before its body is read: the upload is read here, last. An unknown
    ``person`` is refused before the body too."""
    reference = persons.get(scope_of(request), person).reference if person is not None else None
    files = await read_files(request, {"file": 1, "reference": 1})
    try:
        data = await files["file"][0].read(settings.max_upload_bytes + 1)
        reference_data = None
        if files["reference"]:
            if reference is not None:
                raise ApiError(422, "invalid_request", "give either a `reference` photo or ?person=, not both")
            reference_data = await files["reference"][0].read(settings.max_upload_bytes + 1)
    finally:
        await request.close()
    return AnalysisRequest(request, analyzer, data, options, landmarks, extra, reference_data, reference)
