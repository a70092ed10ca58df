"""A video job's result written as it goes, so that a worker's memory does not grow with the clip.

While the video is analysed (``VideoAnalyzer.analyze_frames(..., sink=writer)``), each confirmed track's records
reach ``ResultWriter.add`` once final and the tracker keeps none. The writer

* appends each record, as its JSON series entry (``frame_out``), to the chunk of ``chunk_frames`` analysed frames
  it falls in; a chunk is held in memory until the video is two chunks further on (a track's first few frames
  arrive late, when it is confirmed), then written sorted by (frame, track) to ``chunk-<n>.tsv`` in the run's
  folder (``frame<TAB>track<TAB>json`` per line) and forgotten;
* keeps, per track, only what events, summaries and ``baseline=auto`` need over the whole track: a compact
  columnar series (``TrackSeries``: float64 columns of the AU probabilities, expression scores and network
  probabilities, and the frame, time, filtered flag and label; ~0.4 KB per analysed face-frame, about 20 MB for
  a 30-minute 30 fps clip of one face, against ~3 KB for the per-frame Python objects the in-memory path keeps).
  float64, not float32: the events and the summary are then the synchronous endpoint's, number for number.

``finish`` then computes each track's events, summary and (``baseline=auto``) reference from its series
(``app.video.events``, ``app.video.summary.series_summary``, ``app.reference``: the synchronous path's
functions), rewrites the chunks with the relative values when a baseline was found, and writes, streaming from
the chunks, ``result.json`` (``/analyze-video``'s answer) and ``result.csv`` (the job table, rows in frame order).
Memory at the end: the events and summaries, plus one chunk.
"""
from __future__ import annotations

import csv
import json
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.jobs.tables import AU_COLUMNS, track_frame_face
from app.reference import relative_au_probability, track_reference
from app.respond import expression_out, unit_interval
from app.schemas import FrameExpression, TrackBaseline, VideoAnalysisResponse, VideoEvent, VideoTrack
from app.table import columns as table_columns
from app.table import face_rows
from app.video.analyze import VideoAnalyzer, VideoOptions, frame_out
from app.video.events import track_events
from app.video.summary import au_thresholds, series_summary
from app.video.tracking import FrameRecord

CHUNK_FRAMES = 1000  # analysed frames per chunk file


class TrackSeries:
    """One track's numbers per analysed frame, in typed arrays (no Python object per frame)."""

    def __init__(self) -> None:
        self.frame = array("q")
        self.t = array("d")
        self.filtered = array("b")
        self.has_au = array("b")
        self.has_expression = array("b")
        self.has_probs = array("b")
        self.label = array("h")  # index into ``labels``; -1: no expression read
        self.confidence = array("d")
        self.au = array("d")  # rows of len(au_names), NaN where the frame has none
        self.scores = array("d")  # rows of len(score_names)
        self.probs = array("d")  # rows of ``probs_width``
        self.au_names: list[str] = []
        self.score_names: list[str] = []
        self.labels: list[str] = []
        self.probs_width = 0

    def __len__(self) -> int:
        return len(self.frame)

    def append(self, r: FrameRecord) -> None:
        self.frame.append(r.frame)
        self.t.append(r.t)
        self.filtered.append(1 if r.filtered else 0)
        units = r.action_units
        if units and not self.au_names:
            self.au_names = list(units)
            self.au.extend([np.nan] * (len(self.au_names) * (len(self.frame) - 1)))  # earlier rows: none
        self.has_au.append(1 if units else 0)
        if self.au_names:
            self.au.extend([units.get(n, np.nan) for n in self.au_names] if units else [np.nan] * len(self.au_names))
        expression = r.expression
        if expression is not None and not self.score_names:
            self.score_names = list(expression[2])
            self.scores.extend([np.nan] * (len(self.score_names) * (len(self.frame) - 1)))
        self.has_expression.append(0 if expression is None else 1)
        if expression is None:
            self.label.append(-1)
            self.confidence.append(np.nan)
        else:
            if expression[0] not in self.labels:
                self.labels.append(expression[0])
            self.label.append(self.labels.index(expression[0]))
            self.confidence.append(expression[1])
        if self.score_names:
            self.scores.extend([np.nan] * len(self.score_names) if expression is None else
                               [expression[2].get(n, np.nan) for n in self.score_names])
        probs = r.expression_probs
        if probs is not None and not self.probs_width:
            self.probs_width = len(probs)
            self.probs.extend([np.nan] * (self.probs_width * (len(self.frame) - 1)))
        self.has_probs.append(0 if probs is None else 1)
        if self.probs_width:
            self.probs.extend([np.nan] * self.probs_width if probs is None else [float(p) for p in probs])

    # -- views ----------------------------------------------------------------------------------------------

    def matrix(self, name: str) -> np.ndarray:
        width = {"au": len(self.au_names), "scores": len(self.score_names), "probs": self.probs_width}[name]
        data = np.frombuffer(getattr(self, name), dtype=np.float64) if len(getattr(self, name)) else np.zeros(0)
        return data.reshape(len(self), width) if width else np.zeros((len(self), 0))

    def row(self, i: int) -> tuple[dict[str, float] | None, tuple[str, float, dict[str, float]] | None]:
        """(action units, expression) of the i-th frame, as a ``FrameRecord`` holds them."""
        units = None
        if self.has_au[i]:
            units = dict(zip(self.au_names, (float(v) for v in self.matrix("au")[i])))
        expression = None
        if self.has_expression[i]:
            scores = dict(zip(self.score_names, (float(v) for v in self.matrix("scores")[i])))
            expression = (self.labels[self.label[i]], float(self.confidence[i]), scores)
        return units, expression

    def signals(self) -> dict[tuple[str, str], np.ndarray]:
        """``VideoAnalyzer.events``' signals: each AU's and expression score's column (NaN where none)."""
        out: dict[tuple[str, str], np.ndarray] = {}
        au, scores = self.matrix("au"), self.matrix("scores")
        for j, name in enumerate(self.au_names):
            out["au", name] = np.ascontiguousarray(au[:, j])
        for j, name in enumerate(self.score_names):
            out["expression", name] = np.ascontiguousarray(scores[:, j])
        return out


class ResultWriter:
    """The ``RecordSink`` of a video job (see the module's docstring); ``folder`` is the run's own folder."""

    def __init__(self, folder: Path, every: int, chunk_frames: int = CHUNK_FRAMES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.span = max(1, chunk_frames) * max(1, every)  # video frames per chunk
        self.buffers: dict[int, list[tuple[int, int, str]]] = {}
        self.written = -1  # the last chunk written
        self.chunks: list[tuple[Path, set[int]]] = []  # (file, the tracks in it), in frame order
        self.series: dict[int, TrackSeries] = {}
        self.peak_buffered = 0  # the most lines held at once (tests: memory is bounded by the chunk size)

    # -- while analysing ------------------------------------------------------------------------------------

    def add(self, track_id: int, records: list[FrameRecord]) -> None:
        series = self.series.setdefault(track_id, TrackSeries())
        for r in records:
            series.append(r)
            key = r.frame // self.span
            if key <= self.written:
                raise RuntimeError(f"frame {r.frame} of track {track_id} arrived after its chunk was written")
            self.buffers.setdefault(key, []).append((r.frame, track_id, frame_out(r).model_dump_json()))

    def advance(self, frame: int) -> None:
        self.peak_buffered = max(self.peak_buffered, sum(len(b) for b in self.buffers.values()))
        current = frame // self.span
        for key in sorted(k for k in self.buffers if k < current - 1):
            self._write(key)

    def _write(self, key: int) -> None:
        lines = sorted(self.buffers.pop(key), key=lambda line: (line[0], line[1]))
        path = self.folder / f"chunk-{key:06d}.tsv"
        with path.open("w") as out:
            out.writelines(f"{frame}\t{track}\t{text}\n" for frame, track, text in lines)
        self.chunks.append((path, {track for _, track, _ in lines}))
        self.written = key

    # -- at the end -----------------------------------------------------------------------------------------

    def finish(self, answer: VideoAnalysisResponse, video: VideoAnalyzer, options: VideoOptions) -> Path:
        """Writes ``result.json`` and ``result.csv`` into the folder (and deletes the chunks); the folder."""
        for key in sorted(self.buffers):
            self._write(key)
        tracks: list[dict[str, Any]] = []
        relative: dict[int, TrackSeries] = {}
        for track_id in sorted(self.series):
            track, rel = self._track(track_id, video, options)
            tracks.append(track)
            if rel is not None:
                relative[track_id] = rel
        self._write_csv(relative, answer.request_id)
        self._write_json(answer, tracks, options.series)
        for path, _ in self.chunks:
            path.unlink(missing_ok=True)
        return self.folder

    def _track(self, track_id: int, video: VideoAnalyzer, options: VideoOptions
               ) -> tuple[dict[str, Any], TrackSeries | None]:
        series = self.series[track_id]
        baseline = rel = None
        if options.baseline == "auto":
            rel, baseline = relative_series(series, video, options)
        used = rel or series
        frames = list(used.frame)
        events: list[VideoEvent] = track_events(frames, list(used.t), used.signals(), video.settings)
        labels = [None if i < 0 else used.labels[i] for i in used.label]
        summary = series_summary(np.frombuffer(used.t, dtype=np.float64), np.array(used.filtered, dtype=bool),
                                 labels, used.score_names, used.matrix("scores"), used.au_names, used.matrix("au"),
                                 np.array(used.has_au, dtype=bool), events, au_thresholds(video.analyzer))
        fields: dict[str, Any] = {} if options.baseline != "auto" else {"baseline": baseline}
        track = VideoTrack(track_id=track_id, first_frame=frames[0], last_frame=frames[-1], frames=[], events=events,
                           summary=summary, **fields).model_dump(mode="json")
        return track, rel

    def lines(self, track_id: int | None = None) -> Iterator[tuple[int, int, str]]:
        """(frame, track, series entry JSON) of every frame (of one track), in frame order."""
        for path, tracks in self.chunks:
            if track_id is not None and track_id not in tracks:
                continue
            with path.open() as lines:
                for line in lines:
                    frame, track, text = line.rstrip("\n").split("\t", 2)
                    if track_id is None or int(track) == track_id:
                        yield int(frame), int(track), text

    def _write_csv(self, relative: dict[int, TrackSeries], source: str) -> None:
        """The job table (``app.jobs.tables``' schema), and the chunks rewritten with the relative values."""
        cols = [*table_columns(list(AU_COLUMNS), True), "error"]
        seen = dict.fromkeys(relative, 0)
        with (self.folder / "result.csv").open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", restval="", lineterminator="\n")
            writer.writeheader()
            for path, _ in self.chunks:
                rows: list[tuple[int, int, dict[str, Any]]] = []
                with path.open() as lines:
                    for line in lines:
                        frame, track, text = line.rstrip("\n").split("\t", 2)
                        f = json.loads(text)
                        if int(track) in relative:
                            f = relative_entry(f, relative[int(track)], seen[int(track)])
                            seen[int(track)] += 1
                        rows.append((int(frame), int(track), f))
                if relative:
                    tmp = path.with_suffix(".tmp")
                    with tmp.open("w") as rewritten:
                        rewritten.writelines(f"{frame}\t{track}\t{json.dumps(f, separators=(',', ':'))}\n"
                                             for frame, track, f in rows)
                    os.replace(tmp, path)
                start = 0
                while start < len(rows):
                    end = start
                    while end < len(rows) and rows[end][0] == rows[start][0]:
                        end += 1
                    faces = [track_frame_face(track, f) for _, track, f in rows[start:end]]
                    meta = {"frame": rows[start][0], "timestamp": rows[start][2]["t"], "source": source}
                    writer.writerows(face_rows(meta, {"faces": faces}))
                    start = end

    def _write_json(self, answer: VideoAnalysisResponse, tracks: list[dict[str, Any]], series: bool) -> None:
        top = answer.model_dump(mode="json")
        marks = {}
        for track in tracks:
            if series:
                track["frames"] = marks[track["track_id"]] = f"@@frames-{track['track_id']}@@"
        top["tracks"] = tracks
        text = json.dumps(top, separators=(",", ":"))
        with (self.folder / "result.json").open("w") as out:
            for track_id, mark in marks.items():
                before, text = text.split(json.dumps(mark), 1)
                out.write(before)
                out.write("[")
                for n, (_, _, entry) in enumerate(self.lines(track_id)):
                    out.write("," if n else "")
                    out.write(entry)
                out.write("]")
            out.write(text)


def relative_series(series: TrackSeries, video: VideoAnalyzer, options: VideoOptions
                    ) -> tuple[TrackSeries | None, TrackBaseline | None]:
    """``VideoAnalyzer.relative_records`` on a series: the track relative to its most neutral-looking frames, or
    (None, None) when no frame has both readings."""
    analyzer = video.analyzer
    au, probs = series.matrix("au"), series.matrix("probs")
    aus = [au[i] if series.has_au[i] else None for i in range(len(series))]
    found = track_reference([probs[i] if series.has_probs[i] else None for i in range(len(series))], aus,
                            video.settings.baseline_fraction, analyzer.reference_models())
    if found is None:
        return None, None
    reference, chosen = found
    prior = options.face.expression_prior
    out = TrackSeries()
    for i in range(len(series)):
        units, expression = series.row(i)
        if expression is not None:
            e = analyzer.relative_reading(probs[i] if series.has_probs[i] else None, aus[i], reference, prior)
            if e is not None:
                expression = (e.label, e.confidence, e.scores)
        if units is not None:
            units = {name: float(p) for name, p in zip(units, relative_au_probability(au[i], reference))}
        out.append(FrameRecord(frame=series.frame[i], t=series.t[i], box=np.zeros(4), confidence=0.0,
                               pose=np.zeros(3), filter_reasons=["x"] if series.filtered[i] else [],
                               action_units=units, expression=expression))
    frames = [series.frame[i] for i in chosen]
    return out, TrackBaseline(frames=len(frames), first_frame=min(frames), last_frame=max(frames),
                              expression=expression_out(analyzer.reference_reading(reference, prior)))


def relative_entry(entry: dict[str, Any], rel: TrackSeries, i: int) -> dict[str, Any]:
    """A series entry with the relative AUs and expression of the track's i-th frame (as ``frame_out``)."""
    units, expression = rel.row(i)
    entry["action_units"] = None if units is None else {k: unit_interval(v) for k, v in units.items()}
    if expression is not None:
        label, confidence, scores = expression
        entry["expression"] = FrameExpression(
            label=label, confidence=unit_interval(confidence),
            scores={k: unit_interval(v) for k, v in scores.items()}).model_dump(mode="json")
    else:
        entry["expression"] = None
    return entry
