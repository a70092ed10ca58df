"""Per-track summaries (app/video/summary.py): what a person reads first about a track."""
from __future__ import annotations

import numpy as np
import pytest

from app.schemas import VideoEvent
from app.video.summary import au_thresholds, headline, track_summary
from app.video.tracking import FrameRecord
from tests.helpers import SAMPLES, requires_data

LABELS = ("neutral", "happiness", "surprise", "sadness")


def record(i: int, label: str | None, au12: float = 0.1, filtered: bool = False) -> FrameRecord:
    scores = {name: (0.7 if name == label else 0.1) for name in LABELS}
    return FrameRecord(frame=i, t=i / 30.0, box=np.zeros(4), confidence=0.9, pose=np.zeros(3),
                       filter_reasons=["side_face"] if filtered else [],
                       action_units=None if filtered else {"AU12": au12, "AU04": 0.05},
                       expression=None if filtered or label is None else (label, 0.7, scores))


def event(kind: str, name: str, micro: bool) -> VideoEvent:
    return VideoEvent(kind=kind, name=name, onset_frame=0, apex_frame=1, offset_frame=2, onset_s=0.0, apex_s=0.03,
                      offset_s=0.06, duration_s=0.06 if micro else 1.0, peak=0.5, micro=micro)


def test_a_mostly_smiling_face_reads_as_happiness_even_without_happiness_events():
    records = ([record(i, "happiness", au12=0.9) for i in range(60)] + [record(60 + i, "neutral") for i in range(30)]
               + [record(90 + i, None, filtered=True) for i in range(10)])
    events = [event("expression", "sadness", True), event("expression", "surprise", False), event("au", "AU04", True)]
    summary = track_summary(records, events, {"AU12": 0.5, "AU04": 0.5})
    assert summary.frames == 100 and summary.analysed_frames == 90
    assert summary.dominant_expression == "happiness"
    assert summary.dominant_share == pytest.approx(60 / 90, abs=1e-3)
    assert summary.expression_share == pytest.approx(
        {"neutral": 30 / 90, "happiness": 60 / 90, "surprise": 0.0, "sadness": 0.0}, abs=1e-3)
    assert sum(summary.expression_share.values()) == pytest.approx(1.0, abs=1e-3)
    assert summary.action_units["AU12"].base_rate == pytest.approx(60 / 90, abs=1e-3)  # filtered frames excluded
    assert summary.action_units["AU12"].mean_probability == pytest.approx((60 * 0.9 + 30 * 0.1) / 90, abs=1e-3)
    assert summary.action_units["AU04"].base_rate == 0.0
    assert summary.events == {"au": 1, "expression": 2, "micro": 2, "total": 3}
    assert summary.event_names == {"AU04": 1, "sadness": 1, "surprise": 1}
    text = headline(summary)
    assert text.startswith("mostly appears to show happiness 67%") and "sadness" not in text


def test_a_track_with_every_frame_filtered_has_an_empty_summary():
    summary = track_summary([record(i, None, filtered=True) for i in range(5)], [], {})
    assert summary.dominant_expression is None and summary.dominant_share is None
    assert summary.action_units == {} and summary.events["total"] == 0
    assert "no expression" in headline(summary)


def test_au_thresholds_are_the_detectors(analyzer):
    thresholds = au_thresholds(analyzer)
    assert "AU12" in thresholds and all(0.0 < v < 1.0 for v in thresholds.values())


def test_analyze_video_tracks_carry_a_summary(client):
    data = requires_data(SAMPLES / "single_face.mp4").read_bytes()
    response = client.post("/analyze-video", files={"file": ("clip.mp4", data, "video/mp4")},
                           params={"every": 4, "series": "false"})
    assert response.status_code == 200, response.text
    (track,) = response.json()["tracks"]
    summary = track["summary"]
    assert summary["frames"] == 18 and 0 < summary["analysed_frames"] <= 18
    assert summary["dominant_expression"] in summary["expression_share"]
    assert sum(summary["expression_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "AU12" in summary["action_units"]
    assert summary["events"]["total"] == len(track["events"])
