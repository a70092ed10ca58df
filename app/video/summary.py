"""What a person reads first about one track: how much of the time each expression was the frame's label,
the dominant one, each AU's base rate (share of frames where it is present) and mean probability, and the
events by kind.

Events are *departures from the person's own resting face* (app/video/events.py): a face that smiles for most
of a clip has few happiness events, because smiling is its baseline. The summary's shares are what that face
showed most of the time; both are needed, and the summary comes first.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from app.schemas import AuSummary, TrackSummary, VideoEvent
from app.video.tracking import FrameRecord

DEFAULT_AU_THRESHOLD = 0.5


def au_thresholds(analyzer: object) -> dict[str, float]:
    """AU code -> the probability from which the AU counts as present, as the image endpoints decide it (the
    detector's thresholds, the fusion's with MICROFACS_AU_MODEL=fused, 0.4 in the open profile); {} when the
    analyzer has no AU head (the caller falls back to 0.5)."""
    head = getattr(analyzer, "heads", {}).get("au")
    model = getattr(head, "model", None)
    classes = getattr(model, "classes", None)
    if head is None:
        return {}
    fusion = getattr(head, "fusion", None)
    thresholds = getattr(fusion, "thresholds", None) if fusion is not None else getattr(model, "thresholds", None)
    if classes is not None and thresholds is not None:
        return {str(au): float(th) for au, th in zip(classes, thresholds)}
    threshold = getattr(head, "threshold", None)
    return {} if threshold is None else {"*": float(threshold)}


def track_summary(records: Sequence[FrameRecord], events: Sequence[VideoEvent],
                  thresholds: Mapping[str, float]) -> TrackSummary:
    """The summary of one track from its analysed frames (``records``) and its events. Shares and rates are over
    the frames the face was analysed in (not filtered: a side face or occluded frame counts for neither). The
    records are laid out as the arrays ``series_summary`` reads, so the two give the same numbers by construction."""
    score_names = next((list(r.expression[2]) for r in records if r.expression is not None), [])
    au_names = next((list(r.action_units) for r in records if not r.filtered and r.action_units), [])
    scores = np.array([[r.expression[2].get(name, 0.0) for name in score_names] if r.expression is not None
                       else [np.nan] * len(score_names) for r in records], dtype=np.float64)
    aus = np.array([[(r.action_units or {}).get(au, np.nan) for au in au_names] for r in records], dtype=np.float64)
    return series_summary(
        np.array([r.t for r in records], dtype=np.float64), np.array([r.filtered for r in records], dtype=bool),
        [None if r.expression is None else r.expression[0] for r in records], score_names,
        scores.reshape(len(records), len(score_names)), au_names, aus.reshape(len(records), len(au_names)),
        np.array([bool(r.action_units) for r in records], dtype=bool), events, thresholds)


def headline(summary: TrackSummary, top: int = 2, min_share: float = 0.1) -> str:
    """One sentence from the summary: the expressions that were the label most of the time, with their
    shares (the demo and the CLI say the same)."""
    if summary.dominant_expression is None:
        return "no expression read (every frame filtered or the expression head did not run)"
    ranked = sorted(summary.expression_share.items(), key=lambda kv: -kv[1])
    shown = [f"{name} {share:.0%}" for name, share in ranked[:top] if share >= min_share] or [
        f"{ranked[0][0]} {ranked[0][1]:.0%}"]
    return "mostly appears to show " + ", then ".join(shown) + " of the analysed time"


def series_summary(t: np.ndarray, filtered: np.ndarray, labels: Sequence[str | None], score_names: Sequence[str],
                   scores: np.ndarray, au_names: Sequence[str], aus: np.ndarray, has_au: np.ndarray,
                   events: Sequence[VideoEvent], thresholds: Mapping[str, float]) -> TrackSummary:
    """The summary of a track kept as arrays (a job's compact series, ``app.jobs.stream``; ``track_summary``
    lays out a track's records so): ``t`` and ``filtered`` per frame, ``labels`` the expression label (None: not
    read), ``scores`` the expression scores (rows by frame, columns ``score_names``), ``aus`` the AU
    probabilities (columns ``au_names``; ``has_au`` where the frame had them)."""
    usable = ~np.asarray(filtered, dtype=bool)
    read_rows = [i for i, label in enumerate(labels) if label is not None and usable[i]]
    counts = Counter(label for i, label in enumerate(labels) if label is not None and usable[i])
    read = sum(counts.values())
    label_names = list(score_names) if read_rows else list(counts)
    share = {name: round(counts.get(name, 0) / read, 4) if read else 0.0 for name in label_names}
    mean_scores: dict[str, float] = {}
    if read:
        for j, name in enumerate(label_names):
            mean_scores[name] = round(float(np.mean(np.ascontiguousarray(scores[read_rows, j]))), 4)
    dominant = max(counts, key=lambda k: (counts[k], mean_scores.get(k, 0.0))) if counts else None
    out_aus: dict[str, AuSummary] = {}
    with_aus = np.flatnonzero(usable & np.asarray(has_au, dtype=bool))
    if len(with_aus):
        for j, au in enumerate(au_names):
            p = np.ascontiguousarray(aus[with_aus, j])
            p = p[~np.isnan(p)]
            threshold = thresholds.get(au, thresholds.get("*", DEFAULT_AU_THRESHOLD))
            out_aus[au] = AuSummary(base_rate=round(float((p >= threshold).mean()), 4) if len(p) else 0.0,
                                    mean_probability=round(float(p.mean()), 4) if len(p) else 0.0,
                                    threshold=round(float(threshold), 4))
    by_kind = Counter(e.kind for e in events)
    return TrackSummary(
        frames=len(t),
        analysed_frames=int(usable.sum()),
        seen_s=round(float(np.max(t)) - float(np.min(t)), 4) if len(t) else 0.0,
        dominant_expression=dominant,
        dominant_share=round(counts[dominant] / read, 4) if dominant is not None else None,
        expression_share=share,
        expression_mean_scores=mean_scores,
        action_units=out_aus,
        events={"au": by_kind.get("au", 0), "expression": by_kind.get("expression", 0),
                "micro": sum(1 for e in events if e.micro), "total": len(events)},
        event_names=dict(sorted(Counter(e.name for e in events).items())),
    )
