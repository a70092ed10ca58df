"""One analysis on two cores (MICROFACS_ANALYSIS_THREADS): the AU and expression networks side by side, and in a
video the heads of one frame beside the next frame's decoding and face stage. The answers must be those of one
thread, bit for bit; the work must really move to the other thread; a busy pool must not hold an analysis up."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.analyzer import Analyzer, FaceOptions
from app.main import create_app
from app.settings import Settings, usable_cpus
from app.video.analyze import VideoAnalyzer
from tests.helpers import SAMPLES, requires_data


@pytest.fixture(scope="module")
def serial(analyzer) -> Analyzer:
    """The same models, one thread per analysis."""
    return Analyzer(Settings(analysis_threads=1), analyzer.models)


@pytest.fixture(scope="module")
def parallel(analyzer) -> Analyzer:
    return Analyzer(Settings(analysis_threads=2), analyzer.models)


@pytest.fixture(scope="module")
def group(astronaut) -> np.ndarray:
    return np.hstack([astronaut, astronaut[:, ::-1], cv2.resize(cv2.resize(astronaut, (300, 300)), (512, 512))])


def heads_threads(analyzer: Analyzer, monkeypatch) -> dict[str, set[str]]:
    """Which threads each head's network ran on."""
    seen: dict[str, set[str]] = {}
    for name, model in (("au", analyzer.models.au), ("expression", analyzer.models.expression)):
        def run(tensor, _run=model.run, _name=name):
            seen.setdefault(_name, set()).add(threading.current_thread().name)
            return _run(tensor)
        monkeypatch.setattr(model, "run", run)
    return seen


def test_the_default_is_two_threads_where_two_cores_are_usable():
    assert Settings().analysis_threads == min(2, usable_cpus())
    assert Settings(workers=max(2, usable_cpus())).analysis_threads == 1  # each worker's share of the cores
    assert Settings(analysis_threads=1).analysis_threads == 1
    with TestClient(create_app(Settings(analysis_threads=1))) as client:  # /version says how it runs
        assert client.get("/version").json()["execution"]["analysis_threads"] == 1


def test_usable_cpus_respect_a_containers_cpu_limit(tmp_path):
    from app.settings import cpu_quota

    assert cpu_quota(tmp_path) is None  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 1.5  # cgroup v2: 1.5 CPUs
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 1.0  # cgroup v1: one CPU (a Kubernetes limits.cpu: "1")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path) is None


def test_a_one_cpu_limit_means_one_analysis_thread(monkeypatch):
    monkeypatch.setattr("app.settings.cpu_quota", lambda: 1.0)
    assert usable_cpus() == 1 and Settings().analysis_threads == 1 and Settings().max_in_flight == 1
    monkeypatch.setattr("app.settings.cpu_quota", lambda: 0.5)
    assert usable_cpus() == 1


def test_side_by_side_heads_answer_as_one_after_the_other(serial, parallel, group, astronaut, monkeypatch):
    reference = serial.reference([astronaut])
    for image in (group, astronaut):
        for options in (FaceOptions(), serial.with_reference(FaceOptions(), reference)):
            one = serial.analyze(image, heads={"au", "expression"}, reference=options.reference)
            two = parallel.analyze(image, heads={"au", "expression"}, reference=options.reference)
            assert one.model_dump(exclude={"request_id", "timings_ms"}) == \
                two.model_dump(exclude={"request_id", "timings_ms"})
    seen = heads_threads(parallel, monkeypatch)
    parallel.run(astronaut, FaceOptions(), {"au", "expression"})
    assert seen["au"] == {threading.current_thread().name}  # the group's first head here ...
    assert seen["expression"] <= {"microfacs-head_0", threading.current_thread().name}  # ... the other on the pool
    for _ in range(20):  # (here only when the pool had not started it by the time the AU head was done)
        parallel.run(astronaut, FaceOptions(), {"au", "expression"})
    assert "microfacs-head_0" in seen["expression"]
    assert serial.head_pool is None and parallel.head_groups(("blendshapes", "au", "expression")) == \
        [["blendshapes"], ["au", "expression"]]  # the AU head reads the blendshapes: it waits for them


def test_the_au_head_still_reads_the_blendshapes_when_it_runs_beside_the_expression(parallel, astronaut):
    face = parallel.analyze(astronaut, heads={"blendshapes", "au", "expression"}).faces[0]
    assert face.action_units and any(u.activation is not None for u in face.action_units)


def test_a_busy_pool_does_not_hold_an_analysis_up(serial, parallel, astronaut, monkeypatch):
    """With the pool's thread busy (another analysis's heads), the head it has not started runs here."""
    release = threading.Event()
    assert parallel.head_pool is not None
    blocker = parallel.head_pool.submit(release.wait, 30)
    try:
        seen = heads_threads(parallel, monkeypatch)
        with ThreadPoolExecutor(1) as outside:
            done = outside.submit(parallel.analyze, astronaut, heads={"au", "expression"})
            answer = done.result(timeout=20)  # not blocked behind the pool
        assert seen["expression"] == seen["au"] and not blocker.done()
    finally:
        release.set()
    expected = serial.analyze(astronaut, heads={"au", "expression"})
    assert answer.model_dump(exclude={"request_id", "timings_ms"}) == \
        expected.model_dump(exclude={"request_id", "timings_ms"})


def test_video_heads_beside_the_next_frames_answer_as_frame_by_frame(serial, parallel, monkeypatch):
    clip = requires_data(SAMPLES / "single_face.mp4")
    one_thread, two_threads = VideoAnalyzer(serial), VideoAnalyzer(parallel)
    one = one_thread.analyze(clip, one_thread.options())
    seen = heads_threads(parallel, monkeypatch)
    two = two_threads.analyze(clip, two_threads.options())
    # the frames' heads ran on the tracker's own threads (a job's keep its priority), one beside the other
    # (the expression on the side thread unless that had not started it yet when the AU head was done)
    assert seen["au"] == {"microfacs-track-heads_0"} and "microfacs-track-side_0" in seen["expression"]
    a, b = one.model_dump(exclude={"request_id", "timings_ms"}), two.model_dump(exclude={"request_id", "timings_ms"})
    assert a == b and a["tracks"] and all(f["action_units"] for f in a["tracks"][0]["frames"] if not f["filtered"])


def test_a_video_job_with_the_heads_beside_answers_as_with_one_thread(serial, parallel, tmp_path):
    """The job's records are streamed to disk as they become final: the ones whose heads still run wait."""
    from app.jobs.runner import JobRunner

    clip = requires_data(SAMPLES / "single_face.mp4")
    answers = {}
    for name, analyzer in (("one", serial), ("two", parallel)):
        folder = JobRunner(analyzer).run_video(clip, {}, "job", lambda done, total: None, threading.Event(),
                                               tmp_path / name)
        answers[name] = json.loads((folder / "result.json").read_text())
        answers[name].pop("timings_ms")
    frames = answers["one"]["tracks"][0]["frames"]
    assert answers["one"] == answers["two"] and len({f["frame"] for f in frames}) == len(frames) == 72


def test_an_error_in_the_heads_thread_fails_the_video(parallel, monkeypatch):
    clip = requires_data(SAMPLES / "single_face.mp4")

    def broken(tensor):
        raise RuntimeError("the expression network failed")

    monkeypatch.setattr(parallel.models.expression, "run", broken)
    video = VideoAnalyzer(parallel)
    with pytest.raises(RuntimeError, match="expression network failed"):
        video.analyze(clip, video.options())


class FakeFrame:
    def __init__(self, index: int) -> None:
        self.index = index
        self.converted_on: str | None = None

    def bgr(self) -> np.ndarray:
        self.converted_on = threading.current_thread().name
        return np.full((2, 2, 3), self.index, np.uint8)


def test_prefetch_decodes_ahead_on_its_own_thread_and_raises_where_the_error_came():
    from app.video.decode import Prefetch

    def frames():
        for i in range(5):
            yield FakeFrame(i)
        raise ValueError("the decoder failed at frame 5")

    got = []
    with Prefetch(frames(), lambda f: f.index % 2 == 0) as ahead, pytest.raises(ValueError, match="frame 5"):
        for frame, image in ahead:
            got.append((frame.index, None if image is None else int(image[0, 0, 0]), frame.converted_on))
    assert got == [(0, 0, "microfacs-decode"), (1, None, None), (2, 2, "microfacs-decode"), (3, None, None),
                   (4, 4, "microfacs-decode")]


def test_prefetch_stops_and_finishes_its_generator_when_closed_early():
    from app.video.decode import Prefetch

    finished = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield FakeFrame(i)
                i += 1
        finally:
            finished.set()

    ahead = Prefetch(endless(), lambda f: True, depth=2)
    first = next(iter(ahead))
    ahead.close()  # the thread was blocked on a full queue
    assert first[0].index == 0 and finished.wait(5) and not ahead._thread.is_alive()
