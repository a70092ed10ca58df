"""ASGI middleware: a request id on every request and response, and the body-size and body-time limits."""
from __future__ import annotations

import logging
import random
import re
import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, send_error

logger = logging.getLogger("microfacs")
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


class ClientDisconnected(ApiError):
    """The client went away while sending its body: nothing to answer (the 499 is for the access log)."""

    def __init__(self, received: int) -> None:
        super().__init__(499, "client_closed_request", f"the client disconnected after sending {received} bytes")


class BodyLimitMiddleware:
    """Refuses a body larger than the upload limit (plus room for the multipart envelope) before it is
    parsed: at once when Content-Length says so, else (chunked uploads) as soon as the streamed bytes pass
    the limit (413 ``payload_too_large``). The body must keep coming (408 ``request_timeout``): cut off when it
    stalls ``body_timeout_s`` between two reads, when the whole of it has not arrived ``upload_timeout_s`` after
    its first read, or when, past ``upload_rate_grace_s``, it arrives slower than ``min_upload_rate`` bytes/s on
    average. So a slow client holds an upload place for a bounded time, and never an analysis place: those are
    taken after the body is in (``app.admission``). The parser that was reading closes its temporary files.
    A client that disconnects mid-upload is logged at INFO, without a traceback. (Slow *headers* are the
    proxy's and uvicorn's business: deploy/nginx.conf, ``--timeout-keep-alive``.)"""

    ENVELOPE_BYTES = 64 * 1024

    def __init__(
        self, app: ASGIApp, max_upload_bytes: int, path_limits: dict[str, int] | None = None,
        body_timeout_s: float = 30.0, upload_timeout_s: float = 120.0, min_upload_rate: int = 0,
        upload_rate_grace_s: float = 5.0,
    ) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.upload_timeout_s, self.min_upload_rate = upload_timeout_s, min_upload_rate
        self.grace_s = upload_rate_grace_s
        self.limit = max_upload_bytes + self.ENVELOPE_BYTES
        self.max_upload_bytes = max_upload_bytes
        self.path_limits = path_limits or {}  # e.g. {"/analyze-video": the video upload limit}

    def _too_large(self, max_bytes: int | None = None) -> ApiError:
        limit = self.max_upload_bytes if max_bytes is None else max_bytes
        return ApiError(413, "payload_too_large", f"request body exceeds the upload limit of {limit} bytes")

    def _allowed_until(self, first_read: float, seen: int) -> tuple[float, str]:
        """When the next body message must have come, and why: the whole-upload deadline, or the time by which
        the bytes so far stay above the minimum average rate."""
        deadline = first_read + self.upload_timeout_s
        if self.min_upload_rate > 0:
            by_rate = first_read + self.grace_s + seen / self.min_upload_rate
            if by_rate < deadline:
                return by_rate, "rate"
        return deadline, "deadline"

    def _timed_out(self, why: str, seen: int, elapsed: float) -> ApiError:
        if why == "stall":
            message = f"the request body stalled for {self.body_timeout_s:g} s"
        elif why == "rate":
            message = (f"the upload is too slow: {seen} bytes in {elapsed:.1f} s; the minimum is "
                       f"{self.min_upload_rate} bytes/s after the first {self.grace_s:g} s")
        else:
            message = f"the upload did not complete within {self.upload_timeout_s:g} s"
        return ApiError(408, "request_timeout", message)

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
        seen, complete, first_read = 0, False, 0.0

        async def counting_receive() -> Message:
            nonlocal seen, complete, first_read
            if complete:  # the body is in: what follows is a wait for the disconnect, which may last
                return await receive()
            now = time.monotonic()
            first_read = first_read or now
            until, why = self._allowed_until(first_read, seen)
            if until - now > self.body_timeout_s:
                until, why = now + self.body_timeout_s, "stall"
            with anyio.move_on_after(max(0.0, until - now)) as waited:
                message = await receive()  # returns at once, even at 0 s left, when the server holds body bytes
            if waited.cancelled_caught:
                raise self._timed_out(why, seen, time.monotonic() - first_read)
            if message["type"] == "http.disconnect":
                logger.info("client disconnected during the upload of %s after %d bytes", scope.get("path"), seen)
                raise ClientDisconnected(seen)
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
