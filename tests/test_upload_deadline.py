"""Uploads hold no analysis place (app/admission.py, app/middleware.py): a slow or endless body is cut off with
408 while other clients are served, the number of bodies received at once is bounded, the parser's temporary
files are closed, and a client that disconnects mid-upload is logged on one INFO line, without a traceback."""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
import starlette.formparsers
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.helpers import LiveServer, encode

HEAD = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8")


def slow_upload(port: int, piece: bytes, every_s: float, path: str = "/analyze", limit_s: float = 20.0) -> dict:
    """POSTs a multipart body that never ends, ``piece`` every ``every_s`` seconds, until the server answers;
    returns the status, the JSON body and the seconds it took."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     f"Content-Length: 5000000\r\n\r\n".encode() + HEAD)
        answer = b""
        while time.monotonic() - start < limit_s:
            readable, _, _ = select.select([sock], [], [], every_s)
            if readable:
                chunk = sock.recv(65536)
                answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if not chunk or (length is not None and len(body) >= length):
                    break
                continue
            try:
                sock.sendall(piece)
            except OSError:  # the server closed its side after answering
                every_s = 0.05
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head, f"no answer within {limit_s} s"
    return {"status": int(head.split()[1]), "body": json.loads(body), "seconds": time.monotonic() - start}


class Records(logging.Handler):
    """Every record of the root logger and of uvicorn's (which does not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        for logger in self.loggers:
            logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger in self.loggers:
            logger.removeHandler(self)


@pytest.fixture(scope="module")
def strict_server():
    """One analysis place in all (1 running, 0 waiting); uploads must average 2000 B/s after 1 s and end
    within 3 s."""
    settings = Settings(max_in_flight=1, max_queue=0, min_upload_rate=2000, upload_rate_grace_s=1.0,
                        upload_timeout_s=3.0, body_timeout_s=10.0, max_uploads=8)
    app = create_app(settings)
    with LiveServer(app) as url:
        yield app, url, int(url.rsplit(":", 1)[1])


def test_slow_uploads_get_408_while_another_client_is_served(strict_server, astronaut):
    """The audit's case: slow uploads (here 1 byte every 0.1 s) once held every admission place, so every other
    request got 503. Now they hold upload places only, and are cut off by the minimum rate."""
    app, url, port = strict_server
    jpeg = encode(astronaut)
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(slow_upload, port, b"x", 0.1) for _ in range(3)]
        deadline = time.monotonic() + 5
        while app.state.admission.uploading < 3:  # all uploading: under the old admission one held the only place
            assert time.monotonic() < deadline, app.state.admission.uploading
            time.sleep(0.01)
        served = httpx.post(url + "/analyze", files={"file": ("a.jpg", jpeg)}, timeout=30)
        answers = [future.result() for future in slow]
    assert served.status_code == 200, served.text
    assert len(served.json()["faces"]) == 1
    for answer in answers:
        assert answer["status"] == 408, answer
        assert answer["body"]["error"]["code"] == "request_timeout"
        assert "too slow" in answer["body"]["error"]["message"]
        assert answer["seconds"] < 10  # cut off by the rate (~1 s here), not by the 10 s stall timeout
    admission = app.state.admission
    assert (admission.uploading, admission.admitted, admission.running) == (0, 0, 0)  # everything freed


def test_an_upload_that_keeps_coming_but_never_ends_gets_408_at_the_deadline(strict_server):
    _, url, port = strict_server
    answer = slow_upload(port, b"x" * 1000, 0.1)  # 10 kB/s: above the minimum rate, but endless
    assert answer["status"] == 408, answer
    assert "did not complete within 3 s" in answer["body"]["error"]["message"]
    limits = httpx.get(url + "/version").json()["limits"]
    assert (limits["upload_timeout_s"], limits["min_upload_rate"], limits["upload_rate_grace_s"]) == (3.0, 2000, 1.0)
    assert limits["max_uploads"] == 8


def test_a_client_disconnecting_mid_upload_logs_no_traceback(strict_server):
    """Before, each such disconnect logged two tracebacks at ERROR (the app's last-resort handler's, then
    uvicorn's "Exception in ASGI application"): this harness sees both when the handling is removed."""
    app, url, port = strict_server
    with Records() as log:
        for path in ("/analyze", "/analyze-video"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
                             f"boundary=b\r\nContent-Length: 100000\r\n\r\n".encode() + HEAD + b"x" * 1000)
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        gone: list[logging.LogRecord] = []
        while (len(gone) < 2 or app.state.admission.uploading) and time.monotonic() < deadline:
            time.sleep(0.05)
            gone = [r for r in log.records if "client disconnected during the upload" in r.getMessage()]
        time.sleep(0.2)
    assert len(gone) == 2 and all(r.levelno == logging.INFO for r in gone), [r.getMessage() for r in log.records]
    assert not [r for r in log.records if r.exc_info or r.levelno >= logging.ERROR], [
        (r.levelname, r.getMessage()) for r in log.records]
    assert app.state.admission.uploading == 0


# -- the ASGI app called directly: the upload bound and the parser's temporary files -----------------------


def scope(path: str = "/analyze") -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}


def test_uploads_beyond_max_uploads_are_shed_before_their_body_is_read(analyzer):
    app = create_app(Settings(max_uploads=2, upload_timeout_s=60, min_upload_rate=0))
    app.state.analyzer = analyzer  # no lifespan: the models of the session's app
    answers: list[dict] = []
    reads = {"shed": 0}

    async def call(receive) -> None:
        async def send(message: dict) -> None:
            if receive is not counted:
                return
            if message["type"] == "http.response.start":
                answers.append({"status": message["status"], "headers": dict(message["headers"])})
            elif message["type"] == "http.response.body" and answers:
                answers[-1]["body"] = answers[-1].get("body", b"") + message.get("body", b"")

        await app(scope(), receive, send)

    async def endless() -> dict:
        await anyio.sleep(0.01)
        return {"type": "http.request", "body": HEAD, "more_body": True}

    async def counted() -> dict:
        reads["shed"] += 1
        return {"type": "http.request", "body": HEAD, "more_body": True}

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, endless)
            tasks.start_soon(call, endless)
            await anyio.sleep(0.2)
            assert app.state.admission.uploading == 2
            await call(counted)  # the third: 503 at once, nothing read
            tasks.cancel_scope.cancel()

    anyio.run(main)
    (shed,) = answers
    assert shed["status"] == 503 and reads["shed"] == 0
    assert shed["headers"][b"retry-after"] == b"1"
    error = json.loads(shed["body"])["error"]
    assert error["code"] == "overloaded" and "too many uploads (2 at once)" in error["message"]
    assert app.state.admission.uploading == 0
    metrics = TestClient(app).get("/metrics").text  # no lifespan: /metrics needs none
    assert 'microfacs_shed_requests_total{reason="uploads"} 1.0' in metrics
    assert "microfacs_uploading 0.0" in metrics and "microfacs_max_uploads 2.0" in metrics


def test_a_timed_out_upload_closes_the_parsers_temporary_files(monkeypatch):
    app = create_app(Settings(upload_timeout_s=0.5, min_upload_rate=0, body_timeout_s=5))
    app.state.analyzer = type("Stub", (), {"options": lambda self, *args: None})()  # the body is never analysed
    made: list = []

    class Tracked(starlette.formparsers.SpooledTemporaryFile):  # type: ignore[misc, name-defined]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", Tracked)
    sent: list[dict] = []
    pieces = 0

    async def receive() -> dict:  # ~5 MB/s: past the spool's 1 MiB (then on disk), never ending
        nonlocal pieces
        pieces += 1
        await anyio.sleep(0.01)
        return {"type": "http.request", "body": (HEAD if pieces == 1 else b"") + b"\0" * 50_000, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        with anyio.fail_after(10):
            await app(scope("/detect-faces"), receive, send)

    anyio.run(main)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408, body
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert made and made[0]._rolled and all(file.closed for file in made)  # it was on disk, and is closed


def test_the_key_is_still_checked_before_the_upload_place_is_used():
    app = create_app(Settings(api_key="s3cret", max_uploads=1))
    seen = threading.Event()

    async def receive() -> dict:
        seen.set()
        return {"type": "http.request", "body": HEAD, "more_body": True}

    answers: list[int] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answers.append(message["status"])

    anyio.run(app, scope(), receive, send)
    assert answers == [401] and not seen.is_set()
    assert app.state.admission.uploading == 0  # the place is given back
