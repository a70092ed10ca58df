"""ASGI middleware: a request id on every request and response, and the body-size and body-time limits."""
from __future__ import annotations

import random
import re

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, send_error

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Uses the caller's X-Request-ID when it is a plain token, else makes one; echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # 32 hex digits, as uuid4().hex, without its system call per request (a correlation id, not a secret;
        # random reseeds itself in a forked worker)
        request_id = given if given and _SAFE_ID.match(given) else f"{random.getrandbits(128):032x}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = headers + [(b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuses a body larger than the upload limit (plus room for the multipart envelope) before it is
    parsed: at once when Content-Length says so, else (chunked uploads) as soon as the streamed bytes pass
    the limit (413 ``payload_too_large``). A body that stalls ``body_timeout_s`` between two reads is cut off
    (408 ``request_timeout``): a slow client cannot hold a worker's upload slot for ever. (Slow *headers*
    are the proxy's and uvicorn's business: deploy/nginx.conf, ``--timeout-keep-alive``.)"""

    ENVELOPE_BYTES = 64 * 1024

    def __init__(
        self, app: ASGIApp, max_upload_bytes: int, path_limits: dict[str, int] | None = None,
        body_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.limit = max_upload_bytes + self.ENVELOPE_BYTES
        self.max_upload_bytes = max_upload_bytes
        self.path_limits = path_limits or {}  # e.g. {"/analyze-video": the video upload limit}

    def _too_large(self, max_bytes: int | None = None) -> ApiError:
        limit = self.max_upload_bytes if max_bytes is None else max_bytes
        return ApiError(413, "payload_too_large", f"request body exceeds the upload limit of {limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_upload_bytes)
        limit = max_bytes + self.ENVELOPE_BYTES
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._reject(scope, send, max_bytes)
            return
        seen, complete = 0, False

        async def counting_receive() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in: what follows is a wait for the disconnect, which may last
                return await receive()
            try:
                with anyio.fail_after(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408, "request_timeout", f"the request body stalled for {self.body_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limit:
                    raise self._too_large(max_bytes)
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, scope: Scope, send: Send, max_bytes: int | None = None) -> None:
        request_id = scope.get("state", {}).get("request_id", "")
        await send_error(scope, send, self._too_large(max_bytes),
                         [(b"x-request-id", request_id.encode()), (b"connection", b"close")])
