"""What floods need (BENCHMARKS.md "Floods"): answers given before the FastAPI layers, for a wrong or missing API
key (``ApiKeyMiddleware``) and for ``GET /healthz`` (``HealthzMiddleware``), with the same bytes and headers as
the routes gave, counted by the metrics under their route, and nothing else in the app run for them; and the
worker count, which splits the default in-flight limit."""
from __future__ import annotations

import time

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.middleware import Middleware

from app.main import create_app
from app.routes.health import HealthzMiddleware
from app.security import UNAUTHORIZED, ApiKeyMiddleware, key_from_headers, require_api_key
from app.settings import Settings, usable_cpus

WRONG = [{}, {"X-API-Key": "nope"}, {"X-API-Key": "old-ke"}, {"Authorization": "Bearer nope"},
         {"Authorization": "Basic b2xkLWtleQ=="}, {"Authorization": "old-key"}, {"X-API-Key": ""}]


def _without(app: FastAPI, *middlewares: type) -> FastAPI:
    """The app as it was before the early answers: their middlewares left out (the stack is built on first use)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls not in middlewares]
    return app


def _spy_innermost(app: FastAPI) -> list[str]:
    """The paths that reach the innermost place of the middleware stack (just before FastAPI's own layers)."""
    seen: list[str] = []

    class Spy:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.inner(scope, receive, send)

    app.user_middleware.append(Middleware(Spy))
    return seen


def _keyed(**settings) -> FastAPI:
    return create_app(Settings(api_key="old-key", api_keys=["new-key"], **settings))


def _same_answer(early, late) -> None:
    assert early.status_code == late.status_code
    assert early.content == late.content
    assert sorted(early.headers.multi_items()) == sorted(late.headers.multi_items())


@pytest.mark.parametrize("path", ["/analyze", "/detect-faces", "/analyze-video"])
def test_a_wrong_key_gets_the_same_401_as_from_the_route(path):
    # No lifespan (no models): the key is checked before anything needs them, on both paths.
    early, late = TestClient(_keyed()), TestClient(_without(_keyed(), ApiKeyMiddleware))
    for headers in WRONG:
        headers = {**headers, "X-Request-ID": "req-1"}
        a = early.post(path, files={"file": ("a.jpg", b"\xff\xd8")}, headers=headers)
        b = late.post(path, files={"file": ("a.jpg", b"\xff\xd8")}, headers=headers)
        _same_answer(a, b)
        assert a.status_code == 401, headers
        assert a.json() == {"error": {"code": "unauthorized", "message": UNAUTHORIZED}, "request_id": "req-1"}
        assert a.headers["x-request-id"] == "req-1"
        assert a.headers["www-authenticate"] == 'Bearer realm="microfacs"'
        assert a.headers["cache-control"] == "no-store" and a.headers["x-content-type-options"] == "nosniff"
    made = early.post(path, headers={"X-API-Key": "nope"})  # no X-Request-ID: one is made and echoed
    assert made.json()["request_id"] == made.headers["x-request-id"] and len(made.headers["x-request-id"]) == 32


def test_the_early_401_runs_nothing_behind_it():
    """Neither the route's key check nor the admission sees a wrong key; a right key reaches both (so the
    check below could fail)."""
    app = _keyed(max_in_flight=1, max_queue=0)
    checked, admitted = [], []
    app.dependency_overrides[require_api_key] = lambda: checked.append(1)
    admission = app.state.admission
    real_upload = admission.try_upload  # the admission's first step: an upload place, before the body is read
    admission.try_upload = lambda state: admitted.append(1) or real_upload(state)
    seen = _spy_innermost(app)
    client = TestClient(app)  # no lifespan: a request that gets through answers 503 not_ready
    for headers in WRONG:
        assert client.post("/analyze", headers=headers).status_code == 401, headers
    assert checked == [] and admitted == [] and seen == []
    through = client.post("/analyze?max_faces=2", files={"file": ("a.jpg", b"\xff\xd8")},
                          headers={"Authorization": "Bearer new-key"})
    assert through.status_code == 503 and through.json()["error"]["code"] == "not_ready"
    assert checked == [1] and admitted == [1] and seen == ["/analyze"]


def test_the_early_401_is_counted_under_its_route():
    client = TestClient(_keyed())
    for _ in range(3):
        client.post("/analyze", headers={"X-API-Key": "nope"})
    client.post("/no-such-page", headers={"X-API-Key": "nope"})
    metrics = client.get("/metrics").text
    assert 'microfacs_requests_total{method="POST",route="/analyze",status="401"} 3.0' in metrics
    assert 'microfacs_requests_total{method="POST",route="unmatched",status="404"} 1.0' in metrics


def test_only_posts_to_the_analysis_routes_are_guarded():
    client = TestClient(_keyed())
    assert client.get("/analyze").status_code == 405  # as before: routing answers a wrong method first
    for path in ("/healthz", "/version", "/openapi.json", "/no-such-page"):
        assert client.get(path, headers={"X-API-Key": "nope"}).status_code != 401, path


def test_cors_preflight_passes_and_the_401_carries_cors_headers():
    client = TestClient(_keyed(cors_origins=["https://app.example"]))
    preflight = client.options("/analyze", headers={"Origin": "https://app.example",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "x-api-key"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://app.example"
    refused = client.post("/analyze", headers={"Origin": "https://app.example", "X-API-Key": "nope"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"


def test_locked_docs_get_the_early_401_too():
    client = TestClient(_keyed(public_docs=False))
    for path in ("/docs", "/version", "/openapi.json", "/demo"):
        refused = client.get(path, headers={"X-Request-ID": "r"})
        assert refused.status_code == 401 and refused.json()["request_id"] == "r", path
        assert client.get(path, headers={"X-API-Key": "new-key"}).status_code == 200, path
    assert client.get("/healthz").status_code == 200


def test_the_key_is_read_as_the_routes_read_it():
    h = lambda **kw: [(k.replace("_", "-").encode(), v.encode()) for k, v in kw.items()]
    assert key_from_headers(h(x_api_key="k")) == "k"
    assert key_from_headers(h(authorization="Bearer k")) == "k"
    assert key_from_headers(h(authorization="bearer   k ")) == "k"
    assert key_from_headers(h(x_api_key="", authorization="Bearer k")) == "k"  # an empty X-API-Key is no key
    assert key_from_headers(h(x_api_key="a", authorization="Bearer b")) == "a"
    assert key_from_headers([(b"x-api-key", b"first"), (b"x-api-key", b"second")]) == "first"  # Starlette's
    assert key_from_headers(h(authorization="Basic k")) is None and key_from_headers(h(authorization="k")) is None
    assert key_from_headers([]) is None


def test_healthz_answers_the_routes_bytes_early():
    early, late = TestClient(create_app(Settings())), TestClient(_without(create_app(Settings()), HealthzMiddleware))
    for method in ("GET", "HEAD", "POST"):
        _same_answer(early.request(method, "/healthz", headers={"X-Request-ID": "h"}),
                     late.request(method, "/healthz", headers={"X-Request-ID": "h"}))
    answer = early.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    assert answer.headers["x-content-type-options"] == "nosniff" and len(answer.headers["x-request-id"]) == 32
    assert 'microfacs_requests_total{method="GET",route="/healthz",status="200"} 2.0' in early.get("/metrics").text


def test_healthz_answers_without_fastapi():
    """The fast path is taken: an innermost middleware (the last one before FastAPI's routing) never sees it."""
    app = create_app(Settings())
    seen = _spy_innermost(app)
    client = TestClient(app)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503  # no lifespan here: loading
    assert seen == ["/readyz"]


def test_a_refused_key_waits_the_failure_delay_and_holds_up_no_one():
    """MICROFACS_AUTH_FAILURE_DELAY_S: the 401 comes after the delay, while requests that came later (a probe, a
    right key) are answered meanwhile; the answer is the same 401."""
    delay = 2.0  # wide: the order below must not depend on the machine's speed
    app = _keyed(auth_failure_delay_s=delay)

    async def main() -> tuple[list[tuple[str, int]], float]:
        finished: list[tuple[str, int]] = []
        transport = httpx.ASGITransport(app=app)  # no lifespan: a right key gets 503 not_ready

        async def call(name: str, method: str, path: str, headers: dict[str, str]) -> None:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                response = await http.request(method, path, headers=headers)
            finished.append((name, response.status_code))
            if name == "wrong":
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith("Bearer")

        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(call, "wrong", "POST", "/analyze", {"X-API-Key": "nope"})
            await anyio.sleep(0.1)
            group.start_soon(call, "probe", "GET", "/healthz", {})
            group.start_soon(call, "right", "POST", "/analyze", {"X-API-Key": "old-key"})
        return finished, time.perf_counter() - start

    finished, elapsed = anyio.run(main)
    assert sorted(finished[:2]) == [("probe", 200), ("right", 503)] and finished[2] == ("wrong", 401), finished
    assert elapsed >= delay


def test_workers_split_the_default_in_flight_limit(monkeypatch):
    monkeypatch.setattr("app.settings.usable_cpus", lambda: 8)
    assert Settings().max_in_flight == 8 and Settings(workers=1).queue_limit == 8
    assert Settings(workers=2).max_in_flight == 4 and Settings(workers=3).max_in_flight == 2
    assert Settings(workers=16).max_in_flight == 1  # at least one
    assert Settings(workers=4, max_in_flight=5).max_in_flight == 5  # a limit that is set stays
    monkeypatch.setenv("MICROFACS_WORKERS", "2")
    assert Settings().max_in_flight == 4 and Settings().queue_limit == 4
    monkeypatch.setenv("MICROFACS_MAX_IN_FLIGHT", "3")
    assert Settings().max_in_flight == 3
    assert usable_cpus() >= 1
