"""GET /metrics: Prometheus text format from the app's own registry (``app.metrics``). Public (no API key) on
the pod's port, like /healthz: scrape it there; the nginx front end should not route it (README)."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["service"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Request counts and latency by route and status, per-stage latency, faces per image, analyses in flight
    and queued, shed requests, model versions."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
