"""``Job`` and ``AsyncJob``: a ``POST /jobs`` job (a long video or an archive of images) on the server.

    with Client("http://localhost:8000") as mf:
        job = mf.submit("interview.mp4", every=2)
        job.wait(progress=lambda p: print(p.done, "/", p.total))   # or progress=tqdm(unit="frame")
        result = job.result()            # VideoResult (ArchiveResult for a zip/tar of images)
        table = job.result(format="csv")  # the OpenFace-style table, as text
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable, Optional, Union

from microfacs_client.errors import MicroFACSError
from microfacs_client.models import ArchiveResult, JobProgress, JobStatus, VideoResult

ProgressArg = Union[Callable[[JobProgress], Any], Any, None]  # a callback, a tqdm-like bar, or None
JobResult = Union[VideoResult, ArchiveResult, str, bytes]
FORMATS = ("json", "csv", "parquet")


def job_upload(upload: Any, filename: Optional[str]) -> tuple[dict, Any]:
    """A path (str or PathLike), bytes, or a binary file object -> (the multipart ``file`` field, the file this
    opened and the caller closes, or None). The server tells a video from an archive by its content."""
    if isinstance(upload, (bytes, bytearray, memoryview)):
        return {"file": (filename or "upload", bytes(upload), "application/octet-stream")}, None
    if hasattr(upload, "read"):
        name = filename or os.path.basename(str(getattr(upload, "name", "") or "upload"))
        return {"file": (name, upload, "application/octet-stream")}, None
    path = os.fspath(upload)
    handle = open(path, "rb")  # noqa: SIM115 (the caller closes it once sent)
    return {"file": (filename or os.path.basename(path), handle, "application/octet-stream")}, handle


def progress_reporter(progress: ProgressArg) -> Optional[Callable[[JobProgress], None]]:
    """``progress`` as a function of a ``JobProgress``: a callback as it is; a tqdm-like bar (``update(n)`` and a
    ``total`` attribute) gets its ``total`` set once known and is advanced by the frames/images done since."""
    if progress is None:
        return None
    if hasattr(progress, "update") and hasattr(progress, "total"):
        bar, seen = progress, [0]

        def report(p: JobProgress) -> None:
            if p.total is not None and bar.total != p.total:
                bar.total = p.total
                if hasattr(bar, "refresh"):
                    bar.refresh()
            if p.done > seen[0]:
                bar.update(p.done - seen[0])
                seen[0] = p.done

        return report
    if callable(progress):
        return progress
    raise TypeError("progress: a callable taking a JobProgress, or a tqdm-like bar (update(n), total)")


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"format: one of {', '.join(FORMATS)}")


def _timed_out(job: "Job | AsyncJob", status: JobStatus, timeout: float) -> MicroFACSError:
    return MicroFACSError(0, "timeout", f"job {job.id} is still {status.status} after {timeout:g} s (it goes on "
                                        "on the server: wait again, or cancel it)")


class _JobHandle:
    """What ``Job`` and ``AsyncJob`` share: the client, the state last read and the id."""

    def __init__(self, client: Any, status: JobStatus) -> None:
        self._client = client
        self.last = status

    @property
    def id(self) -> str:
        return self.last.id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.last.status!r})"


class Job(_JobHandle):
    """A job on the server. ``last`` is the state last read (``status()`` reads it again)."""

    def status(self) -> JobStatus:
        """``GET /jobs/{id}``: its state, progress and (when it failed) error."""
        self.last = JobStatus.model_validate(self._client._request("GET", f"/jobs/{self.id}").json())
        return self.last

    def wait(self, progress: ProgressArg = None, poll: float = 1.0, timeout: Optional[float] = None) -> JobStatus:
        """Polls every ``poll`` seconds until the job is done, failed or cancelled, and returns that state (a failed
        job's ``error`` says why; it does not raise). ``progress``: a callback given each new ``JobProgress``, or a
        tqdm bar to advance. ``timeout`` (seconds): raises ``MicroFACSError`` code ``timeout`` after it (the job
        goes on)."""
        report = progress_reporter(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: Optional[JobProgress] = None
        while True:
            status = self.status()
            if report is not None and status.progress != shown:
                report(status.progress)
                shown = status.progress
            if status.finished:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _timed_out(self, status, timeout or 0.0)
            time.sleep(poll if left is None else max(0.0, min(poll, left)))

    def result(self, format: str = "json") -> JobResult:
        """``GET /jobs/{id}/result`` once done (else ``MicroFACSError`` 409 ``job_not_done``): ``json`` -> a
        ``VideoResult`` (a video) or an ``ArchiveResult`` (images); ``csv`` -> the OpenFace-style table as text;
        ``parquet`` -> bytes (servers with pyarrow)."""
        _check_format(format)
        response = self._client._request("GET", f"/jobs/{self.id}/result", params={"format": format})
        return _parse_result(self.last, format, response)

    def cancel(self) -> JobStatus:
        """``DELETE /jobs/{id}``: a queued job will not run, a running one stops within about a second; a finished
        job stays as it is. Returns the job's state."""
        self.last = JobStatus.model_validate(self._client._request("DELETE", f"/jobs/{self.id}").json())
        return self.last


class AsyncJob(_JobHandle):
    """``Job`` for ``AsyncClient``: the same calls, awaitable."""

    async def status(self) -> JobStatus:
        self.last = JobStatus.model_validate((await self._client._request("GET", f"/jobs/{self.id}")).json())
        return self.last

    async def wait(self, progress: ProgressArg = None, poll: float = 1.0,
                   timeout: Optional[float] = None) -> JobStatus:
        """See ``Job.wait``."""
        report = progress_reporter(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: Optional[JobProgress] = None
        while True:
            status = await self.status()
            if report is not None and status.progress != shown:
                report(status.progress)
                shown = status.progress
            if status.finished:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _timed_out(self, status, timeout or 0.0)
            await asyncio.sleep(poll if left is None else max(0.0, min(poll, left)))

    async def result(self, format: str = "json") -> JobResult:
        _check_format(format)
        response = await self._client._request("GET", f"/jobs/{self.id}/result", params={"format": format})
        return _parse_result(self.last, format, response)

    async def cancel(self) -> JobStatus:
        self.last = JobStatus.model_validate((await self._client._request("DELETE", f"/jobs/{self.id}")).json())
        return self.last


def _parse_result(status: JobStatus, format: str, response: Any) -> JobResult:
    if format == "csv":
        return response.text
    if format == "parquet":
        return response.content
    body = response.json()
    if status.kind == "video" or "tracks" in body:
        return VideoResult.model_validate(body)
    return ArchiveResult.model_validate(body)
