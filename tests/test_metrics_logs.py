"""GET /metrics (Prometheus text, scraped and parsed here) and MICROFACS_LOG_FORMAT=json (lines parsed here)."""
from __future__ import annotations

import io
import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.logs import _MicrofacsHandler, configure_logging
from app.main import create_app
from app.settings import Settings
from tests.helpers import encode, post_image


def scrape(client: TestClient) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_requests_stages_and_faces(astronaut):
    with TestClient(create_app(Settings())) as client:  # its own registry: counts start at zero
        before = scrape(client)
        assert value(before, "microfacs_requests_total", route="/analyze") == 0
        for _ in range(2):
            assert post_image(client, "/analyze", encode(astronaut)).status_code == 200
        assert post_image(client, "/analyze", b"not an image").status_code == 415
        assert client.get("/no/such/path/123").status_code == 404
        samples = scrape(client)
    assert value(samples, "microfacs_requests_total", method="POST", route="/analyze", status="200") == 2
    assert value(samples, "microfacs_requests_total", route="/analyze", status="415") == 1
    assert value(samples, "microfacs_requests_total", route="unmatched", status="404") == 1  # not the raw path
    assert value(samples, "microfacs_request_duration_seconds_count", route="/analyze", status="200") == 2
    assert value(samples, "microfacs_request_duration_seconds_sum", route="/analyze", status="200") > 0
    for stage in ("decode", "detect", "landmarks", "action_units", "expression"):
        assert value(samples, "microfacs_stage_duration_seconds_count", stage=stage) == 2, stage
    assert value(samples, "microfacs_faces_per_image_count") == 2
    assert value(samples, "microfacs_faces_per_image_sum") == 2  # one face in each
    assert value(samples, "microfacs_faces_per_image_bucket", le="0.0") == 0
    assert value(samples, "microfacs_in_flight") == 0 and value(samples, "microfacs_queued") == 0
    assert value(samples, "microfacs_max_in_flight") == Settings().max_in_flight
    assert "microfacs_shed_requests_total" in samples
    manifest = client.app.state.manifest["models"]
    models = {s.labels["model"]: s.labels["version"] for s in samples["microfacs_model_info"]}
    assert models == {name: str(entry["version"]) for name, entry in manifest.items()}


def test_metrics_need_no_key_and_are_not_shed(astronaut):
    with TestClient(create_app(Settings(api_key="s3cret", max_in_flight=1, max_queue=0))) as client:
        assert client.get("/metrics").status_code == 200
        assert post_image(client, "/analyze", encode(astronaut)).status_code == 401
        assert value(scrape(client), "microfacs_requests_total", route="/analyze", status="401") == 1


@pytest.fixture()
def json_log():
    """An app with MICROFACS_LOG_FORMAT=json, and what its log handler writes (text mode restored after)."""
    app = create_app(Settings(log_format="json"))
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, _MicrofacsHandler)]
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        yield app, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        configure_logging("text")


def test_json_access_lines(json_log, astronaut):
    app, lines = json_log
    jpeg = encode(astronaut)
    with TestClient(app) as client:
        ok = post_image(client, "/detect-faces", jpeg, max_faces=3)
        bad = client.post("/detect-faces", params={"max_faces": "abc"}, files={"file": ("a.jpg", jpeg)})
        client.get("/healthz", headers={"X-Request-ID": "health-1"})
    access = [line for line in lines() if line.get("event") == "access"]  # every line parsed as JSON
    by_id = {line["request_id"]: line for line in access}
    first = by_id[ok.headers["x-request-id"]]
    assert first["method"] == "POST" and first["route"] == "/detect-faces" and first["status"] == 200
    assert first["faces"] == 1 and first["bytes_in"] > len(jpeg) and first["duration_ms"] > 0
    assert first["level"] == "info" and first["logger"] == "microfacs.access" and "time" in first
    assert first["client"] == "testclient"  # the caller (behind a proxy: X-Forwarded-For, via --proxy-headers)
    second = by_id[bad.headers["x-request-id"]]
    assert second["status"] == 422 and second["faces"] is None and second["bytes_in"] == 0  # body never read
    assert by_id["health-1"]["route"] == "/healthz"
    assert all(len(json.dumps(line)) < 1000 for line in access)  # no image content


def test_json_error_lines_carry_the_request_id_and_traceback(json_log, astronaut):
    app, lines = json_log
    with TestClient(app, raise_server_exceptions=False) as client:
        def broken(*args, **kwargs):
            raise RuntimeError("boom in the pipeline")

        app.state.analyzer.run = broken
        response = post_image(client, "/analyze", encode(astronaut))
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    request_id = response.headers["x-request-id"]
    (error,) = [line for line in lines() if line["level"] == "error"]
    assert error["request_id"] == request_id and error["logger"] == "microfacs"
    assert error["exc_type"] == "RuntimeError" and "boom in the pipeline" in error["exc"]
    (access,) = [line for line in lines() if line.get("event") == "access" and line["request_id"] == request_id]
    assert access["status"] == 500


def test_text_format_is_the_default():
    create_app(Settings())
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, _MicrofacsHandler)]
    assert not isinstance(handler.formatter, type(None)) and "%(levelname)s" in handler.formatter._fmt
    assert not logging.getLogger("microfacs.access").isEnabledFor(logging.INFO)
