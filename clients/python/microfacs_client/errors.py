from __future__ import annotations

from typing import Optional


class MicroFACSError(Exception):
    """Every failure the client reports.

    ``status``: the HTTP status, or 0 when no HTTP answer came (``code`` is then ``connection_error`` or
    ``timeout``) or the input could not be read (``code`` ``invalid_input``).
    ``code`` / ``message``: the service's ``{"error": {"code", "message"}}`` when it sent one.
    ``request_id``: the service's request id (also in the ``X-Request-ID`` header), for its logs.
    """

    def __init__(self, status: int, code: str, message: str, request_id: Optional[str] = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (request_id {request_id})" if request_id else ""))
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id

    def __reduce__(self):  # picklable, e.g. across processes
        return (type(self), (self.status, self.code, self.message, self.request_id))
