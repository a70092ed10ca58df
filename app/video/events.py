"""Event spotting on one track's signals (an AU probability, an expression score), measured against the
person's own resting face.

For each signal, sampled at the analysed frames of one track (NaN where the face was filtered):

1. short gaps (<= ``max_gap_s``) are bridged by linear interpolation; longer ones cut the signal;
2. a 3-sample running median removes one-frame spikes;
3. the baseline is a rolling median over ``baseline_window_s`` (OpenFace-style person-specific
   normalisation) of the signal at the person's *resting* frames: those whose neutral-expression score is
   in the top ``event_rest_fraction`` of the window (all frames when the expression head did not run). So
   the baseline is that person's level of the signal at rest, whatever their resting face looks like, even
   in a clip where they smile most of the time;
4. hysteresis on the departure from the baseline: an event needs the departure to reach ``on`` and lasts
   while it stays above ``off``; events closer than ``merge_gap_s`` merge, events shorter than ``min_s``
   are dropped. Onset and offset are the first and last samples above ``off``, the apex the largest
   departure; ``micro`` when onset to offset lasts at most ``micro_max_s`` (0.5 s, the MEGC convention).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from app.respond import unit_interval
from app.schemas import VideoEvent
from app.settings import Settings


@dataclass(frozen=True)
class EventParams:
    on: float
    off: float
    min_s: float
    merge_gap_s: float
    baseline_window_s: float
    baseline_percentile: float
    micro_max_s: float
    max_gap_s: float = 0.25

    @classmethod
    def of(cls, settings: Settings, kind: str) -> EventParams:
        on, off = (
            (settings.event_au_on, settings.event_au_off)
            if kind == "au"
            else (settings.event_expression_on, settings.event_expression_off)
        )
        return cls(
            on=on,
            off=min(off, on),
            min_s=settings.event_min_s,
            merge_gap_s=settings.event_merge_gap_s,
            baseline_window_s=settings.event_baseline_window_s,
            baseline_percentile=settings.event_baseline_percentile,
            micro_max_s=settings.micro_max_s,
        )


@dataclass(frozen=True)
class Spotted:
    """One event, as indices into the track's samples (the caller maps them to frames)."""

    onset: int
    apex: int
    offset: int
    onset_s: float
    apex_s: float
    offset_s: float
    peak: float  # the (median-filtered) signal at the apex
    departure: float  # peak minus the baseline there

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s


def bridge_gaps(values: np.ndarray, t: np.ndarray, max_gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(filled values, usable mask): NaN runs no longer than ``max_gap_s`` interpolated, longer ones unusable."""
    values = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(values)
    if not valid.any():
        return np.zeros_like(values), valid
    filled = np.interp(t, t[valid], values[valid])
    usable = valid.copy()
    idx = np.flatnonzero(valid)
    for a, b in pairwise(idx):
        if b - a > 1 and t[b] - t[a] <= max_gap_s:
            usable[a + 1 : b] = True
    return filled, usable


def baseline(values: np.ndarray, t: np.ndarray, window_s: float, percentile: float) -> np.ndarray:
    """Rolling ``percentile`` of ``values`` over a centred window of ``window_s`` seconds (the whole signal
    when it is shorter than the window)."""
    n = len(values)
    if n == 0:
        return values.copy()
    rate = (n - 1) / (t[-1] - t[0]) if n > 1 and t[-1] > t[0] else 30.0
    size = max(1, round(window_s * rate))
    if size >= n:
        return np.full(n, np.percentile(values, percentile))
    from scipy.ndimage import percentile_filter  # imported on first use: scipy costs ~40 MiB per worker

    return percentile_filter(values, percentile, size=size, mode="nearest")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end] (inclusive) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def resting(neutral: np.ndarray, t: np.ndarray, window_s: float, fraction: float) -> np.ndarray:
    """The samples where the face is most at rest: its neutral-expression score is in the top ``fraction``
    of a rolling window (NaN never)."""
    valid = ~np.isnan(neutral)
    mask = np.zeros(len(neutral), dtype=bool)
    if valid.sum() < 3:
        return valid
    cut = baseline(neutral[valid], t[valid], window_s, 100.0 * (1.0 - fraction))
    mask[valid] = neutral[valid] >= cut
    return mask


def spot(values: np.ndarray, t: np.ndarray, params: EventParams, rest: np.ndarray | None = None) -> list[Spotted]:
    """Events in one signal sampled at times ``t`` (seconds, increasing; NaN = no value there). ``rest``: the
    samples the baseline is measured on (the person's resting face, ``resting``); default all."""
    t = np.asarray(t, dtype=np.float64)
    if len(t) < 3:
        return []
    filled, usable = bridge_gaps(values, t, params.max_gap_s)
    from scipy.ndimage import median_filter

    smooth = median_filter(filled, size=3, mode="nearest")
    calm = usable & ~np.isnan(np.asarray(values, dtype=np.float64))
    if rest is not None and (calm & rest).sum() >= 3:
        calm &= rest
    level = baseline(smooth[calm], t[calm], params.baseline_window_s, params.baseline_percentile)
    base = np.interp(t, t[calm], level) if calm.any() else np.zeros_like(t)
    departure = np.where(usable, smooth - base, -np.inf)
    regions = [(a, b) for a, b in _runs(departure >= params.off) if departure[a : b + 1].max() >= params.on]
    merged: list[tuple[int, int]] = []
    for a, b in regions:
        if merged and t[a] - t[merged[-1][1]] <= params.merge_gap_s and usable[merged[-1][1] : a + 1].all():
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    events = []
    for a, b in merged:
        if t[b] - t[a] < params.min_s:
            continue
        apex = a + int(np.argmax(departure[a : b + 1]))
        events.append(
            Spotted(
                onset=a,
                apex=apex,
                offset=b,
                onset_s=float(t[a]),
                apex_s=float(t[apex]),
                offset_s=float(t[b]),
                peak=float(smooth[apex]),
                departure=float(departure[apex]),
            )
        )
    return events


NEUTRAL = "neutral"


def track_events(
    frames: list[int], t: list[float], signals: dict[tuple[str, str], np.ndarray], settings: Settings
) -> list[VideoEvent]:
    """Every event of one track: ``signals`` maps (kind, name), kind ``au`` or ``expression``, to the
    signal at the track's analysed frames (NaN where filtered). Never a neutral event. By onset."""
    times = np.asarray(t, dtype=np.float64)
    params = {kind: EventParams.of(settings, kind) for kind in ("au", "expression")}
    neutral = signals.get(("expression", NEUTRAL))
    rest = None
    if neutral is not None:
        rest = resting(neutral, times, settings.event_baseline_window_s, settings.event_rest_fraction)
    out = []
    for (kind, name), values in signals.items():
        if kind == "expression" and name == NEUTRAL:
            continue
        for e in spot(values, times, params[kind], rest):
            out.append(
                VideoEvent(
                    kind=kind,
                    name=name,
                    onset_frame=frames[e.onset],
                    apex_frame=frames[e.apex],
                    offset_frame=frames[e.offset],
                    onset_s=round(e.onset_s, 4),
                    apex_s=round(e.apex_s, 4),
                    offset_s=round(e.offset_s, 4),
                    duration_s=round(e.duration_s, 4),
                    peak=unit_interval(e.peak),
                    micro=e.duration_s <= settings.micro_max_s,
                )
            )
    return sorted(out, key=lambda e: (e.onset_frame, e.kind, e.name))


def series_signals(frames: list[dict]) -> dict[tuple[str, str], np.ndarray]:
    """The signals of a track from its JSON series (``VideoTrack.frames`` dumped): for re-spotting a
    stored result with other event settings (scripts/evaluate_spotting.py)."""
    keys: list[tuple[str, str]] = []
    for f in frames:
        if f.get("action_units"):
            keys += [("au", k) for k in f["action_units"]]
            break
    for f in frames:
        if f.get("expression") and f["expression"].get("scores"):
            keys += [("expression", k) for k in f["expression"]["scores"]]
            break
    out = {}
    for kind, name in keys:
        if kind == "au":
            values = [np.nan if not f.get("action_units") else f["action_units"].get(name, np.nan) for f in frames]
        else:
            values = [f["expression"]["scores"].get(name, np.nan) if f.get("expression") else np.nan for f in frames]
        out[kind, name] = np.array(values, dtype=np.float64)
    return out
