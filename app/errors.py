"""One JSON error shape for every failure: {"error": {"code", "message"}, "request_id"}."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Scope, Send

logger = logging.getLogger("microfacs")


class ApiError(Exception):
    """An error the client can act on (or a 5xx we chose to report)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}  # e.g. WWW-Authenticate on a 401


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def error_response(
    request: Request, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}, "request_id": request_id_of(request)}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Request-ID": request_id_of(request)})


async def send_error(
    scope: Scope, send: Send, error: ApiError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """The same JSON error, sent by an ASGI middleware that answers before the app runs (no Request there)."""
    request_id = scope.get("state", {}).get("request_id", "")
    body = json.dumps({"error": {"code": error.code, "message": error.message}, "request_id": request_id},
                      ensure_ascii=False, separators=(",", ":")).encode()  # JSONResponse's bytes
    start = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    start += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"), *headers]
    await send({"type": "http.response.start", "status": error.status, "headers": start})
    await send({"type": "http.response.body", "body": body})


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid"))
        missing_file = any(tuple(e.get("loc", ())) == ("body", "file") for e in exc.errors())
        code = "missing_file" if missing_file else "invalid_request"
        message = "upload the image as multipart form field 'file'" if missing_file else "; ".join(problems)
        return error_response(request, 422, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail), exc.headers)  # 405: Allow

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Usually met first as app.middleware.ClientDisconnected (an ApiError); nobody reads this answer.
        logger.info("client disconnected during request %s", request_id_of(request))
        return error_response(request, 499, "client_closed_request", "the client disconnected")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in request %s", request_id_of(request))
        return error_response(request, 500, "internal_error", "the server failed to process the request")
