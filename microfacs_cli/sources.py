"""What the CLI analyses: image files, folders of images, and videos sampled every N frames."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VIDEO_EXTS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


@dataclass
class Item:
    """One image to analyse. ``frame`` is 0-based, as in the API's video answers and the events file: the video
    frame number, or the image's place in the input list. ``timestamp`` is seconds into the video (0 for still images).
    ``data`` is the bytes to upload; ``image`` the decoded BGR pixels when already at hand (video)."""

    source: str
    frame: int
    timestamp: float
    data: bytes | None = None
    image: np.ndarray | None = None
    error: str | None = None

    def payload(self) -> bytes | np.ndarray:
        """What to analyse: the decoded pixels when at hand, else the bytes (an item without an error has one)."""
        if self.image is not None:
            return self.image
        if self.data is None:
            raise ValueError(f"{self.source}: nothing to analyse ({self.error or 'no data'})")
        return self.data


def expand(inputs: list[str], recursive: bool = True) -> list[Path]:
    """Files as given; folders as their images and videos, sorted, with their subfolders' (``recursive``; hidden
    files and folders are skipped)."""
    out: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            out.extend(sorted(p for p in found if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS and p.is_file()
                              and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        else:
            out.append(path)
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def video_info(path: Path) -> tuple[int, float]:
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


def count_items(paths: list[Path], every: int, max_frames: int | None) -> int:
    total = 0
    for path in paths:
        if is_video(path):
            frames = video_info(path)[0]
            n = (frames + every - 1) // every if frames else 0
            total += min(n, max_frames) if max_frames else n
        else:
            total += 1
    return total


def iter_video(path: Path, every: int, max_frames: int | None = None) -> Iterator[Item]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        yield Item(str(path), 0, 0.0, error=f"cannot open video {path}")
        return
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) or 30.0
    index, emitted = 0, 0
    try:
        while max_frames is None or emitted < max_frames:
            if index % every == 0:
                ok, frame = capture.read()
                if not ok:
                    break
                yield Item(str(path), index, round(index / fps, 4), image=frame)  # constant frame rate
                emitted += 1
            elif not capture.grab():
                break
            index += 1
    finally:
        capture.release()


def iter_items(paths: list[Path], every: int, max_frames: int | None = None) -> Iterator[Item]:
    still = 0
    for path in paths:
        if is_video(path):
            yield from iter_video(path, every, max_frames)
            continue
        try:
            yield Item(str(path), still, 0.0, data=path.read_bytes())
        except OSError as exc:
            yield Item(str(path), still, 0.0, error=f"cannot read {path}: {exc.strerror or exc}")
        still += 1
