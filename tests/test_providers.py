"""Execution providers (MICROFACS_PROVIDERS, app/providers.py): names, the fallback to the CPU with one log line,
and what /version and /metrics say. This machine's onnxruntime has no GPU provider, so `cuda` is the absent one."""
from __future__ import annotations

import logging
import warnings

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import create_app
from app.model_zoo.expression import ExpressionRecognizer
from app.providers import CPU, Runtime, parse_providers
from app.settings import Settings

CUDA, TRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_names_options_and_order():
    assert parse_providers("cpu") == ((CPU, {}),)
    assert parse_providers(" CUDA:1 , cpu ") == ((CUDA, {"device_id": "1"}), (CPU, {}))
    assert parse_providers("tensorrt,cuda,cuda,cpu") == ((TRT, {}), (CUDA, {}), (CPU, {}))  # once each, in order
    assert parse_providers("OpenVINOExecutionProvider")[0][0] == "OpenVINOExecutionProvider"  # full names as they are
    for bad in ("", " , ", "cdua", "cuda:x"):
        with pytest.raises(ValueError):
            parse_providers(bad)


def test_settings_refuse_an_unknown_provider(monkeypatch):
    monkeypatch.setenv("MICROFACS_PROVIDERS", "cuda,cpu")
    assert Settings().providers == "cuda,cpu"
    with pytest.raises(ValidationError, match="unknown execution provider"):
        Settings(providers="gpu")


def test_an_absent_provider_falls_back_to_the_cpu_with_one_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="microfacs"):
        runtime = Runtime.resolve("tensorrt,cuda", available=["AzureExecutionProvider", CPU])
    assert runtime.names == [CPU] and not runtime.on_device
    assert runtime.requested == (TRT, CUDA)
    lines = [r for r in caplog.records if r.name == "microfacs"]
    assert len(lines) == 1 and "TensorrtExecutionProvider, CUDAExecutionProvider" in lines[0].getMessage()


def test_present_providers_are_kept_in_order_with_the_cpu_last(caplog):
    with caplog.at_level(logging.WARNING, logger="microfacs"):
        runtime = Runtime.resolve("cuda:0", available=[TRT, CUDA, CPU])
        assert Runtime.resolve("tensorrt,cuda,cpu", available=[CUDA, CPU]).names == [CUDA, CPU]
    assert runtime.providers == ((CUDA, {"device_id": "0"}), (CPU, {}))
    assert runtime.on_device and runtime.session_providers() == [(CUDA, {"device_id": "0"}), CPU]
    assert len(caplog.records) == 1  # only the second one lacked something (tensorrt)


def test_a_model_asked_to_run_on_an_absent_provider_runs_on_the_cpu():
    """Even past Runtime.resolve (a provider listed but unusable): the session falls back, and says where it runs."""
    models_dir = Settings().models_dir
    with warnings.catch_warnings():  # onnxruntime's own warning about the absent provider
        warnings.simplefilter("ignore")
        model = ExpressionRecognizer(models_dir, Runtime(1, ((CUDA, {}), (CPU, {}))))
    assert model.provider == CPU
    probs, distance = model.read(__import__("numpy").full((112, 112, 3), 128, "uint8"))
    assert probs.shape == (len(model.classes),) and distance >= 0


@pytest.fixture(scope="module")
def cuda_client():
    with TestClient(create_app(Settings(providers="cuda,cpu"))) as test_client:
        yield test_client


def test_version_and_metrics_say_where_each_model_runs(cuda_client):
    version = cuda_client.get("/version").json()
    assert version["execution"]["requested"] == [CUDA, CPU]
    assert version["execution"]["used"] == [CPU] and CPU in version["execution"]["available"]
    models = version["models"]
    assert models["expression"]["provider"] == CPU and models["face_detection_full_range"]["provider"] == CPU
    assert models["face_identity"]["provider"] is None  # loaded on first use only
    text = cuda_client.get("/metrics").text
    assert 'microfacs_model_provider{model="au_detector",provider="CPUExecutionProvider"} 1.0' in text
    assert text.count("microfacs_model_provider{") == sum(1 for m in models.values() if m["provider"])


def test_the_fallback_answers_as_the_cpu_default(cuda_client, client, astronaut):
    from tests.helpers import encode, post_image

    image = encode(astronaut, ".png")
    ours, default = (post_image(c, "/analyze", image, "a.png").json() for c in (cuda_client, client))
    for body in (ours, default):
        body.pop("request_id"), body.pop("timings_ms")
    assert ours == default
