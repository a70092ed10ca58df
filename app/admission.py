"""Load shedding, per worker, in two stages.

The upload: at most ``max_uploads`` request bodies are received at once (``AdmissionMiddleware``: beyond,
``503 overloaded`` before the body is read). The body is read under its size and time limits
(``app.middleware.BodyLimitMiddleware``: a stalled or too-slow upload gets 408) while it holds no analysis
place.

The analysis: once its body is in, a request takes a place (``Admission.run``): at most ``max_in_flight``
analyses run at once (in a thread pool of that size, off the event loop) and at most ``max_queue`` more wait
for a slot. A request beyond both is answered at once with ``503 overloaded`` and ``Retry-After``; a request
that waited past its deadline (``request_timeout_s`` from the end of its upload) gets the same error instead of
running. Waiting = admitted and not (yet) holding a slot.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Collection, MutableMapping
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, send_error

T = TypeVar("T")
RETRY_AFTER_S = 1  # seconds: a shed request is cheap, and one analysis takes tens of milliseconds


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int, timeout_s: float, max_uploads: int | None = None,
                 on_shed: Callable[[str], None] = lambda reason: None) -> None:
        self.max_in_flight, self.max_queue, self.timeout_s = max_in_flight, max_queue, timeout_s
        self.max_uploads = max_uploads or 4 * (max_in_flight + max_queue)
        # called with the reason: "full", "deadline" or "uploads" (the metrics count them)
        self.on_shed = on_shed
        self.uploading = 0  # requests receiving their body (no analysis place yet)
        self.admitted = 0  # requests whose body is in: running + waiting
        self.running = 0
        self.busy_threads = 0  # analyses still computing in a thread, even if their request was cancelled
        self._busy_lock = threading.Lock()
        self._slots: anyio.Semaphore | None = None
        self._threads: anyio.CapacityLimiter | None = None

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    # -- the upload stage ------------------------------------------------------------------------------------

    def try_upload(self, state: MutableMapping[str, Any]) -> bool:
        if self.uploading >= self.max_uploads:
            self.on_shed("uploads")
            return False
        self.uploading += 1
        state["uploading"] = True
        return True

    def upload_done(self, state: MutableMapping[str, Any]) -> None:
        """The request leaves the upload count (once, whoever calls first: ``run`` or the middleware)."""
        if state.pop("uploading", False):
            self.uploading -= 1

    # -- the analysis stage ----------------------------------------------------------------------------------

    def try_admit(self) -> bool:
        if self.admitted >= self.max_in_flight + self.max_queue:
            self.on_shed("full")
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1

    def overloaded(self, why: str) -> ApiError:
        return ApiError(503, "overloaded", f"the server is {why}; retry after {RETRY_AFTER_S} s")

    def at_capacity(self) -> ApiError:
        return self.overloaded(f"at capacity ({self.max_in_flight} running, {self.max_queue} waiting)")

    async def run(self, request: Request, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in the analysis pool once a slot is free. Call it once the request's body is read: it
        takes the request's place (503 when running + waiting are full) and holds it until ``fn`` returns;
        503 when no slot frees within ``timeout_s``."""
        self.upload_done(request.scope.setdefault("state", {}))
        if not self.try_admit():
            raise self.at_capacity()
        try:
            return await self._run(fn, *args)
        finally:
            self.release()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._slots is None or self._threads is None:  # made on first use, inside the event loop
            self._slots = anyio.Semaphore(self.max_in_flight)
            self._threads = anyio.CapacityLimiter(self.max_in_flight)
        with anyio.move_on_after(self.timeout_s) as waited:
            await self._slots.acquire()
        if waited.cancelled_caught:
            self.on_shed("deadline")
            raise self.overloaded(f"busy: no analysis slot freed within {self.timeout_s:g} s")
        self.running += 1
        try:
            return await anyio.to_thread.run_sync(self._busy, fn, *args, limiter=self._threads)
        finally:
            self.running -= 1
            self._slots.release()

    def _busy(self, fn: Callable[..., T], *args: object) -> T:
        with self._busy_lock:
            self.busy_threads += 1
        try:
            return fn(*args)
        finally:
            with self._busy_lock:
                self.busy_threads -= 1

    async def drain(self, timeout_s: float) -> bool:
        """Waits (at most ``timeout_s``) for the analyses still computing in threads: at shutdown, once they
        were told to stop (``app.state.stopping``). True when none is left."""
        with anyio.move_on_after(timeout_s):
            while self.busy_threads:
                await anyio.sleep(0.05)
        return not self.busy_threads


class AdmissionMiddleware:
    """Counts the POSTs to ``paths`` while they upload and sheds those beyond ``max_uploads`` before anything is
    read from them; adds ``Retry-After`` to every 503 they get (shed here, at capacity or past the deadline in
    ``Admission.run``, or models still loading)."""

    def __init__(self, app: ASGIApp, admission: Admission, paths: Collection[str]) -> None:
        self.app, self.admission, self.paths = app, admission, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.admission.try_upload(state):
            await self._shed(scope, send)
            return

        async def send_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                message["headers"] = [*message.get("headers", []), (b"retry-after", str(RETRY_AFTER_S).encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_retry_after)
        finally:
            self.admission.upload_done(state)

    async def _shed(self, scope: Scope, send: Send) -> None:
        error = self.admission.overloaded(f"receiving too many uploads ({self.admission.max_uploads} at once)")
        # No "Connection: close": uvicorn discards the unread body and keeps the connection (closing it while
        # the client still sends would reset the connection before the client reads this answer).
        await send_error(scope, send, error, [(b"retry-after", str(RETRY_AFTER_S).encode())])
