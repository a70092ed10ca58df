"""Load shedding, per worker: at most ``max_in_flight`` analyses run at once (in a thread pool of that size,
off the event loop) and at most ``max_queue`` more requests wait for a slot. A request beyond both is
answered at once with ``503 overloaded`` and ``Retry-After``, before its body is read; a request that
waited past the deadline (``request_timeout_s`` from its arrival) gets the same error instead of running.

``AdmissionMiddleware`` counts a request from its arrival to its last response byte; ``Admission.run``
holds a slot only while the CPU-bound work runs. Waiting = admitted and not (yet) holding a slot.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, send_error

T = TypeVar("T")
RETRY_AFTER_S = 1  # seconds: a shed request is cheap, and one analysis takes tens of milliseconds


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int, timeout_s: float,
                 on_shed: Callable[[str], None] = lambda reason: None) -> None:
        self.max_in_flight, self.max_queue, self.timeout_s = max_in_flight, max_queue, timeout_s
        self.on_shed = on_shed  # called with the reason: "full" or "deadline" (the metrics count them)
        self.admitted = 0  # requests inside the middleware: running + waiting
        self.running = 0
        self._slots: anyio.Semaphore | None = None
        self._threads: anyio.CapacityLimiter | None = None

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

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

    async def run(self, request: Request, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in the analysis pool once a slot is free, or 503 when the request's deadline passes."""
        if self._slots is None or self._threads is None:  # made on first use, inside the event loop
            self._slots = anyio.Semaphore(self.max_in_flight)
            self._threads = anyio.CapacityLimiter(self.max_in_flight)
        arrived = getattr(request.state, "arrived", None) or time.monotonic()
        with anyio.move_on_after(arrived + self.timeout_s - time.monotonic()) as waited:
            await self._slots.acquire()
        if waited.cancelled_caught:
            self.on_shed("deadline")
            raise self.overloaded(f"busy: no analysis slot freed within {self.timeout_s:g} s")
        self.running += 1
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)
        finally:
            self.running -= 1
            self._slots.release()


class AdmissionMiddleware:
    """Sheds POSTs to ``paths`` beyond in-flight + queue, before anything is read from the request, and adds
    ``Retry-After`` to every 503 they get (shed here, past the deadline, or models still loading)."""

    def __init__(self, app: ASGIApp, admission: Admission, paths: Collection[str]) -> None:
        self.app, self.admission, self.paths = app, admission, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.admission.try_admit():
            await self._shed(scope, send)
            return
        state["arrived"] = time.monotonic()

        async def send_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                message["headers"] = [*message.get("headers", []), (b"retry-after", str(RETRY_AFTER_S).encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_retry_after)
        finally:
            self.admission.release()

    async def _shed(self, scope: Scope, send: Send) -> None:
        error = self.admission.overloaded(
            f"at capacity ({self.admission.max_in_flight} running, {self.admission.max_queue} waiting)"
        )
        # No "Connection: close": uvicorn discards the unread body and keeps the connection (closing it while
        # the client still sends would reset the connection before the client reads this answer).
        await send_error(scope, send, error, [(b"retry-after", str(RETRY_AFTER_S).encode())])
