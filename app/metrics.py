"""Prometheus metrics (``GET /metrics``, one registry per app) and the access middleware that feeds them and
writes the access log line (``app.logs``): route template, status, duration, faces, bytes received."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.admission import Admission
from app.logs import request_id_var

access_log = logging.getLogger("microfacs.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0, 5.0)
FACE_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100)


class Metrics:
    def __init__(self, admission: Admission, manifest: Mapping, video_admission: Admission | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter("microfacs_requests", "HTTP requests answered", labels, registry=r)
        self.latency = Histogram("microfacs_request_duration_seconds", "time from the request's arrival to its "
                                 "last response byte", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("microfacs_stage_duration_seconds", "time per pipeline stage and image (decode, "
                                "detect, landmarks, ...)", ("stage",), buckets=STAGE_BUCKETS, registry=r)
        self.faces = Histogram("microfacs_faces_per_image", "faces found per analysed image", buckets=FACE_BUCKETS,
                               registry=r)
        self.shed = Counter("microfacs_shed_requests", "requests answered 503 overloaded: full (in flight + "
                            "queue), deadline (waited past MICROFACS_REQUEST_TIMEOUT_S) or uploads "
                            "(MICROFACS_MAX_UPLOADS bodies being received)", ("reason",), registry=r)
        for reason in ("full", "deadline", "uploads"):
            self.shed.labels(reason)  # present at 0 from the start
        Gauge("microfacs_in_flight", "analyses running now", registry=r).set_function(lambda: admission.running)
        if video_admission is not None:  # synchronous /analyze-video has its own places
            Gauge("microfacs_video_in_flight", "synchronous video analyses running now",
                  registry=r).set_function(lambda: video_admission.running)
            Gauge("microfacs_video_queued", "synchronous video requests whose upload is in, waiting for a place",
                  registry=r).set_function(lambda: video_admission.waiting)
        Gauge("microfacs_queued", "analysis requests whose upload is in, waiting for a slot",
              registry=r).set_function(lambda: admission.waiting)
        Gauge("microfacs_uploading", "analysis requests receiving their body (no analysis place yet)",
              registry=r).set_function(lambda: admission.uploading)
        Gauge("microfacs_max_uploads", "the upload limit", registry=r).set(admission.max_uploads)
        Gauge("microfacs_max_in_flight", "the in-flight limit", registry=r).set(admission.max_in_flight)
        Gauge("microfacs_max_queue", "the queue limit", registry=r).set(admission.max_queue)
        Info("microfacs_service", "service version", registry=r).info({"version": __version__})
        models = Info("microfacs_model", "model versions (models/manifest.json)", ("model",), registry=r)
        for name, entry in manifest.get("models", {}).items():
            models.labels(name).info({"version": str(entry.get("version", "")), "sha256": str(entry.get("sha256", ""))})
        admission.on_shed = lambda reason: self.shed.labels(reason).inc()
        self._providers: ProviderCollector | None = None

    def watch_models(self, models) -> None:
        """``microfacs_model_provider{model, provider} 1`` for each loaded model (``app.registry.ModelRegistry``),
        read at each scrape: the identity model appears once it has loaded."""
        if self._providers is not None:  # the app started again (tests): the new models replace the old
            self.registry.unregister(self._providers)
        self._providers = ProviderCollector(models)
        self.registry.register(self._providers)

    def observe_analysis(self, timings_ms: Mapping[str, float], faces: int) -> None:
        for stage, ms in timings_ms.items():
            self.stages.labels(stage).observe(ms / 1000.0)
        self.faces.observe(faces)


class ProviderCollector:
    """Which onnxruntime execution provider each loaded model's session runs on (MICROFACS_PROVIDERS)."""

    def __init__(self, models) -> None:
        self.models = models

    def describe(self) -> list:
        return []  # no fixed series: the registry need not call collect() when this is registered

    def collect(self):
        family = GaugeMetricFamily("microfacs_model_provider", "1 for the execution provider each loaded model runs "
                                   "on (MICROFACS_PROVIDERS; app/providers.py)", labels=["model", "provider"])
        for name, provider in sorted(self.models.providers().items()):
            family.add_metric([name, provider], 1.0)
        yield family


def route_of(scope: Scope) -> str:
    """The matched route's template (``/analyze``), never the raw path: unknown paths share one label."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class AccessMiddleware:
    """Outermost but the request id: sees every answer, including those of the other middlewares."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        # (method, route, status) -> the counter's and the histogram's children: prometheus_client's labels()
        # locks and builds them on every call. Bounded: uvicorn's parser knows a fixed set of methods, routes
        # are templates ("unmatched" for the rest), statuses are a few dozen.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:
            labels = (method, route, str(status))
            series = self._series[(method, route, status)] = (self.metrics.requests.labels(*labels),
                                                               self.metrics.latency.labels(*labels))
        series[0].inc()
        series[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, bytes_in = 500, 0
        state = scope.setdefault("state", {})
        # Not reset at the end: the server runs each request in its own task (its own context), and the
        # app's last-resort error handler, outside this middleware, logs with it.
        request_id_var.set(state.get("request_id", ""))

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            bytes_in += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            seconds = time.perf_counter() - start
            method, route = scope.get("method", ""), route_of(scope)
            self._observe(method, route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):  # MICROFACS_LOG_FORMAT=json; skip building the line else
                # the caller's address: behind a proxy, uvicorn's --proxy-headers puts X-Forwarded-For's here
                client = (scope.get("client") or ("", 0))[0]
                access_log.info(
                    "%s %s %s %.1f ms", method, route, status, seconds * 1000.0,
                    extra={"access": {"method": method, "route": route, "status": status, "client": client,
                                      "duration_ms": round(seconds * 1000.0, 2), "faces": state.get("faces"),
                                      "bytes_in": bytes_in}},
                )
