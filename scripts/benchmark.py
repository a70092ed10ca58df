"""Benchmark: p50/p95 per stage in-process, and end to end over HTTP against one uvicorn worker.

    python -m scripts.benchmark                 # 50 runs per image
    python -m scripts.benchmark --runs 200 --json bench.json

Images: a 640x480 JPEG with one face (scikit-image's astronaut, public domain) and a group photo
(../shared/data/samples/sample6.jpg when present, else four astronauts tiled). Prints numbers only;
nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
def test_images() -> dict[str, bytes]:
    from skimage import data

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[:, 64:576] = cv2.resize(astronaut, (512, 480))
    group_path = Path(os.environ.get("MICROFACS_DATA", REPO.parent / "shared" / "data")) / "samples" / "sample6.jpg"
    if group_path.is_file():
        group = group_path.read_bytes()
    else:
        group = cv2.imencode(".jpg", np.vstack([np.hstack([astronaut] * 2)] * 2))[1].tobytes()
    return {"one_face_640x480": cv2.imencode(".jpg", canvas)[1].tobytes(), "group_photo": group}


def percentiles(values: list[float]) -> str:
    return f"p50 {np.percentile(values, 50):7.2f} ms   p95 {np.percentile(values, 95):7.2f} ms"


def bench_in_process(images: dict[str, bytes], runs: int) -> dict:
    """The service's own Analyzer on the encoded bytes: decode, face stage, AU and expression heads."""
    analyzer = Analyzer(Settings())
    results: dict[str, Any] = {}
    for name, data in images.items():
        per_stage: dict[str, list[float]] = defaultdict(list)
        for _ in range(runs):
            analysis = analyzer.run(data, FaceOptions(), heads={"au", "expression"})
            for stage, ms in analysis.timings.ms.items():
                per_stage[stage].append(ms)
            per_stage["total"].append(sum(analysis.timings.ms.values()))
        print(f"\n[in-process] {name}: {analysis.width}x{analysis.height}, {len(analysis.faces)} faces, {runs} runs")
        for stage, values in per_stage.items():
            print(f"  {stage:<12} {percentiles(values)}")
        results[name] = {s: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                         for s, v in per_stage.items()}
        results[name]["faces"] = len(analysis.faces)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(images: dict[str, bytes], runs: int, endpoint: str) -> dict:
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--log-level", "warning"],
        cwd=REPO,
    )
    results: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.time() + 60
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("server did not become ready in 60 s")
                time.sleep(0.2)
            for name, data in images.items():
                latencies = []
                for i in range(runs + 3):
                    start = time.perf_counter()
                    response = client.post(endpoint, files={"file": ("image.jpg", data, "image/jpeg")})
                    elapsed = (time.perf_counter() - start) * 1000
                    response.raise_for_status()
                    if i >= 3:
                        latencies.append(elapsed)
                print(f"[http] {endpoint} {name}: {percentiles(latencies)}  ({runs} requests, 1 worker)")
                results[name] = {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))}
        rss_kb = int(Path(f"/proc/{server.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        print(f"[http] server resident memory after the runs: {rss_kb / 1024:.0f} MiB")
        results["server_rss_mib"] = rss_kb / 1024
    finally:
        server.terminate()
        server.wait(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--endpoints", nargs="*", default=["/detect-faces", "/analyze"], help="none: in-process only")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"onnx threads per session: {Settings().onnx_threads}")
    images = test_images()
    report = {"in_process": bench_in_process(images, args.runs)}
    for endpoint in args.endpoints:
        report[endpoint] = bench_http(images, args.runs, endpoint)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
