"""CLI output: JSON lines (one line per image or frame) or CSV (one row per face), OpenFace-style columns.

CSV columns: the OpenFace-style table of ``app/table.py`` (``AnalysisResponse.to_dataframe()`` has the same).
"""
from __future__ import annotations

import csv
import json
from typing import IO, Any

from app.model_zoo.face_landmarker import BLENDSHAPE_NAMES
from app.table import columns, face_rows


class Writer:
    """Writes results as they come. CSV needs the AU names for its header: it holds rows back until the first
    face that carries ``action_units`` (or the end) when the endpoint gives AUs."""

    def __init__(self, stream: IO[str], fmt: str, with_aus: bool, with_expression: bool,
                 with_blendshapes: bool = False, with_gaze: bool = False) -> None:
        self.stream, self.fmt = stream, fmt
        self.with_blendshapes, self.with_gaze = with_blendshapes, with_gaze
        self.with_aus, self.with_expression = with_aus, with_expression
        self.pending: list[dict[str, Any]] = []
        self.csv: csv.DictWriter | None = None
        self.errors = 0
        self.images = 0
        self.faces = 0

    def write(self, meta: dict[str, Any], result: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        self.images += 1
        self.errors += error is not None
        self.faces += len((result or {}).get("faces") or [])
        if self.fmt == "jsonl":
            line = {**meta, **(result or {})}
            if error is not None:
                line["error"] = error
            self.stream.write(json.dumps(line, separators=(",", ":")) + "\n")
            return
        rows = face_rows(meta, result)
        if error is not None:
            rows[0]["filter_reasons"] = f"error:{error.get('code', '')}"
        if self.csv is None:
            self.pending.extend(rows)
            names = self._au_names(rows, result)
            if names is not None or not self.with_aus:
                self._start(names or [])
            return
        for row in rows:
            self.csv.writerow(row)

    def _au_names(self, rows: list[dict[str, Any]], result: dict[str, Any] | None) -> list[str] | None:
        for face in (result or {}).get("faces") or []:
            if face.get("action_units"):
                return [au["au"] for au in face["action_units"]]
        return None

    def _start(self, au_names: list[str]) -> None:
        names = BLENDSHAPE_NAMES if self.with_blendshapes else ()
        fields = columns(au_names, self.with_expression, names, self.with_gaze)
        self.csv = csv.DictWriter(self.stream, fieldnames=fields,
                                  extrasaction="ignore", restval="", lineterminator="\n")
        self.csv.writeheader()
        for row in self.pending:
            self.csv.writerow(row)
        self.pending = []

    def close(self) -> None:
        if self.fmt == "csv" and self.csv is None:
            self._start([])
        self.stream.flush()
