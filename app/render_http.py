"""``?render=true`` (or ``Accept: image/png``) on an analysis endpoint: the annotated PNG instead of JSON.

The endpoint runs as usual and produces its JSON; this ASGI middleware holds that answer back and, when it is
a 200, draws the typed result (``request.state.result``, an ``app.schemas.AnalysisResponse``) over the decoded
image (``request.state.image``), both set by ``app.routes.deps.AnalysisRequest``, with ``app.render``: the JSON is
not parsed again. Errors stay JSON whatever was asked for. Every analysis endpoint gets it for free.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import anyio
from fastapi import Query
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.render import render_png

_TRUE = {"1", "true", "yes", "on", "t", "y"}

RENDER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the analysis (JSON), or with `?render=true` / `Accept: image/png` the annotated image",
        "content": {"image/png": {}},
    }
}


async def render_option(
    render: bool = Query(
        False,
        description="return the image as PNG with faces, AU boxes and the expression drawn on it, instead of JSON "
        "(same as sending `Accept: image/png`); errors are still JSON",
    ),
) -> bool:
    """Declares ``render`` for validation and the OpenAPI page; ``RenderMiddleware`` acts on it."""
    return render


def wants_png(scope: Scope) -> bool:
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    if query.get("render", "").lower() in _TRUE:
        return True
    accept = dict(scope["headers"]).get(b"accept", b"").decode("latin-1")
    first = accept.split(",")[0].split(";")[0].strip().lower()
    return first == "image/png"


class RenderMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not wants_png(scope):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        messages: list[Message] = []
        start: Message = {}

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            else:
                messages.append(message)

        await self.app(scope, receive, capture)
        headers = dict(start.get("headers", []))
        image, result = state.get("image"), state.get("result")
        is_json = headers.get(b"content-type", b"").startswith(b"application/json")
        if start.get("status") == 200 and is_json and image is not None and result is not None:
            png = await anyio.to_thread.run_sync(render_png, image, result)
            out = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length")]
            out += [(b"content-type", b"image/png"), (b"content-length", str(len(png)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": out})
            await send({"type": "http.response.body", "body": png})
            return
        if start:
            await send(start)
        for message in messages:
            await send(message)
