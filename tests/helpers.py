"""Small helpers the tests share (no fixtures here, so importing it loads no models)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICROFACS_DATA", REPO.parent / "shared" / "data"))
SAMPLES = DATA / "samples"


def requires_data(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: put the shared data beside the repo (../shared/data) or set MICROFACS_DATA")
    return path


def encode(image: np.ndarray, ext: str = ".jpg", params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params or [])
    assert ok
    return buffer.tobytes()


def post_image(client, path: str, data: bytes, filename: str = "image.jpg", **params):
    return client.post(path, files={"file": (filename, data, "application/octet-stream")}, params=params)
