"""POST /analyze-video and app/video/: streaming decode and its limits, tracking on real clips, smoothing,
baseline and event spotting."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.errors import ApiError
from app.main import create_app
from app.settings import Settings
from app.video.analyze import VideoAnalyzer
from app.video.decode import VideoLimits, VideoReader, mp4_truncated, sniff_container, spool_upload
from app.video.events import EventParams, baseline, spot
from app.video.smoothing import OneEuroFilter
from app.video.tracking import Tracker
from tests.helpers import SAMPLES, encode, requires_data

PARAMS = EventParams(
    on=0.25, off=0.12, min_s=0.1, merge_gap_s=0.15, baseline_window_s=10.0, baseline_percentile=20.0, micro_max_s=0.5
)


def sample(name: str) -> bytes:
    return (requires_data(SAMPLES / name)).read_bytes()


def post_video(client: TestClient, data: bytes, filename: str = "clip.mp4", **params):
    return client.post("/analyze-video", files={"file": (filename, data, "video/mp4")}, params=params)


@pytest.fixture(scope="session")
def video(analyzer) -> VideoAnalyzer:
    return VideoAnalyzer(analyzer)


# -- event spotting (pure numpy) ------------------------------------------------------------------------------


def bump(t: np.ndarray, onset: float, rise: float, hold: float, fall: float, height: float) -> np.ndarray:
    """0 before ``onset``, linear rise, plateau, linear fall back to 0."""
    up = np.clip((t - onset) / rise, 0, 1)
    down = np.clip(1 - (t - onset - rise - hold) / fall, 0, 1)
    return height * np.minimum(up, down)


def test_spot_finds_one_micro_and_one_macro_event_with_onset_apex_offset():
    t = np.arange(0, 8, 1 / 30)
    signal = 0.05 + bump(t, 1.0, 0.1, 0.1, 0.15, 0.6) + bump(t, 4.0, 0.4, 1.0, 0.4, 0.5)
    events = spot(signal, t, PARAMS)
    assert len(events) == 2
    micro, macro = events
    assert 1.0 <= micro.onset_s <= 1.1 and 1.2 <= micro.offset_s <= 1.35
    assert micro.onset_s <= micro.apex_s <= micro.offset_s
    assert micro.duration_s <= 0.5 < macro.duration_s
    assert 4.0 <= macro.onset_s <= 4.3 and 5.5 <= macro.offset_s <= 5.8
    assert macro.peak == pytest.approx(0.55, abs=0.02)


def test_spot_ignores_noise_and_a_constant_offset_and_hysteresis_keeps_one_event():
    rng = np.random.default_rng(0)
    t = np.arange(0, 6, 1 / 30)
    assert spot(0.4 + rng.normal(0, 0.03, t.size), t, PARAMS) == []  # a high resting level is the baseline
    signal = 0.1 + bump(t, 2.0, 0.3, 1.5, 0.3, 0.6)
    signal[(t > 2.8) & (t < 2.9)] -= 0.4  # a dip below `on` but above `off` must not split the event
    events = spot(signal, t, PARAMS)
    assert len(events) == 1 and events[0].duration_s > 1.5


def test_spot_skips_filtered_samples_and_baseline_is_a_low_percentile():
    t = np.arange(0, 4, 1 / 30)
    signal = 0.1 + bump(t, 1.5, 0.2, 0.5, 0.2, 0.7)
    signal[(t > 1.6) & (t < 2.2)] = np.nan  # the face was filtered during the event: nothing to spot there
    assert all(e.offset_s < 1.62 or e.onset_s > 2.18 for e in spot(signal, t, PARAMS))
    values = np.r_[np.zeros(80), np.ones(20)]
    assert baseline(values, np.arange(100) / 30, 10.0, 20.0) == pytest.approx(np.zeros(100))


def test_one_euro_filter_smooths_jitter_and_follows_a_step():
    rng = np.random.default_rng(1)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    t = np.arange(0, 2, 1 / 30)
    raw = np.where(t < 1, 0.0, 10.0) + rng.normal(0, 0.5, t.size)
    out = np.array([f(np.array([x]), ti)[0] for x, ti in zip(raw, t, strict=True)])
    still = t < 1
    assert out[still].std() < raw[still].std() / 2
    assert abs(out[-1] - 10.0) < 1.0


# -- decode: containers and limits ---------------------------------------------------------------------------

LIMITS = VideoLimits(max_bytes=1 << 30, max_duration_s=120, max_frames=7200, max_side=1920, max_pixels=1920 * 1080)


def test_sniff_and_truncation_checks(tmp_path):
    data = sample("single_face.mp4")
    assert sniff_container(data[:16]) == "mp4"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + bytes(12)) == "mkv"
    assert sniff_container(encode(np.zeros((32, 32, 3), np.uint8))[:16]) is None
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    assert not mp4_truncated(whole, len(data))
    assert mp4_truncated(cut, len(data) // 2)


def test_reader_streams_frames_with_timestamps():
    with VideoReader(requires_data(SAMPLES / "single_face.mp4"), LIMITS) as video:
        assert (video.header.width, video.header.height, video.header.frames) == (640, 360, 72)
        assert video.header.fps == pytest.approx(30.0)
        frames = [(f.index, f.t) for f in video.frames()]
    assert [i for i, _ in frames] == list(range(72))
    assert frames[0][1] == 0.0 and frames[-1][1] == pytest.approx(71 / 30, abs=1e-3)


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        (LIMITS.__class__(**{**LIMITS.__dict__, "max_duration_s": 1.0}), "video_too_long"),
        (LIMITS.__class__(**{**LIMITS.__dict__, "max_frames": 50}), "video_too_long"),
        (LIMITS.__class__(**{**LIMITS.__dict__, "max_side": 320}), "video_too_large"),
        (LIMITS.__class__(**{**LIMITS.__dict__, "max_bytes": 100_000}), "payload_too_large"),
    ],
)
def test_reader_refuses_clips_over_the_limits_before_decoding(limits, code):
    with pytest.raises(ApiError) as info:
        VideoReader(requires_data(SAMPLES / "single_face.mp4"), limits)
    assert info.value.code == code and info.value.status == 413


def test_spool_upload_is_bounded():
    with pytest.raises(ApiError) as info:
        spool_upload(io.BytesIO(b"x" * 3_000_000), max_bytes=2_000_000)
    assert info.value.code == "payload_too_large"
    path = spool_upload(io.BytesIO(b"abc" * 1000), max_bytes=2_000_000)
    try:
        assert path.read_bytes() == b"abc" * 1000
    finally:
        path.unlink()


# -- tracking on real clips ----------------------------------------------------------------------------------


def test_single_face_clip_gives_one_track_through_the_clip(video):
    result = video.analyze(requires_data(SAMPLES / "single_face.mp4"), video.options())
    assert result.video.frames == 72 and result.video.analysed_frames == 72
    assert len(result.tracks) == 1
    track = result.tracks[0]
    assert track.track_id == 0 and track.first_frame == 0 and track.last_frame == 71
    assert [f.frame for f in track.frames] == list(range(72))  # seen in every frame: no gap, no id switch
    assert all(f.action_units and f.expression for f in track.frames if not f.filtered)
    assert all(e.name != "neutral" for e in track.events)


def test_wolfgang_clip_gives_one_confirmed_track_without_id_switch(video):
    result = video.analyze(requires_data(SAMPLES / "WolfgangLanger_Pexels.mp4"), video.options(every=3))
    assert result.video.frames == 472 and result.video.analysed_frames == 158
    assert [t.track_id for t in result.tracks] == [0]
    track = result.tracks[0]
    assert track.first_frame == 0 and track.last_frame == 471
    assert len(track.frames) >= 150
    assert all(f.frame % 3 == 0 for f in track.frames)


def test_title_text_never_becomes_a_track(video):
    """no_face.mp4's title text fools the detector for a few frames (one of them with a confident mesh)."""
    result = video.analyze(requires_data(SAMPLES / "no_face.mp4"), video.options())
    assert result.video.analysed_frames == result.video.frames > 90
    assert result.tracks == []


def test_tracking_reuses_landmarks_instead_of_detecting_every_frame(analyzer):
    tracker = Tracker(analyzer, analyzer.options(), ("au",), redetect_every=10, confirm_hits=3, max_lost_s=1.0)
    with VideoReader(requires_data(SAMPLES / "single_face.mp4"), LIMITS) as clip:
        for frame in clip.frames():
            tracker.step(frame.bgr(), frame.index, frame.t)
    assert len(tracker.tracks()) == 1
    # 3 frames to confirm, then one detection every 10 frames
    assert tracker.detections_run <= 3 + 72 // 10 + 1


# -- the endpoint --------------------------------------------------------------------------------------------


def test_analyze_video_endpoint_contract(client):
    response = post_video(client, sample("single_face.mp4"), every=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"request_id", "video", "tracks", "timings_ms", "profile"} and body["profile"] == "research"
    assert body["video"] == {"frames": 72, "analysed_frames": 24, "fps": 30.0, "width": 640, "height": 360,
                             "duration_s": pytest.approx(2.4, abs=0.05)}
    (track,) = body["tracks"]
    assert track["track_id"] == 0 and track["first_frame"] == 0 and track["last_frame"] == 69
    frame = track["frames"][1]
    assert frame["frame"] == 3 and frame["t"] == pytest.approx(0.1, abs=1e-3)
    assert set(frame) >= {"frame", "t", "box", "confidence", "pose", "filtered", "filter_reasons", "action_units",
                          "expression"}
    assert set(frame["box"]) == {"x", "y", "width", "height"} and set(frame["pose"]) == {"yaw", "pitch", "roll"}
    assert "AU12" in frame["action_units"] and frame["expression"]["label"]
    for event in track["events"]:
        assert event["kind"] in ("au", "expression") and event["name"] != "neutral"
        assert event["onset_frame"] <= event["apex_frame"] <= event["offset_frame"]
        assert event["micro"] == (event["duration_s"] <= 0.5)
    assert body["timings_ms"]["total"] > 0


def test_series_false_keeps_tracks_and_events_without_frames(client):
    body = post_video(client, sample("single_face.mp4"), every=4, series="false").json()
    assert len(body["tracks"]) == 1 and body["tracks"][0]["frames"] == []


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (encode(np.full((64, 64, 3), 128, np.uint8)), 415, "unsupported_media_type"),
        (b"this is not a video at all" * 10, 415, "unsupported_media_type"),
        (b"", 400, "empty_file"),
    ],
)
def test_not_a_video_gives_json_errors(client, data, status, code):
    response = post_video(client, data)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code and response.json()["request_id"]


def test_truncated_mp4_is_invalid_video(client):
    data = sample("WolfgangLanger_Pexels.mp4")  # its index comes first: the cut is in the frame data
    for cut in (data[: len(data) // 2], sample("single_face.mp4")[:50_000]):
        response = post_video(client, cut)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_video"


def test_bad_query_is_a_json_422(client):
    response = post_video(client, sample("single_face.mp4"), every=0)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


@pytest.fixture(scope="module")
def small_limits_client():
    settings = Settings(max_video_duration_s=1.0, max_video_upload_bytes=1024 * 1024, max_video_side=800)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_limits_are_published_and_enforced(small_limits_client):
    limits = small_limits_client.get("/version").json()["limits"]
    assert limits["max_video_duration_s"] == 1.0 and limits["max_video_upload_bytes"] == 1024 * 1024
    assert limits["max_video_side"] == 800 and "mp4" in limits["video_formats"]
    cases = [("single_face.mp4", "video_too_long"), ("no_face.mp4", "video_too_large"),
             ("WolfgangLanger_Pexels.mp4", "payload_too_large")]
    for name, code in cases:
        response = post_video(small_limits_client, sample(name))
        assert response.status_code == 413, name
        assert response.json()["error"]["code"] == code, name


def test_default_limits_are_published(client):
    limits = client.get("/version").json()["limits"]
    assert limits["max_video_duration_s"] == 120.0
    assert limits["max_video_frames"] >= 3600


def test_mkv_container_is_accepted(video, tmp_path):
    """A clip re-encoded by PyAV into Matroska (MPEG-4 part 2) is tracked like the MP4."""
    source = requires_data(SAMPLES / "single_face.mp4")
    out = tmp_path / "clip.mkv"
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream = dst.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i >= 30:
                break
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        dst.mux(stream.encode(None))
    result = video.analyze(out, video.options(every=2))
    assert result.video.frames == 30 and len(result.tracks) == 1


def test_analyzer_run_is_unchanged_by_the_video_path(analyzer):
    """run_from_landmarks on the landmarks run() found gives the same face (MediaPipe's tracking step)."""
    with VideoReader(requires_data(SAMPLES / "single_face.mp4"), LIMITS) as clip:
        image = next(iter(clip.frames())).bgr()
    first = analyzer.run(image, analyzer.options(), {"au"})
    again = analyzer.run_from_landmarks(image, [first.faces[0].landmarks], analyzer.options(), {"au"})
    assert len(first.faces) == 1 and len(again.faces) == 1
    assert np.abs(again.faces[0].landmarks[:, :2] - first.faces[0].landmarks[:, :2]).mean() < 3.0
    assert again.faces[0].landmark_confidence > 0.9 and "au" in again.faces[0].outputs



def test_sdk_analyze_video(live_url):
    from microfacs_client import Client, MicroFACSError

    path = requires_data(SAMPLES / "single_face.mp4")
    with Client(live_url) as client:
        result = client.analyze_video(path, every=6, series=False)
        assert result.video.analysed_frames == 12 and [t.track_id for t in result.tracks] == [0]
        assert result.tracks[0].frames == []
        with pytest.raises(MicroFACSError) as info:
            client.analyze_video(b"not a video" * 10)
    assert info.value.code == "unsupported_media_type" and info.value.status == 415
