"""A job's result as a table: the CLI's OpenFace-style columns (``app/table.py``), frames 0-based."""
from __future__ import annotations

import csv
import io
from typing import Any

from app.errors import ApiError
from app.table import columns as table_columns
from app.table import face_rows

AU_COLUMNS = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU14", "AU15", "AU16",
              "AU17", "AU18", "AU20", "AU21", "AU22", "AU23", "AU24", "AU25", "AU26", "AU27", "AU28", "AU43",
              "AU45", "AU46")


def result_table(kind: str, result: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): a fixed schema (every AU, every expression, then ``error``) whatever the content."""
    cols = [*table_columns(list(AU_COLUMNS), True), "error"]
    rows: list[dict[str, Any]] = []
    if kind == "video":
        for frame, t, faces in video_frames(result):
            rows += face_rows({"frame": frame, "timestamp": t, "source": result.get("request_id", "")}, faces)
    else:
        for index, image in enumerate(result.get("images", [])):
            meta = {"frame": index, "timestamp": 0.0, "source": image["name"]}
            part = face_rows(meta, image.get("result"))
            if image.get("error"):
                part[0]["error"] = f"{image['error']['code']}: {image['error']['message']}"
            rows += part
    return cols, rows


def video_frames(result: dict[str, Any]) -> list[tuple[int, float, dict[str, Any]]]:
    """(frame, seconds, an image-answer-shaped dict of the tracks seen there) per analysed frame with a face."""
    faces: dict[int, list[dict[str, Any]]] = {}
    times: dict[int, float] = {}
    for track in result.get("tracks", []):
        for f in track.get("frames", []):
            times[f["frame"]] = f["t"]
            faces.setdefault(f["frame"], []).append(track_frame_face(track["track_id"], f))
    return [(i, times[i], {"faces": sorted(faces[i], key=lambda x: x["face_id"])}) for i in sorted(faces)]


def track_frame_face(track_id: int, f: dict[str, Any]) -> dict[str, Any]:
    """One track's series entry (``TrackFrame`` dumped) as an image answer's face, for ``face_rows``."""
    expression = f.get("expression")
    return {
        "face_id": track_id, "box": f["box"], "confidence": f["confidence"], "pose": f["pose"],
        "filtered": f["filtered"], "filter_reasons": f["filter_reasons"],
        "action_units": None if f.get("action_units") is None else [
            {"au": au, "probability": p, "present": None} for au, p in f["action_units"].items()],
        "expression": expression and {**expression, "uncertain": None},
    }


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def to_parquet(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ApiError(406, "format_unavailable", "format=parquet needs pyarrow on the server (pip install "
                       "pyarrow); use format=csv or json") from None
    table = pa.table({c: [None if r.get(c, "") == "" else str(r.get(c)) for r in rows] for c in columns})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def csv_to_parquet(path: Any) -> bytes:
    """A table written as CSV (a video job's ``result.csv``) as Parquet, every column a string as ``to_parquet``
    (empty cells null); read by pyarrow, not row by row in Python."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq
    except ImportError:
        raise ApiError(406, "format_unavailable", "format=parquet needs pyarrow on the server (pip install "
                       "pyarrow); use format=csv or json") from None
    with open(path, newline="") as fh:
        names = next(csv.reader(fh))
    table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={c: pa.string() for c in names}, strings_can_be_null=True))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
