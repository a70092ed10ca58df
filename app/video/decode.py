"""Video decode stage: check a clip against the published limits from its container header, then decode it
frame by frame with PyAV (FFmpeg). Nothing holds more than the current frame: the caller gets one
``VideoFrame`` at a time and keeps only the numbers it derives from it.

Errors are the image endpoints' JSON errors (``ApiError``): ``unsupported_media_type`` (415, not a
container we accept), ``invalid_video`` (400, unreadable, truncated, no video stream),
``video_too_long`` (413, duration or frame count over the limit), ``video_too_large`` (413, resolution),
``payload_too_large`` (413, upload size), ``empty_file`` (400).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from app.errors import ApiError
from app.settings import Settings

VIDEO_FORMATS = ("mp4", "mov", "webm", "mkv", "avi")
# FFmpeg demuxer names (PyAV's ``container.format.name``) of the formats above.
_DEMUXERS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"}
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

    @classmethod
    def of(cls, settings: Settings) -> VideoLimits:
        return cls(
            max_bytes=settings.max_video_upload_bytes,
            max_duration_s=settings.max_video_duration_s,
            max_frames=settings.max_video_frames,
            max_side=settings.max_video_side,
            max_pixels=settings.max_video_pixels,
        )


@dataclass(frozen=True)
class VideoHeader:
    """What the container declares (before decoding). ``frames`` is 0 when it does not say."""

    format: str
    codec: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float


@dataclass(frozen=True)
class VideoFrame:
    index: int  # 0-based index among the video's frames, in presentation order
    t: float  # seconds from the first frame, from the frame's timestamp
    frame: av.VideoFrame

    def bgr(self) -> np.ndarray:
        return self.frame.to_ndarray(format="bgr24")


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


def mp4_truncated(path: Path, size: int) -> bool:
    """True when an MP4/MOV's top-level boxes claim more bytes than the file has (a cut-off upload). Reads
    only the 8-16 byte box headers."""
    offset = 0
    with open(path, "rb") as fh:
        while offset + 8 <= size:
            fh.seek(offset)
            header = fh.read(16)
            box_size = int.from_bytes(header[:4], "big")
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # the last box, to the end of the file
                return False
            if box_size < 8:
                return True
            offset += box_size
    return offset != size


def _seconds(value: Any, base: Fraction | None) -> float:
    return float(value * base) if value is not None and base is not None else 0.0


class VideoReader:
    """An opened, checked clip: ``header`` from the container, ``frames()`` decodes lazily.

        with VideoReader(path, limits) as video:
            for frame in video.frames():
                image = frame.bgr()
    """

    def __init__(self, path: str | Path, limits: VideoLimits) -> None:
        self.path, self.limits = Path(path), limits
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            raise ApiError(400, "invalid_video", f"cannot read {path}: {exc.strerror or exc}") from exc
        if size == 0:
            raise ApiError(400, "empty_file", "the uploaded file is empty")
        if size > limits.max_bytes:
            raise ApiError(413, "payload_too_large", f"the video is {size} bytes; the limit is {limits.max_bytes}")
        if sniff_container(head) is None:
            raise ApiError(
                415, "unsupported_media_type", f"not a video in a supported container ({', '.join(VIDEO_FORMATS)})"
            )
        if sniff_container(head) == "mp4" and mp4_truncated(self.path, size):
            raise ApiError(400, "invalid_video", "the video file is truncated (its boxes run past the end of the file)")
        try:
            self.container = av.open(str(self.path), mode="r")
        except (av.error.FFmpegError, ValueError) as exc:
            raise ApiError(400, "invalid_video", f"the video cannot be read (truncated or corrupt): {exc}") from exc
        try:
            self.header = self._check_header()
        except BaseException:
            self.container.close()
            raise

    def _check_header(self) -> VideoHeader:
        container = self.container
        if container.format.name not in _DEMUXERS:
            raise ApiError(415, "unsupported_media_type", f"container {container.format.name!r} is not supported")
        if not container.streams.video:
            raise ApiError(400, "invalid_video", "the file has no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width <= 0 or height <= 0:
            raise ApiError(400, "invalid_video", "the video stream declares no frame size")
        self.check_size(width, height)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = _seconds(stream.duration, stream.time_base)
        if not duration and container.duration:
            duration = container.duration / av.time_base
        frames = int(stream.frames or 0)
        if not frames and duration and fps:
            frames = round(duration * fps)
        limits = self.limits
        if duration > limits.max_duration_s + DURATION_SLACK_S:
            raise ApiError(
                413, "video_too_long", f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:g} s"
            )
        if frames > limits.max_frames:
            raise ApiError(413, "video_too_long", f"the video has {frames} frames; the limit is {limits.max_frames}")
        stream.thread_type = "AUTO"
        self.stream = stream
        name = "mkv" if "matroska" in container.format.name else container.format.name.split(",")[0]
        return VideoHeader(name, stream.codec_context.name, width, height, fps, frames, duration)

    def check_size(self, width: int, height: int) -> None:
        limits = self.limits
        if max(width, height) > limits.max_side or width * height > limits.max_pixels:
            raise ApiError(
                413,
                "video_too_large",
                f"the video is {width}x{height}; limits are {limits.max_side} px per side and "
                f"{limits.max_pixels} pixels",
            )

    def frames(self) -> Iterator[VideoFrame]:
        """Each frame in presentation order, its limits checked as it comes (a header can lie)."""
        limits, start, index = self.limits, None, -1
        fps = self.header.fps or 30.0
        try:
            for frame in self.container.decode(self.stream):
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
            raise ApiError(400, "invalid_video", f"the video cannot be decoded past frame {index}: {exc}") from exc
        if index < 0:
            raise ApiError(400, "invalid_video", "the video has no decodable frame (truncated or corrupt)")
        declared = int(self.stream.frames or 0)  # exact where the container indexes its frames (MP4, MOV)
        if declared and index + 1 < declared * 0.95 - 2:
            raise ApiError(
                400, "invalid_video", f"the video ended after {index + 1} of its {declared} frames (truncated)"
            )

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:  # noqa: PYI034 (Python 3.10: no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
