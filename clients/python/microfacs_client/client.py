"""``Client`` (blocking) and ``AsyncClient`` (asyncio) for the MicroFACS REST API."""
from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Optional, Sequence

import httpx

from microfacs_client.errors import MicroFACSError
from microfacs_client.images import ImageInput, describe, to_upload
from microfacs_client.jobs import AsyncJob, Job, job_upload
from microfacs_client.models import AnalysisResult, JobStatus, Person, Readiness, Version, VideoResult

DEFAULT_URL = "http://localhost:8000"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Failures before the server could have acted on the request, or that leave it unknown but safe to repeat
# (every analysis call is a pure function of the upload). Timeouts are not retried: a slow server stays slow.
RETRY_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout)

ENDPOINTS = {
    "detect_faces": "/detect-faces",
    "detect_au": "/detect-au",
    "recognize_expression": "/recognize-expression",
    "analyze": "/analyze",
}
VIDEO_TIMEOUT = 600.0  # seconds: a 120 s clip is analysed in well under this on one core


def _video_upload(video: Any) -> dict:
    """A path (str or PathLike), bytes, or a binary file object -> the multipart ``file`` field (streamed)."""
    if isinstance(video, (bytes, bytearray, memoryview)):
        return {"file": ("video.mp4", bytes(video), "application/octet-stream")}
    if hasattr(video, "read"):
        return {"file": (os.path.basename(getattr(video, "name", "video.mp4")), video, "application/octet-stream")}
    path = os.fspath(video)
    return {"file": (os.path.basename(path), open(path, "rb"), "application/octet-stream")}


def _video_options(every: Optional[int], max_faces: Optional[int], side_face_filter: Optional[bool],
                   occlusion_filter: Optional[bool], series: Optional[bool],
                   baseline: Optional[str] = None) -> dict[str, str]:
    return _params(dict(every=every, max_faces=max_faces, side_face_filter=side_face_filter,
                        occlusion_filter=occlusion_filter, series=series, baseline=baseline))


@dataclass
class BatchItem:
    """One image of a batch: ``result`` when it worked, else ``error``; ``index`` is its place in the input."""

    index: int
    source: str
    result: Optional[AnalysisResult] = None
    error: Optional[MicroFACSError] = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``backoff * 2**attempt`` seconds (plus up to 10 % jitter), at most ``max_backoff``;
    a ``Retry-After`` header (seconds or an HTTP date) wins, capped at ``max_retry_after``.

    ``sleep`` / ``async_sleep`` wait between tries and ``clock`` (epoch seconds) dates an HTTP-date
    Retry-After; swap them to test or to drive retries from your own event loop or scheduler."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    statuses: frozenset = RETRY_STATUSES
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    def delay(self, attempt: int, response: Optional[httpx.Response]) -> float:
        if response is not None:
            after = _retry_after(response.headers.get("retry-after"), self.clock())
            if after is not None:
                return min(max(after, 0.0), self.max_retry_after)
        base = min(self.backoff * (2 ** attempt), self.max_backoff)
        return base * (1.0 + 0.1 * random.random())


def _retry_after(value: Optional[str], now: float) -> Optional[float]:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - now


def _params(params: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _error_from(response: httpx.Response) -> MicroFACSError:
    request_id = response.headers.get("x-request-id")
    try:
        body = response.json()
        error = body["error"]
        return MicroFACSError(response.status_code, str(error["code"]), str(error["message"]),
                              body.get("request_id") or request_id)
    except (ValueError, KeyError, TypeError):
        text = response.text[:300].strip() or response.reason_phrase
        return MicroFACSError(response.status_code, f"http_{response.status_code}", text, request_id)


def _transport_error(exc: Exception) -> MicroFACSError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return MicroFACSError(0, code, f"{type(exc).__name__}: {exc}")


class _Base:
    def __init__(self, base_url: Optional[str], api_key: Optional[str], timeout: float | httpx.Timeout,
                 retry: Optional[RetryPolicy], channel_order: str, headers: Optional[dict[str, str]]) -> None:
        self.base_url = (base_url or os.environ.get("MICROFACS_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("MICROFACS_API_KEY")
        self.timeout = (timeout if isinstance(timeout, httpx.Timeout)
                        else httpx.Timeout(timeout, connect=min(timeout, 10.0)))
        self.retry = retry or RetryPolicy()
        self.channel_order = channel_order
        self.headers = {"User-Agent": "microfacs-client", **(headers or {})}
        if self.api_key:
            self.headers["X-API-Key"] = self.api_key

    def _files(self, image: ImageInput, reference: Optional[ImageInput] = None) -> list:
        name, data = to_upload(image, self.channel_order)
        files = [("file", (name, data, "application/octet-stream"))]
        if reference is not None:  # a neutral photo of the same person: readings relative to it
            ref_name, ref_data = to_upload(reference, self.channel_order)
            files.append(("reference", (ref_name, ref_data, "application/octet-stream")))
        return files

    def _photos(self, photos: Sequence[ImageInput] | ImageInput) -> list:
        items: list[Any]
        if isinstance(photos, (str, bytes, bytearray, memoryview)) or not isinstance(photos, Sequence):
            items = [photos]  # one photo
        else:
            items = list(photos)
        return [("file", (*to_upload(p, self.channel_order), "application/octet-stream")) for p in items]

    @staticmethod
    def _options(side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, landmarks, extra) -> dict:
        return _params(dict(side_face_filter=side_face_filter, occlusion_filter=occlusion_filter, max_faces=max_faces,
                            min_face_size=min_face_size, face_crop=face_crop, landmarks=landmarks, **extra))


class Client(_Base):
    """Blocking client; thread-safe (one connection pool). Use as a context manager or call ``close()``.

    >>> with Client("http://localhost:8000") as mf:
    ...     result = mf.detect_au("photo.jpg")
    """

    def __init__(self, base_url: Optional[str] = None, *, api_key: Optional[str] = None, timeout: float = 30.0,
                 retry: Optional[RetryPolicy] = None, channel_order: str = "bgr",
                 headers: Optional[dict[str, str]] = None, transport: Optional[httpx.BaseTransport] = None,
                 http_client: Optional[httpx.Client] = None) -> None:
        """``http_client``: an httpx.Client to send through instead (e.g. an in-process ASGI test client; its own
        base URL is used). ``transport``: an httpx transport for the client made here."""
        super().__init__(base_url, api_key, timeout, retry, channel_order, headers)
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = None
            try:
                response = self._http.request(method, path, headers=self.headers, **kwargs)
            except RETRY_EXCEPTIONS as exc:
                if attempt >= self.retry.max_retries:
                    raise _transport_error(exc) from exc
            except httpx.HTTPError as exc:
                raise _transport_error(exc) from exc
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in self.retry.statuses or attempt >= self.retry.max_retries:
                    raise _error_from(response)
            self.retry.sleep(self.retry.delay(attempt, response))
            attempt += 1

    def _analyse(self, endpoint: str, image: ImageInput, options: dict[str, str],
                 reference: Optional[ImageInput] = None) -> AnalysisResult:
        response = self._request("POST", ENDPOINTS.get(endpoint, endpoint), files=self._files(image, reference),
                                 params=options)
        return AnalysisResult.model_validate(response.json())

    # The service's calls. Options left None take the server's defaults. ``reference``: a neutral photo of the
    # same person (AUs and expression are then read relative to it); ``person="<id>"``: an enrolled person.
    def detect_faces(self, image: ImageInput, *, side_face_filter: Optional[bool] = None,
                     occlusion_filter: Optional[bool] = None, max_faces: Optional[int] = None,
                     min_face_size: Optional[int] = None, face_crop: Optional[bool] = None,
                     landmarks: Optional[bool] = None, **extra: Any) -> AnalysisResult:
        """Faces, boxes, head pose, occlusion and the pre-filters."""
        return self._analyse("detect_faces", image, self._options(
            side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, landmarks, extra))

    def detect_au(self, image: ImageInput, *, reference: Optional[ImageInput] = None,
                 side_face_filter: Optional[bool] = None,
                  occlusion_filter: Optional[bool] = None, max_faces: Optional[int] = None,
                  min_face_size: Optional[int] = None, face_crop: Optional[bool] = None,
                  landmarks: Optional[bool] = None, **extra: Any) -> AnalysisResult:
        """Faces plus ``action_units`` (probability, present, box) for each face that passes the pre-filters."""
        return self._analyse("detect_au", image, self._options(
            side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, landmarks, extra), reference)

    def recognize_expression(self, image: ImageInput, *, reference: Optional[ImageInput] = None,
                 side_face_filter: Optional[bool] = None,
                             occlusion_filter: Optional[bool] = None, max_faces: Optional[int] = None,
                             min_face_size: Optional[int] = None, face_crop: Optional[bool] = None,
                             landmarks: Optional[bool] = None, **extra: Any) -> AnalysisResult:
        """Faces plus the ``expression`` each appears to show (8 classes, calibrated scores)."""
        return self._analyse("recognize_expression", image, self._options(
            side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, landmarks, extra), reference)

    def analyze(self, image: ImageInput, *, reference: Optional[ImageInput] = None,
                 side_face_filter: Optional[bool] = None,
                occlusion_filter: Optional[bool] = None, max_faces: Optional[int] = None,
                min_face_size: Optional[int] = None, face_crop: Optional[bool] = None,
                landmarks: Optional[bool] = None, **extra: Any) -> AnalysisResult:
        """Faces with both ``action_units`` and ``expression`` (``POST /analyze``, on servers that have it)."""
        return self._analyse("analyze", image, self._options(
            side_face_filter, occlusion_filter, max_faces, min_face_size, face_crop, landmarks, extra), reference)

    def analyze_video(self, video: Any, *, every: Optional[int] = None, max_faces: Optional[int] = None,
                      side_face_filter: Optional[bool] = None, occlusion_filter: Optional[bool] = None,
                      series: Optional[bool] = None, timeout: float = VIDEO_TIMEOUT,
                      baseline: Optional[str] = None) -> VideoResult:
        """``POST /analyze-video``: face tracks (stable ``track_id``), per-frame AU probabilities and expression,
        and AU/expression events (onset, apex, offset, ``micro``). ``video``: a path, bytes or a binary file
        (MP4, MOV, WebM, MKV, AVI). ``baseline="auto"``: each track read relative to its own most
        neutral-looking frames. Not retried (an upload may be large): errors raise ``MicroFACSError``."""
        files = _video_upload(video)
        try:
            response = self._http.post("/analyze-video", files=files, headers=self.headers,
                                       params=_video_options(every, max_faces, side_face_filter, occlusion_filter,
                                                             series, baseline), timeout=timeout)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        finally:
            handle = files["file"][1]
            if not isinstance(video, (bytes, bytearray, memoryview)) and not hasattr(video, "read"):
                handle.close()
        if response.status_code >= 400:
            raise _error_from(response)
        return VideoResult.model_validate(response.json())

    def submit(self, upload: Any, *, filename: Optional[str] = None, every: Optional[int] = None,
               max_faces: Optional[int] = None, side_face_filter: Optional[bool] = None,
               occlusion_filter: Optional[bool] = None, series: Optional[bool] = None,
               baseline: Optional[str] = None, timeout: float = VIDEO_TIMEOUT, **extra: Any) -> Job:
        """``POST /jobs``: a long video or a zip/tar of images as a background job; returns at once with a ``Job``
        (``.status()``, ``.wait(progress=...)``, ``.result()``, ``.cancel()``). ``upload``: a path, bytes or a
        binary file (the server tells a video from an archive by its content; ``filename`` names bytes). The
        options are ``analyze_video``'s. Not retried (an upload may be large): errors raise ``MicroFACSError``
        (e.g. 503 ``overloaded`` when the server's queue is full, 413 past its job limits: ``version().jobs``)."""
        files, opened = job_upload(upload, filename)
        params = {**_video_options(every, max_faces, side_face_filter, occlusion_filter, series, baseline),
                  **_params(extra)}
        try:
            response = self._http.post("/jobs", files=files, headers=self.headers, params=params, timeout=timeout)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        finally:
            if opened is not None:
                opened.close()
        if response.status_code >= 400:
            raise _error_from(response)
        return Job(self, JobStatus.model_validate(response.json()))

    def job(self, job_id: str) -> Job:
        """A job submitted earlier (by this or another process, with the same API key), by its id."""
        job = Job(self, JobStatus(id=job_id, status="unknown"))
        job.status()
        return job

    def render(self, image: ImageInput, endpoint: str = "detect_faces", **options: Any) -> bytes:
        """The server's annotated PNG (``?render=true``) for ``endpoint``."""
        response = self._request("POST", ENDPOINTS.get(endpoint, endpoint), files=self._files(image),
                                 params=_params({**options, "render": True}))
        return response.content

    def batch(self, images: Iterable[ImageInput], endpoint: str = "detect_faces", *, concurrency: int = 4,
              **options: Any) -> list[BatchItem]:
        """Runs ``endpoint`` on every image, at most ``concurrency`` at a time. Never raises for one image:
        each ``BatchItem`` holds its ``result`` or its ``error``, in input order."""
        items = list(images)
        params = _params(options)

        def one(index: int) -> BatchItem:
            item = BatchItem(index, describe(items[index]))
            try:
                item.result = self._analyse(endpoint, items[index], params)
            except MicroFACSError as exc:
                item.error = exc
            except Exception as exc:  # a batch never fails for one image
                item.error = MicroFACSError(0, "client_error", f"{type(exc).__name__}: {exc}")
            return item

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, range(len(items))))

    def create_person(self, photos: Sequence[ImageInput] | ImageInput, **options: Any) -> Person:
        """``POST /persons``: enrol a person from one or more neutral photos; use ``person=<person_id>`` on the
        analysis calls. The server keeps only model outputs, until ``expires_at``."""
        response = self._request("POST", "/persons", files=self._photos(photos), params=_params(options))
        return Person.model_validate(response.json())

    def get_person(self, person_id: str) -> Person:
        return Person.model_validate(self._request("GET", f"/persons/{person_id}").json())

    def delete_person(self, person_id: str) -> None:
        self._request("DELETE", f"/persons/{person_id}")

    def health(self) -> bool:
        try:
            return self._http.get("/healthz", headers=self.headers).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> Readiness:
        response = self._http.get("/readyz", headers=self.headers)
        return Readiness.model_validate(response.json())

    def version(self) -> Version:
        return Version.model_validate(self._request("GET", "/version").json())

    def endpoints(self) -> list[str]:
        """The analysis calls this server offers (names as in ``ENDPOINTS``), from its OpenAPI document."""
        paths = self._request("GET", "/openapi.json").json().get("paths", {})
        return [name for name, path in ENDPOINTS.items() if "post" in paths.get(path, {})]


class AsyncClient(_Base):
    """asyncio client with the same calls as ``Client`` (awaitable)."""

    def __init__(self, base_url: Optional[str] = None, *, api_key: Optional[str] = None, timeout: float = 30.0,
                 retry: Optional[RetryPolicy] = None, channel_order: str = "bgr",
                 headers: Optional[dict[str, str]] = None,
                 transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        super().__init__(base_url, api_key, timeout, retry, channel_order, headers)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = None
            try:
                response = await self._http.request(method, path, headers=self.headers, **kwargs)
            except RETRY_EXCEPTIONS as exc:
                if attempt >= self.retry.max_retries:
                    raise _transport_error(exc) from exc
            except httpx.HTTPError as exc:
                raise _transport_error(exc) from exc
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in self.retry.statuses or attempt >= self.retry.max_retries:
                    raise _error_from(response)
            await self.retry.async_sleep(self.retry.delay(attempt, response))
            attempt += 1

    async def _analyse(self, endpoint: str, image: ImageInput, options: dict[str, str],
                       reference: Optional[ImageInput] = None) -> AnalysisResult:
        response = await self._request("POST", ENDPOINTS.get(endpoint, endpoint),
                                       files=self._files(image, reference), params=options)
        return AnalysisResult.model_validate(response.json())

    async def detect_faces(self, image: ImageInput, **options: Any) -> AnalysisResult:
        return await self._analyse("detect_faces", image, _params(options))

    async def detect_au(self, image: ImageInput, *, reference: Optional[ImageInput] = None,
                        **options: Any) -> AnalysisResult:
        return await self._analyse("detect_au", image, _params(options), reference)

    async def recognize_expression(self, image: ImageInput, *, reference: Optional[ImageInput] = None,
                                   **options: Any) -> AnalysisResult:
        return await self._analyse("recognize_expression", image, _params(options), reference)

    async def analyze(self, image: ImageInput, *, reference: Optional[ImageInput] = None,
                      **options: Any) -> AnalysisResult:
        return await self._analyse("analyze", image, _params(options), reference)

    async def create_person(self, photos: Sequence[ImageInput] | ImageInput, **options: Any) -> Person:
        """``POST /persons`` (see ``Client.create_person``)."""
        response = await self._request("POST", "/persons", files=self._photos(photos), params=_params(options))
        return Person.model_validate(response.json())

    async def get_person(self, person_id: str) -> Person:
        return Person.model_validate((await self._request("GET", f"/persons/{person_id}")).json())

    async def delete_person(self, person_id: str) -> None:
        await self._request("DELETE", f"/persons/{person_id}")

    async def analyze_video(self, video: Any, *, every: Optional[int] = None, max_faces: Optional[int] = None,
                            side_face_filter: Optional[bool] = None, occlusion_filter: Optional[bool] = None,
                            series: Optional[bool] = None, timeout: float = VIDEO_TIMEOUT,
                            baseline: Optional[str] = None) -> VideoResult:
        """``POST /analyze-video`` (see ``Client.analyze_video``)."""
        if not isinstance(video, (bytes, bytearray, memoryview)) and not hasattr(video, "read"):
            with open(os.fspath(video), "rb") as fh:
                data = fh.read()  # httpx's async client needs bytes or an async stream
            files = {"file": (os.path.basename(os.fspath(video)), data, "application/octet-stream")}
        else:
            files = _video_upload(video if not hasattr(video, "read") else video.read())
        try:
            response = await self._http.post("/analyze-video", files=files, headers=self.headers,
                                             params=_video_options(every, max_faces, side_face_filter,
                                                                   occlusion_filter, series, baseline),
                                             timeout=timeout)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return VideoResult.model_validate(response.json())

    async def submit(self, upload: Any, *, filename: Optional[str] = None, every: Optional[int] = None,
                     max_faces: Optional[int] = None, side_face_filter: Optional[bool] = None,
                     occlusion_filter: Optional[bool] = None, series: Optional[bool] = None,
                     baseline: Optional[str] = None, timeout: float = VIDEO_TIMEOUT, **extra: Any) -> AsyncJob:
        """``POST /jobs`` (see ``Client.submit``): an ``AsyncJob`` whose calls are awaitable."""
        files, opened = job_upload(upload, filename)  # a file is streamed from disk, not read whole
        params = {**_video_options(every, max_faces, side_face_filter, occlusion_filter, series, baseline),
                  **_params(extra)}
        try:
            response = await self._http.post("/jobs", files=files, headers=self.headers, params=params,
                                             timeout=timeout)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        finally:
            if opened is not None:
                opened.close()
        if response.status_code >= 400:
            raise _error_from(response)
        return AsyncJob(self, JobStatus.model_validate(response.json()))

    async def job(self, job_id: str) -> AsyncJob:
        """A job submitted earlier, by its id (see ``Client.job``)."""
        job = AsyncJob(self, JobStatus(id=job_id, status="unknown"))
        await job.status()
        return job

    async def render(self, image: ImageInput, endpoint: str = "detect_faces", **options: Any) -> bytes:
        response = await self._request("POST", ENDPOINTS.get(endpoint, endpoint), files=self._files(image),
                                       params=_params({**options, "render": True}))
        return response.content

    async def batch(self, images: Sequence[ImageInput] | Iterable[ImageInput], endpoint: str = "detect_faces", *,
                    concurrency: int = 4, **options: Any) -> list[BatchItem]:
        items = list(images)
        params = _params(options)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(index: int) -> BatchItem:
            item = BatchItem(index, describe(items[index]))
            async with gate:
                try:
                    item.result = await self._analyse(endpoint, items[index], params)
                except MicroFACSError as exc:
                    item.error = exc
                except Exception as exc:  # a batch never fails for one image
                    item.error = MicroFACSError(0, "client_error", f"{type(exc).__name__}: {exc}")
            return item

        return list(await asyncio.gather(*(one(i) for i in range(len(items)))))

    async def health(self) -> bool:
        try:
            return (await self._http.get("/healthz", headers=self.headers)).status_code == 200
        except httpx.HTTPError:
            return False

    async def ready(self) -> Readiness:
        return Readiness.model_validate((await self._http.get("/readyz", headers=self.headers)).json())

    async def version(self) -> Version:
        return Version.model_validate((await self._request("GET", "/version")).json())
