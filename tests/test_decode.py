"""The decode stage: formats, orientation, alpha, and refusals before decoding."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from app.decode import ImageLimits, decode_image, read_header
from app.errors import ApiError
from tests.helpers import encode, png_chunk, png_claiming

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


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"", 400, "empty_file"),
        (b"hello, I am text", 415, "unsupported_media_type"),
        (b"GIF89a" + b"\x00" * 40, 415, "unsupported_media_type"),
        (png_claiming(100_000, 100_000), 413, "image_too_large"),
        (png_claiming(3000, 3000), 413, "image_too_large"),  # 9 MP > 4 MP
        (png_claiming(8, 8), 422, "image_too_small"),
    ],
)
def test_refusals(data, status, code):
    with pytest.raises(ApiError) as err:
        decode_image(data, LIMITS)
    assert (err.value.status, err.value.code) == (status, code)


def test_bomb_is_refused_from_the_header_alone():
    # a 20000x20000 PNG of zeros compresses to a few hundred kB; it must never reach the decoder
    data = png_claiming(20_000, 20_000)
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


def test_trailing_bytes_after_the_image_are_allowed():
    """Phone "motion photos" append a video after the JPEG's end; the image itself is whole."""
    trailer = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20  # > 1 KiB, an MP4-like start
    for ext in (".jpg", ".png"):
        data = encode(_image(), ext)
        assert np.array_equal(decode_image(data + trailer, LIMITS), decode_image(data, LIMITS))
    jpeg = encode(_image(200, 200), ".jpg")
    with pytest.raises(ApiError):  # cut inside the scan, trailer or not: still truncated
        decode_image(jpeg[: len(jpeg) // 2] + b"\x00" * 2000, LIMITS)


def _reference_bgr(image: np.ndarray) -> np.ndarray:
    """The previous float implementation, as the reference for the integer one."""
    image = (image / 257.0).round().astype(np.uint8) if image.dtype == np.uint16 else image
    alpha = image[:, :, 3:4].astype(np.float64) / 255.0
    return (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_and_16_bit_conversion_matches_the_float_reference(dtype):
    rng = np.random.default_rng(1)
    top = 255 if dtype == np.uint8 else 65535
    bgra = rng.integers(0, top + 1, (300, 70, 4)).astype(dtype)  # 300 rows: more than one tile
    out = decode_image(encode(bgra, ".png"), LIMITS)
    assert np.abs(out.astype(int) - _reference_bgr(bgra).astype(int)).max() <= 1


def test_exif_orientation_is_applied_to_images_with_alpha():
    bgra = np.zeros((60, 80, 4), np.uint8)
    bgra[:, :, 3] = 255
    bgra[:10, :, 2] = 255  # a red band along the top edge
    png = encode(bgra, ".png")
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    exif = png_chunk(b"eXIf", b"MM\x00*" + struct.pack(">I", 8) + ifd)
    at = png.index(b"IDAT") - 4
    turned = decode_image(png[:at] + exif + png[at:], LIMITS)
    assert turned.shape == (80, 60, 3)  # orientation 6: turned 90 degrees clockwise
    assert turned[:, -10:, 2].min() == 255 and turned[:, :40, 2].max() == 0  # the top band is now on the right


def test_decode_memory_budget_refuses_by_layout_before_decoding():
    from app.decode import max_pixels_by_layout

    budget = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000, max_side=4000, min_side=16,
                         max_decode_bytes=8 * 1_000_000)  # 1 M pixels with 8-bit alpha, 1.33 M without
    per_layout = max_pixels_by_layout(budget)
    assert per_layout == {"no_alpha": 1_333_333, "alpha_8bit": 1_000_000, "alpha_16bit": 500_000}
    # 1.21 M pixels: allowed without alpha (colour type 2), refused with it (6)
    for color_type, refused in ((2, False), (6, True)):
        data = png_claiming(1100, 1100, color_type, idat=zlib.compress(b""))
        with pytest.raises(ApiError) as err:
            decode_image(data, budget)
        if refused:
            assert (err.value.status, err.value.code) == (413, "image_too_large")
            assert "decode memory budget" in err.value.message
        else:  # past the budget check: the decoder finds the (empty) data broken
            assert err.value.code == "invalid_image"


def test_decode_memory_lets_concurrent_decodes_wait_for_room():
    import threading

    from app.decode import DecodeMemory

    memory = DecodeMemory(budget=100, timeout_s=0.2)
    with memory.hold(80):
        with pytest.raises(ApiError) as err, memory.hold(30):  # no room for 30 more: waits, then 503
            pass
        assert (err.value.status, err.value.code) == (503, "overloaded")
        with memory.hold(20):  # room for 20
            assert memory.in_use == 100
    entered, done = threading.Event(), threading.Event()

    def second_decode() -> None:
        with memory.hold(60):
            entered.set()
            done.wait(1.0)

    with memory.hold(80):
        waiter = threading.Thread(target=second_decode)
        waiter.start()
        assert not entered.wait(0.05)  # waits while the first decode holds its memory
    assert entered.wait(1.0) and memory.in_use == 60  # ... and runs once it is released
    done.set()
    waiter.join(1.0)
    assert memory.in_use == 0
