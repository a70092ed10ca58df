"""Batched networks: every face of an image in one call per network (the face stage's mesh and occlusion, the AU
and expression heads), and a video's frames' faces in one call per head when asked (on an accelerator by
default). The results must be those of one face (one frame) at a time: per-face options and references kept."""
from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from app.analyzer import Analyzer, FaceOptions
from app.heads import get_all
from app.providers import CPU, Runtime
from app.settings import Settings
from app.video.analyze import DEVICE_BATCH_FRAMES, VideoAnalyzer
from tests.helpers import SAMPLES, requires_data


@pytest.fixture(scope="module")
def group(astronaut) -> np.ndarray:
    tiles = [astronaut, astronaut[:, ::-1], cv2.resize(cv2.resize(astronaut, (300, 300)), (512, 512))]
    return np.hstack(tiles)


@pytest.fixture
def calls(analyzer, monkeypatch) -> Counter:
    """Network calls of the analyzer's models (name -> calls), and the batch sizes seen."""
    counted: Counter = Counter()
    for name, model in analyzer.models.loaded().items():
        def run(tensor, _run=model.run, _name=name):
            counted[_name] += 1
            counted[_name, "inputs"] += len(tensor)
            return _run(tensor)
        monkeypatch.setattr(model, "run", run)
    return counted


def one_at_a_time(analyzer: Analyzer, image: np.ndarray, options: list[FaceOptions]) -> list[dict]:
    """The reference: each face through the face stage and each head on its own."""
    detections = analyzer.detector.detect(image, 0.5, 20, 20)
    out = []
    for detection, face_options in zip(detections, options):
        (face,) = analyzer.run_from_detections(image, [detection], face_options).faces
        heads = {} if face.filtered else {name: analyzer.heads[name].get(face, face_options)
                                          for name in ("au", "expression")}
        out.append(heads | {"landmarks": face.landmarks, "occlusion": face.occlusion.scores})
    return out


def test_every_face_of_an_image_in_one_call_per_network(analyzer, group, calls):
    analysis = analyzer.run(group, FaceOptions(), {"au", "expression"})
    faces, kept = len(analysis.faces), sum(not f.filtered for f in analysis.faces)
    assert faces == 4 and kept == 3  # the small copy's pattern makes a fourth, filtered face: heads skip it
    for name, inputs in (("face_landmark", faces), ("occlusion", faces), ("au_detector", kept), ("expression", kept)):
        assert calls[name] == 1 and calls[name, "inputs"] == inputs, (name, calls)


def test_batched_results_are_those_of_one_face_at_a_time(analyzer, group, astronaut):
    reference = analyzer.reference([astronaut])
    plain, relative = FaceOptions(), analyzer.with_reference(FaceOptions(), reference)
    per_face = [plain, relative, plain, plain]  # each face its own options (automatic baselines: references)
    batched = analyzer.run(group, plain, {"au", "expression"}, face_references=[None, reference, None, None])
    alone = one_at_a_time(analyzer, group, per_face)
    assert len(alone) == len(batched.faces) == 4
    for face, expected in zip(batched.faces, alone):
        np.testing.assert_array_equal(face.landmarks, expected["landmarks"])
        assert face.occlusion.scores == expected["occlusion"]
        if face.filtered:
            assert not face.outputs and "au" not in expected
            continue
        assert face.outputs["expression"] == expected["expression"]
        for got, want in zip(face.outputs["au"], expected["au"]):
            assert (got.au, got.probability, got.present, got.absolute_probability) == \
                (want.au, want.probability, want.present, want.absolute_probability)
            assert (got.box is None) == (want.box is None) and (got.box is None or np.array_equal(got.box, want.box))
    assert batched.faces[1].outputs["expression"].reference and not batched.faces[0].outputs["expression"].reference
    assert batched.faces[1].outputs["au"][0].absolute_probability is not None


def test_get_all_batches_a_head_with_get_batch_and_loops_over_one_without(analyzer, group):
    faces = analyzer.run(group).faces
    options = [FaceOptions(expression_prior=p) for p in ("balanced", "ferplus", "balanced", "ferplus")]
    looped = [analyzer.heads["expression"].get(face, o) for face, o in zip(faces, options)]
    assert get_all(analyzer.heads["expression"], faces, options) == looped  # each face its own prior
    assert looped[0].scores != analyzer.heads["expression"].get(faces[0], options[1]).scores

    class OneAtATime:
        field = "x"

        def get(self, face, options):
            return face.confidence

    assert get_all(OneAtATime(), faces, options) == [f.confidence for f in faces]


def test_a_graph_with_a_fixed_batch_runs_one_input_at_a_time(analyzer):
    shapes = analyzer.models.blendshapes  # its graph takes [1, 146, 2]
    assert not shapes.batched and analyzer.models.expression.batched and analyzer.models.mesh.batched
    points = np.random.default_rng(0).uniform(0, 256, (3, 146, 2)).astype(np.float32)
    (stacked,) = shapes.run_batch(points)
    singles = [shapes.run(points[i:i + 1])[0] for i in range(3)]
    np.testing.assert_array_equal(stacked.reshape(3, -1), np.stack(singles).reshape(3, -1))


# -- video: the faces of several frames in one call per head ----------------------------------------------------


def test_video_batches_frames_on_an_accelerator_only_unless_asked(analyzer):
    assert VideoAnalyzer(analyzer).batch_frames == 1  # CPU
    on_gpu = SimpleNamespace(settings=Settings(), models=SimpleNamespace(
        runtime=Runtime(1, (("CUDAExecutionProvider", {}), (CPU, {})))))
    assert VideoAnalyzer(on_gpu).batch_frames == DEVICE_BATCH_FRAMES  # type: ignore[arg-type]
    asked = SimpleNamespace(settings=Settings(video_batch_frames=4), models=on_gpu.models)
    assert VideoAnalyzer(asked).batch_frames == 4  # type: ignore[arg-type]


def test_video_with_batched_frames_answers_as_frame_by_frame(analyzer, calls):
    clip = requires_data(SAMPLES / "single_face.mp4")
    frame_by_frame = VideoAnalyzer(analyzer)
    batched = VideoAnalyzer(analyzer)
    batched.settings = Settings(video_batch_frames=8)
    one = frame_by_frame.analyze(clip, frame_by_frame.options())
    per_frame_calls = calls["expression"]
    calls.clear()
    many = batched.analyze(clip, batched.options())
    assert calls["expression"] * 4 <= per_frame_calls and calls["au_detector"] == calls["expression"]
    assert calls["expression", "inputs"] == per_frame_calls  # the same faces, fewer calls
    a, b = one.model_dump(exclude={"request_id", "timings_ms"}), many.model_dump(exclude={"request_id", "timings_ms"})
    assert a == b and a["tracks"] and a["tracks"][0]["frames"][5]["action_units"]


def test_video_heads_that_read_the_irises_are_not_deferred(analyzer):
    from app.video.tracking import Tracker

    tracker = Tracker(analyzer, FaceOptions(), ("blendshapes", "au"), redetect_every=10, confirm_hits=3,
                      max_lost_s=1.0, batch_frames=8)
    assert tracker.batch_frames == 1 and tracker.frame_heads == ("blendshapes", "au")
    assert Tracker(analyzer, FaceOptions(), ("au",), redetect_every=10, confirm_hits=3, max_lost_s=1.0,
                   batch_frames=8).frame_heads == ()


def test_a_video_job_batches_frames_too_and_answers_as_frame_by_frame(analyzer, calls, tmp_path):
    """Jobs' progress callback only counts frames: with batched frames their answer is the frame-by-frame one."""
    import threading

    from app.jobs.runner import JobRunner

    clip = requires_data(SAMPLES / "single_face.mp4")
    answers, counted = {}, {}
    for frames in (1, 8):
        runner = JobRunner(analyzer)
        runner.video.settings = Settings(video_batch_frames=frames)
        progress: list[int] = []
        calls.clear()
        folder = runner.run_video(clip, {"every": 2}, "job", lambda done, total, seen=progress: seen.append(done),
                                  threading.Event(), tmp_path / f"run-{frames}")
        result = json.loads((folder / "result.json").read_text())  # streamed to disk, assembled at the end
        answers[frames], counted[frames] = result, calls["expression"]
        assert progress[-1] == result["video"]["analysed_frames"] == 36
    for result in answers.values():
        result.pop("timings_ms")
    assert answers[1] == answers[8] and counted[8] * 4 <= counted[1]
