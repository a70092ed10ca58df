"""The work budget of one video request: how much a synchronous ``POST /analyze-video`` may cost, checked
from the header before any frame is decoded and counted again while decoding (a header can lie).

A frame's analysis costs about the same whatever its size (the detector and the mesh run on fixed-size
inputs: a 16x16 frame costs ~10 ms, like a 640x480 one), and every frame is decoded whether it is analysed
or not, at a cost that grows with its pixels. So the budget has four parts, all settings published in
``GET /version``:

* ``max_video_analysed_fps``: analysed frames per second of video. Without ``every`` the stride is the
  smallest that keeps the analysed rate under it (a 1000 fps clip is analysed every 17th frame at the
  default 60); an explicit ``every`` that passes it is refused;
* ``max_video_analysed_frames``: analysed frames per request (``ceil(frames / every)``); without ``every``
  the stride is raised to fit, an explicit one that does not fit is refused;
* ``max_video_decoded_megapixels``: frames x width x height, whatever the stride;
* ``video_timeout_s``: wall-clock time of the whole analysis (probe, decode, tracking, events), checked
  after every frame; past it the analysis stops and the request gets an error, not a partial result (a
  partial series would be easy to mistake for the whole clip).

Errors: 413 ``video_over_budget`` (counts, from the header or while decoding) and 413 ``video_timeout``;
each message names the setting (``MICROFACS_...``) that lifts it, and what the client can change.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from app.errors import ApiError
from app.settings import Settings
from app.video.decode import VideoHeader

MAX_EVERY = 1000  # the `every` query parameter's own bound
RATE_SLACK = 0.01


@dataclass(frozen=True)
class VideoBudget:
    max_analysed_fps: float
    max_analysed_frames: int
    max_decoded_megapixels: float
    timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> VideoBudget:
        return cls(
            max_analysed_fps=settings.max_video_analysed_fps,
            max_analysed_frames=settings.max_video_analysed_frames,
            max_decoded_megapixels=settings.max_video_decoded_megapixels,
            timeout_s=settings.video_timeout_s,
        )


def over_budget(message: str) -> ApiError:
    return ApiError(413, "video_over_budget", message)


def stride_for(header: VideoHeader, every: int | None, budget: VideoBudget) -> int:
    """The stride to analyse ``header``'s clip with: ``every``, or without it the smallest that fits the
    budget. Raises 413 ``video_over_budget`` when the clip cannot fit (decoded pixels), or ``every`` does not."""
    frames = header.frames
    # frames per second of video: counted over the duration where both are known (a variable-rate WebM's
    # nominal rate can be its time base), else the declared rate
    fps = frames / header.duration_s if frames > 1 and header.duration_s > 0 else header.fps
    megapixels = frames * header.width * header.height / 1e6
    if megapixels > budget.max_decoded_megapixels:
        raise over_budget(
            f"decoding the video means {frames} frames of {header.width}x{header.height} = {megapixels:.0f} "
            f"megapixels, over max_video_decoded_megapixels = {budget.max_decoded_megapixels:g} "
            "(MICROFACS_MAX_VIDEO_DECODED_MEGAPIXELS): send a shorter or smaller clip"
        )
    # 1 % slack: a 60 fps clip whose duration is rounded down a little still counts as 60
    for_rate = math.ceil(fps / budget.max_analysed_fps * (1 - RATE_SLACK)) if fps > 0 else 1
    for_frames = math.ceil(frames / budget.max_analysed_frames) if frames > 0 else 1
    needed = max(1, for_rate, for_frames)
    if every is None:
        if needed > MAX_EVERY:
            raise over_budget(
                f"the video ({fps:.4g} fps) needs every >= {needed} to stay within max_video_analysed_fps = "
                f"{budget.max_analysed_fps:g} (MICROFACS_MAX_VIDEO_ANALYSED_FPS); every is at most {MAX_EVERY}"
            )
        return needed
    if every < for_rate:
        raise over_budget(
            f"every={every} analyses {fps / every:.1f} frames per second of this {fps:.4g} fps video, over "
            f"max_video_analysed_fps = {budget.max_analysed_fps:g} (MICROFACS_MAX_VIDEO_ANALYSED_FPS): use "
            f"every >= {for_rate}, or leave every out to have it chosen"
        )
    if every < for_frames:
        raise over_budget(
            f"every={every} analyses {math.ceil(frames / every)} of the video's {frames} frames, over "
            f"max_video_analysed_frames = {budget.max_analysed_frames} (MICROFACS_MAX_VIDEO_ANALYSED_FRAMES): "
            f"use every >= {for_frames}, or leave every out to have it chosen, or send a shorter clip"
        )
    return every


class BudgetMeter:
    """Counts the work while the clip decodes; raises as soon as a part of the budget is spent."""

    def __init__(self, budget: VideoBudget, started: float | None = None) -> None:
        self.budget = budget
        self.deadline = (time.monotonic() if started is None else started) + budget.timeout_s
        self.decoded_pixels = 0
        self.analysed = 0

    def check_time(self, frame: int) -> None:
        if time.monotonic() > self.deadline:
            raise ApiError(
                413, "video_timeout",
                f"the analysis passed video_timeout_s = {self.budget.timeout_s:g} s (MICROFACS_VIDEO_TIMEOUT_S) at "
                f"frame {frame} and was stopped: send a shorter clip, a larger every, or a smaller max_faces",
            )

    def decoded(self, pixels: int, frame: int) -> None:
        self.decoded_pixels += pixels
        if self.decoded_pixels > self.budget.max_decoded_megapixels * 1e6:
            raise over_budget(
                f"the video decoded past max_video_decoded_megapixels = {self.budget.max_decoded_megapixels:g} "
                f"(MICROFACS_MAX_VIDEO_DECODED_MEGAPIXELS) at frame {frame} (its header declared less)"
            )
        self.check_time(frame)

    def analysing(self, frame: int) -> None:
        self.analysed += 1
        if self.analysed > self.budget.max_analysed_frames:
            raise over_budget(
                f"the video has more frames to analyse than max_video_analysed_frames = "
                f"{self.budget.max_analysed_frames} (MICROFACS_MAX_VIDEO_ANALYSED_FRAMES) at frame {frame} (its "
                "header declared fewer): use a larger every"
            )
