"""Draws an analysis result over its image: the one drawing module, shared by ``?render=true`` on the
analysis endpoints and by the CLI's ``--render``.

It draws a typed result (``app.schemas.AnalysisResponse``, what ``?render=true`` holds) or the *JSON shape* of one
(a dict, as the API returns it: the CLI draws results that came from a remote server as well as in-process
ones). Needs only numpy, OpenCV and the schemas.

Colours (RGB; the web demo in ``app/static/demo.js`` uses the same ones):
face kept for analysis = lime ``#00ff00``, face excluded by a pre-filter = red ``#ff3b30``,
Action Unit box = amber ``#ffb000``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel

# BGR, as OpenCV draws.
FACE_KEPT = (0, 255, 0)
FACE_FILTERED = (48, 59, 255)
AU_BOX = (0, 176, 255)
TEXT_DARK = (0, 0, 0)
TEXT_LIGHT = (255, 255, 255)


def _scale(image: np.ndarray) -> float:
    return max(0.8, min(image.shape[0], image.shape[1]) / 600.0)


def _label(image: np.ndarray, text: str, x: float, y: float, colour: tuple[int, int, int], scale: float,
           above: bool = True) -> float:
    """A filled label box with text; its top-left corner at (x, y - height) when ``above`` else (x, y).
    Returns the y just past the label (for stacking)."""
    font, font_scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, max(1, int(round(1.2 * scale)))
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    pad = max(2, int(3 * scale))
    h, w = image.shape[:2]
    box_h = th + baseline + 2 * pad
    x0 = int(min(max(x, 0), max(w - tw - 2 * pad, 0)))
    y0 = int(y - box_h) if above else int(y)
    y0 = min(max(y0, 0), max(h - box_h, 0))
    cv2.rectangle(image, (x0, y0), (x0 + tw + 2 * pad, y0 + box_h), colour, -1)
    luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
    cv2.putText(image, text, (x0 + pad, y0 + pad + th), font, font_scale,
                TEXT_DARK if luminance > 128 else TEXT_LIGHT, thickness, cv2.LINE_AA)
    return y0 + box_h if not above else y0


def _rect(box: dict[str, Any]) -> tuple[int, int, int, int]:
    x, y = float(box["x"]), float(box["y"])
    return int(round(x)), int(round(y)), int(round(x + float(box["width"]))), int(round(y + float(box["height"])))


def expression_text(expression: dict[str, Any]) -> str:
    text = f"appears: {expression['label']} {float(expression['confidence']):.2f}"
    return text + " (uncertain)" if expression.get("uncertain") else text


Result = BaseModel | Mapping[str, Any]


def draw_analysis(image: np.ndarray, result: Result) -> np.ndarray:
    """A copy of the BGR ``image`` with every face of ``result`` (a typed response, or a response body) drawn on it."""
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json", by_alias=True)
    canvas = image.copy()
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    elif canvas.shape[2] == 4:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGRA2BGR)
    scale = _scale(canvas)
    line = max(2, int(round(2 * scale)))
    for face in result.get("faces", []):
        filtered = bool(face.get("filtered"))
        colour = FACE_FILTERED if filtered else FACE_KEPT
        x0, y0, x1, y1 = _rect(face["box"])
        for au in face.get("action_units") or []:
            if au.get("present") and au.get("box"):
                ax0, ay0, ax1, ay1 = _rect(au["box"])
                cv2.rectangle(canvas, (ax0, ay0), (ax1, ay1), AU_BOX, max(1, line // 2))
                _label(canvas, f"{au['au']} {float(au['probability']):.2f}", ax0, ay0, AU_BOX, 0.7 * scale)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, line)
        head = f"#{face.get('face_id', 0)} {float(face.get('confidence', 0.0)):.2f}"
        if filtered:
            head += " filtered: " + ",".join(face.get("filter_reasons") or [])
        _label(canvas, head, x0, y0, colour, scale)
        below = float(y1)
        expression = face.get("expression")
        if expression:
            below = _label(canvas, expression_text(expression), x0, below, colour, scale, above=False)
        boxless = [au["au"] for au in face.get("action_units") or [] if au.get("present") and not au.get("box")]
        if boxless:
            _label(canvas, " ".join(boxless), x0, below, AU_BOX, 0.8 * scale, above=False)
    return canvas


def encode_png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def render_png(image: np.ndarray, result: Result) -> bytes:
    return encode_png(draw_analysis(image, result))
