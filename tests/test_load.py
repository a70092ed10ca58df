"""Load shedding (app/admission.py) and the request path: a request is refused before its body is read."""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.helpers import SAMPLES, LiveServer, encode, requires_data


def _assert_overloaded(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"} and body["error"]["code"] == "overloaded"
    assert body["request_id"] == response.headers["x-request-id"]
    assert int(response.headers["retry-after"]) >= 1


async def _post_many(url: str, path: str, data: bytes, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        return await asyncio.gather(*(http.post(path, files={"file": ("g.jpg", data)}) for _ in range(count)))


def test_48_concurrent_group_photos_are_answered_or_shed():
    """The issue's check: MAX_IN_FLIGHT=2, MAX_QUEUE=4, 48 at once: every request answered, some shed with
    the JSON error, the rest 200 with faces."""
    data = requires_data(SAMPLES / "multi_face.jpg").read_bytes()
    with LiveServer(create_app(Settings(max_in_flight=2, max_queue=4))) as url:
        responses = asyncio.run(_post_many(url, "/detect-faces", data, 48))
        metrics = httpx.get(url + "/metrics").text
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses[200] >= 6 and statuses[503] >= 1, statuses
    for response in responses:
        if response.status_code == 503:
            _assert_overloaded(response)
        else:
            assert len(response.json()["faces"]) >= 2
    shed = {reason: float(next(line for line in metrics.splitlines()
                               if line.startswith(f'microfacs_shed_requests_total{{reason="{reason}"}}')).split()[-1])
            for reason in ("full", "deadline", "uploads")}
    # beyond 4 x (2 + 4) = 24 bodies at once, the upload bound sheds first; then running + waiting are full
    assert sum(shed.values()) == statuses[503], shed


@pytest.fixture()
def gated_app():
    """An app whose analyses wait for ``gate`` (so requests pile up deterministically): in flight 1, queue 1,
    deadline 0.5 s."""
    app = create_app(Settings(max_in_flight=1, max_queue=1, request_timeout_s=0.5))
    gate, started = threading.Event(), threading.Event()
    with TestClient(app) as client:
        analyzer = app.state.analyzer
        original = analyzer.run

        def gated_run(*args, **kwargs):
            started.set()
            assert gate.wait(20)
            return original(*args, **kwargs)

        analyzer.run = gated_run
        yield client, gate, started
        gate.set()


def test_queue_full_is_shed_at_once_and_waiting_past_the_deadline_is_shed(gated_app, astronaut):
    client, gate, started = gated_app
    jpeg = encode(astronaut)
    post = lambda: client.post("/detect-faces", files={"file": ("a.jpg", jpeg)})
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post)
        assert started.wait(10)  # holds the only slot
        waiting = pool.submit(post)  # admitted, waits for the slot
        time.sleep(0.1)
        shed_at = time.perf_counter()
        full = post()  # in flight 1 + queue 1 taken: refused at once
        assert time.perf_counter() - shed_at < 0.3
        _assert_overloaded(full)
        assert "capacity" in full.json()["error"]["message"]
        _assert_overloaded(waiting.result(10))  # its deadline (0.5 s) passed before the slot freed
        assert "within 0.5 s" in waiting.result().json()["error"]["message"]
        gate.set()
        assert running.result(10).status_code == 200
    assert client.post("/detect-faces", files={"file": ("a.jpg", jpeg)}).status_code == 200
    assert client.get("/healthz").status_code == 200  # never shed
    metrics = client.get("/metrics").text
    assert 'microfacs_shed_requests_total{reason="full"} 1.0' in metrics
    assert 'microfacs_shed_requests_total{reason="deadline"} 1.0' in metrics
    assert "microfacs_in_flight 0.0" in metrics and "microfacs_queued 0.0" in metrics


# -- the request path: nothing is read from the body until the parameters and the key are valid ------------


async def _call(app, path: str, query: str = "", headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, int, dict]:
    """Calls the ASGI app directly. The body is ``body`` (multipart), or else a file part that never ends.
    Returns (status, bytes the app read, response headers)."""
    boundary = "b0undary"
    read = 0
    chunk = b"x" * 65536

    async def receive():
        nonlocal read
        if body is not None:
            read += len(body)
            return {"type": "http.request", "body": body, "more_body": False}
        piece = chunk if read else _multipart(b"")[: -len(b"\r\n--b0undary--\r\n")]  # a part that never ends
        read += len(piece)
        if read > 1 << 30:
            raise AssertionError("read a GiB of the body")
        return {"type": "http.request", "body": piece, "more_body": True}

    answer: dict = {}

    async def send(message):
        if message["type"] == "http.response.start":
            answer.update(status=message["status"], headers=dict(message["headers"]))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                    *[(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]],
    }
    await app(scope, receive, send)
    return answer["status"], read, answer["headers"]


def _multipart(data: bytes) -> bytes:
    return (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--b0undary--\r\n")


@pytest.mark.parametrize("query", ["max_faces=abc", "max_faces=0", "landmarks=maybe", "render=maybe", "prior=x"])
def test_bad_query_is_refused_before_the_body_is_read(client, query):
    start = time.perf_counter()
    status, read, _ = anyio.run(_call, client.app, "/analyze", query)
    assert status == 422 and read == 0
    assert time.perf_counter() - start < 1.0


def test_the_harness_sees_a_body_being_read(client, astronaut):
    """The check above could fail: a good request does read its body (and an endless one is cut at 413)."""
    jpeg = encode(astronaut)
    status, read, _ = anyio.run(_call, client.app, "/detect-faces", "", None, _multipart(jpeg))
    assert status == 200 and read > len(jpeg)
    status, read, _ = anyio.run(_call, client.app, "/detect-faces", "max_faces=2")
    assert status == 413 and read > Settings().max_upload_bytes  # payload_too_large (app/middleware.py)


def test_wrong_key_is_refused_before_the_body_is_read(astronaut):
    app = create_app(Settings(api_key="s3cret"))  # the key check needs no models: no lifespan here
    for path in ("/analyze", "/analyze-video"):
        status, read, _ = anyio.run(_call, app, path, "", {"X-API-Key": "wrong"})
        assert status == 401 and read == 0
        status, read, _ = anyio.run(_call, app, path)
        assert status == 401 and read == 0


def test_bad_video_query_is_refused_before_the_body_is_read(client):
    status, read, _ = anyio.run(_call, client.app, "/analyze-video", "every=0")
    assert status == 422 and read == 0


def test_openapi_still_declares_the_upload(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/analyze", "/detect-faces", "/detect-au", "/recognize-expression", "/analyze-video"):
        post = paths[path]["post"]
        schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert schema["required"] == ["file"] and "file" in schema["properties"]
        assert "503" in post["responses"]
        assert {"max_faces"} <= {p["name"] for p in post["parameters"]}
