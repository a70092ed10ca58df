"""POST /analyze-video: face tracks, AU and expression time series and events of a short clip. Thin: the
work is ``app.video.analyze.VideoAnalyzer`` (the CLI and the tests run the same object)."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from app.analyzer import Analyzer
from app.errors import request_id_of
from app.routes.deps import analyzer_of, multipart_body, read_upload
from app.schemas import VideoAnalysisResponse
from app.video.analyze import VideoAnalyzer

router = APIRouter(tags=["video"])


async def video_analyzer_of(request: Request, analyzer: Annotated[Analyzer, Depends(analyzer_of)]) -> VideoAnalyzer:
    video = getattr(request.app.state, "video_analyzer", None)
    if video is None or video.analyzer is not analyzer:
        video = request.app.state.video_analyzer = VideoAnalyzer(analyzer)
    return video


@router.post("/analyze-video", response_model=VideoAnalysisResponse,
             openapi_extra=multipart_body("the clip: MP4, MOV, WebM, MKV or AVI"))
async def analyze_video(
    request: Request,
    video: Annotated[VideoAnalyzer, Depends(video_analyzer_of)],
    every: Annotated[int | None, Query(
        ge=1, le=1000, description="analyse every n-th frame; left out: the smallest stride within the work budget "
        "(1 for most clips; GET /version: max_video_analysed_fps, max_video_analysed_frames)"
    )] = None,
    max_faces: Annotated[int | None, Query(ge=1, description="at most this many faces (tracks) at a time")] = None,
    side_face_filter: Annotated[
        bool, Query(description="mark frames whose |yaw| or |pitch| exceed the thresholds")
    ] = True,
    occlusion_filter: Annotated[bool, Query(description="mark frames with an occluded face region")] = True,
    series: Annotated[bool, Query(description="include each track's per-frame data (else tracks and events)")] = True,
    baseline: Annotated[Literal["none", "auto"], Query(
        description="auto: read each track relative to its own most neutral-looking frames (the photo endpoints' "
        "reference rule, models/EXPRESSION.md); the track says which frames in `baseline`")] = "none",
) -> Response:
    """Decode the clip as a stream (limits in GET /version, checked from its header before decoding), track
    each face with a stable ``track_id`` (confirmed after a few consistent detections), and return per
    track its per-frame AU probabilities, expression, smoothed pose and box, and its events: departures of
    an AU or a non-neutral expression from the person's own baseline, with onset, apex, offset and
    ``micro`` (<= 0.5 s). Frame numbers are 0-based; seconds come from the video's timestamps.

    Each request has a work budget (GET /version: analysed frames per second of video and per request,
    decoded megapixels, wall-clock seconds), checked from the header before any frame is decoded: past it,
    413 ``video_over_budget`` or ``video_timeout``, the message naming the setting."""
    options = video.options(every, max_faces, side_face_filter, occlusion_filter, series, baseline=baseline)
    file = await read_upload(request)  # only now, after the parameters (and the router's API key) are checked

    state = request.app.state
    work_dir = getattr(state, "work_dir", None)  # this worker's (app.lifecycle), removed at shutdown

    def analyse() -> Response:  # in the analysis pool, serialisation included (series can be large)
        result = video.analyze_upload(file.file, options, request_id_of(request), cancel=state.stopping,
                                      directory=None if work_dir is None else work_dir.path)
        request.state.faces = len(result.tracks)  # for the access log
        return Response(result.model_dump_json(by_alias=True), media_type="application/json")

    try:
        admission = getattr(request.app.state, "video_admission", None) or request.app.state.admission
        return await admission.run(request, analyse)
    finally:
        await request.close()
