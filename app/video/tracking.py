"""Face tracks through a video: one stable id per person, and as little detection as possible.

Per analysed frame (MediaPipe's video mode, plus association and confirmation):

1. every live track runs the face stage on the region its previous landmarks give
   (``Analyzer.run_from_landmarks``): no detection. The mesh presence says whether the face is still there;
2. the detector runs only when needed: every ``redetect_every`` analysed frames (to find new faces), when
   a track was lost in this frame, while a track is still tentative, or when there is no track at all;
3. detections are associated with tracks by the Hungarian algorithm (``scipy``) on a cost of box IoU and
   landmark distance (detector keypoints against the same points of the track's mesh); a lost track
   matched by a detection is recovered from it; a detection no track explains starts a *tentative* track;
4. a tentative track is confirmed after ``confirm_hits`` consecutive frames in which the detector finds it
   again and its mesh is a face (presence >= the landmark threshold); a tentative track that misses once
   is dropped. One-frame false positives (title text, patterns) therefore never become tracks and
   never get an id; ids are given at confirmation, 0, 1, 2, ...;
5. a confirmed track unseen for more than ``max_lost_s`` ends; until then the detector looks for it
   in every frame and it keeps its id when found.

Landmarks (hence the box) and head pose are smoothed per track with a One-Euro filter.
"""
from __future__ import annotations

from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.analyzer import Analyzer, FaceAnalysis, FaceOptions, Timings, mesh_box
from app.boxes import box_iou
from app.model_zoo.blazeface import Detection
from app.video.smoothing import OneEuroFilter

# Mesh points matching BlazeFace's first four keypoints: right eye, left eye, nose tip, mouth centre.
_EYE_R, _EYE_L, _NOSE, _MOUTH = (33, 133), (362, 263), (1,), (13, 14)
MIN_IOU = 0.2  # a detection and a track further apart than this are different faces ...
MAX_KEYPOINT_DISTANCE = 0.5  # ... or when their keypoints differ by more than this many face sizes
DUPLICATE_IOU = 0.6  # two live tracks overlapping this much follow the same face: the younger one ends


@dataclass
class FrameRecord:
    """What one analysed frame says about one track's face: numbers only, never pixels."""

    frame: int
    t: float
    box: np.ndarray
    confidence: float
    pose: np.ndarray  # yaw, pitch, roll (degrees), smoothed
    filter_reasons: list[str]
    action_units: dict[str, float] | None
    expression: tuple[str, float, dict[str, float]] | None  # label, confidence, scores
    expression_probs: np.ndarray | None = None  # the network's own probabilities (FER+ prior): for baselines
    final: bool = True  # False while its deferred heads have not run (Tracker.flush)

    @property
    def filtered(self) -> bool:
        return bool(self.filter_reasons)


@dataclass
class Track:
    key: int
    landmarks: np.ndarray  # the last mesh (raw): the next frame's region of interest
    box: np.ndarray  # the last mesh's extent (raw)
    last_seen_t: float
    hits: int = 1
    track_id: int | None = None  # given at confirmation
    records: list[FrameRecord] = field(default_factory=list)
    landmark_filter: OneEuroFilter = field(default_factory=lambda: OneEuroFilter(min_cutoff=1.0, beta=2.0))
    pose_filter: OneEuroFilter = field(default_factory=lambda: OneEuroFilter(min_cutoff=1.0, beta=0.02))

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None


def keypoints_of_mesh(landmarks: np.ndarray) -> np.ndarray:
    return np.stack([landmarks[list(ix), :2].mean(0) for ix in (_EYE_R, _EYE_L, _NOSE, _MOUTH)])


def association_cost(tracks: list[Track], detections: list[Detection]) -> np.ndarray:
    """(tracks, detections) cost: 1 - IoU plus the mean keypoint distance in face sizes; inf when gated out."""
    cost = np.full((len(tracks), len(detections)), np.inf)
    if not tracks or not detections:
        return cost
    boxes = np.array([d.box for d in detections])
    for i, track in enumerate(tracks):
        iou = box_iou(track.box, boxes)
        size = max(track.box[2] - track.box[0], track.box[3] - track.box[1], 1.0)
        mesh_points = keypoints_of_mesh(track.landmarks)
        for j, detection in enumerate(detections):
            distance = float(np.linalg.norm(detection.keypoints[:4] - mesh_points, axis=1).mean() / size)
            if iou[j] >= MIN_IOU and distance <= MAX_KEYPOINT_DISTANCE:
                cost[i, j] = (1.0 - iou[j]) + distance
    return cost


def assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one pairs, leaving out gated (inf) pairs."""
    if cost.size == 0 or not np.isfinite(cost).any():
        return []
    finite = np.where(np.isfinite(cost), cost, 1e6)
    from scipy.optimize import linear_sum_assignment  # imported on first use: scipy costs ~40 MiB per worker

    rows, cols = linear_sum_assignment(finite)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if np.isfinite(cost[r, c])]


def head_fields(face: FaceAnalysis) -> tuple[dict[str, float] | None, tuple[str, float, dict[str, float]] | None,
                                             np.ndarray | None]:
    """A frame record's head readings of ``face``: AU probabilities, expression (label, confidence, scores) and
    the network's own probabilities; None where the head did not run (or the face is filtered)."""
    aus = expression = probs = None
    if not face.filtered:
        if "au" in face.outputs:
            aus = {u.au: float(u.probability) for u in face.outputs["au"]}
        if "expression" in face.outputs:
            e = face.outputs["expression"]
            expression = (e.label, float(e.confidence), {k: float(v) for k, v in e.scores.items()})
            probs = e.probs
    return aus, expression, probs


class Tracker:
    def __init__(
        self,
        analyzer: Analyzer,
        options: FaceOptions,
        heads: Collection[str],
        *,
        redetect_every: int,
        confirm_hits: int,
        max_lost_s: float,
        batch_frames: int = 1,
        overlap: bool = False,
    ) -> None:
        self.analyzer, self.options, self.heads = analyzer, options, tuple(heads)
        # Heads deferred and run on the faces of ``batch_frames`` frames at once (one network call per head: what
        # a GPU wants); not for heads that read the irises (landmarks v2 runs on the frame's own image).
        irises = analyzer.needs_irises(self.heads)
        self.batch_frames = 1 if irises else max(1, batch_frames)
        # ``overlap``: the deferred heads run on a thread of their own while the next frames are decoded and their
        # face stage runs (two cores: the per-face networks beside the mesh); the same readings, later.
        self.deferred = not irises and (self.batch_frames > 1 or overlap)
        self.heads_thread = ThreadPoolExecutor(1, "microfacs-track-heads") if self.deferred and overlap else None
        # ... with a thread of their own for the heads that run side by side (not the analyzer's pool): threads
        # are made by the thread that first needs them and keep its priority, a job's (app/jobs/queue.py) too.
        self.side_pool = ThreadPoolExecutor(1, "microfacs-track-side") if self.heads_thread is not None else None
        self.in_flight: Future | None = None  # the heads the thread is running: flush() waits for them
        self.pending: list[tuple[FaceAnalysis, FrameRecord]] = []  # faces whose heads have not run yet
        self.pending_frames = 0
        self.settled_frame = -1  # every record up to this frame is final
        self.last_frame = -1
        self.redetect_every, self.confirm_hits, self.max_lost_s = redetect_every, confirm_hits, max_lost_s
        self.presence_threshold = analyzer.settings.landmark_presence_threshold
        self.live: list[Track] = []
        self.finished: list[Track] = []  # confirmed tracks that ended
        self.timings = Timings()
        self.since_detection = 0
        self.next_key = 0
        self.next_id = 0
        self.detections_run = 0
        self.shape: tuple[int, ...] = (0, 0)

    # -- one frame ------------------------------------------------------------------------------------------

    @property
    def frame_heads(self) -> tuple[str, ...]:
        """The heads each frame's analysis runs itself: none when they are deferred to ``flush``."""
        return () if self.deferred else self.heads

    def step(self, image: np.ndarray, frame: int, t: float) -> None:
        seen: set[int] = set()
        self.shape = image.shape
        self._step(image, frame, t, seen)
        self.last_frame = frame
        if not self.deferred:
            self.settled_frame = frame
            return
        self.pending_frames += 1
        if self.pending_frames >= self.batch_frames:
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        """The deferred heads on every face seen since the last flush, in one call per head, and their readings
        into those faces' frame records (``final``). With the heads' own thread and ``wait=False`` they run there
        while the caller goes on; else, and for the ones still running there, this returns once they are done.
        Call it before reading the records (``tracks`` does)."""
        self.settle()
        pending, self.pending, self.pending_frames = self.pending, [], 0
        if self.heads_thread is not None and not wait:
            self.in_flight = self.heads_thread.submit(self._read_heads, pending, self.last_frame)
        else:
            self._read_heads(pending, self.last_frame)

    def settle(self) -> None:
        """Waits for the heads running on the heads' thread (their errors are raised here)."""
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            future.result()

    def close(self) -> None:
        """Stops the heads' threads once the heads they run are done (an error of theirs is raised by ``settle``
        and ``flush``, not here: this also runs while another error propagates)."""
        if self.in_flight is not None:
            self.in_flight.exception()
            self.in_flight = None
        for pool in (self.heads_thread, self.side_pool):
            if pool is not None:
                pool.shutdown()

    def _read_heads(self, pending: list[tuple[FaceAnalysis, FrameRecord]], last_frame: int) -> None:
        faces = [face for face, _ in pending]
        self.analyzer.run_heads_on(faces, self.heads, [self.options] * len(faces), self.timings, self.side_pool)
        for face, record in pending:
            record.action_units, record.expression, record.expression_probs = head_fields(face)
            record.final = True
        self.settled_frame = last_frame

    def _step(self, image: np.ndarray, frame: int, t: float, seen: set[int]) -> None:
        if self.live:
            analysis = self.analyzer.run_from_landmarks(
                image, [tr.landmarks for tr in self.live], self.options, self.frame_heads, self.timings
            )
            for track, face in zip(self.live, analysis.faces):
                if face.landmark_confidence >= self.presence_threshold:
                    self._observe(track, face, frame, t)
                    seen.add(track.key)
        self.since_detection += 1
        need = (
            not self.live
            or self.since_detection >= self.redetect_every
            or any(tr.key not in seen or not tr.confirmed for tr in self.live)
        )
        if need:
            self._detect(image, frame, t, seen)
        self._end_missing(t, seen)
        self._drop_duplicates()

    def _detect(self, image: np.ndarray, frame: int, t: float, seen: set[int]) -> None:
        self.since_detection = 0
        self.detections_run += 1
        with self.timings.stage("detect"):
            detections = self.analyzer.detect(image, self.options)
        matched_tracks: set[int] = set()
        matched_detections: set[int] = set()
        recover: list[tuple[Track, Detection]] = []
        for i, j in assign(association_cost(self.live, detections)):
            track = self.live[i]
            matched_tracks.add(track.key)
            matched_detections.add(j)
            if track.key in seen:
                self._hit(track)
            else:
                recover.append((track, detections[j]))
        if recover:
            analysis = self.analyzer.run_from_detections(
                image, [d for _, d in recover], self.options, self.frame_heads, self.timings
            )
            for (track, _), face in zip(recover, analysis.faces):
                if face.landmark_confidence >= self.presence_threshold:
                    self._observe(track, face, frame, t)
                    seen.add(track.key)
                    self._hit(track)
        # A tentative track must be found by the detector in every frame until it is confirmed.
        for track in self.live:
            if not track.confirmed and track.key not in matched_tracks:
                seen.discard(track.key)
        room = self.options.max_faces - len(self.live)
        new = [d for j, d in enumerate(detections) if j not in matched_detections][: max(room, 0)]
        if new:
            analysis = self.analyzer.run_from_detections(image, new, self.options, self.frame_heads, self.timings)
            for face in analysis.faces:
                if face.landmark_confidence >= self.presence_threshold:
                    track = Track(self.next_key, face.landmarks, mesh_box(face.landmarks, image.shape), t)
                    self.next_key += 1
                    self._observe(track, face, frame, t)
                    self.live.append(track)
                    seen.add(track.key)
                    if self.confirm_hits <= 1:
                        self._confirm(track)

    def _hit(self, track: Track) -> None:
        if not track.confirmed:
            track.hits += 1
            if track.hits >= self.confirm_hits:
                self._confirm(track)

    def _confirm(self, track: Track) -> None:
        track.track_id = self.next_id
        self.next_id += 1

    def _observe(self, track: Track, face: FaceAnalysis, frame: int, t: float) -> None:
        track.landmarks = face.landmarks
        track.box = mesh_box(face.landmarks, self.shape)
        track.last_seen_t = t
        size = float(max(track.box[2] - track.box[0], track.box[3] - track.box[1], 1.0))
        smooth = track.landmark_filter(face.landmarks, t, scale=size)
        pose = track.pose_filter(np.array([face.pose.yaw, face.pose.pitch, face.pose.roll]), t)
        aus, expression, probs = head_fields(face)
        record = FrameRecord(
            frame=frame,
            t=t,
            box=mesh_box(smooth, self.shape),
            confidence=float(face.landmark_confidence),
            pose=pose,
            filter_reasons=list(face.filter_reasons),
            action_units=aus,
            expression=expression,
            expression_probs=probs,
        )
        if self.deferred and not face.filtered:
            record.final = False
            self.pending.append((face, record))  # its head fields are filled by flush()
        if track.records and track.records[-1].frame == frame:  # recovered in the same frame: keep the latest
            track.records[-1] = record
        else:
            track.records.append(record)

    def _end_missing(self, t: float, seen: set[int]) -> None:
        kept = []
        for track in self.live:
            if track.key in seen:
                kept.append(track)
            elif track.confirmed and t - track.last_seen_t <= self.max_lost_s:
                kept.append(track)  # lost for now: the detector looks for it in every frame
            elif track.confirmed:
                self.finished.append(track)
        self.live = kept

    def _drop_duplicates(self) -> None:
        live = sorted(self.live, key=lambda tr: (not tr.confirmed, tr.key))  # confirmed and older first
        kept: list[Track] = []
        for track in live:
            if kept and box_iou(track.box, np.array([k.box for k in kept])).max() > DUPLICATE_IOU:
                if track.confirmed:
                    self.finished.append(track)
                continue
            kept.append(track)
        self.live = sorted(kept, key=lambda tr: tr.key)

    def tracks(self) -> list[Track]:
        """Every confirmed track of the clip so far, by id (the deferred heads run first)."""
        self.flush()
        done = self.finished + [tr for tr in self.live if tr.confirmed]
        return sorted(done, key=lambda tr: tr.track_id if tr.track_id is not None else -1)
