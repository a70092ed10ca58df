"""The OpenFace-style table of an analysis: one row per face, the columns the CLI's CSV and
``AnalysisResponse.to_dataframe()`` share. It reads the *JSON shape* of a response (a dict), so the CLI
can tabulate results from a remote server as well as in-process ones.

Columns, in order (OpenFace 2 names where OpenFace has the quantity):

* ``frame`` (0-based, as the API's video answers and the CLI's events file; a still image's place in the input
  list), ``face_id``, ``timestamp`` (seconds), ``confidence`` (our face-detector score),
  ``success`` (1 when the face was analysed, 0 when a pre-filter excluded it or the frame has no face:
  such a frame gets one row with an empty ``face_id``),
* ``source`` (the file), ``face_x, face_y, face_width, face_height`` (pixels),
* ``pose_Rx, pose_Ry, pose_Rz``: **radians**, as in OpenFace: Rx = our pitch, Ry = our yaw, Rz = our roll,
  with MicroFACS's signs (yaw > 0 towards the image's right, pitch > 0 up, roll > 0 clockwise), which
  have not been checked against OpenFace's own; ``pose_yaw, pose_pitch, pose_roll`` keep our degrees,
* per Action Unit ``AUxx_c`` (present, 0/1) and ``AUxx_p``: **probability, not intensity**. OpenFace's
  ``AUxx_r`` is an intensity on a 0-5 scale; our detector has no intensity, so we do not fill ``_r``
  columns, to keep OpenFace tools from reading a probability as an intensity. Empty when the face is
  filtered or the endpoint gives no AUs,
* ``expression, expression_confidence, expression_uncertain``, then ``expr_<label>`` for the 8 labels
  (the expression the face *appears to show*); present when the endpoint gives expressions,
* ``gaze_angle_x, gaze_angle_y``: **radians**, as in OpenFace, the combined gaze of both eyes: x = our gaze
  yaw, y = our gaze pitch, with MicroFACS's signs (x > 0 looking towards the image's right, y > 0 looking
  up; OpenFace's own signs have not been checked against these); present when gaze was asked for,
* ``bs_<name>`` for MediaPipe's 52 blendshape coefficients (0..1, e.g. ``bs_mouthSmileLeft``); present when
  blendshapes were asked for,
* ``filtered`` (0/1) and ``filter_reasons`` (``;``-separated).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

EXPRESSION_LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
HEAD = ["frame", "face_id", "timestamp", "confidence", "success", "source",
        "face_x", "face_y", "face_width", "face_height",
        "pose_Rx", "pose_Ry", "pose_Rz", "pose_yaw", "pose_pitch", "pose_roll"]
TAIL = ["filtered", "filter_reasons"]
GAZE = ["gaze_angle_x", "gaze_angle_y"]
EXPRESSION_COLUMNS = ["expression", "expression_confidence", "expression_uncertain"]


def au_sort_key(au: str) -> tuple[int, str]:
    digits = "".join(ch for ch in au if ch.isdigit())
    return (int(digits) if digits else 10_000, au)


def au_column(au: str) -> str:
    digits = "".join(ch for ch in au if ch.isdigit())
    return f"AU{int(digits):02d}" if digits else au


def _rad(deg: float | None) -> Any:
    return "" if deg is None else round(math.radians(deg), 4)


def face_rows(meta: dict[str, Any], result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """CSV rows (dicts) for one analysed image: one per face, or one ``success=0`` row when no face."""
    base = {"frame": meta["frame"], "timestamp": meta["timestamp"], "source": meta["source"]}
    faces = (result or {}).get("faces") or []
    if not faces:
        return [{**base, "face_id": "", "confidence": "", "success": 0, "filtered": "", "filter_reasons": ""}]
    rows = []
    for face in faces:
        pose = face.get("pose") or {}
        box = face["box"]
        row = {**base, "face_id": face["face_id"], "confidence": face.get("confidence", ""),
               "success": 0 if face.get("filtered") else 1,
               "face_x": box["x"], "face_y": box["y"], "face_width": box["width"], "face_height": box["height"],
               "pose_Rx": _rad(pose.get("pitch")), "pose_Ry": _rad(pose.get("yaw")), "pose_Rz": _rad(pose.get("roll")),
               "pose_yaw": pose.get("yaw", ""), "pose_pitch": pose.get("pitch", ""), "pose_roll": pose.get("roll", ""),
               "filtered": int(bool(face.get("filtered"))),
               "filter_reasons": ";".join(face.get("filter_reasons") or [])}
        for field, block in BLOCKS.items():
            if face.get(field):
                row.update(block.cells(face[field]))
        rows.append(row)
    return rows


# -- one block of columns per head: its response field (app.heads.SPECS; tests/test_app_layout.py checks that every
# registered head has one), in the table's order (OpenFace's: the AUs first, then the rest) ------------------------


def au_cells(units: list[dict[str, Any]]) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for au in units:
        present = au.get("present")  # None: not decided here (video series carry probabilities only)
        cells[f"{au_column(au['au'])}_c"] = "" if present is None else int(bool(present))
        cells[f"{au_column(au['au'])}_p"] = au["probability"]
    return cells


def expression_cells(expression: dict[str, Any]) -> dict[str, Any]:
    cells = {"expression": expression["label"], "expression_confidence": expression["confidence"],
             "expression_uncertain": int(bool(expression.get("uncertain")))}
    cells.update({f"expr_{label}": p for label, p in (expression.get("scores") or {}).items()})
    return cells


def gaze_cells(gaze: dict[str, Any]) -> dict[str, Any]:
    combined = gaze.get("combined")
    return {"gaze_angle_x": _rad(combined["yaw"]), "gaze_angle_y": _rad(combined["pitch"])} if combined else {}


def au_columns(names: Sequence[str]) -> list[str]:
    aus = sorted(names, key=au_sort_key)
    return [f"{au_column(a)}_c" for a in aus] + [f"{au_column(a)}_p" for a in aus]


@dataclass(frozen=True)
class Block:
    columns: Callable[[Sequence[str]], list[str]]  # the names the field carries (AUs, blendshapes) -> columns
    cells: Callable[[Any], dict[str, Any]]  # the field's JSON value -> {column: value}
    names: Callable[[Any], Sequence[str]] = lambda value: ()  # the names one face's value carries


BLOCKS: dict[str, Block] = {
    "action_units": Block(au_columns, au_cells, lambda units: [u["au"] for u in units]),
    "expression": Block(lambda names: [*EXPRESSION_COLUMNS, *(f"expr_{label}" for label in EXPRESSION_LABELS)],
                        expression_cells),
    "gaze": Block(lambda names: list(GAZE), gaze_cells),
    "blendshapes": Block(lambda names: [f"bs_{name}" for name in names],
                         lambda shapes: {f"bs_{name}": value for name, value in shapes.items()}, lambda s: tuple(s)),
}


def columns(au_names: list[str], with_expression: bool, blendshape_names: tuple[str, ...] = (),
            with_gaze: bool = False) -> list[str]:
    """The table's columns: the fixed ones, then each head's block that is present, then the filter columns."""
    present: dict[str, Sequence[str] | None] = {"action_units": au_names,
                                                "expression": () if with_expression else None,
                                                "gaze": () if with_gaze else None,
                                                "blendshapes": blendshape_names or None}
    return table_columns(present)


def table_columns(present: dict[str, Sequence[str] | None]) -> list[str]:
    """``present``: response field -> the names it carries (None: the field is not in the table)."""
    cols = list(HEAD)
    for field, block in BLOCKS.items():
        names = present.get(field)
        if names is not None:
            cols += block.columns(names)
    return cols + TAIL


def table_rows(results: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) for several analysed images, each given as (meta, response dict)."""
    rows = [row for meta, result in results for row in face_rows(meta, result)]
    present: dict[str, Sequence[str] | None] = {}
    for _, result in results:
        for face in (result or {}).get("faces") or []:
            for field, block in BLOCKS.items():
                if field in face and not present.get(field):
                    present[field] = block.names(face[field]) if face[field] else present.get(field, ())
    return table_columns(present), rows
