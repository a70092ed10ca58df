"""A real server on loopback for the scripts and tests that need one (benchmarks, the jobs tests): a free port,
uvicorn in a subprocess of this interpreter with extra environment, its log in a file, ready once /readyz answers."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python <args>`` in the repository, with ``env`` added to this environment, stdout and stderr to ``log``."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def serve(env: dict[str, str], log: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """The app (one uvicorn worker) with ``env``, once its /readyz answers 200: the process and its URL. A server
    not ready within ``timeout`` seconds is killed and RuntimeError carries its log's end."""
    port = free_port()
    command = ["-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn(command, env, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)
