"""The Python client SDK (clients/python, package microfacs_client) against a live server and small fakes."""
from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import httpx
import numpy as np
import pytest
from microfacs_client import AsyncClient, Client, MicroFACSError, RetryPolicy, encode_png

from tests.helpers import SAMPLES, encode, requires_data


@pytest.fixture(scope="module")
def sdk(live_url):
    with Client(live_url, timeout=60) as client:
        yield client


def test_server_offers_every_sdk_call(sdk):
    assert {"detect_faces", "detect_au", "recognize_expression", "analyze"} <= set(sdk.endpoints())


def test_client_module_imports_no_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys, microfacs_client; heavy = {'numpy', 'cv2', 'onnxruntime', 'app'} & set(sys.modules); "
            "print(sorted(heavy)); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_detect_faces_from_path_bytes_and_arrays(sdk, astronaut, tmp_path):
    path = tmp_path / "astronaut.jpg"
    path.write_bytes(encode(astronaut))
    by_path = sdk.detect_faces(path)
    assert by_path.image.width == 512 and len(by_path.faces) == 1
    face = by_path.faces[0]
    assert face.box.width > 50 and not face.filtered and face.pose is not None
    assert by_path.request_id
    by_bytes = sdk.detect_faces(path.read_bytes(), landmarks=True, max_faces=1)
    assert len(by_bytes.faces[0].landmarks) == 468
    by_array = sdk.detect_faces(astronaut)  # BGR, OpenCV order: the default
    rgb = Client(sdk.base_url, channel_order="rgb")
    by_rgb_array = rgb.detect_faces(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB))
    rgb.close()
    for other in (by_array, by_rgb_array):
        assert len(other.faces) == 1
        assert abs(other.faces[0].box.x - face.box.x) < 6 and abs(other.faces[0].box.width - face.box.width) < 8


def test_options_and_typed_errors(sdk, cameraman):
    side = sdk.detect_faces(cameraman)
    unfiltered = sdk.detect_faces(cameraman, side_face_filter=False)
    assert side.faces and "side_face" in side.faces[0].filter_reasons and side.faces[0].filtered
    assert "side_face" not in unfiltered.faces[0].filter_reasons
    with pytest.raises(MicroFACSError) as caught:
        sdk.detect_faces(b"this is not an image")
    error = caught.value
    assert error.status == 415 and error.code == "unsupported_media_type" and error.request_id
    with pytest.raises(MicroFACSError) as caught:
        sdk.detect_faces(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    assert caught.value.status == 400 and caught.value.code == "invalid_image"
    with pytest.raises(MicroFACSError) as caught:
        sdk.detect_faces("/no/such/file.jpg")
    assert caught.value.status == 0 and caught.value.code == "invalid_input"
    assert sdk.health() and sdk.ready().status == "ready" and sdk.version().service == "microfacs"


def test_detect_au(sdk, astronaut):
    result = sdk.detect_au(astronaut)
    face = result.faces[0]
    assert face.action_units, "an unfiltered face carries its action units"
    assert all(0.0 <= au.probability <= 1.0 and au.au.startswith("AU") for au in face.action_units)
    assert all(au.box is None or au.box.width > 0 for au in face.action_units)


def test_recognize_expression(sdk, astronaut):
    face = sdk.recognize_expression(astronaut).faces[0]
    assert face.expression is not None
    assert len(face.expression.scores) == 8 and abs(sum(face.expression.scores.values()) - 1) < 1e-2
    assert face.expression.label in face.expression.scores


def test_analyze(sdk, astronaut):
    face = sdk.analyze(astronaut).faces[0]
    assert face.action_units is not None and face.expression is not None


def test_server_render_png(sdk, astronaut):
    png = sdk.render(astronaut)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == astronaut.shape
    lime = (drawn[:, :, 1] > 240) & (drawn[:, :, 0] < 30) & (drawn[:, :, 2] < 30)
    face = sdk.detect_faces(astronaut).faces[0].box
    ys, xs = np.nonzero(lime)
    assert len(xs) > 200, "the face box is drawn in lime"
    assert face.x - 5 <= np.median(xs) <= face.x + face.width + 5


def test_batch_reports_each_image(sdk, astronaut, cameraman):
    requires_data(SAMPLES / "multi_face.jpg")
    images = [astronaut, SAMPLES / "multi_face.jpg", b"\x89PNG\r\n\x1a\n broken", encode(cameraman), "/missing.png"]
    items = sdk.batch(images, concurrency=3)
    assert [item.index for item in items] == list(range(5))
    assert [item.ok for item in items] == [True, True, False, True, False]
    assert items[2].error.status == 400 and items[2].error.code == "invalid_image"
    assert items[4].error.code == "invalid_input"
    assert len(items[1].result.faces) >= 3 and items[0].source.startswith("array")


def test_async_client_and_batch(live_url, astronaut):
    async def run():
        async with AsyncClient(live_url) as client:
            one = await client.detect_faces(astronaut, max_faces=1)
            items = await client.batch([astronaut, b"garbage", encode(astronaut)], concurrency=2)
            return one, items

    one, items = asyncio.run(run())
    assert len(one.faces) == 1
    assert [i.ok for i in items] == [True, False, True] and items[1].error.code == "unsupported_media_type"


class FlakyServer:
    """A tiny HTTP server: the first ``failures`` POSTs get ``status`` (with Retry-After), then 200."""

    def __init__(self, failures: int, status: int = 503, retry_after: str | None = "1") -> None:
        self.failures, self.status, self.retry_after = failures, status, retry_after
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests.append(dict(self.headers))
                if len(outer.requests) <= outer.failures:
                    body = json.dumps({"error": {"code": "busy", "message": "try later"}, "request_id": "r1"})
                    self.send_response(outer.status)
                    if outer.retry_after is not None:
                        self.send_header("Retry-After", outer.retry_after)
                else:
                    body = json.dumps({"request_id": "r2", "image": {"width": 4, "height": 3}, "faces": [],
                                       "timings_ms": {"decode": 0.1}, "something_new": 1})
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FlakyServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class Sleeps:
    """An injected sleep: records each wait instead of waiting (no wall time in these tests)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_retry_honours_retry_after_on_503():
    sleeps = Sleeps()
    policy = RetryPolicy(max_retries=3, backoff=0.01, sleep=sleeps)
    with FlakyServer(failures=1, status=503, retry_after="1") as server, \
            Client(server.url, api_key="s3cret", retry=policy) as client:
        result = client.detect_faces(b"\x89PNG fake")
    assert result.request_id == "r2" and result.faces == [] and result.model_extra["something_new"] == 1
    assert sleeps.waits == [1.0], "waited Retry-After: 1 second, not the 0.01 s backoff"
    h0, h1 = server.requests
    assert h0.get("X-API-Key") == "s3cret" == h1.get("X-API-Key")


def test_retry_after_as_an_http_date_uses_the_injected_clock():
    import email.utils

    now = 1_700_000_000.0
    policy = RetryPolicy(clock=lambda: now)
    later = email.utils.formatdate(now + 7, usegmt=True)
    response = httpx.Response(503, headers={"Retry-After": later})
    assert policy.delay(0, response) == pytest.approx(7.0)
    capped = httpx.Response(503, headers={"Retry-After": email.utils.formatdate(now + 3600, usegmt=True)})
    assert policy.delay(0, capped) == policy.max_retry_after


def test_retry_backoff_on_429_then_gives_up():
    sleeps = Sleeps()
    policy = RetryPolicy(max_retries=2, backoff=0.05, max_backoff=0.2, sleep=sleeps)
    with FlakyServer(failures=10, status=429, retry_after=None) as server, Client(server.url, retry=policy) as client, \
            pytest.raises(MicroFACSError) as caught:
        client.detect_faces(b"x")
    assert len(server.requests) == 3  # the first try + 2 retries
    assert caught.value.status == 429 and caught.value.code == "busy" and caught.value.request_id == "r1"
    first, second = sleeps.waits
    assert 0.05 <= first <= 0.055 and 0.1 <= second <= 0.11, f"exponential backoff with <= 10 % jitter: {sleeps.waits}"


def test_backoff_is_capped():
    policy = RetryPolicy(backoff=1.0, max_backoff=3.0)
    assert 3.0 <= policy.delay(10, None) <= 3.3


def test_async_retry_on_503():
    sleeps = Sleeps()

    async def run(url):
        async with AsyncClient(url, retry=RetryPolicy(backoff=0.01, async_sleep=sleeps.async_sleep)) as client:
            return await client.detect_faces(b"x")

    with FlakyServer(failures=2, status=503, retry_after="0") as server:
        assert asyncio.run(run(server.url)).request_id == "r2"
        assert len(server.requests) == 3
    assert sleeps.waits == [0.0, 0.0]


def test_connection_error_is_retried_then_typed():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    sleeps = Sleeps()
    with Client(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_retries=2, sleep=sleeps), timeout=2) as client, \
            pytest.raises(MicroFACSError) as caught:
        client.detect_faces(b"x")
    assert caught.value.status == 0 and caught.value.code == "connection_error"
    assert len(sleeps.waits) == 2, "two backoff waits between the three tries"


def test_png_encoder_round_trips():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    for array, order, expected in [
        (colour, "bgr", colour),
        (colour, "rgb", colour[:, :, ::-1]),
        (colour[:, :, 0], "bgr", colour[:, :, 0]),
        (np.dstack([colour, colour[:, :, :1]]), "bgr", np.dstack([colour, colour[:, :, :1]])),
        (colour.astype(np.uint16) * 257, "bgr", colour.astype(np.uint16) * 257),
    ]:
        decoded = cv2.imdecode(np.frombuffer(encode_png(array, order), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == expected.dtype and np.array_equal(decoded, expected)
    with pytest.raises(MicroFACSError):
        encode_png(colour.astype(np.float32))
