"""Load test over loopback: throughput, latency percentiles and status counts at several concurrency levels.

    python -m scripts.load_test                                  # starts uvicorn (1 worker) from the cwd
    python -m scripts.load_test --workers 2 --env MICROFACS_MAX_IN_FLIGHT=1
    python -m scripts.load_test --url http://127.0.0.1:8000      # a server already running (loopback only)
    python -m scripts.load_test --image ../shared/data/samples/multi_face.jpg --levels 1,8 --json out.json

Run it from the repository root: the server is ``uvicorn app.main:create_app --factory`` from the current
directory, so the same script measures any checkout (copy it elsewhere to measure an older one).
Bounded: at most --requests per level and --max-seconds per level; every request has a --timeout. The default
image is a 640x480 JPEG
with one face (scikit-image's astronaut, public domain, as scripts/benchmark.py). Latency is measured by
the client (httpx, in this process, which also uses CPU: on a 2-core machine the client competes with the
server). RSS: the server processes' resident memory (summed over uvicorn's workers), sampled every 0.1 s.
Prints numbers only; nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

from scripts.servers import free_port


def default_image() -> bytes:
    import cv2
    from skimage import data

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[:, 64:576] = cv2.resize(astronaut, (512, 480))
    return cv2.imencode(".jpg", canvas)[1].tobytes()


def start_server(workers: int, env: dict[str, str], timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(command, env={**os.environ, **env}, cwd=os.getcwd())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}) while starting")
        try:
            # With several workers, /readyz answers from whichever is ready: wait for a few in a row.
            if all(httpx.get(url + "/readyz", timeout=2).status_code == 200 for _ in range(4 * workers)):
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.terminate()
    raise SystemExit(f"the server was not ready within {timeout} s")


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory (MiB) of the process and its children (uvicorn's workers), summed and the largest
    process's, from /proc (Linux)."""
    pids, sizes = [pid], [0]
    for child in Path("/proc").glob(f"{pid}/task/*/children"):
        pids += [int(p) for p in child.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]))
        except OSError:
            pass
    return sum(sizes) / 1024, max(sizes) / 1024


async def run_level(url: str, path: str, image: bytes, concurrency: int, requests: int, max_seconds: float,
                    timeout: float, server_pid: int | None, honor_retry_after: bool = True) -> dict:
    latencies: list[tuple[int, float]] = []
    outcomes: Counter[str] = Counter()
    sent = 0
    stop_at = time.monotonic() + max_seconds
    peak_rss, peak_proc_rss = 0.0, 0.0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # The multipart body is encoded once: the client shares the CPUs with the server, so it does little.
    upload = httpx.Request("POST", url, files={"file": ("image.jpg", image, "image/jpeg")})
    body, headers = upload.read(), {"content-type": upload.headers["content-type"]}

    async def user(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < stop_at:
            sent += 1
            start = time.perf_counter()
            try:
                response = await http.post(path, content=body, headers=headers)
                outcomes[str(response.status_code)] += 1
                latencies.append((response.status_code, (time.perf_counter() - start) * 1000.0))
                if response.status_code in (429, 503) and honor_retry_after:  # as a polite client does
                    await asyncio.sleep(min(float(response.headers.get("retry-after", 1)), 5.0))
            except httpx.TimeoutException:
                outcomes["timeout"] += 1
            except httpx.HTTPError as exc:
                outcomes[type(exc).__name__] += 1

    async def sample_rss() -> None:
        nonlocal peak_rss, peak_proc_rss
        while server_pid is not None:
            total, largest = tree_rss_mb(server_pid)
            peak_rss, peak_proc_rss = max(peak_rss, total), max(peak_proc_rss, largest)
            await asyncio.sleep(0.1)

    # One client (one keep-alive connection) per user: a pool shared by many users costs the client far more.
    clients = [httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) for _ in range(concurrency)]
    sampler = asyncio.create_task(sample_rss())
    start = time.perf_counter()
    await asyncio.gather(*(user(http) for http in clients))
    elapsed = time.perf_counter() - start
    sampler.cancel()
    for http in clients:
        await http.aclose()

    ok = [ms for status, ms in latencies if status == 200]
    pct = lambda values, q: round(float(np.percentile(values, q)), 1) if values else None
    return {
        "concurrency": concurrency, "requests": sum(outcomes.values()), "seconds": round(elapsed, 2),
        "ok_per_s": round(len(ok) / elapsed, 1), "answered_per_s": round(len(latencies) / elapsed, 1),
        "ok_p50_ms": pct(ok, 50), "ok_p90_ms": pct(ok, 90), "ok_p99_ms": pct(ok, 99),
        "all_p99_ms": pct([ms for _, ms in latencies], 99), "statuses": dict(sorted(outcomes.items())),
        "peak_rss_mb": round(peak_rss, 1) if server_pid is not None else None,
        "peak_process_rss_mb": round(peak_proc_rss, 1) if server_pid is not None else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server on 127.0.0.1 (else this script starts one)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server it starts")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    parser.add_argument("--path", default="/analyze")
    parser.add_argument("--image", type=Path, help="the upload (default: a 640x480 one-face JPEG)")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=300, help="at most this many requests per level")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="at most this long per level")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request")
    parser.add_argument("--warmup", type=int, default=20, help="sequential requests before the first level")
    parser.add_argument("--no-retry-after", action="store_true",
                        help="a user sends its next request at once after a 503 (default: waits Retry-After)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    image = args.image.read_bytes() if args.image else default_image()
    server = None
    if args.url:
        if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback only: --url must be on 127.0.0.1 / localhost")
        url = args.url.rstrip("/")
    else:
        env = dict(item.split("=", 1) for item in args.env)
        server, url = start_server(args.workers, env)
    try:
        for _ in range(args.warmup):
            httpx.post(url + args.path, files={"file": ("image.jpg", image, "image/jpeg")}, timeout=args.timeout)
        results = []
        print(f"{args.path} on {url}: {len(image)} bytes per upload, workers {args.workers if server else '?'}, "
              f"env {args.env}, {'no wait' if args.no_retry_after else 'waits Retry-After'} after a 503, "
              f"{os.cpu_count()} CPUs, {platform.platform()}")
        print(f"{'conc':>5} {'reqs':>5} {'ok/s':>7} {'ans/s':>7} {'ok p50':>8} {'ok p90':>8} {'ok p99':>8} "
              f"{'all p99':>8} {'RSS MB':>7} {'max/proc':>8}  statuses")
        for level in (int(x) for x in args.levels.split(",")):
            r = asyncio.run(run_level(url, args.path, image, level, args.requests, args.max_seconds, args.timeout,
                                      server.pid if server else None, not args.no_retry_after))
            results.append(r)
            print(f"{r['concurrency']:>5} {r['requests']:>5} {r['ok_per_s']:>7} {r['answered_per_s']:>7} "
                  f"{r['ok_p50_ms']!s:>8} {r['ok_p90_ms']!s:>8} {r['ok_p99_ms']!s:>8} {r['all_p99_ms']!s:>8} "
                  f"{r['peak_rss_mb']!s:>7} {r['peak_process_rss_mb']!s:>8}  {r['statuses']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "platform": platform.platform(), "cpus": os.cpu_count(),
                                             "results": results}, indent=2))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
