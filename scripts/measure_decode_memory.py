"""Peak memory of the worst allowed image of every format, through the whole analysis (``Analyzer.run``:
decode, detection, landmarks, AU and expression heads), each case in a fresh process.

    python -m scripts.measure_decode_memory            # every case, a table
    python -m scripts.measure_decode_memory --only png_rgba8_issue

Each child loads the models, analyses a small image once (warm-up), resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), then analyses the case (in ``--threads`` threads at once for the "x3" rows) and
reports VmHWM (the peak resident memory) against the RSS just before. The images are made here, small
files with huge pixel counts (constant rows compress to almost nothing: the issue's 6324x6324 RGBA PNG is
~160 KB), at the limits the default settings allow (GET /version: ``max_image_pixels_by_layout``). Linux only.
Prints numbers only.
"""
from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def png(width: int, height: int, color_type: int, depth: int, sample: int = 0x80) -> bytes:
    """A PNG of constant rows, compressed row by row (never the whole raw image in memory)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" + bytes([sample]) * (width * channels * depth // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(ext: str, shape: tuple[int, ...], params: list[int] | None = None) -> bytes:
    return cv2.imencode(ext, np.full(shape, 128, np.uint8), params or [])[1].tobytes()


def cmyk_jpeg(width: int, height: int) -> bytes:
    from PIL import Image  # Pillow (dev extra): OpenCV cannot write CMYK

    out = io.BytesIO()
    Image.new("CMYK", (width, height), (40, 80, 120, 20)).save(out, "JPEG", quality=90)
    return out.getvalue()


def side_for(pixels: int) -> int:
    return int(pixels**0.5)


def cases() -> dict[str, tuple[str, Callable[[], bytes], int]]:
    """name -> (what, maker, threads), at the default settings' limits."""
    from app.analyzer import limits_of
    from app.decode import max_pixels_by_layout
    from app.settings import Settings

    settings = Settings()
    by_layout = max_pixels_by_layout(limits_of(settings))
    rgb = cmyk = side_for(by_layout["no_alpha"])
    alpha8 = side_for(by_layout["alpha_8bit"])
    alpha16 = side_for(by_layout["alpha_16bit"])
    bmp24 = side_for((settings.max_upload_bytes - 1024) // 3)  # BMP is uncompressed: the upload limit binds
    bmp32 = side_for((settings.max_upload_bytes - 1024) // 4)
    return {
        "png_rgba8_issue": ("the issue's PNG: 6324x6324 RGBA 8-bit, rows of 0x80", lambda: png(6324, 6324, 6, 8), 1),
        "png_rgba8_limit": (f"PNG RGBA 8-bit {alpha8}x{alpha8}", lambda: png(alpha8, alpha8, 6, 8), 1),
        "png_rgba8_limit_x3": ("the same, three at once", lambda: png(alpha8, alpha8, 6, 8), 3),
        "png_rgba16": (f"PNG RGBA 16-bit {alpha16}x{alpha16}", lambda: png(alpha16, alpha16, 6, 16), 1),
        "png_rgb8": (f"PNG RGB 8-bit {rgb}x{rgb}", lambda: png(rgb, rgb, 2, 8), 1),
        "png_grey16": (f"PNG grey 16-bit {rgb}x{rgb}", lambda: png(rgb, rgb, 0, 16), 1),
        "png_grey_alpha8": (f"PNG grey+alpha 8-bit {alpha8}x{alpha8}", lambda: png(alpha8, alpha8, 4, 8), 1),
        "jpeg_rgb": (f"JPEG {rgb}x{rgb}", lambda: encoded(".jpg", (rgb, rgb, 3)), 1),
        "jpeg_cmyk": (f"JPEG CMYK {cmyk}x{cmyk}", lambda: cmyk_jpeg(cmyk, cmyk), 1),
        "webp_rgba": (f"WebP lossless RGBA {alpha8}x{alpha8}",
                      lambda: encoded(".webp", (alpha8, alpha8, 4), [cv2.IMWRITE_WEBP_QUALITY, 101]), 1),
        "webp_rgb": (f"WebP lossy {rgb}x{rgb}", lambda: encoded(".webp", (rgb, rgb, 3)), 1),
        "bmp24": (f"BMP 24-bit {bmp24}x{bmp24} (upload limit)", lambda: encoded(".bmp", (bmp24, bmp24, 3)), 1),
        "bmp32": (f"BMP 32-bit {bmp32}x{bmp32} (upload limit)", lambda: encoded(".bmp", (bmp32, bmp32, 4)), 1),
    }


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(field)


def child(path: Path, threads: int) -> None:
    """Runs in the measured process: prints one JSON line."""
    from concurrent.futures import ThreadPoolExecutor

    from app.analyzer import Analyzer, FaceOptions
    from app.errors import ApiError

    analyzer = Analyzer()
    small = cv2.imencode(".png", np.full((480, 640, 4), 128, np.uint8))[1].tobytes()
    analyzer.run(small, FaceOptions(), {"au", "expression"})
    data = path.read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS counter restarts from the current RSS
    before = status_mb("VmRSS")
    start = time.perf_counter()

    def one(_: int) -> str:
        try:
            analysis = analyzer.run(data, FaceOptions(), {"au", "expression"})
            return f"200 ({analysis.width}x{analysis.height}, {len(analysis.faces)} faces)"
        except ApiError as error:
            return f"{error.status} {error.code}"

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(one, range(threads)))
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    print(json.dumps({"before_mb": before, "peak_mb": peak, "seconds": seconds, "outcomes": outcomes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="case names")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    print(f"{'case':<22}{'file':>10}{'outcome':>34}{'RSS before':>12}{'peak':>9}{'increase':>10}{'s':>7}")
    for name, (what, make, threads) in cases().items():
        if args.only and name not in args.only:
            continue
        data = make()
        with tempfile.NamedTemporaryFile(suffix=".img") as file:
            file.write(data)
            file.flush()
            run = subprocess.run([sys.executable, "-m", "scripts.measure_decode_memory", "--child", file.name,
                                  "--threads", str(threads)], capture_output=True, text=True, cwd=REPO)
        if run.returncode != 0:
            print(f"{name:<22} failed: {run.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        outcome = r["outcomes"][0] if len(set(r["outcomes"])) == 1 else "; ".join(r["outcomes"])
        print(f"{name:<22}{len(data) / 1024:>8.0f}KB{outcome:>34}{r['before_mb']:>10.0f}MB{r['peak_mb']:>7.0f}MB"
              f"{r['peak_mb'] - r['before_mb']:>8.0f}MB{r['seconds']:>7.2f}   {what}")


if __name__ == "__main__":
    main()
