"""The whole analysis of one video, in one object: the /analyze-video route, the CLI, the benchmark, the
spotting evaluation and the tests all call it.

    decode (PyAV, frame by frame, limits) -> track (ROI from the previous landmarks, detection only when
    needed) -> per-track signals (AU probabilities, expression scores; smoothed pose and box) ->
    per-person baseline -> events (onset, apex, offset, micro)

    from app.analyzer import Analyzer
    from app.video.analyze import VideoAnalyzer
    video = VideoAnalyzer(Analyzer())
    result = video.analyze("clip.mp4", video.options(every=2))
    for track in result.tracks:
        print(track.track_id, [(e.name, e.onset_s, e.micro) for e in track.events])

Only numbers are kept per analysed frame (never the pixels), so memory does not grow with the clip's
resolution, and a 120 s clip holds a few thousand small records.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Protocol, TypeVar

import numpy as np

from app.analyzer import Analyzer, FaceOptions, Timings
from app.errors import ApiError
from app.reference import relative_au_probability, track_reference
from app.respond import box_out, expression_out, unit_interval
from app.schemas import (
    FrameExpression,
    Pose,
    TrackBaseline,
    TrackFrame,
    VideoAnalysisResponse,
    VideoEvent,
    VideoInfo,
    VideoTrack,
)
from app.video.budget import BudgetMeter, VideoBudget, stride_for
from app.video.decode import Prefetch, VideoFrame, VideoHeader, VideoLimits, VideoReader, spool_upload
from app.video.events import track_events
from app.video.summary import au_thresholds, track_summary
from app.video.tracking import FrameRecord, Track, Tracker

T = TypeVar("T")
FrameCallback = Callable[[int, float, np.ndarray, list[tuple[int, FrameRecord]]], None]
# On an accelerator (MICROFACS_PROVIDERS=cuda...), the AU and expression heads read the faces of this many frames in
# one call (app/video/tracking.py: Tracker.flush); on the CPU each frame's faces are one call (a batch of frames
# gains little there). MICROFACS_VIDEO_BATCH_FRAMES overrides both.
DEVICE_BATCH_FRAMES = 16


class RecordSink(Protocol):
    """Takes each confirmed track's records as soon as they are final (after each analysed frame), so that the
    tracker keeps none: a job writes them to disk as it goes (``app.jobs.stream``)."""

    def add(self, track_id: int, records: list[FrameRecord]) -> None: ...

    def advance(self, frame: int) -> None: ...


@dataclass(frozen=True)
class VideoOptions:
    """The /analyze-video query parameters."""

    face: FaceOptions = field(default_factory=FaceOptions)
    every: int | None = 1  # None: the smallest stride within the budget (1 without a budget)
    series: bool = True
    heads: tuple[str, ...] = ("au", "expression")
    max_frames: int | None = None  # stop after this many analysed frames (the CLI's --max-frames)
    # "auto": each track read relative to its own most neutral-looking frames, as photos are against a reference
    baseline: str = "none"


class VideoAnalyzer:
    """Thread-safe like ``Analyzer`` (each call has its own tracker); build one per process."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.analyzer = analyzer
        self.settings = analyzer.settings

    def options(
        self,
        every: int | None = 1,
        max_faces: int | None = None,
        side_face_filter: bool = True,
        occlusion_filter: bool = True,
        series: bool = True,
        min_face_size: int | None = None,
        heads: Collection[str] = ("au", "expression"),
        max_frames: int | None = None,
        baseline: str = "none",
    ) -> VideoOptions:
        if every is not None and not 1 <= every <= 1000:
            raise ApiError(422, "invalid_request", "every: between 1 and 1000")
        if baseline not in ("none", "auto"):
            raise ApiError(422, "invalid_request", "baseline: none or auto")
        face = self.analyzer.options(side_face_filter, occlusion_filter, max_faces, min_face_size)
        self.analyzer.chosen_heads(heads)  # unknown heads are a 422 before anything is decoded
        return VideoOptions(face=face, every=every, series=series, heads=tuple(heads), max_frames=max_frames,
                            baseline=baseline)

    @property
    def batch_frames(self) -> int:
        """Frames whose faces the heads read in one call (``MICROFACS_VIDEO_BATCH_FRAMES``; by default
        ``DEVICE_BATCH_FRAMES`` when the models run on an accelerator, else 1: each frame on its own)."""
        if self.settings.video_batch_frames is not None:
            return self.settings.video_batch_frames
        runtime = getattr(self.analyzer.models, "runtime", None)
        return DEVICE_BATCH_FRAMES if runtime is not None and runtime.on_device else 1

    @property
    def limits(self) -> VideoLimits:
        return VideoLimits.of(self.settings)

    # -- entry points ---------------------------------------------------------------------------------------

    def analyze(
        self,
        source: str | Path,
        options: VideoOptions | None = None,
        request_id: str | None = None,
        on_frame: FrameCallback | None = None,
        budget: VideoBudget | None = None,
        cancel: threading.Event | None = None,
        batch_frames: int | None = None,
    ) -> VideoAnalysisResponse:
        """Analyse a video file (checked against the video limits before decoding). ``on_frame(frame, t, image,
        faces)`` is called after each analysed frame with the confirmed tracks seen there ([(track_id,
        FrameRecord)]), e.g. to draw them; the image is not kept. A callback that only counts frames passes
        ``batch_frames`` (``self.batch_frames``): the heads may then run later, beside the next frames (its
        records' readings are not filled yet; the answer's are). With a ``budget`` (the server's, see
        ``app.video.budget``) the stride is checked or chosen from the header before any frame is decoded,
        and the work and the wall-clock time are counted while decoding; without one only the limits apply.
        Once ``cancel`` is set, the analysis stops at the next frame (503 ``shutting_down``: the server's
        shutdown)."""
        started = time.monotonic()
        options = options or VideoOptions()
        with VideoReader(source, self.limits) as video:
            meter = None
            if budget is not None:
                options = replace(options, every=stride_for(video.header, options.every, budget))
                meter = BudgetMeter(budget, started)
                meter.check_time(-1)
            return self.analyze_frames(video.frames(), video.header, options, request_id, on_frame, meter, cancel,
                                       batch_frames)

    def analyze_upload(
        self,
        stream: IO[bytes],
        options: VideoOptions | None = None,
        request_id: str | None = None,
        budget: VideoBudget | None = None,
        cancel: threading.Event | None = None,
        directory: str | Path | None = None,
    ) -> VideoAnalysisResponse:
        """An upload: spooled to a temporary file in ``directory`` (bounded, checked while copying), analysed
        within ``budget`` (default: the settings' work budget), deleted (also when the analysis fails or is
        cancelled)."""
        path = spool_upload(stream, self.limits.max_bytes, None if directory is None else str(directory))
        try:
            return self.analyze(path, options, request_id, budget=budget or VideoBudget.of(self.settings),
                                cancel=cancel)
        finally:
            path.unlink(missing_ok=True)

    def analyze_frames(
        self,
        frames: Iterable[VideoFrame],
        header: VideoHeader,
        options: VideoOptions | None = None,
        request_id: str | None = None,
        on_frame: FrameCallback | None = None,
        meter: BudgetMeter | None = None,
        cancel: threading.Event | None = None,
        batch_frames: int | None = None,
        sink: RecordSink | None = None,
    ) -> VideoAnalysisResponse:
        """Frames in presentation order (``VideoReader.frames()``); every ``options.every``-th is analysed
        (``meter``: counts the work against the budget and stops it). ``cancel``, checked before each frame,
        stops it (503 ``shutting_down``). ``batch_frames``: frames whose faces the heads read in one call (default:
        ``self.batch_frames``, or 1 with an ``on_frame``, whose records then already hold the frame's readings; a
        callback that only counts frames may ask for ``self.batch_frames``). With a ``sink`` each confirmed track's
        records go to it once final (their heads run) and the tracker keeps none (memory does not grow with the
        clip): the answer then has no ``tracks``, the sink's owner builds them (``app.jobs.stream.ResultWriter``)."""
        options = options or VideoOptions()
        s = self.settings
        # Unless an on_frame callback reads each frame's readings at once, the heads run on a thread of their own
        # beside the next frames' decoding and face stage when the analysis may use two cores or more.
        deferrable = on_frame is None or batch_frames is not None
        tracker = Tracker(
            self.analyzer,
            options.face,
            options.heads,
            redetect_every=s.video_redetect_every,
            confirm_hits=s.video_confirm_hits,
            max_lost_s=s.video_max_lost_s,
            batch_frames=batch_frames or (1 if on_frame is not None else self.batch_frames),
            overlap=deferrable and (s.analysis_threads or 1) > 1,
        )
        every = options.every or 1
        # With the heads beside (two cores), the next frames are decoded ahead on a thread of their own too.
        ahead = Prefetch(frames, lambda f: f.index % every == 0) if tracker.heads_thread is not None else None
        try:
            pairs = ahead if ahead is not None else ((f, None) for f in frames)
            return self._frame_loop(tracker, pairs, header, options, every, request_id, on_frame, meter, cancel, sink)
        finally:
            if ahead is not None:
                ahead.close()  # before the reader is closed: the decoding thread reads it
            tracker.close()

    def _frame_loop(self, tracker: Tracker, frames: Iterable[tuple[VideoFrame, np.ndarray | None]],
                    header: VideoHeader, options: VideoOptions, every: int, request_id: str | None,
                    on_frame: FrameCallback | None, meter: BudgetMeter | None, cancel: threading.Event | None,
                    sink: RecordSink | None) -> VideoAnalysisResponse:
        """``analyze_frames``' loop over (frame, its BGR image if decoded ahead, else None), analysing every
        ``every``-th."""
        fps = header.fps or 30.0
        timings = tracker.timings
        start = time.perf_counter()
        decoded = analysed = 0
        last_t, last_index = 0.0, -1
        for frame, ready in _timed(frames, timings, "decode"):
            if cancel is not None and cancel.is_set():
                raise ApiError(503, "shutting_down", "the server is shutting down; retry the request")
            decoded += 1
            last_t = frame.t
            if meter is not None:
                meter.decoded(frame.pixels, frame.index)
            if frame.index % every:
                continue
            if options.max_frames is not None and analysed >= options.max_frames:
                break
            if meter is not None:
                meter.analysing(frame.index)
            with timings.stage("decode"):
                image = ready if ready is not None else frame.bgr()
            tracker.step(image, frame.index, frame.t)
            analysed += 1
            last_index = frame.index
            if on_frame is not None:
                seen = [(tr.track_id, tr.records[-1]) for tr in tracker.live
                        if tr.track_id is not None and tr.records and tr.records[-1].frame == frame.index]
                on_frame(frame.index, frame.t, image, seen)
            if sink is not None:  # the records whose heads ran: final
                drain(tracker, sink, tracker.settled_frame)
        if sink is not None:  # the last frames' deferred heads, then their records
            tracker.flush()
            drain(tracker, sink, last_index)
        with timings.stage("events"):
            tracks = [] if sink is not None else [self._track_out(track, options) for track in tracker.tracks()]
        timings.ms["total"] = (time.perf_counter() - start) * 1000.0
        duration = header.duration_s or (last_t + 1.0 / fps if decoded else 0.0)
        return VideoAnalysisResponse(
            request_id=request_id or uuid.uuid4().hex,
            video=VideoInfo(
                frames=decoded,
                analysed_frames=analysed,
                fps=round(fps, 4),
                width=header.width,
                height=header.height,
                duration_s=round(duration, 4),
            ),
            tracks=tracks,
            timings_ms=timings.rounded(),
            profile=self.analyzer.profile,
        )

    # -- per track ------------------------------------------------------------------------------------------

    def _track_out(self, track: Track, options: VideoOptions) -> VideoTrack:
        records = track.records
        assert track.track_id is not None
        fields: dict = {}
        if options.baseline == "auto":
            records, fields["baseline"] = self.relative_records(records, options)
        events = self.events(records)
        return VideoTrack(
            track_id=track.track_id,
            first_frame=records[0].frame,
            last_frame=records[-1].frame,
            frames=[frame_out(r) for r in records] if options.series else [],
            events=events,
            summary=track_summary(records, events, au_thresholds(self.analyzer)),
            **fields,
        )

    def relative_records(self, records: list[FrameRecord], options: VideoOptions
                         ) -> tuple[list[FrameRecord], TrackBaseline | None]:
        """The track's frames read relative to its own most neutral-looking frames (``app.reference``: the same
        rule as a photo against a reference photo); absolute frames when no frame has both readings."""
        analyzer = self.analyzer
        aus = [None if r.action_units is None else np.array(list(r.action_units.values())) for r in records]
        found = track_reference([r.expression_probs for r in records], aus, self.settings.baseline_fraction,
                                analyzer.reference_models())
        if found is None:
            return records, None
        reference, chosen = found
        prior = options.face.expression_prior
        out = []
        for r, au_probability in zip(records, aus):
            expression, units = r.expression, r.action_units
            e = None if expression is None else analyzer.relative_reading(r.expression_probs, au_probability,
                                                                          reference, prior)
            if e is not None:
                expression = (e.label, e.confidence, e.scores)
            if units is not None:
                rel = relative_au_probability(np.array(list(units.values())), reference)
                units = {au: float(p) for au, p in zip(units, rel)}
            out.append(replace(r, expression=expression, action_units=units))
        frames = [records[i].frame for i in chosen]
        return out, TrackBaseline(frames=len(frames), first_frame=min(frames), last_frame=max(frames),
                                  expression=expression_out(analyzer.reference_reading(reference, prior)))

    def events(self, records: list[FrameRecord]) -> list[VideoEvent]:
        """AU and expression events of one track, by onset."""
        signals: dict[tuple[str, str], np.ndarray] = {}
        au_names = next((list(r.action_units) for r in records if r.action_units), [])
        for name in au_names:
            values = [np.nan if r.action_units is None else r.action_units.get(name, np.nan) for r in records]
            signals["au", name] = np.array(values, dtype=np.float64)
        labels = next((list(r.expression[2]) for r in records if r.expression), [])
        for name in labels:
            values = [np.nan if r.expression is None else r.expression[2].get(name, np.nan) for r in records]
            signals["expression", name] = np.array(values, dtype=np.float64)
        return track_events([r.frame for r in records], [r.t for r in records], signals, self.settings)


def drain(tracker: Tracker, sink: RecordSink, frame: int) -> None:
    """Hands the final records (their heads ran) of every confirmed track to ``sink`` (a tentative track keeps its
    few until it is confirmed or dropped) and forgets the tracks that ended; ``frame``: every record up to it is
    final."""
    for track in [*tracker.finished, *tracker.live]:
        if track.track_id is not None and track.records:
            final = next((n for n, r in enumerate(track.records) if not r.final), len(track.records))
            if final:
                sink.add(track.track_id, track.records[:final])
                track.records = track.records[final:]
    tracker.finished[:] = [track for track in tracker.finished if track.records]
    sink.advance(frame)


def _timed(frames: Iterable[T], timings: Timings, stage: str) -> Iterator[T]:
    iterator = iter(frames)
    while True:
        with timings.stage(stage):
            frame = next(iterator, None)
        if frame is None:
            return
        yield frame


def frame_out(r: FrameRecord) -> TrackFrame:
    expression = None
    if r.expression is not None:
        label, confidence, scores = r.expression
        expression = FrameExpression(
            label=label, confidence=unit_interval(confidence), scores={k: unit_interval(v) for k, v in scores.items()}
        )
    return TrackFrame(
        frame=r.frame,
        t=round(r.t, 4),
        box=box_out(r.box),
        confidence=unit_interval(r.confidence),
        pose=Pose(yaw=round(float(r.pose[0]), 2), pitch=round(float(r.pose[1]), 2), roll=round(float(r.pose[2]), 2)),
        filtered=r.filtered,
        filter_reasons=r.filter_reasons,
        action_units=None if r.action_units is None else {k: unit_interval(v) for k, v in r.action_units.items()},
        expression=expression,
    )
