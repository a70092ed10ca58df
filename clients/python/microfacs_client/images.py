"""Turning what the caller has (a path, bytes, a file object or a numpy array) into upload bytes.

Paths, bytes and file objects are sent as they are: the service sniffs the format (JPEG, PNG, WebP, BMP)
and applies EXIF orientation itself. A numpy array is encoded here as a lossless PNG by a small encoder
written with ``zlib`` + ``struct`` (no OpenCV or Pillow needed; numpy itself is only imported when you pass
an array). Arrays are taken as **BGR** (OpenCV's order, as ``cv2.imread`` gives) unless you say
``channel_order="rgb"`` (scikit-image, Pillow, matplotlib). Supported: uint8 or uint16, shape (H, W),
(H, W, 1), (H, W, 3) or (H, W, 4).
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any, Union

from microfacs_client.errors import MicroFACSError

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]


def is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "tobytes")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(array: Any, channel_order: str = "bgr", compression: int = 6) -> bytes:
    """A numpy image array -> PNG bytes (filter type 0 on every row; lossless)."""
    import numpy as np  # only here: the client itself does not need numpy

    if channel_order not in ("bgr", "rgb"):
        raise ValueError("channel_order is 'bgr' or 'rgb'")
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.shape[0] < 1 or a.shape[1] < 1:
        raise MicroFACSError(0, "invalid_input", f"an image array is (H, W), (H, W, 3) or (H, W, 4); got {a.shape}")
    if a.dtype == np.uint8:
        depth = 8
    elif a.dtype == np.uint16:
        depth = 16
    else:
        raise MicroFACSError(0, "invalid_input", f"an image array is uint8 or uint16; got {a.dtype} "
                                                 "(scale floats to 0..255 and cast with .astype('uint8'))")
    if a.ndim == 3 and channel_order == "bgr":
        a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    colour_type = 0 if a.ndim == 2 else (2 if a.shape[2] == 3 else 6)  # grey, RGB, RGBA
    height, width = a.shape[:2]
    rows = np.ascontiguousarray(a.astype(">u2") if depth == 16 else a).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, compression))
            + _chunk(b"IEND", b""))


def to_upload(image: ImageInput, channel_order: str = "bgr") -> tuple[str, bytes]:
    """(file name, bytes) for the multipart upload."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            return path.name, path.read_bytes()
        except OSError as exc:
            raise MicroFACSError(0, "invalid_input", f"cannot read {path}: {exc.strerror or exc}") from exc
    if is_array(image):
        return "image.png", encode_png(image, channel_order)
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, (bytes, bytearray)):
            raise MicroFACSError(0, "invalid_input", "a file object must be opened in binary mode ('rb')")
        return Path(getattr(image, "name", "image") or "image").name, bytes(data)
    raise MicroFACSError(0, "invalid_input", f"cannot send a {type(image).__name__}: give a path, bytes, "
                                             "a binary file object or a numpy uint8 array")


def describe(image: ImageInput) -> str:
    """A short name for an input in batch results."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if is_array(image):
        return f"array{tuple(getattr(image, 'shape', ()))}"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"bytes[{len(image)}]"
    return getattr(image, "name", type(image).__name__)
