"""The CLI's video path: each video is analysed whole (face tracks, time series, events) by the service's own
``app.video.analyze.VideoAnalyzer`` in this process, or by a server's ``POST /analyze-video`` (``--url``).

Outputs: the CSV rows (one per analysed frame and face, ``face_id`` = the track id, as OpenFace's
FeatureExtraction; ``frame`` 0-based everywhere: the CSV, the JSON, the events file and rendered file names),
or one JSON line per video; an events file (CSV, one row per event); a summary file (CSV, one row per track:
the share of time of each expression, the dominant one, AU base rates and mean probabilities, events by kind);
with ``--plot`` a PNG timeline per track (needs matplotlib: ``pip install "microfacs[plot]"``).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import IO, Any

from microfacs_cli.output import Writer

EXPRESSION_LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
SUMMARY_HEAD = ["source", "face_id", "first_frame", "last_frame", "frames", "analysed_frames", "seen_s",
                "dominant_expression", "dominant_share", *[f"share_{label}" for label in EXPRESSION_LABELS],
                "events_au", "events_expression", "events_micro", "events_total"]
EVENT_COLUMNS = ["source", "face_id", "kind", "name", "onset_frame", "apex_frame", "offset_frame", "onset_s",
                 "apex_s", "offset_s", "duration_s", "peak", "micro"]


class LocalVideoBackend:
    def __init__(self, analyzer: Any, options: dict[str, Any], every: int) -> None:
        from app.video.analyze import VideoAnalyzer

        self.video = VideoAnalyzer(analyzer)
        self.options = self.video.options(every=every, **options)

    def analyse(self, path: Path) -> dict[str, Any]:
        return self.video.analyze(path, self.options).model_dump(mode="json")


class RemoteVideoBackend:
    def __init__(self, client: Any, options: dict[str, Any], every: int) -> None:
        self.client, self.options, self.every = client, options, every

    def analyse(self, path: Path) -> dict[str, Any]:
        allowed = {k: v for k, v in self.options.items() if k in ("max_faces", "side_face_filter", "occlusion_filter")}
        return self.client.analyze_video(path, every=self.every, **allowed).model_dump(mode="json")


def frame_results(result: dict[str, Any], every: int) -> list[tuple[int, float, dict[str, Any]]]:
    """(0-based frame, seconds, an image-response-shaped dict whose faces are the tracks seen there) for every
    analysed frame, so that the CLI's OpenFace-style table (``app/table.py``) tabulates videos too."""
    info = result["video"]
    fps = info["fps"] or 30.0
    faces: dict[int, list[dict[str, Any]]] = {}
    times: dict[int, float] = {}
    for track in result["tracks"]:
        for f in track["frames"]:
            times[f["frame"]] = f["t"]
            expression = f.get("expression")
            faces.setdefault(f["frame"], []).append({
                "face_id": track["track_id"], "box": f["box"], "confidence": f["confidence"], "pose": f["pose"],
                "filtered": f["filtered"], "filter_reasons": f["filter_reasons"],
                "action_units": None if f.get("action_units") is None else [
                    {"au": au, "probability": p, "present": None} for au, p in f["action_units"].items()],
                "expression": expression and {**expression, "uncertain": None},
            })
    return [(i, times.get(i, round(i / fps, 4)), {"faces": sorted(faces.get(i, []), key=lambda x: x["face_id"])})
            for i in range(0, info["frames"], every)]


def write_events(stream: IO[str], results: list[tuple[str, dict[str, Any]]]) -> int:
    writer = csv.DictWriter(stream, fieldnames=EVENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    n = 0
    for source, result in results:
        for track in result["tracks"]:
            for event in track["events"]:
                writer.writerow({"source": source, "face_id": track["track_id"],
                                 **{k: event[k] for k in EVENT_COLUMNS[2:]}})
                n += 1
    return n


def plot_tracks(result: dict[str, Any], source: str, directory: Path, max_aus: int = 8) -> list[Path]:
    """One PNG per track: the AU probabilities (the ``max_aus`` with the most events, else the highest) and the
    non-neutral expression scores over time; events shaded, micro ones hatched and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for track in result["tracks"]:
        frames = track["frames"]
        if not frames:
            continue
        t = [f["t"] for f in frames]
        au_names = next((list(f["action_units"]) for f in frames if f.get("action_units")), [])
        counts = {au: sum(e["name"] == au for e in track["events"]) for au in au_names}
        peak = {au: max((f["action_units"] or {}).get(au, 0.0) for f in frames if f.get("action_units"))
                for au in au_names}
        chosen = sorted(au_names, key=lambda au: (-counts[au], -peak[au]))[:max_aus]
        fig, (ax_au, ax_ex) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
        for au in chosen:
            ax_au.plot(t, [(f.get("action_units") or {}).get(au, float("nan")) for f in frames], label=au, lw=1)
        labels = next((list(f["expression"]["scores"]) for f in frames
                       if f.get("expression") and f["expression"].get("scores")), [])
        for label in labels:
            if label != "neutral":
                ax_ex.plot(t, [f["expression"]["scores"][label] if f.get("expression") else float("nan")
                               for f in frames], label=label, lw=1)
        for event in track["events"]:
            ax = ax_au if event["kind"] == "au" else ax_ex
            if event["kind"] == "au" and event["name"] not in chosen:
                continue
            ax.axvspan(event["onset_s"], event["offset_s"] or event["onset_s"] + 1e-3, alpha=0.12,
                       color="red" if event["micro"] else "grey", hatch="//" if event["micro"] else None)
            if event["micro"]:
                ax.annotate(f"micro {event['name']}", (event["apex_s"], 1.02), fontsize=7, color="red",
                            ha="center", annotation_clip=False)
        ax_au.set_ylabel("AU probability")
        ax_ex.set_ylabel("expression score")
        ax_ex.set_xlabel("seconds")
        for ax in (ax_au, ax_ex):
            ax.set_ylim(0, 1.05)
            if ax.lines:
                ax.legend(fontsize=7, ncol=4, loc="upper right")
        fig.suptitle(f"{Path(source).name}: track {track['track_id']} (frames {track['first_frame']}-"
                     f"{track['last_frame']}); shaded = events, hatched red = micro (<= 0.5 s)", fontsize=9)
        fig.tight_layout()
        path = directory / f"{Path(source).stem}_track{track['track_id']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def to_jsonl(source: str, result: dict[str, Any]) -> str:
    return json.dumps({"source": source, **result}, separators=(",", ":"))


def summary_columns() -> list[str]:
    """A fixed schema: every expression label, and per AU of the CSV's fixed list its base rate and mean."""
    from microfacs_cli.output import CSV_AUS, au_column

    aus = sorted(CSV_AUS, key=lambda au: int(au[2:]))
    return [*SUMMARY_HEAD, *[f"{au_column(au)}_base_rate" for au in aus], *[f"{au_column(au)}_mean_p" for au in aus]]


def write_summary(stream: IO[str], results: list[tuple[str, dict[str, Any]]]) -> int:
    """One row per track (``<name>.summary.csv``): what a person reads first."""
    from microfacs_cli.output import au_column

    writer = csv.DictWriter(stream, fieldnames=summary_columns(), extrasaction="ignore", restval="",
                            lineterminator="\n")
    writer.writeheader()
    n = 0
    for source, result in results:
        for track in result["tracks"]:
            summary = track.get("summary") or {}
            row: dict[str, Any] = {"source": source, "face_id": track["track_id"], "first_frame": track["first_frame"],
                                   "last_frame": track["last_frame"]}
            for key in ("frames", "analysed_frames", "seen_s", "dominant_expression", "dominant_share"):
                row[key] = "" if summary.get(key) is None else summary[key]
            for label, share in (summary.get("expression_share") or {}).items():
                row[f"share_{label}"] = share
            for kind, count in (summary.get("events") or {}).items():
                row[f"events_{kind}"] = count
            for au, numbers in (summary.get("action_units") or {}).items():
                row[f"{au_column(au)}_base_rate"] = numbers["base_rate"]
                row[f"{au_column(au)}_mean_p"] = numbers["mean_probability"]
            writer.writerow(row)
            n += 1
    return n


def summary_line(summary: dict[str, Any], top: int = 2) -> str:
    """One line for a person: the expressions that were the label most of the time (as the demo's headline)."""
    shares = sorted((summary.get("expression_share") or {}).items(), key=lambda kv: -kv[1])
    if not shares or summary.get("dominant_expression") is None:
        return "no expression read"
    shown = [f"{name} {share:.0%}" for name, share in shares[:top] if share >= 0.1] or [f"{shares[0][0]}"]
    events = summary.get("events") or {}
    return (f"mostly appears to show {', then '.join(shown)} of the analysed time; "
            f"{events.get('total', 0)} event(s) ({events.get('micro', 0)} micro)")


def write_video(writer: Writer, source: str, result: dict[str, Any], args: argparse.Namespace,
                plot_dir: Path | None) -> None:
    """One video's result: a JSON line, or CSV rows per analysed frame and track; its plots with --plot."""
    if args.format == "jsonl":
        writer.images += 1
        writer.faces += len(result["tracks"])
        writer.stream.write(to_jsonl(source, result) + "\n")
    else:
        for frame, t, frame_result in frame_results(result, args.every):
            writer.write({"source": source, "frame": frame, "timestamp": t}, frame_result, None)
    if plot_dir:
        plot_tracks(result, source, plot_dir)  # matplotlib was checked before starting


def write_video_tables(done: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    """The events file and the per-track summary file (beside ``-o`` by default)."""
    stem = Path(args.output).with_suffix("") if args.output else None
    events = args.events or (f"{stem}.events.csv" if stem else None)
    if events and done:
        with open(events, "w", newline="") as fh:
            n = write_events(fh, done)
        print(f"microfacs: {n} event(s) -> {events}", file=sys.stderr)
    summary = args.summary or (f"{stem}.summary.csv" if stem else None)
    if summary and done:
        with open(summary, "w", newline="") as fh:
            n = write_summary(fh, done)
        print(f"microfacs: {n} track summar{'y' if n == 1 else 'ies'} -> {summary}", file=sys.stderr)
    for source, result in done:
        for track in result["tracks"]:
            if track.get("summary"):
                print(f"microfacs: {Path(source).name} track {track['track_id']}: "
                      f"{summary_line(track['summary'])}", file=sys.stderr)
