"""API keys and the security headers.

Keys (``MICROFACS_API_KEY``, and ``MICROFACS_API_KEYS`` for several at once, e.g. while rotating): a request
sends one as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; it is compared with every configured
key in constant time (``hmac.compare_digest``). Both schemes are declared in OpenAPI's ``securitySchemes``,
so /docs' "Authorize" button can send the key. The analysis routes check it (``require_api_key``) before
the upload is read, and ``ApiKeyMiddleware`` refuses a wrong or missing key before the rest of the app runs
(cheap to refuse: floods of wrong keys, BENCHMARKS.md "Floods"). /healthz and /readyz are always public
(probes); /metrics is public on the pod port (README: not exposed by the proxy); /docs, /redoc, /openapi.json,
/demo and /version are public unless ``MICROFACS_PUBLIC_DOCS=false`` (then ``ApiKeyMiddleware`` guards them
too): they reveal the API's shape, the limits and the models' versions and hashes, no data.
"""
from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence

import anyio
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, send_error
from app.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key, when the server sets one")
bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")

UNAUTHORIZED = "send a valid API key: `X-API-Key: <key>` or `Authorization: Bearer <key>`"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="microfacs"'}


def configured_keys(settings: Settings) -> list[str]:
    return [key for key in [settings.api_key, *settings.api_keys] if key]


def key_is_valid(given: str | None, keys: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``keys``; every key is compared, each in constant time."""
    if not given:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given.encode(), key.encode())
    return matched


def key_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a raw ASGI request sends (its ``scope["headers"]``), read as the dependencies below read it: a
    non-empty ``X-API-Key`` (the first one), else the token of ``Authorization: Bearer <token>``."""
    api_key = authorization = None
    for name, value in headers:
        if name == b"x-api-key" and api_key is None:
            api_key = value
        elif name == b"authorization" and authorization is None:
            authorization = value
    if api_key:
        return api_key.decode("latin-1")
    scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def require_api_key(
    request: Request,
    x_api_key: str | None = Depends(api_key_header),
    authorization: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> None:
    """401 ``unauthorized`` (with ``WWW-Authenticate``) unless the server has no key or the request sends one."""
    keys = configured_keys(request.app.state.settings)
    given = x_api_key or (authorization.credentials if authorization else None)
    if keys and not key_is_valid(given, keys):
        raise ApiError(401, "unauthorized", UNAUTHORIZED, headers=CHALLENGE)


def presented_key(request: Request) -> str | None:
    """The API key a request sent when the server has keys (``require_api_key`` has checked it), else None:
    what scopes a tenant's enrolled persons (app/persons.py)."""
    if not configured_keys(request.app.state.settings):
        return None
    return key_from_headers((k.lower(), v) for k, v in request.headers.raw)


class ApiKeyMiddleware:
    """Refuses a request without a valid key before anything else in the app runs for it, with the same 401 as
    ``require_api_key`` (the middlewares outside this one add the request id, the security headers and the
    metrics; the route's template is set for the metrics' ``route`` label). Guards the POSTs to the analysis
    ``routes`` (path -> route) and, with ``MICROFACS_PUBLIC_DOCS=false``, every request under ``prefixes`` (the
    docs, the demo and its scripts, /version). Installed only when a key is set, inside CORS (a preflight
    carries no key, and a 401 to a browser needs its CORS headers) and outside the admission, body-limit and
    FastAPI layers: a flood of wrong keys costs a header scan and a constant-time compare per request, holds
    no admission place, and no upload byte is read. With ``failure_delay_s`` (``MICROFACS_AUTH_FAILURE_DELAY_S``)
    the 401 is sent that much later: a client flooding wrong keys over a few keep-alive connections (requests on
    one connection are served one after another) gets a few answers a second per connection. The routes keep
    ``require_api_key`` as well (OpenAPI's security schemes, and a second check)."""

    PROTECTED_PREFIXES = ("/docs", "/redoc", "/openapi.json", "/static", "/demo", "/version")

    def __init__(self, app: ASGIApp, keys: Sequence[str], routes: Mapping[str, object],
                 prefixes: tuple[str, ...] = (), failure_delay_s: float = 0.0) -> None:
        self.app, self.keys, self.routes, self.prefixes = app, list(keys), dict(routes), prefixes
        self.failure_delay_s = failure_delay_s  # MICROFACS_AUTH_FAILURE_DELAY_S: the 401 waits this long

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            route = self.routes.get(path) if scope["method"] == "POST" else None
            if ((route is not None or (self.prefixes and path.startswith(self.prefixes)))
                    and not key_is_valid(key_from_headers(scope["headers"]), self.keys)):
                if route is not None:
                    scope["route"] = route  # the metrics' route label, as when the route answered
                if self.failure_delay_s:  # a timer, no thread: the event loop serves the others meanwhile
                    await anyio.sleep(self.failure_delay_s)
                await send_error(scope, send, ApiError(401, "unauthorized", UNAUTHORIZED, headers=CHALLENGE))
                return
        await self.app(scope, receive, send)


# Content-Security-Policy per kind of page: the API answers JSON or PNG and embeds nothing; the demo runs
# its own script (app/static/demo.js) with inline styles and draws uploads from blob: URLs; /docs and
# /redoc (local assets, fastapi_offline) start from an inline script, and Redoc runs a blob: worker.
CSP_API = "default-src 'none'; frame-ancestors 'none'"
CSP_DEMO = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
CSP_DOCS = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")


class SecurityHeadersMiddleware:
    """On every response: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
    ``X-Frame-Options: DENY``, a Content-Security-Policy for the kind of page, and ``Cache-Control:
    no-store`` on what the API computes (analyses and errors carry people's faces and request ids)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith(("/docs", "/redoc", "/static-offline-docs")):
            csp, static = CSP_DOCS, True
        elif path.startswith(("/demo", "/static")):
            csp, static = CSP_DEMO, True
        else:
            csp, static = CSP_API, False

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY"), (b"content-security-policy", csp.encode())]
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = headers + [(k, v) for k, v in extra if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
