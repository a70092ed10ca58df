"""A video job's result streamed to disk (app/jobs/stream.py): assembled from its chunks it is the in-memory
answer (``VideoAnalyzer.analyze``), number for number, JSON and CSV; the tracker keeps no records and the writer
holds at most two chunks at once; a run's folder moves into the job's on commit."""
from __future__ import annotations

import csv
import io
import json

import pytest

from app.jobs.runner import JobRunner
from app.jobs.stream import ResultWriter, TrackSeries
from app.jobs.tables import AU_COLUMNS, result_table, to_csv
from app.video.analyze import VideoAnalyzer, drain
from app.video.decode import VideoReader
from tests.helpers import SAMPLES, requires_data

VOLATILE = ("request_id", "timings_ms")


def streamed(video: VideoAnalyzer, path, options, folder, chunk_frames: int) -> tuple[dict, ResultWriter]:
    writer = ResultWriter(folder, options.every, chunk_frames)
    with VideoReader(path, video.limits) as reader:
        answer = video.analyze_frames(reader.frames(), reader.header, options, "job", sink=writer)
    assert answer.tracks == []  # the tracker kept nothing: the writer has every record
    writer.finish(answer, video, options)
    return json.loads((folder / "result.json").read_text()), writer


def without(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


@pytest.mark.parametrize("baseline", ["none", "auto"])
def test_streamed_result_is_the_in_memory_answer(analyzer, tmp_path, baseline):
    path = requires_data(SAMPLES / "single_face.mp4")
    video = VideoAnalyzer(analyzer)
    options = video.options(every=2, baseline=baseline)
    expected = video.analyze(path, options, "job").model_dump(mode="json")
    result, writer = streamed(video, path, options, tmp_path, chunk_frames=4)
    assert expected["tracks"] and expected["tracks"][0]["frames"]
    assert (expected["tracks"][0].get("baseline") is not None) == (baseline == "auto")
    assert without(result) == without(expected)
    # the table too: the worker's result.csv is the one the in-memory result gives
    columns, rows = result_table("video", expected)
    assert (tmp_path / "result.csv").read_bytes() == to_csv(columns, rows)
    assert not list(tmp_path.glob("chunk-*"))  # the chunks are gone once the result is written
    # several chunks were written, never more than two held at once: 4 analysed frames each, one face
    assert len(writer.chunks) >= 5 and 0 < writer.peak_buffered <= 2 * 4 + 4


def test_series_only_and_table_without_series(analyzer, tmp_path):
    """series=false: no frames in the JSON (as /analyze-video), yet the table has every analysed frame."""
    path = requires_data(SAMPLES / "single_face.mp4")
    video = VideoAnalyzer(analyzer)
    options = video.options(every=6, series=False)
    expected = video.analyze(path, options, "job").model_dump(mode="json")
    result, _ = streamed(video, path, options, tmp_path, chunk_frames=3)
    assert without(result) == without(expected) and result["tracks"][0]["frames"] == []
    rows = list(csv.DictReader(io.StringIO((tmp_path / "result.csv").read_text())))
    assert [int(r["frame"]) for r in rows] == list(range(0, 6 * len(rows), 6)) and len(rows) >= 10
    assert all(r["AU12_p"] for r in rows if r["success"] == "1") and "AU12" in AU_COLUMNS


def test_drain_hands_over_every_final_record_once():
    from types import SimpleNamespace

    class Sink:
        def __init__(self):
            self.got, self.frames = [], []

        def add(self, track_id, records):
            self.got += [(track_id, r.frame) for r in records]

        def advance(self, frame):
            self.frames.append(frame)

    def rec(frame, final=True):
        return SimpleNamespace(frame=frame, final=final)

    class Tr:
        def __init__(self, track_id, records):
            self.track_id, self.records = track_id, records

    class Tracker:
        # track 0's last record and track 2's still wait for their heads (run on the heads' thread)
        live = [Tr(0, [rec(1), rec(2), rec(3, final=False)]), Tr(None, [rec(2)])]
        finished = [Tr(1, [rec(0)]), Tr(2, [rec(2), rec(3, final=False)])]

    tracker, sink = Tracker(), Sink()
    drain(tracker, sink, 2)  # type: ignore[arg-type]
    assert sink.got == [(1, 0), (2, 2), (0, 1), (0, 2)] and sink.frames == [2]
    assert [r.frame for r in tracker.live[0].records] == [3] and [r.frame for r in tracker.live[1].records] == [2]
    assert [t.track_id for t in tracker.finished] == [2]  # kept until its last record is final
    for track in [*tracker.live, *tracker.finished]:
        for r in track.records:
            r.final = True
    drain(tracker, sink, 3)  # type: ignore[arg-type]
    assert sink.got[4:] == [(2, 3), (0, 3)] and tracker.finished == [] and tracker.live[0].records == []


def test_track_series_keeps_rows_aligned_when_readings_start_late():
    from app.video.tracking import FrameRecord

    series = TrackSeries()

    def rec(frame, aus=None, expression=None):
        return FrameRecord(frame=frame, t=frame / 30, box=[0, 0, 1, 1], confidence=1.0, pose=[0, 0, 0],
                           filter_reasons=[] if aus else ["side_face"], action_units=aus, expression=expression)

    series.append(rec(0))
    series.append(rec(1, {"AU1": 0.25, "AU2": 0.5}, ("happiness", 0.75, {"happiness": 0.75, "neutral": 0.25})))
    series.append(rec(2))
    assert series.row(0) == (None, None) and series.row(2) == (None, None)
    assert series.row(1) == ({"AU1": 0.25, "AU2": 0.5}, ("happiness", 0.75, {"happiness": 0.75, "neutral": 0.25}))
    signals = series.signals()
    assert signals["au", "AU2"].tolist()[1] == 0.5 and all(v != v for v in signals["au", "AU2"][[0, 2]])


def test_runner_writes_into_the_run_folder_and_the_store_commits_it(analyzer, tmp_path):
    from app.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs")
    store.create("j1", "", "video", "clip.mp4", {"every": 8})
    store.upload_path("j1").write_bytes(requires_data(SAMPLES / "single_face.mp4").read_bytes())
    (store.run_folder("j1", 1) / "chunk-000000.tsv").parent.mkdir(parents=True)
    (store.run_folder("j1", 1) / "chunk-000000.tsv").write_text("a killed run's partial chunk\n")
    store.clear_runs("j1")
    assert not store.run_folder("j1", 1).exists()
    seen = []
    run = JobRunner(analyzer, chunk_frames=2).run("video", store.upload_path("j1"), {"every": 8}, "j1",
                                                  lambda d, t: seen.append((d, t)), _Never(), store.run_folder("j1", 2))
    assert run == store.run_folder("j1", 2) and (run / "result.json").exists()
    store.commit_result("j1", run)
    assert not run.exists() and store.csv_path("j1").exists()
    result = json.loads(store.result_path("j1").read_text())
    assert result["video"]["analysed_frames"] == seen[-1][0] == 9 and result["tracks"][0]["summary"]["frames"] == 9


class _Never:
    def is_set(self) -> bool:
        return False
