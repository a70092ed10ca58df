"""Keys (X-API-Key and Bearer, constant-time, several at once), which pages stay public, the OpenAPI security
schemes, security headers, 405's Allow, and the body limits: chunked uploads past the limit, stalled bodies."""
from __future__ import annotations

from types import SimpleNamespace

import anyio
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.helpers import encode

PUBLIC_ALWAYS = ["/healthz", "/readyz", "/metrics"]
DOC_PAGES = ["/docs", "/redoc", "/openapi.json", "/demo", "/static/demo.js", "/version"]


@pytest.fixture(scope="module")
def keyed() -> TestClient:
    """Two keys (one being rotated in), docs public (the default)."""
    with TestClient(create_app(Settings(api_key="old-key", api_keys=["new-key"]))) as client:
        yield client


@pytest.fixture(scope="module")
def locked() -> TestClient:
    """A key and MICROFACS_PUBLIC_DOCS=false."""
    with TestClient(create_app(Settings(api_key="s3cret", public_docs=False))) as client:
        yield client


def _post(client, jpeg: bytes, headers: dict[str, str] | None = None):
    return client.post("/detect-faces", files={"file": ("a.jpg", jpeg)}, headers=headers or {})


def test_x_api_key_and_bearer_both_work_with_every_configured_key(keyed, astronaut):
    jpeg = encode(astronaut)
    for headers in ({"X-API-Key": "old-key"}, {"X-API-Key": "new-key"}, {"Authorization": "Bearer old-key"},
                    {"Authorization": "bearer new-key"}):
        assert _post(keyed, jpeg, headers).status_code == 200, headers
    for headers in ({}, {"X-API-Key": "old-ke"}, {"X-API-Key": "old-key-and-more"}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic b2xkLWtleQ=="}, {"Authorization": "old-key"}):
        response = _post(keyed, jpeg, headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_keys_are_compared_in_constant_time(monkeypatch):
    import app.security as security

    calls = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert security.key_is_valid("b", ["a", "b", "c"]) and not security.key_is_valid("x", ["a", "b"])
    assert len(calls) == 5  # every key compared every time: no early exit that would time the match


def test_openapi_declares_both_schemes_on_the_analysis_routes(keyed):
    spec = keyed.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
        s for s in schemes.values() if s["type"] == "apiKey").items()
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    for path in ("/analyze", "/detect-faces", "/detect-au", "/recognize-expression", "/analyze-video"):
        required = {name for option in spec["paths"][path]["post"]["security"] for name in option}
        assert required == set(schemes), path
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_docs_demo_and_version_are_public_by_default_or_locked_by_choice(keyed, locked):
    for path in PUBLIC_ALWAYS + DOC_PAGES:
        assert keyed.get(path).status_code == 200, path
    for path in PUBLIC_ALWAYS:
        assert locked.get(path).status_code == 200, path
    for path in DOC_PAGES:
        refused = locked.get(path)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized", path
        assert locked.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path


def test_security_headers_on_every_kind_of_answer(client):
    answers = {
        "json": client.get("/version"),
        "error": client.get("/no-such-page"),
        "shed-free 413": client.post("/analyze", content=b"x" * 100, headers={"content-length": str(10**9)}),
        "demo": client.get("/demo"),
        "docs": client.get("/docs"),
    }
    for name, response in answers.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "no-referrer", name
        assert response.headers["x-frame-options"] == "DENY", name
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], name
    assert answers["json"].headers["content-security-policy"].startswith("default-src 'none'")
    assert answers["json"].headers["cache-control"] == "no-store"
    assert answers["error"].headers["cache-control"] == "no-store"
    assert "script-src 'self';" in answers["demo"].headers["content-security-policy"]  # no inline script, no eval


def test_405_keeps_the_allow_header(client):
    response = client.get("/analyze")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path, limit", [("/analyze", 100_000), ("/analyze-video", 200_000)])
def test_an_oversized_chunked_upload_is_413(path, limit):
    app = create_app(Settings(max_upload_bytes=limit, max_video_upload_bytes=limit))

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        for _ in range(60):
            yield b"\x00" * 10_000
        yield b"\r\n--b--\r\n"

    with TestClient(app) as client:
        response = client.post(path, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_stalled_body_is_cut_off_with_408():
    app = create_app(Settings(body_timeout_s=0.2))
    # the options are made, then the upload is read (and stalls): the analysis itself never starts
    app.state.analyzer = SimpleNamespace(options=lambda *args: None)
    sent: list[dict] = []

    async def call() -> None:
        first = True

        async def receive() -> dict:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b'--b\r\nContent-Disposition: form-data; name="file"; '
                        b'filename="a.jpg"\r\n\r\n\xff\xd8', "more_body": True}
            await anyio.sleep(60)  # the client stops sending
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "path": "/detect-faces", "raw_path": b"/detect-faces", "query_string": b"", "root_path": "",
                 "scheme": "http", "server": ("test", 80), "client": ("test", 1),
                 "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"transfer-encoding", b"chunked")]}
        with anyio.fail_after(5):
            await app(scope, receive, send)

    anyio.run(call)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408, body
    assert b'"request_timeout"' in body
