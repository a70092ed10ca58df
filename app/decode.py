"""Decode stage: check an upload against the published limits *before* decoding, then decode it.

The header of each supported format is parsed by hand (a few bytes) so that a decompression bomb is
refused by its declared size, never by running out of memory. The decoder is OpenCV.

Memory: the header also gives the pixel layout the decoder will produce (channels, 8 or 16 bits), so the
bytes a decode holds are known before it starts (``ImageHeader.decode_bytes``: OpenCV's buffer, plus the
BGR copy when alpha or 16 bits must be converted). An image needing more than the memory budget is refused
(413) and ``DecodeMemory`` keeps the decodes running at once in one process within that budget. Alpha and
16-bit samples are converted to 8-bit BGR in row tiles with integer arithmetic: no whole-image float copy.
"""
from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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
    channels: int = 3  # samples per pixel in the file: 1 grey, 2 grey + alpha, 3 colour, 4 colour + alpha or CMYK
    bits: int = 8  # per sample

    @property
    def decode_bytes(self) -> int:
        """The peak memory of decoding it, measured (``scripts/measure_decode_memory.py``): OpenCV holds
        about two copies of its output while it decodes (RGB, grey and CMYK: 3 bytes a pixel each), or of
        the BGRA it keeps for alpha (4 bytes a pixel at 8 bits, 8 at 16), and the 8-bit BGR result is made
        from the latter in tiles after that."""
        pixels = self.width * self.height
        if self.has_alpha:
            return pixels * (16 if self.bits == 16 else 8)
        return pixels * 6


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_side: int
    min_side: int
    max_decode_bytes: int | None = None  # the memory budget of one decode (None: no budget)


# The layouts a header can declare, as (has_alpha, channels, bits): for the limits GET /version publishes.
LAYOUTS = {
    "no_alpha": ImageHeader("", 1, 1, False, 3, 8),
    "alpha_8bit": ImageHeader("", 1, 1, True, 4, 8),
    "alpha_16bit": ImageHeader("", 1, 1, True, 4, 16),
}


def max_pixels_by_layout(limits: ImageLimits) -> dict[str, int]:
    """The effective pixel limit of each layout: the pixel limit, or fewer when the memory budget says so."""
    if limits.max_decode_bytes is None:
        return {name: limits.max_pixels for name in LAYOUTS}
    return {name: min(limits.max_pixels, limits.max_decode_bytes // layout.decode_bytes)
            for name, layout in LAYOUTS.items()}


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
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    has_alpha = color_type in (4, 6) or b"tRNS" in data[: min(len(data), 1 << 16)]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type, 4)
    return ImageHeader("png", width, height, has_alpha, channels, 16 if depth == 16 else 8)


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
            components = data[i + 9] if i + 9 < len(data) else 3
            return ImageHeader("jpeg", width, height, False, components)
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
        alpha = bool((bits >> 28) & 1)
        return ImageHeader("webp", width, height, alpha, 4 if alpha else 3)
    if chunk == b"VP8X" and len(data) >= 30:
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        alpha = bool(flags & 0x10)
        return ImageHeader("webp", width, height, alpha, 4 if alpha else 3)
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
    return ImageHeader("bmp", abs(width), abs(height), bpp == 32, 4 if bpp == 32 else 3)


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
    if limits.max_decode_bytes is not None and header.decode_bytes > limits.max_decode_bytes:
        layout = f"{header.channels} channels of {header.bits} bits" + (" with alpha" if header.has_alpha else "")
        raise ApiError(
            413,
            "image_too_large",
            f"image is {w}x{h} with {layout}: decoding it needs {header.decode_bytes >> 20} MiB, over the "
            f"decode memory budget of {limits.max_decode_bytes >> 20} MiB (limits per layout: GET /version)",
        )
    if min(w, h) < limits.min_side:
        raise ApiError(422, "image_too_small", f"image is {w}x{h}; each side must be at least {limits.min_side} px")


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of each whole chunk's data, in order; stops at IEND or where the data runs out."""
    i = 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind, start, end = data[i + 4 : i + 8], i + 8, i + 8 + length
        if end + 4 > len(data):
            return
        yield kind, start, end
        if kind == b"IEND":
            return
        i = end + 4


def _is_truncated(data: bytes, image_format: str) -> bool:
    """Whether the data stops before the image's end. Bytes *after* the end are allowed: phones append a
    video to a JPEG ("motion photos"), tools append metadata; the decoders stop at the end marker."""
    if image_format == "jpeg":  # the end-of-image marker after the first scan (0xFF is stuffed inside scans)
        scan = data.find(b"\xff\xda")
        return scan < 0 or data.find(b"\xff\xd9", scan) < 0
    if image_format == "png":
        return not any(kind == b"IEND" for kind, _, _ in _png_chunks(data))
    return False


def exif_orientation(data: bytes, image_format: str) -> int:
    """The EXIF orientation tag (1-8; 1 when absent) of a PNG (eXIf chunk) or WebP (EXIF chunk): OpenCV
    applies it itself except when it keeps the alpha channel."""
    exif = b""
    if image_format == "png":
        exif = next((data[a:b] for kind, a, b in _png_chunks(data) if kind == b"eXIf"), b"")
    elif image_format == "webp":
        i = 12
        while i + 8 <= len(data) and not exif:
            kind, (length,) = data[i : i + 4], struct.unpack("<I", data[i + 4 : i + 8])
            if kind == b"EXIF":
                exif = data[i + 8 : i + 8 + length]
            i += 8 + length + (length & 1)
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if exif[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", exif[4:8])
    if ifd + 2 > len(exif):
        return 1
    (count,) = struct.unpack(order + "H", exif[ifd : ifd + 2])
    for k in range(count):
        entry = exif[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind, _, value = struct.unpack(order + "HHIH", entry[:10])
        if tag == 0x0112 and kind == 3:
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip as EXIF orientation 1-8 says (as OpenCV does for images it reads in colour)."""
    rotate = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE,
              5: cv2.ROTATE_90_COUNTERCLOCKWISE, 7: cv2.ROTATE_90_CLOCKWISE}  # 5 transpose, 7 transverse
    if orientation in (2, 4, 5, 7):  # the mirrored ones: flip horizontally (2, 5, 7) or vertically (4)
        image = cv2.flip(image, 0 if orientation == 4 else 1)
    return cv2.rotate(image, rotate[orientation]) if orientation in rotate else image


TILE_ROWS = 256  # rows converted at a time: the temporaries of a conversion stay a few MB


def _composite(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """255 - (255 - colour) * alpha / 255, rounded, in 16-bit integers: colour over white."""
    inverse = (255 - colour).astype(np.uint16) * alpha.astype(np.uint16)
    return (255 - (inverse + 127) // 255).astype(np.uint8)


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """Grey, BGRA and 16-bit decodes -> 8-bit BGR, tile by tile in integer arithmetic; alpha is composited
    onto white (transparent pixels carry arbitrary colour)."""
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, channels = image.shape
    out = np.empty((h, w, 3), np.uint8)
    for top in range(0, h, TILE_ROWS):
        tile = image[top : top + TILE_ROWS]
        if tile.dtype != np.uint8:  # 16 bits -> 8, rounded: (v + 128) // 257
            tile = ((tile.astype(np.uint32) + 128) // 257).astype(np.uint8)
        colour = tile[:, :, :3] if channels >= 3 else np.repeat(tile[:, :, :1], 3, axis=2)
        out[top : top + TILE_ROWS] = _composite(colour, tile[:, :, -1:]) if channels in (2, 4) else colour
    return out


class DecodeMemory:
    """Keeps the decodes running at once in one process within ``budget`` bytes: each holds its image's
    ``decode_bytes`` while it decodes; one that does not fit waits (up to ``timeout_s``, then 503)."""

    def __init__(self, budget: int, timeout_s: float = 30.0) -> None:
        self.budget, self.timeout_s, self.in_use = budget, timeout_s, 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        nbytes = min(nbytes, self.budget)  # check_limits refuses more; the CLI's own limits may allow it
        with self._room:
            if not self._room.wait_for(lambda: self.in_use + nbytes <= self.budget, self.timeout_s):
                raise ApiError(503, "overloaded", "the server is decoding other large images; retry shortly")
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._room:
                self.in_use -= nbytes
                self._room.notify_all()


def decode_image(data: bytes, limits: ImageLimits, memory: DecodeMemory | None = None) -> np.ndarray:
    """Return a BGR uint8 image, EXIF orientation applied, or raise ApiError with a 4xx status. ``memory``:
    the process's decode budget, held while the image decodes."""
    if not data:
        raise ApiError(400, "empty_file", "the uploaded file is empty")
    if len(data) > limits.max_bytes:
        raise ApiError(413, "payload_too_large", f"upload is {len(data)} bytes; the limit is {limits.max_bytes}")
    header = read_header(data)
    check_limits(header, limits)
    if _is_truncated(data, header.format):
        raise ApiError(400, "invalid_image", f"{header.format.upper()} data is truncated")
    buffer = np.frombuffer(data, dtype=np.uint8)
    with memory.hold(header.decode_bytes) if memory is not None else nullcontext():
        # IMREAD_COLOR applies EXIF orientation; with alpha the image is read whole, composited and turned here.
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED if header.has_alpha else cv2.IMREAD_COLOR)
        if image is None or image.size == 0:
            raise ApiError(400, "invalid_image", f"could not decode the {header.format.upper()} data")
        image = _to_bgr(image)
    if header.has_alpha:
        image = apply_orientation(image, exif_orientation(data, header.format))
    return np.ascontiguousarray(image)
