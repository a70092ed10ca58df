"""A bounded hostile-upload suite through the HTTP app: truncations, bit flips, bombs, unusual layouts,
trailing data, broken requests and bad parameters. Every answer is < 500; every non-200 is the JSON error
shape; well-formed images still give 200. Seeded, about 150 requests, a few seconds."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from tests.helpers import encode, png_claiming, post_image

rng = np.random.default_rng(13)


def _photo(h: int = 120, w: int = 160) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=2).astype(np.uint8)
    return image


def _jpeg_claiming(width: int, height: int) -> bytes:
    jpeg = bytearray(encode(_photo(), ".jpg"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def _webp_claiming(width: int, height: int) -> bytes:
    vp8x = bytes([0x10, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _bmp_claiming(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + dib + b"\x00" * 16


def _cmyk_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("CMYK", (160, 120), (30, 60, 90, 10)).save(out, "JPEG")
    return out.getvalue()


def _well_formed() -> dict[str, bytes]:
    photo = _photo()
    rgba = np.dstack([photo, np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))])
    return {
        "jpeg": encode(photo, ".jpg"),
        "png": encode(photo, ".png"),
        "webp": encode(photo, ".webp"),
        "bmp": encode(photo, ".bmp"),
        "png_rgba": encode(rgba, ".png"),
        "png_rgba16": encode(rgba.astype(np.uint16) * 257, ".png"),
        "png_grey16": encode(photo[:, :, 0].astype(np.uint16) * 257, ".png"),
        "jpeg_grey": encode(photo[:, :, 0], ".jpg"),
        "webp_rgba": encode(rgba, ".webp"),
        "bmp_bgra": encode(rgba, ".bmp"),
        "jpeg_cmyk": _cmyk_jpeg(),
        "jpeg_trailing_mp4": encode(photo, ".jpg") + b"\x00\x00\x00\x18ftypmp42" + bytes(4096),
        "png_trailing": encode(photo, ".png") + b"tEXt junk after IEND" * 100,
    }


def assert_error_shape(response) -> None:
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] and body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]


def assert_handled(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert_error_shape(response)


@pytest.mark.parametrize("name", list(_well_formed()))
def test_well_formed_layouts_are_analysed(client, name):
    response = post_image(client, "/analyze", _well_formed()[name])
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 160, "height": 120}


def test_truncations_are_refused_cleanly(client):
    answers = []
    for name in ("jpeg", "png", "webp", "bmp", "png_rgba"):
        data = _well_formed()[name]
        for cut in (4, 12, 30, 100, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 2):
            response = post_image(client, "/detect-faces", data[:cut])
            assert_handled(response)
            answers.append(response.status_code)
    assert answers.count(200) < len(answers) // 4  # most cuts are refused, none crash


def test_bit_flips_never_crash(client):
    originals = list(_well_formed().values())
    for _ in range(60):
        data = bytearray(originals[rng.integers(len(originals))])
        for position in rng.integers(0, len(data), size=rng.integers(1, 6)):
            data[position] ^= 1 << int(rng.integers(8))
        assert_handled(post_image(client, "/detect-faces", bytes(data)))


@pytest.mark.parametrize(
    "data",
    [png_claiming(100_000, 100_000), png_claiming(12_000, 12_000, 6, 16), png_claiming(2**31 - 1, 1),
     png_claiming(0, 100), _jpeg_claiming(65_000, 65_000), _jpeg_claiming(0, 0), _webp_claiming(16_384, 16_384),
     _bmp_claiming(100_000, -100_000), _bmp_claiming(-2**31, 1)],
    ids=["png_huge", "png_rgba16_over_budget", "png_wide", "png_zero", "jpeg_huge", "jpeg_zero", "webp_huge",
         "bmp_huge", "bmp_negative"],
)
def test_bombs_and_impossible_sizes_are_refused_from_the_header(client, data):
    response = post_image(client, "/analyze", data)
    assert response.status_code in (400, 413, 422), response.text
    assert_error_shape(response)


@pytest.mark.parametrize(
    "params",
    [{"max_faces": "abc"}, {"max_faces": 0}, {"max_faces": 10**9}, {"min_face_size": -1},
     {"min_face_size": "1e9"}, {"prior": "uniform"}, {"side_face_filter": "maybe"}, {"landmarks": "2"}],
)
def test_bad_parameters_are_422(client, params):
    response = post_image(client, "/analyze", _well_formed()["jpeg"], **params)
    assert response.status_code == 422, response.text
    assert_error_shape(response)


def test_broken_requests(client):
    jpeg = _well_formed()["jpeg"]
    cases = [
        client.post("/analyze"),  # no body
        client.post("/analyze", files={"image": ("a.jpg", jpeg)}),  # the wrong field name
        client.post("/analyze", content=jpeg, headers={"content-type": "image/jpeg"}),  # not multipart
        client.post("/analyze", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}),
        client.post("/analyze", files={"file": ("a.jpg", b"")}),  # empty file
        client.post("/analyze", content=(jpeg[i : i + 500] for i in range(0, len(jpeg), 500)),
                    headers={"content-type": "image/jpeg"}),  # chunked, not multipart
        client.get("/analyze"),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text
        assert_error_shape(response)
    # two files in one request: one is analysed, or the request is refused; never a crash
    assert_handled(client.post("/analyze", files=[("file", ("a.jpg", jpeg)), ("file", ("b.jpg", jpeg))]))
