"""Logging, configured at app creation from ``MICROFACS_LOG_FORMAT``.

``text`` (default): ``time level logger message`` lines; uvicorn writes its own access log.
``json``: one JSON object per line for every record, uvicorn's included; one access line per request from
``app.metrics.AccessMiddleware`` (request_id, method, route, status, duration_ms, faces, bytes_in) replaces
uvicorn's; errors carry their traceback as a string field. Records made while a request is served carry its
``request_id``. Nothing logs request bodies or image content.
"""
from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

request_id_var: ContextVar[str] = ContextVar("request_id", default="")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            line["request_id"] = request_id
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(event="access", **access)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _MicrofacsHandler(logging.StreamHandler):
    """The one handler ``configure_logging`` installs (replaced, not stacked, when it runs again)."""


def configure_logging(log_format: str) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _MicrofacsHandler)]:
        root.removeHandler(handler)
    handler = _MicrofacsHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    as_json = log_format == "json"
    logging.getLogger("microfacs.access").setLevel(logging.INFO if as_json else logging.WARNING)
    if as_json:  # uvicorn's records (uvicorn.error propagates to uvicorn) through the JSON handler too
        for name in ("uvicorn", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = as_json  # our access line replaces it
