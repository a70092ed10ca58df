"""CLI output: JSON lines (one line per image or frame) or CSV (one row per face), OpenFace-style columns.

CSV columns: the OpenFace-style table of ``app/table.py`` (``AnalysisResponse.to_dataframe()`` has the same).
"""
from __future__ import annotations

import csv
import json
from typing import IO, Any

from app.au_regions import FACS_NAMES
from app.model_zoo.face_landmarker import BLENDSHAPE_NAMES
from app.table import au_column, columns, face_rows


class Writer:
    """Writes results as they come. The CSV schema is fixed by the options, never by the content: with AUs, the
    columns of every FACS face AU (``CSV_AUS``; those the model does not read stay
    empty), the expression columns when the endpoint gives expressions, gaze and blendshapes when asked for, and
    a last ``error`` column (``code: message``) on the row of an input that could not be analysed."""

    def __init__(self, stream: IO[str], fmt: str, with_aus: bool, with_expression: bool,
                 with_blendshapes: bool = False, with_gaze: bool = False) -> None:
        self.stream, self.fmt = stream, fmt
        self.with_blendshapes, self.with_gaze = with_blendshapes, with_gaze
        self.with_aus, self.with_expression = with_aus, with_expression
        self.csv: csv.DictWriter | None = None
        self.errors = 0
        self.images = 0
        self.faces = 0
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=self.fieldnames(), extrasaction="ignore", restval="",
                                      lineterminator="\n")
            self.csv.writeheader()

    def fieldnames(self) -> list[str]:
        names = BLENDSHAPE_NAMES if self.with_blendshapes else ()
        aus = list(CSV_AUS) if self.with_aus else []
        return [*columns(aus, self.with_expression, names, self.with_gaze), ERROR_COLUMN]

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
            rows[0][ERROR_COLUMN] = error_text(error)
        assert self.csv is not None
        for row in rows:
            self.csv.writerow(row)

    def close(self) -> None:
        self.stream.flush()


__all__ = ["CSV_AUS", "ERROR_COLUMN", "Writer", "au_column", "error_text"]
ERROR_COLUMN = "error"
# Every AU a MicroFACS model reads or may read: the FACS face AUs and the eye ones (43 closed, 45 blink, 46 wink)
CSV_AUS = (*FACS_NAMES, "AU43", "AU45", "AU46")


def error_text(error: dict[str, Any]) -> str:
    """``code: message`` (one line)."""
    code, message = error.get("code", ""), " ".join(str(error.get("message", "")).split())
    return f"{code}: {message}" if message else str(code)
