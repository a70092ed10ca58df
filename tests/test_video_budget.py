"""The work budget of POST /analyze-video and the checks before decoding: a budget-exceeding clip is refused
before any frame is analysed (counted, not timed), a duration-less Matroska before any frame is decoded,
a 16000x16000 H.264 without the decoder allocating its picture (peak RSS in a subprocess), hostile MP4
structures before FFmpeg opens them, and no error message names the server's temporary file."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import textwrap

import av
import pytest
from fastapi.testclient import TestClient

from app.errors import ApiError
from app.main import create_app
from app.settings import Settings
from app.video import decode
from app.video.analyze import VideoAnalyzer
from app.video.budget import VideoBudget, stride_for
from app.video.decode import VideoHeader, VideoLimits, VideoReader
from app.video.tracking import Tracker
from scripts.measure_video_limits import (
    REPO,
    edit_list_bomb,
    has_encoder,
    sample_count_bomb,
    shrink_declared_size,
    tiny_boxes,
    write_clip,
)

LIMITS = VideoLimits(max_bytes=1 << 30, max_duration_s=120, max_frames=7200, max_side=1920, max_pixels=1920 * 1080)
BUDGET = VideoBudget(max_analysed_fps=60, max_analysed_frames=1800, max_decoded_megapixels=4000, timeout_s=60)


def post_video(client: TestClient, data: bytes, filename: str = "clip.mp4", **params):
    return client.post("/analyze-video", files={"file": (filename, data, "video/mp4")}, params=params)


@pytest.fixture
def counters(monkeypatch):
    """How many frames the tracker analysed, and how often a clip was opened for decoding."""
    counts = {"analysed": 0, "decode_opened": 0, "av_open": 0}
    step, open_for_decoding, av_open = Tracker.step, VideoReader._open_for_decoding, av.open

    def counted_step(self, *args, **kwargs):
        counts["analysed"] += 1
        return step(self, *args, **kwargs)

    def counted_open_for_decoding(self):
        counts["decode_opened"] += 1
        return open_for_decoding(self)

    def counted_av_open(*args, **kwargs):
        counts["av_open"] += 1
        return av_open(*args, **kwargs)

    monkeypatch.setattr(Tracker, "step", counted_step)
    monkeypatch.setattr(VideoReader, "_open_for_decoding", counted_open_for_decoding)
    monkeypatch.setattr(decode.av, "open", counted_av_open)
    return counts


@pytest.fixture(scope="module")
def budget_client():
    settings = Settings(max_video_analysed_frames=50, max_video_analysed_fps=60, max_video_decoded_megapixels=1.0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget_clips")
    return {
        # 16x16, 200 frames at 50 fps (4 s): 0.05 megapixels decoded
        "fast": write_clip(d / "fast.mp4", 16, 16, 200, fps=50).read_bytes(),
        # 16x16, 30 frames at 1000 fps
        "kilo": write_clip(d / "kilo.mp4", 16, 16, 30, fps=1000).read_bytes(),
        # 320x240, 20 frames at 30 fps: 1.5 megapixels decoded
        "big": write_clip(d / "big.mp4", 320, 240, 20, fps=30).read_bytes(),
    }


# -- the budget, from the header -----------------------------------------------------------------------------


def header(frames: int, fps: float, width: int = 16, height: int = 16) -> VideoHeader:
    return VideoHeader("mov", "mpeg4", width, height, fps, frames, frames / fps)


def test_stride_is_chosen_to_fit_or_an_explicit_one_is_refused():
    assert stride_for(header(600, 30), None, BUDGET) == 1
    assert stride_for(header(7000, 1000), None, BUDGET) == 17  # the analysed rate: 1000 / 17 < 60 fps
    assert stride_for(header(7000, 60), None, BUDGET) == 4  # ceil(7000 / 4) = 1750 <= 1800 analysed frames
    assert stride_for(header(7000, 60), 5, BUDGET) == 5
    with pytest.raises(ApiError) as info:
        stride_for(header(7000, 60), 1, BUDGET)
    assert info.value.status == 413 and info.value.code == "video_over_budget"
    assert "max_video_analysed_frames" in info.value.message and "every >= 4" in info.value.message
    with pytest.raises(ApiError) as info:
        stride_for(header(7000, 1000), 2, BUDGET)
    assert "max_video_analysed_fps" in info.value.message and "every >= 17" in info.value.message
    with pytest.raises(ApiError) as info:  # 7000 frames of 1920x1080 = 14515 megapixels, whatever the stride
        stride_for(header(7000, 60, 1920, 1080), None, BUDGET)
    assert "max_video_decoded_megapixels" in info.value.message


def test_budget_is_published(budget_client):
    limits = budget_client.get("/version").json()["limits"]
    assert limits["max_video_analysed_frames"] == 50 and limits["max_video_analysed_fps"] == 60
    assert limits["max_video_decoded_megapixels"] == 1.0 and limits["video_timeout_s"] > 0


def test_default_budget_is_published(client):
    limits = client.get("/version").json()["limits"]
    defaults = Settings()
    assert limits["max_video_analysed_frames"] == defaults.max_video_analysed_frames
    assert limits["max_video_analysed_fps"] == defaults.max_video_analysed_fps
    assert limits["max_video_decoded_megapixels"] == defaults.max_video_decoded_megapixels
    assert limits["video_timeout_s"] == defaults.video_timeout_s


@pytest.mark.parametrize(
    ("clip", "params", "setting"),
    [
        ("fast", {"every": 1}, "max_video_analysed_frames"),  # 200 frames > 50
        ("kilo", {"every": 1}, "max_video_analysed_fps"),  # 1000 fps > 60
        ("big", {}, "max_video_decoded_megapixels"),  # 1.5 > 1.0
    ],
)
def test_budget_exceeding_video_is_refused_before_analysis(budget_client, clips, counters, clip, params, setting):
    response = post_video(budget_client, clips[clip], **params)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "video_over_budget" and setting in error["message"]
    assert counters["analysed"] == 0 and counters["decode_opened"] == 0  # nothing decoded, nothing analysed


def test_without_every_the_stride_fits_the_budget(budget_client, clips, counters):
    body = post_video(budget_client, clips["fast"]).json()  # 200 frames, budget 50: every 4th
    assert body["video"]["frames"] == 200 and body["video"]["analysed_frames"] == 50
    assert counters["analysed"] == 50
    body = post_video(budget_client, clips["kilo"]).json()  # 1000 fps, at most 60 analysed a second: every 17th
    assert body["video"]["analysed_frames"] == math.ceil(30 / 17)


def test_wall_clock_budget_stops_the_analysis_with_a_clear_error(analyzer, clips, counters):
    video = VideoAnalyzer(analyzer)
    budget = VideoBudget(max_analysed_fps=60, max_analysed_frames=1800, max_decoded_megapixels=4000, timeout_s=1e-6)
    with tempfile.SpooledTemporaryFile() as upload:
        upload.write(clips["fast"])
        upload.seek(0)
        with pytest.raises(ApiError) as info:
            video.analyze_upload(upload, video.options(every=None), budget=budget)
    assert info.value.status == 413 and info.value.code == "video_timeout"
    assert "video_timeout_s" in info.value.message and "MICROFACS_VIDEO_TIMEOUT_S" in info.value.message
    assert counters["analysed"] == 0


def test_in_process_analysis_has_no_budget_unless_given(analyzer, clips, tmp_path, counters):
    """The CLI and the scripts analyse local files: only the limits apply (the budget is the server's)."""
    path = tmp_path / "fast.mp4"
    path.write_bytes(clips["fast"])
    video = VideoAnalyzer(analyzer)
    result = video.analyze(path, video.options(every=1))
    assert result.video.analysed_frames == 200
    tight = VideoBudget(max_analysed_fps=60, max_analysed_frames=50, max_decoded_megapixels=4000, timeout_s=60)
    with pytest.raises(ApiError) as info:
        video.analyze(path, video.options(every=1), budget=tight)
    assert info.value.code == "video_over_budget"


# -- containers without a duration ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_mkv(tmp_path_factory):
    """16x16 Matroska written as a live stream: no duration, no cues; 300 frames at 100 fps (3 s)."""
    path = write_clip(tmp_path_factory.mktemp("live") / "live.mkv", 16, 16, 300, fps=100,
                      container_options={"live": "1"})
    with av.open(str(path)) as container:  # the premise: nothing declares the length
        assert container.duration is None and container.streams.video[0].duration is None
        assert not container.streams.video[0].frames
    return path


@pytest.mark.parametrize("limits", [
    VideoLimits(**{**LIMITS.__dict__, "max_duration_s": 1.0}),
    VideoLimits(**{**LIMITS.__dict__, "max_frames": 100}),
])
def test_duration_less_matroska_is_refused_before_decoding(live_mkv, counters, limits):
    with pytest.raises(ApiError) as info:
        VideoReader(live_mkv, limits)
    assert info.value.status == 413 and info.value.code == "video_too_long"
    assert counters["decode_opened"] == 0  # refused from the packets, no frame decoded


def test_duration_less_matroska_within_limits_gets_its_length_counted(live_mkv, counters):
    with VideoReader(live_mkv, LIMITS) as video:
        assert video.header.counted and video.header.frames == 300
        assert video.header.duration_s == pytest.approx(3.0, abs=0.02)
        assert sum(1 for _ in video.frames()) == 300


def test_duration_less_matroska_over_the_budget_is_refused_before_analysis(budget_client, live_mkv, counters):
    response = post_video(budget_client, live_mkv.read_bytes(), "clip.mkv", every=1)
    assert response.status_code == 413 and response.json()["error"]["code"] == "video_over_budget"
    assert counters["analysed"] == 0 and counters["decode_opened"] == 0


# -- sizes before decoding -----------------------------------------------------------------------------------

MEASURE = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from app.errors import ApiError
    from app.video.decode import VideoLimits, VideoReader
    from scripts.measure_video_limits import write_clip
    limits = VideoLimits(max_bytes=1 << 30, max_duration_s=120, max_frames=7200, max_side=1920,
                         max_pixels=1920 * 1080)
    warm = write_clip(Path(sys.argv[1]).with_name("warm.mp4"), 64, 64, 3, codec="libx264")
    with VideoReader(warm, limits) as video:  # warm-up: PyAV, FFmpeg's decoders
        list(video.frames())
    def status_mib(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    try:  # the kernel's peak-RSS counter restarts from the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        peak = lambda: status_mib("VmHWM")
    except OSError:  # else the process's peak so far: an overestimate of the rise
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    before = status_mib("VmRSS")
    try:
        with VideoReader(sys.argv[1], limits) as video:
            outcome = f"{sum(1 for _ in video.frames())} frames decoded"
    except ApiError as error:
        outcome = error.code
    print(json.dumps({"outcome": outcome, "rise_mib": peak() - before}))
""")


@pytest.fixture(scope="module")
def huge_h264(tmp_path_factory):
    if not has_encoder("libx264"):
        pytest.skip("this PyAV build has no libx264 encoder to make the H.264 clip")
    clip = tmp_path_factory.mktemp("huge") / "huge.mp4"
    # made in its own process: the encoder takes ~1.5 GB for the one frame
    subprocess.run([sys.executable, "-m", "scripts.measure_video_limits", "--make-huge", str(clip)],
                   check=True, cwd=REPO, timeout=120)
    with av.open(str(clip), options={"skip_frame": "all"}) as container:  # the premise: H.264, 16000x16000
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 16000, 16000)
    return clip


@pytest.mark.parametrize("declared", ["16000x16000", "64x64"])
def test_16000px_h264_is_refused_without_decoding_its_frame(huge_h264, tmp_path, declared):
    """As declared by its MP4, and with the MP4 declaring 64x64 while the codec's header (SPS) says 16000."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(huge_h264.read_bytes())
    if declared == "64x64":
        shrink_declared_size(clip)
        with av.open(str(clip), options={"codec_whitelist": "none"}) as container:
            assert container.streams.video[0].width == 64
    done = subprocess.run([sys.executable, "-c", MEASURE, str(clip)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "video_too_large"
    assert result["rise_mib"] <= 300, result  # decoding its one frame takes ~600 MiB


# -- hostile MP4 structures, refused before FFmpeg opens them -----------------------------------------------


@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda d: tiny_boxes(d / "top.mp4", 2), 400, "top-level boxes"),  # 262,144 boxes
    (lambda d: tiny_boxes(d / "nested.mp4", 2, nested=True), 400, "boxes in its headers"),
    (lambda d: tiny_boxes(d / "fat.mp4", 8, nested=True), 400, "header boxes"),  # moov over 4 MiB
    (lambda d: sample_count_bomb(d / "samples.mp4", 20_000_000), 413, "samples"),
    (lambda d: edit_list_bomb(d / "edits.mp4", 200, 20_000), 413, "samples"),
])
def test_hostile_mp4_structures_are_refused_before_ffmpeg_reads_them(tmp_path, counters, make, status, words):
    path = make(tmp_path)
    opened = counters["av_open"]  # (making the clip opened some)
    with pytest.raises(ApiError) as info:
        VideoReader(path, LIMITS)
    assert info.value.status == status and words in info.value.message
    assert counters["av_open"] == opened  # FFmpeg never saw the file


def test_mp4_structure_checks_pass_ordinary_clips(tmp_path, counters):
    path = edit_list_bomb(tmp_path / "three_edits.mp4", 100, 3)  # a few edits are normal
    with VideoReader(path, LIMITS) as video:
        assert video.header.frames == 100
    fragmented = write_clip(tmp_path / "frag.mp4", 32, 32, 90, container_options={
        "movflags": "frag_keyframe+empty_moov", "frag_duration": "100000"})
    with VideoReader(fragmented, LIMITS) as video:
        assert video.header.frames == 90 and sum(1 for _ in video.frames()) == 90


# -- no server path in any message ---------------------------------------------------------------------------


def test_error_messages_never_name_the_temporary_file(client, clips, tmp_path):
    mp4 = clips["fast"]
    cases = [
        mp4[:2000],  # cut inside the frame data
        mp4[:40] + bytes(4000),  # ftyp, then zeros
        b"\x1a\x45\xdf\xa3" + b"\x00" * 2000,  # an EBML magic and nothing else
        b"RIFF\x00\x10\x00\x00AVI LIST" + b"\xff" * 3000,
        mp4[:24] + b"\x00\x00\x00\x10moov" + b"\x00" * 8 + mp4[24:],
    ]
    temp = tempfile.gettempdir()
    for data in cases:
        response = post_video(client, data)
        assert 400 <= response.status_code < 500, response.text
        message = response.json()["error"]["message"]
        assert "microfacs-video-" not in message and temp not in message, message
    broken = tmp_path / "secret-name.mp4"
    broken.write_bytes(mp4[:40] + bytes(4000))
    with pytest.raises(ApiError) as info:
        VideoReader(broken, LIMITS)
    assert "secret-name" not in info.value.message and str(tmp_path) not in info.value.message
