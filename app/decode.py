"""Decode stage: check an upload against the published limits *before* decoding, then decode it.

The header of each supported format is parsed by hand (a few bytes) so that a decompression bomb is
refused by its declared size, never by running out of memory. The decoder is OpenCV.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from app.errors import ApiError

SUPPORTED_FORMATS = ("jpeg", "png", "webp", "bmp")


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    has_alpha: bool


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_side: int
    min_side: int


def sniff_format(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


def _png_header(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ApiError(400, "invalid_image", "PNG header is missing or truncated")
    width, height, _depth, color_type = struct.unpack(">IIBB", data[16:26])
    has_alpha = color_type in (4, 6) or b"tRNS" in data[: min(len(data), 1 << 16)]
    return ImageHeader("png", width, height, has_alpha)


def _jpeg_header(data: bytes) -> ImageHeader:
    sof_markers = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ApiError(400, "invalid_image", "JPEG marker stream is corrupt")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in sof_markers:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return ImageHeader("jpeg", width, height, False)
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise ApiError(400, "invalid_image", "JPEG has no readable frame header (truncated or corrupt)")


def _webp_header(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, False)
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("webp", width, height, bool((bits >> 28) & 1))
    if chunk == b"VP8X" and len(data) >= 30:
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height, bool(flags & 0x10))
    raise ApiError(400, "invalid_image", "WebP header is missing or truncated")


def _bmp_header(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise ApiError(400, "invalid_image", "BMP header is truncated")
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:
        width, height = struct.unpack("<HH", data[18:22])
        bpp = struct.unpack("<H", data[24:26])[0]
    else:
        width, height = struct.unpack("<ii", data[18:26])
        bpp = struct.unpack("<H", data[28:30])[0]
    return ImageHeader("bmp", abs(width), abs(height), bpp == 32)


_HEADER_READERS = {"png": _png_header, "jpeg": _jpeg_header, "webp": _webp_header, "bmp": _bmp_header}


def read_header(data: bytes) -> ImageHeader:
    image_format = sniff_format(data)
    if image_format is None:
        raise ApiError(
            415, "unsupported_media_type", f"not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})"
        )
    return _HEADER_READERS[image_format](data)


def check_limits(header: ImageHeader, limits: ImageLimits) -> None:
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise ApiError(400, "invalid_image", f"image declares an invalid size {w}x{h}")
    if max(w, h) > limits.max_side or w * h > limits.max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"image is {w}x{h} = {w * h} pixels; limits are {limits.max_side} px per side "
            f"and {limits.max_pixels} pixels",
        )
    if min(w, h) < limits.min_side:
        raise ApiError(422, "image_too_small", f"image is {w}x{h}; each side must be at least {limits.min_side} px")


def _looks_truncated(data: bytes, image_format: str) -> bool:
    if image_format == "jpeg":
        return b"\xff\xd9" not in data[-1024:]
    if image_format == "png":
        return b"IEND" not in data[-64:]
    return False


def _to_bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:  # 16-bit PNGs
        image = (image / 257.0).round().astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:  # composite onto white: transparent pixels carry arbitrary colour
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        rgb = image[:, :, :3].astype(np.float32)
        return (rgb * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return image


def decode_image(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Return a BGR uint8 image, EXIF orientation applied, or raise ApiError with a 4xx status."""
    if not data:
        raise ApiError(400, "empty_file", "the uploaded file is empty")
    if len(data) > limits.max_bytes:
        raise ApiError(413, "payload_too_large", f"upload is {len(data)} bytes; the limit is {limits.max_bytes}")
    header = read_header(data)
    check_limits(header, limits)
    if _looks_truncated(data, header.format):
        raise ApiError(400, "invalid_image", f"{header.format.upper()} data is truncated")
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR applies EXIF orientation; images with alpha are read whole and composited instead.
    flags = cv2.IMREAD_UNCHANGED if header.has_alpha else cv2.IMREAD_COLOR
    image = cv2.imdecode(buffer, flags)
    if image is None or image.size == 0:
        raise ApiError(400, "invalid_image", f"could not decode the {header.format.upper()} data")
    return np.ascontiguousarray(_to_bgr(image))
