"""Small helpers the tests share (no fixtures here, so importing it loads no models)."""
from __future__ import annotations

import os
import struct
import zlib
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


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, color_type: int = 2, depth: int = 8,
                 idat: bytes = zlib.compress(b"\x00" * 100)) -> bytes:
    """A PNG whose header declares any size and layout, with a few bytes of data: refused, or broken, before
    its pixels matter."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def post_image(client, path: str, data: bytes, filename: str = "image.jpg", **params):
    return client.post(path, files={"file": (filename, data, "application/octet-stream")}, params=params)


class LiveServer:
    """An ASGI app served by uvicorn on a free loopback port, in a thread of this process (so that a
    pytest plugin's fakes apply to it too). ``with LiveServer(app) as url: ...``."""

    def __init__(self, app, ready_path: str = "/readyz", timeout: float = 90.0) -> None:
        self.app, self.ready_path, self.timeout = app, ready_path, timeout

    def __enter__(self) -> str:
        import socket
        import threading
        import time

        import httpx
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError("the live server stopped while starting (see its log above)")
            try:
                if httpx.get(url + self.ready_path, timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"the live server was not ready within {self.timeout} s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
