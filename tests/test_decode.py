"""The decode stage: formats, orientation, alpha, and refusals before decoding."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from app.decode import ImageLimits, decode_image, read_header
from app.errors import ApiError
from tests.helpers import encode

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000, max_side=4000, min_side=16)


def _image(h=60, w=80):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
def test_supported_formats_decode_with_true_size(ext):
    data = encode(_image(), ext)
    header = read_header(data)
    assert (header.width, header.height) == (80, 60)
    image = decode_image(data, LIMITS)
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8


def test_grey_and_rgba_become_bgr():
    grey = decode_image(encode(_image()[:, :, 0], ".png"), LIMITS)
    assert grey.shape == (60, 80, 3)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :, 2] = 255  # red, fully transparent on the left half, opaque on the right
    rgba[:, 20:, 3] = 255
    out = decode_image(encode(rgba, ".png"), LIMITS)
    assert out[:, :20].min() == 255  # composited onto white
    assert tuple(out[0, 30]) == (0, 0, 255)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_exif_orientation_is_applied():
    jpeg = encode(_image(60, 80), ".jpg")
    assert decode_image(_with_exif_orientation(jpeg, 1), LIMITS).shape == (60, 80, 3)
    assert decode_image(_with_exif_orientation(jpeg, 6), LIMITS).shape == (80, 60, 3)


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 100))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"", 400, "empty_file"),
        (b"hello, I am text", 415, "unsupported_media_type"),
        (b"GIF89a" + b"\x00" * 40, 415, "unsupported_media_type"),
        (_png_claiming(100_000, 100_000), 413, "image_too_large"),
        (_png_claiming(3000, 3000), 413, "image_too_large"),  # 9 MP > 4 MP
        (_png_claiming(8, 8), 422, "image_too_small"),
    ],
)
def test_refusals(data, status, code):
    with pytest.raises(ApiError) as err:
        decode_image(data, LIMITS)
    assert (err.value.status, err.value.code) == (status, code)


def test_bomb_is_refused_from_the_header_alone():
    # a 20000x20000 PNG of zeros compresses to a few hundred kB; it must never reach the decoder
    data = _png_claiming(20_000, 20_000)
    assert len(data) < 1000
    with pytest.raises(ApiError) as err:
        decode_image(data, LIMITS)
    assert err.value.code == "image_too_large"


def test_truncated_files_are_refused():
    jpeg = encode(_image(200, 200), ".jpg")
    with pytest.raises(ApiError) as err:
        decode_image(jpeg[: len(jpeg) // 2], LIMITS)
    assert err.value.status == 400
    png = encode(_image(200, 200), ".png")
    with pytest.raises(ApiError) as err:
        decode_image(png[: len(png) // 2], LIMITS)
    assert err.value.status == 400


def test_upload_over_byte_limit():
    small = ImageLimits(max_bytes=2000, max_pixels=10**7, max_side=4000, min_side=16)
    with pytest.raises(ApiError) as err:
        decode_image(encode(_image(300, 300), ".png"), small)
    assert (err.value.status, err.value.code) == (413, "payload_too_large")


def test_corrupt_body_with_valid_header():
    png = bytearray(encode(_image(100, 100), ".png"))
    png[60:400] = b"\x00" * 340  # keep the header and IEND, destroy the data
    with pytest.raises(ApiError) as err:
        decode_image(bytes(png), LIMITS)
    assert err.value.status == 400
