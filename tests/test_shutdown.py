"""Shutdown and temporary files (app/lifecycle.py): SIGTERM with a long video in flight ends within uvicorn's
graceful-shutdown timeout, answers the cancelled request with JSON and leaves no temporary file or traceback;
what a killed worker left behind is removed at the next start, and a live worker's directory never is."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from app.lifecycle import LOCK_NAME, WORK_PREFIX, WorkDir, clean_stale
from app.main import SHUTDOWN_DRAIN_S, create_app
from app.settings import Settings
from scripts.servers import free_port
from tests.helpers import REPO


def clip(frames: int, size: int = 32, fps: int = 30) -> bytes:
    """A small MP4 (grey frames with a moving bar): cheap to make, ``frames / fps`` seconds long."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 96, np.uint8)
            image[:, i % size] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


# A server whose video analysis takes ~50 ms a frame (the tracker is slowed), so that a 60 s clip is still
# being analysed when SIGTERM comes. uvicorn's own signal handling, as in the Dockerfile's CMD.
SERVER = """
import sys, time
import uvicorn
import app.video.tracking as tracking
from app.main import SHUTDOWN_DRAIN_S, create_app
from app.settings import Settings

step = tracking.Tracker.step
def slow_step(self, *args, **kwargs):
    time.sleep(0.05)
    return step(self, *args, **kwargs)
tracking.Tracker.step = slow_step
uvicorn.run(create_app(Settings()), host="127.0.0.1", port=int(sys.argv[1]), log_level="info",
            timeout_graceful_shutdown=float(sys.argv[2]))
"""


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_sigterm_with_a_long_video_in_flight_ends_cleanly(tmp_path):
    data = clip(1800)  # 60 s at 30 fps: ~90 s of (slowed) analysis
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / f"{WORK_PREFIX}stale").mkdir()  # a killed worker's directory: its lock is free
    (tmp / f"{WORK_PREFIX}stale" / "microfacs-video-x.bin").write_bytes(b"x")
    port, graceful_s = free_port(), 1.0
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("MICROFACS_")}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(graceful_s)], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    answer: dict = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert not (tmp / f"{WORK_PREFIX}stale").exists()  # swept at start-up
        (work,) = tmp.glob(WORK_PREFIX + "*")  # this worker's, locked

        def post() -> None:
            try:
                response = httpx.post(url + "/analyze-video", files={"file": ("long.mp4", data)}, timeout=120)
                answer.update(status=response.status_code, body=response.json())
            except httpx.HTTPError as exc:
                answer.update(error=repr(exc))

        client = threading.Thread(target=post)
        client.start()
        deadline = time.monotonic() + 30
        while metric(url, "microfacs_video_in_flight") < 1 or not list(work.glob("microfacs-video-*")):
            assert time.monotonic() < deadline, "the video analysis never started"  # (its spooled upload)
            time.sleep(0.1)
        time.sleep(0.5)
        signaled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)  # graceful 1 s + the analysis stopping at its next frame, not its 90 s
        except subprocess.TimeoutExpired:
            pytest.fail("the server still ran 30 s after SIGTERM:\n" + (tmp_path / "server.log").read_text()[-3000:])
        stopped_s = time.monotonic() - signaled
        client.join(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()
    output = (tmp_path / "server.log").read_text()
    assert answer.get("status") == 503, (answer, output[-3000:])
    assert answer["body"]["error"]["code"] == "shutting_down" and answer["body"]["request_id"]
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output[-3000:]
    assert "cancelled by the server (shutting down)" in output
    # the embedded job queue's state (MICROFACS_JOBS_DIR, by default under the temp folder) is meant to outlive
    # the process: accepted jobs survive a restart; nothing else may stay
    left = [p.name for p in tmp.iterdir() if "microfacs" in p.name and p.name != "microfacs-jobs"]
    assert not left, f"temporary files left behind: {left}"
    print(f"stopped {stopped_s:.1f} s after SIGTERM (graceful timeout {graceful_s:g} s)")


def test_start_up_sweeps_dead_workers_files_and_spares_live_ones(tmp_path, monkeypatch):
    live = WorkDir.create(tmp_path)  # another worker, alive: its lock is held
    (live.path / "microfacs-video-live.bin").write_bytes(b"live")
    dead = tmp_path / f"{WORK_PREFIX}dead"
    dead.mkdir()
    (dead / LOCK_NAME).touch()
    (dead / "microfacs-video-dead.bin").write_bytes(b"dead")
    old_loose, new_loose = tmp_path / "microfacs-video-old.bin", tmp_path / "microfacs-video-new.bin"
    old_loose.write_bytes(b"old")
    new_loose.write_bytes(b"new")  # may be an older server's upload in progress
    os.utime(old_loose, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / "someone-else.bin"
    other.write_bytes(b"x")

    removed = clean_stale(tmp_path)
    assert set(removed) == {dead, old_loose}
    assert live.path.is_dir() and (live.path / "microfacs-video-live.bin").exists()
    assert new_loose.exists() and other.exists()

    # The app's lifespan does the same sweep, makes its own directory and removes it at shutdown.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    app = create_app(Settings())
    with TestClient(app):
        own = app.state.work_dir.path
        assert own.parent == tmp_path and own.is_dir() and own != live.path
        assert clean_stale(tmp_path) == []  # its lock is held: not swept by a sibling worker
    assert not own.exists() and live.path.is_dir()
    assert app.state.stopping.is_set()
    live.close()
    assert not live.path.exists()


def test_a_video_analysis_stops_at_the_next_frame_once_cancelled(analyzer, tmp_path):
    from app.errors import ApiError
    from app.video.analyze import VideoAnalyzer

    video = VideoAnalyzer(analyzer)
    cancel = threading.Event()
    seen: list[int] = []

    def on_frame(index, *_):
        seen.append(index)
        if index == 4:
            cancel.set()

    source = tmp_path / "clip.mp4"
    source.write_bytes(clip(60))
    with pytest.raises(ApiError) as error:
        video.analyze(source, video.options(), on_frame=on_frame, cancel=cancel)
    assert error.value.status == 503 and error.value.code == "shutting_down"
    assert seen == [0, 1, 2, 3, 4]
    result = video.analyze(source, video.options(), cancel=threading.Event())  # not set: runs through
    assert result.video.frames == 60

    spool = tmp_path / "spool"
    spool.mkdir()
    cancel.set()
    with pytest.raises(ApiError):
        video.analyze_upload(io.BytesIO(source.read_bytes()), video.options(), cancel=cancel, directory=spool)
    assert list(spool.iterdir()) == []  # the spooled upload is deleted however the analysis ends


def test_work_dir_lock_is_released_when_its_process_dies(tmp_path):
    """The sweep relies on the kernel dropping a dead process's flock, SIGKILL included."""
    code = ("import sys, time; from app.lifecycle import WorkDir; d = WorkDir.create(sys.argv[1]); "
            "print(d.path, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        path = Path(child.stdout.readline().strip())
        assert path.is_dir() and clean_stale(tmp_path) == []  # alive: kept
    finally:
        child.kill()
        child.wait()
    assert clean_stale(tmp_path) == [path] and not path.exists()


def test_the_deployments_give_uvicorn_time_to_shut_down_before_sigkill():
    """uvicorn's graceful-shutdown timeout (Dockerfile CMD) + the app's drain < compose's stop_grace_period and
    the pod's terminationGracePeriodSeconds (after its preStop pause)."""
    cmd = (REPO / "Dockerfile").read_text().split("\nCMD ", 1)[1]
    graceful = float(re.search(r"--timeout-graceful-shutdown (\d+)", cmd).group(1))
    assert graceful > 0
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("microfacs", "microfacs-replica"):
        assert float(compose[name]["stop_grace_period"].rstrip("s")) > graceful + SHUTDOWN_DRAIN_S, name
    pod = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful + SHUTDOWN_DRAIN_S
