"""Video decode stage: check a clip against the published limits before decoding anything, then decode it
frame by frame with PyAV (FFmpeg). Nothing holds more than the current frame: the caller gets one
``VideoFrame`` at a time and keeps only the numbers it derives from it.

Before the first frame is decoded:

1. the file: size, container (sniffed from its first bytes; FFmpeg is then told which demuxer to use),
   and for MP4/MOV its boxes (``app.video.mp4``: truncation, and bounds on what FFmpeg's demuxer would
   allocate at open);
2. a probe: the container is opened with no decoder allowed (``codec_whitelist``: FFmpeg's stream probing,
   which otherwise decodes a few frames, a 16000x16000 H.264 one taking ~600 MiB, opens none), so the frame
   size, rate, duration and frame count come from the container's headers and no picture is allocated,
   whatever the codec. Only when the container gives no frame size, a second probe lets the decoders read
   their headers, skipping every frame (``skip_frame=all``) and refusing any picture over ``max_pixels``.
   Too large, too long: refused here;
3. when the container does not index its frames (Matroska, WebM, AVI, fragmented MP4) or declares no
   duration, its packets are counted and their timestamps read without decoding (demuxing only), stopping
   as soon as the frame or duration limit is passed.

Decoding then opens the file again with the same ``max_pixels`` guard on the decoder (a codec header that
disagrees with its container cannot make it allocate a larger picture) and checks every frame as it
comes (a header can lie).

Errors are the image endpoints' JSON errors (``ApiError``): ``unsupported_media_type`` (415, not a
container we accept), ``invalid_video`` (400, unreadable, truncated, no video stream),
``video_too_long`` (413, duration or frame count over the limit), ``video_too_large`` (413, resolution),
``payload_too_large`` (413, upload size), ``empty_file`` (400). No message names a file path.
"""
from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from app.errors import ApiError
from app.settings import Settings
from app.video import mp4

VIDEO_FORMATS = ("mp4", "mov", "webm", "mkv", "avi")
# FFmpeg demuxer names (PyAV's ``container.format.name``) of the formats above.
_DEMUXERS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"}
# The demuxer FFmpeg is told to use for each sniffed container (no content probing of other formats).
_FORCED = {"mp4": "mov", "mkv": "matroska", "avi": "avi"}
NO_DECODER = "none"  # a codec_whitelist that names no decoder
_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
CHUNK = 1 << 20
DURATION_SLACK_S = 0.5  # a clip's last frame may end a little after the declared duration


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int
    max_duration_s: float
    max_frames: int
    max_side: int
    max_pixels: int
    decode_threads: int = 2  # FFmpeg's decoder threads for one clip (memory grows with them)

    @classmethod
    def of(cls, settings: Settings) -> VideoLimits:
        return cls(
            max_bytes=settings.max_video_upload_bytes,
            max_duration_s=settings.max_video_duration_s,
            max_frames=settings.max_video_frames,
            max_side=settings.max_video_side,
            max_pixels=settings.max_video_pixels,
            decode_threads=settings.video_decode_threads,
        )


@dataclass(frozen=True)
class VideoHeader:
    """What the container declares (before decoding). ``frames`` is 0 when it does not say and its packets
    were not counted; ``counted`` is True when ``frames`` (and, without a declared one, ``duration_s``)
    come from counting the packets."""

    format: str
    codec: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    counted: bool = False


@dataclass(frozen=True)
class VideoFrame:
    index: int  # 0-based index among the video's frames, in presentation order
    t: float  # seconds from the first frame, from the frame's timestamp
    frame: av.VideoFrame

    def bgr(self) -> np.ndarray:
        return self.frame.to_ndarray(format="bgr24")

    @property
    def pixels(self) -> int:
        return int(self.frame.width) * int(self.frame.height)


class Prefetch:
    """Decodes ahead on a thread of its own: the frames of ``frames`` (a ``VideoReader.frames()``), each with its BGR
    image when ``wanted(frame)`` (else None), at most ``depth`` waiting: on two cores the next frames are decoded
    while this one is analysed (BENCHMARKS.md, "Jobs and video on two cores"). An error of the decoder is raised where
    its frame would have come. ``close()`` (or leaving a ``with`` block) stops the thread and waits for it: call it
    before the reader is closed."""

    _END = object()

    def __init__(self, frames: Iterable[VideoFrame], wanted: Callable[[VideoFrame], bool], depth: int = 2) -> None:
        self._frames, self._wanted = frames, wanted
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, name="microfacs-decode", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self) -> None:
        iterator = iter(self._frames)
        try:
            for frame in iterator:
                if not self._put((frame, frame.bgr() if self._wanted(frame) else None)):
                    break
            else:
                self._put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator: finished here, on the thread that ran it
                close()

    def __iter__(self) -> Iterator[tuple[VideoFrame, np.ndarray | None]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # make room, so that a blocked put sees the stop
                self._queue.get_nowait()
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetch:  # noqa: PYI034 (Python 3.10: no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sniff_container(head: bytes) -> str | None:
    """The container a file's first bytes announce, or None."""
    if len(head) >= 8 and head[4:8] in _MP4_BOXES:
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    if head[:4] == b"RIFF" and head[8:11] == b"AVI":
        return "avi"
    return None


def spool_upload(stream: IO[bytes], max_bytes: int, directory: str | None = None) -> Path:
    """Copy an upload to a temporary file in 1 MiB chunks, refusing it as soon as it passes ``max_bytes``
    (the caller deletes the file). The upload is never held in memory whole."""
    fd, name = tempfile.mkstemp(prefix="microfacs-video-", suffix=".bin", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            size = 0
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, "payload_too_large", f"the video upload exceeds the limit of {max_bytes} bytes")
                out.write(chunk)
        if size == 0:
            raise ApiError(400, "empty_file", "the uploaded file is empty")
        return path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def mp4_truncated(path: str | Path, size: int, max_frames: int = 7200) -> bool:
    """True when an MP4/MOV's top-level boxes claim more bytes than the file has (a cut-off upload); raises
    ``ApiError`` past the bounds of ``app.video.mp4.check_mp4`` (derived from ``max_frames``). Reads the box
    headers and the header boxes only, never the media data."""
    return mp4.check_mp4(
        path,
        size,
        max_boxes=mp4.max_top_level_boxes(max_frames),
        max_metadata_bytes=mp4.max_metadata_bytes(max_frames),
        max_index_entries=mp4.max_index_entries(max_frames),
    ).truncated


def _seconds(value: Any, base: Fraction | None) -> float:
    return float(value * base) if value is not None and base is not None else 0.0


def ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's reason without the file name PyAV puts in the exception's text (a server path)."""
    reason = getattr(exc, "strerror", None)
    return str(reason) if reason else type(exc).__name__


class VideoReader:
    """An opened, checked clip: ``header`` from the container (nothing decoded yet), ``frames()`` decodes
    lazily.

        with VideoReader(path, limits) as video:
            for frame in video.frames():
                image = frame.bgr()
    """

    def __init__(self, path: str | Path, limits: VideoLimits) -> None:
        self.path, self.limits = Path(path), limits
        self.container: Any = None  # the decoding container, opened by frames()
        self.stream: Any = None
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            raise ApiError(400, "invalid_video", f"the video cannot be read: {exc.strerror or 'I/O error'}") from exc
        if size == 0:
            raise ApiError(400, "empty_file", "the uploaded file is empty")
        if size > limits.max_bytes:
            raise ApiError(413, "payload_too_large", f"the video is {size} bytes; the limit is {limits.max_bytes}")
        kind = sniff_container(head)
        if kind is None:
            raise ApiError(
                415, "unsupported_media_type", f"not a video in a supported container ({', '.join(VIDEO_FORMATS)})"
            )
        if kind == "mp4" and mp4_truncated(self.path, size, limits.max_frames):
            raise ApiError(400, "invalid_video", "the video file is truncated (its boxes run past the end of the file)")
        self.demuxer = _FORCED[kind]
        probe = self._open("container")
        try:
            self.header = self._check_header(probe, mp4_indexed=kind == "mp4")
        finally:
            probe.close()

    def _open(self, probe: str | None = None) -> Any:
        """``probe``: "container" (no decoder opened), "codec" (decoders read headers, skip every frame);
        ``None``: for decoding. ``options`` also reach the decoders FFmpeg opens to probe the streams."""
        options = {"max_pixels": str(self.limits.max_pixels)}  # no picture over max_pixels is ever allocated
        if probe == "container":
            options = {"codec_whitelist": NO_DECODER}
        elif probe == "codec":
            options["skip_frame"] = "all"
        try:
            return av.open(str(self.path), mode="r", format=self.demuxer, options=options)
        except (av.error.FFmpegError, ValueError) as exc:
            raise ApiError(
                400, "invalid_video", f"the video cannot be read (truncated or corrupt): {ffmpeg_reason(exc)}"
            ) from exc

    def _check_header(self, container: Any, mp4_indexed: bool) -> VideoHeader:
        if container.format.name not in _DEMUXERS and container.format.name not in _FORCED.values():
            raise ApiError(415, "unsupported_media_type", f"container {container.format.name!r} is not supported")
        if not container.streams.video:
            raise ApiError(400, "invalid_video", "the file has no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width <= 0 or height <= 0:  # not in the container: from the codec's own headers
            with self._open("codec") as again:
                context = again.streams.video[0].codec_context if again.streams.video else None
                width, height = (int(context.width or 0), int(context.height or 0)) if context else (0, 0)
        if width <= 0 or height <= 0:
            raise ApiError(
                400, "invalid_video", "the video stream declares no frame size (or one over the decoder's limit of "
                f"{self.limits.max_pixels} pixels)"
            )
        self.check_size(width, height)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = _seconds(stream.duration, stream.time_base)
        if not duration and container.duration:
            duration = container.duration / av.time_base
        frames = int(stream.frames or 0)
        if not frames and duration and fps:
            frames = round(duration * fps)
        self._check_length(duration, frames)
        counted = False
        # An MP4's sample table is the list of packets the demuxer will give: exact. Elsewhere (Matroska,
        # WebM, AVI, fragmented MP4, no duration), count the packets (demuxing only, no decoding).
        if not (mp4_indexed and stream.frames and duration):
            packets, span = self._count_packets(container, stream, fps)
            counted = True
            frames = packets
            if not duration:
                duration = span
            if not fps and span > 0 and packets > 1:
                fps = (packets - 1) / span
        name = "mkv" if "matroska" in container.format.name else container.format.name.split(",")[0]
        return VideoHeader(name, stream.codec_context.name, width, height, fps, frames, duration, counted)

    def _check_length(self, duration: float, frames: int) -> None:
        limits = self.limits
        if duration > limits.max_duration_s + DURATION_SLACK_S:
            raise ApiError(
                413, "video_too_long", f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:g} s"
            )
        if frames > limits.max_frames:
            raise ApiError(413, "video_too_long", f"the video has {frames} frames; the limit is {limits.max_frames}")

    def _count_packets(self, container: Any, stream: Any, fps: float) -> tuple[int, float]:
        """(packets, seconds from the first to the end of the last) of the video stream, by demuxing only;
        refused as soon as either passes its limit. A read error ends the count (decoding will meet it)."""
        limits, base = self.limits, stream.time_base
        count, first, last = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                count += 1
                if count > limits.max_frames:
                    raise ApiError(413, "video_too_long", f"the video has more than {limits.max_frames} frames")
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or base is None:
                    continue
                first = stamp if first is None else min(first, stamp)
                last = stamp if last is None else max(last, stamp)
                if float((last - first) * base) > limits.max_duration_s + DURATION_SLACK_S:
                    raise ApiError(
                        413, "video_too_long", f"the video lasts more than {limits.max_duration_s:g} s"
                    )
        except av.error.FFmpegError:
            pass
        span = float((last - first) * base) + (1.0 / fps if fps else 0.0) if first is not None else 0.0
        return count, span

    def check_size(self, width: int, height: int) -> None:
        limits = self.limits
        if max(width, height) > limits.max_side or width * height > limits.max_pixels:
            raise ApiError(
                413,
                "video_too_large",
                f"the video is {width}x{height}; limits are {limits.max_side} px per side and "
                f"{limits.max_pixels} pixels",
            )

    def _open_for_decoding(self) -> Any:
        container = self._open()
        self.container = container
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if (width, height) != (self.header.width, self.header.height):
            self.check_size(width, height)
        context = stream.codec_context
        context.options = {**(context.options or {}), "max_pixels": str(self.limits.max_pixels)}
        context.thread_count = self.limits.decode_threads
        stream.thread_type = "AUTO"
        self.stream = stream
        return stream

    def frames(self) -> Iterator[VideoFrame]:
        """Each frame in presentation order, its limits checked as it comes (a header can lie)."""
        limits, start, index = self.limits, None, -1
        fps = self.header.fps or 30.0
        stream = self._open_for_decoding()
        try:
            for frame in self.container.decode(stream):
                index += 1
                if index >= limits.max_frames:
                    raise ApiError(413, "video_too_long", f"the video has more than {limits.max_frames} frames")
                stamp = frame.time
                if stamp is None:
                    t = index / fps
                else:
                    start = stamp if start is None else start
                    t = stamp - start
                if t > limits.max_duration_s + DURATION_SLACK_S:
                    raise ApiError(
                        413, "video_too_long", f"the video lasts more than {limits.max_duration_s:g} s"
                    )
                if frame.width != self.header.width or frame.height != self.header.height:
                    self.check_size(frame.width, frame.height)
                yield VideoFrame(index, round(float(t), 6), frame)
        except av.error.FFmpegError as exc:
            raise ApiError(
                400, "invalid_video", f"the video cannot be decoded past frame {index}: {ffmpeg_reason(exc)}"
            ) from exc
        if index < 0:
            raise ApiError(400, "invalid_video", "the video has no decodable frame (truncated or corrupt)")
        declared = int(stream.frames or 0)  # exact where the container indexes its frames (MP4, MOV)
        if declared and index + 1 < declared * 0.95 - 2:
            raise ApiError(
                400, "invalid_video", f"the video ended after {index + 1} of its {declared} frames (truncated)"
            )

    def close(self) -> None:
        if self.container is not None:
            self.container.close()

    def __enter__(self) -> VideoReader:  # noqa: PYI034 (Python 3.10: no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
